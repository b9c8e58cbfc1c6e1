"""Force refresh across two real ``jupyter server`` processes on one vault: one grant at the
real dev provider when both are asked at once, the rate limit seen by the other process, and a
cleared cache served from the vault's shared copy (no grant)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from vault_servers import access_token, consent, start_vault_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["sqlite", "postgres"])
def two_servers(request, tmp_path, idp):
    vault = tmp_path / "shared" / "vault.db"
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    started = []
    try:
        for name in ("a", "b"):
            started.append(start_vault_server(tmp_path / name, idp, vault, database_url=url))
        yield started
    finally:
        for server in started:
            server.sigterm()


async def _refresh(client: httpx.AsyncClient, server, token_id: str) -> httpx.Response:
    return await client.post(
        f"{server.base}api/offline-token/tokens/{token_id}/refresh",
        headers=server.headers,
        json={},
    )


async def _shared_served(client: httpx.AsyncClient, server) -> float:
    """Access tokens ``server`` served from the vault's shared copy (its /metrics)."""
    text = (await client.get(f"{server.base}metrics", headers=server.headers)).text
    found = re.search(
        r'^offline_token_access_token_requests_total{source="shared"} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def test_refresh_at_two_servers_at_once_makes_one_grant(two_servers, idp):
    a, b = two_servers
    token_id = await consent(a, idp)
    async with httpx.AsyncClient(timeout=60.0) as client:
        before = idp.stats()["refresh_token_grants"]
        answers = await asyncio.gather(
            *(_refresh(client, server, token_id) for server in (a, b, a, b))
        )
        statuses = sorted(r.status_code for r in answers)
        assert statuses[0] == 200 and set(statuses) <= {200, 429}, [r.text for r in answers]
        assert idp.stats()["refresh_token_grants"] == before + 1
        # Either process refuses a forced refresh right after it: the limit is the vault's.
        for server in (a, b):
            again = await _refresh(client, server, token_id)
            assert again.status_code == 429 and again.json()["error"] == "refresh_too_soon"
            assert int(again.headers["Retry-After"]) >= 1
        # Clearing a's cache: the next request is served the shared copy, not a new grant.
        first = await access_token(client, a, token_id, 0)
        cleared = await client.delete(
            f"{a.base}api/offline-token/tokens/{token_id}/access-token", headers=a.headers
        )
        assert cleared.status_code == 204
        shared = await _shared_served(client, a)
        second = await access_token(client, a, token_id, 0)
        assert second.json()["access_token"] == first.json()["access_token"]
        assert idp.stats()["refresh_token_grants"] == before + 1
        assert await _shared_served(client, a) == shared + 1, "a cache hit, not the vault"
