"""Without issuer/client_id the server starts and the API says which setting is missing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def offline_token_config(tmp_path):
    return {"vault_path": str(tmp_path / "v" / "vault.db")}


async def test_not_configured_answers_503_naming_the_setting(api):
    status, err = await api.post("consents", body={})
    assert status == 503 and err["error"] == "not_configured"
    assert "OfflineTokenApp.issuer" in err["message"]
    status, health = await api.get("health")
    assert status == 200 and health["configured"] is False
    status, listing = await api.get("tokens")
    assert status == 200 and listing == {"tokens": [], "next_cursor": None}
