"""Two processes sharing one vault never both redeem the same refresh token (the vault lease)."""

from __future__ import annotations

import asyncio

import pytest
from hammer_token import hammer
from server_fixtures import TEST_KEY, grant

pytestmark = pytest.mark.timeout(180)

ROUNDS = 15


async def test_two_processes_hammering_one_rotating_token(api, idp, offline_app):
    token_id = await grant(api, idp)
    before = idp.stats()

    vault = {"path": str(offline_app.vault_path), "key": TEST_KEY}
    results = await asyncio.gather(*(hammer(vault, idp, token_id, ROUNDS) for _ in range(2)))
    assert results == [{"ok": ROUNDS, "errors": []}] * 2
    after = idp.stats()
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
    assert after["refresh_token_grants"] - before["refresh_token_grants"] == 2 * ROUNDS
    # Nothing lost: the server, sharing the vault, still refreshes with the latest token.
    # (min_ttl beyond any lifetime: neither the cache nor the shared access token will do.)
    offline_app.services.broker._cache.clear()
    status, access = await api.post("tokens", token_id, "access-token", body={"min_ttl": 86400})
    assert status == 200, access
    info = await asyncio.to_thread(idp.userinfo, access["access_token"])
    assert info.status_code == 200
