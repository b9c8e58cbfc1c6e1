"""The pieces both SQL backends share (stores/shared) that the contract suites cannot reach:
the refresh bundle's repr and the placeholder conversion's guard."""

from __future__ import annotations

import pytest

from jupyter_offline_token.models import AuditEvent, SharedAccessToken
from jupyter_offline_token.stores.shared import sql
from jupyter_offline_token.stores.shared.records import Refreshed


def test_the_refresh_bundle_never_shows_its_secrets():
    access = SharedAccessToken("at-secret-value", "Bearer", 100.0, "openid")
    event = AuditEvent(ts=1.0, action="refresh", result="ok", token_id="t1")
    done = Refreshed("t1", b"rt-secret-value", access, None, 1.0, "worker", event, 5)
    shown = repr(done) + str(done)
    assert "t1" in shown and "worker" in shown
    assert "rt-secret-value" not in shown
    assert "at-secret-value" not in shown


def test_pyformat_converts_placeholders_and_refuses_a_percent():
    assert sql.pyformat(sql.RELEASE_LEASE).count("%s") == sql.RELEASE_LEASE.count("?") == 2
    assert "?" not in sql.pyformat(sql.ACTIVATE)
    with pytest.raises(ValueError):
        sql.pyformat("SELECT id FROM tokens WHERE label LIKE 'a%' AND id = ?")
