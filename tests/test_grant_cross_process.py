"""Two processes sharing one vault never both redeem the same refresh token (the vault lease)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from server_fixtures import TEST_KEY, grant

pytestmark = pytest.mark.timeout(180)

HAMMER = Path(__file__).parent / "hammer_token.py"
ROUNDS = 15


async def test_two_processes_hammering_one_rotating_token(api, idp, offline_app):
    token_id = await grant(api, idp)
    before = idp.stats()

    async def hammer() -> dict:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HAMMER),
            offline_app.vault_path,
            TEST_KEY,
            idp.issuer,
            idp.client_id,
            token_id,
            str(ROUNDS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(idp.client_secret.encode() + b"\n")
        assert proc.returncode == 0, err.decode()[-2000:]
        return json.loads(out.decode().strip().splitlines()[-1])

    results = await asyncio.gather(hammer(), hammer())
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
