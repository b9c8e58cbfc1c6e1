"""Real processes on one PostgreSQL vault (issue 11): a server whose database does not exist
answers 503 naming the setting and still stops; the server and two more processes hammering one
rotating token make no grant twice. The two-server end-to-end flows (consent, rotation, revoke,
failure, tasks, no password in any log even at ``--debug``) are tests/test_postgres_e2e.py."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import vault_servers
from hammer_token import hammer
from pg_fixture import PostgresCluster
from server_fixtures import TEST_KEY, grant
from vault_servers import Server, start_server

pytestmark = pytest.mark.timeout(240)

servers = vault_servers.servers  # the fixture


def _call(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return server.api(method, path, **kwargs)


async def _api(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return await asyncio.to_thread(_call, server, method, path, **kwargs)


async def test_a_database_that_is_down_is_503_and_the_server_still_stops(
    tmp_path: Path, servers: list[Server], pg_cluster: PostgresCluster
) -> None:
    password = "pw-" + secrets.token_hex(8)
    url = f"postgresql://postgres:{password}@127.0.0.1:{pg_cluster.port}/no_such_database"
    config = "c.OfflineTokenApp.issuer = 'https://idp.example.org/realms/lab'\n"
    config += "c.OfflineTokenApp.client_id = 'jupyter'\n"
    server = start_server(
        tmp_path,
        config=config,
        env={"JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY, "JUPYTER_OFFLINE_TOKEN_DATABASE_URL": url},
        args=("--debug",),
    )
    servers.append(server)
    response = await _api(server, "GET", "tokens")
    assert response.status_code == 503, response.text
    error = response.json()
    assert (
        error["error"] == "vault_unavailable"
        and "OfflineTokenApp.database_url" in (error["message"])
    )
    assert password not in error["message"]
    assert server.sigterm() == 0
    assert password not in server.log()


ROUNDS = 10


class TestProcessesHammeringOneToken:
    """The server and two more processes on one PostgreSQL vault refresh one rotating token
    over and over: the database lease keeps every grant single, so none replays a rotated-out
    refresh token (the provider would answer invalid_grant)."""

    @pytest.fixture
    def offline_token_config(self, pg_app_config: dict[str, Any]) -> dict[str, Any]:
        return pg_app_config

    async def test_no_grant_is_made_twice(self, api: Any, idp: Any, pg_url: str) -> None:
        token_id = await grant(api, idp)
        before = idp.stats()
        vault = {"url": pg_url, "key": TEST_KEY}

        async def serve() -> None:
            for _ in range(ROUNDS):
                status, body = await api.post(
                    "tokens", token_id, "access-token", body={"min_ttl": 86400}
                )
                assert status == 200, body

        *results, _ = await asyncio.gather(
            hammer(vault, idp, token_id, ROUNDS), hammer(vault, idp, token_id, ROUNDS), serve()
        )
        assert results == [{"ok": ROUNDS, "errors": []}] * 2
        after = idp.stats()
        assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
        assert after["refresh_token_grants"] - before["refresh_token_grants"] >= 2 * ROUNDS
