"""The pieces both SQL backends share (stores/shared) that the contract suites cannot reach:
the refresh bundle's repr, the placeholder conversion's guard, and reading a shared access
token an older SQLite vault cached."""

from __future__ import annotations

import pytest

from jupyter_offline_token.models import AuditEvent, SharedAccessToken
from jupyter_offline_token.stores.shared import sql
from jupyter_offline_token.stores.shared.records import Refreshed, decode_access, encode_access


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


def test_a_shared_access_token_cached_by_an_older_sqlite_vault_still_reads():
    """SQLite used to leave ``expires_at`` out of the plaintext (it has its own column)."""
    older = b'{"access_token": "at", "token_type": "Bearer", "scope": "openid"}'
    token = decode_access(older, 1234.5)
    assert token is not None
    assert (token.access_token, token.token_type, token.expires_at) == ("at", "Bearer", 1234.5)
    assert token.scope == "openid"
    current = SharedAccessToken("at2", "DPoP", 99.0, None)
    assert decode_access(encode_access(current), 99.0) == current
    assert decode_access(b"not json", 1.0) is None  # only a cache: a miss, never an error
