"""Two real ``jupyter server`` processes on ONE vault (SQLite, then PostgreSQL) make ONE refresh
grant per access-token expiry (issue 11), counted at the real dev provider.

Each round waits until the last access token has expired, then fires concurrent callers at both
servers at once. Before the shared access token, each server granted on its own: 2 per expiry.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from dev_provider import DevProvider
from vault_servers import access_token, consent, start_vault_server

pytestmark = pytest.mark.timeout(300)

ACCESS_TTL = 8  # seconds; callers ask for min_ttl=1, so a round has ~7 s to be served
CALLERS_PER_SERVER = 20
ROUNDS = 3


@pytest.fixture(scope="module")
def idp_8s():
    provider = DevProvider(access_token_ttl=ACCESS_TTL)
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def two_servers(request, tmp_path, idp_8s):
    vault = tmp_path / "shared" / "vault.db"
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    started = []
    try:
        for name in ("a", "b"):
            started.append(start_vault_server(tmp_path / name, idp_8s, vault, database_url=url))
        yield started
    finally:
        for server in started:
            server.sigterm()


async def test_one_grant_per_expiry_across_two_servers(two_servers, idp_8s):
    a, b = two_servers
    token_id = await consent(a, idp_8s)
    expires_at = time.time() + ACCESS_TTL  # the consent's token, cached in a alone
    per_round = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        for _ in range(ROUNDS):
            while time.time() < expires_at + 0.5:  # the previous token is gone everywhere
                await asyncio.sleep(0.2)
            before = idp_8s.stats()
            calls = [
                access_token(client, server, token_id, 1)
                for _ in range(CALLERS_PER_SERVER)
                for server in (a, b)
            ]
            answers = await asyncio.gather(*calls)
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers][:3]
            after = idp_8s.stats()
            per_round.append(after["refresh_token_grants"] - before["refresh_token_grants"])
            assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
            tokens = {r.json()["access_token"] for r in answers}
            assert len(tokens) == 1  # both servers hand out the one grant's token
            expires_at = max(time.time() + r.json()["expires_in"] for r in answers)
    assert per_round == [1] * ROUNDS
