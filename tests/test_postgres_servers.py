"""Two real ``jupyter server`` processes on one PostgreSQL vault with the dev provider (issue 11):
a consent granted through one is served by the other, refresh-token rotation done by either is
what the next refresh in the other uses (no invalid_grant), a revoke in one is seen by the
other, and the database password never reaches a log, even at ``--debug``."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pg_fixture import PostgresCluster
from server_fixtures import TEST_KEY, grant
from test_app_config_server import Server, start_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def started() -> Iterator[list[Server]]:
    """Servers started by a test; killed at the end if the test left them running."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def _call(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return server.api(method, path, **kwargs)


async def _api(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return await asyncio.to_thread(_call, server, method, path, **kwargs)


async def _consent(server: Server, idp: Any) -> str:
    consent = await _api(server, "POST", "consents", json={"label": "shared"})
    assert consent.status_code == 201, consent.text
    location = await asyncio.to_thread(idp.complete_consent, consent.json()["consent_url"])
    callback = urlsplit(location)
    page = await asyncio.to_thread(
        httpx.get,
        f"{server.base.rstrip('/')}{callback.path}?{callback.query}",
        headers=server.headers,
    )
    assert page.status_code == 200, page.text
    return str(consent.json()["persistent_token_id"])


async def test_two_servers_share_one_postgres_vault(
    tmp_path: Path, started: list[Server], idp: Any, pg_url: str, pg_cluster: PostgresCluster
) -> None:
    common = f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
    common += f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
    common += f"c.OfflineTokenApp.client_secret = {idp.client_secret!r}\n"
    # owner_scope 'auto' is 'server' here: both servers' owner is their OS user, the same.
    env = {"JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY}
    # One server gets the URL on the command line (inline: warned about), the other from a file.
    first = start_server(
        tmp_path / "a", config=common, env=env, args=(f"--OfflineTokenApp.database_url={pg_url}",)
    )
    started.append(first)
    url_file = tmp_path / "db-url"
    url_file.write_text(pg_url + "\n")
    url_file.chmod(0o600)
    second = start_server(
        tmp_path / "b",
        config=common,
        env={**env, "JUPYTER_OFFLINE_TOKEN_DATABASE_URL_FILE": str(url_file)},
        args=("--debug",),
    )
    started.append(second)

    token_id = await _consent(first, idp)
    seen = await _api(second, "GET", f"tokens/{token_id}")
    assert seen.status_code == 200 and seen.json()["status"] == "active", seen.text
    # min_ttl beyond the lifetime: each server makes a refresh grant, alternately, so each
    # uses the refresh token the other rotated (a stale one would be invalid_grant).
    for server in (second, first, second):
        access = await _api(
            server, "POST", f"tokens/{token_id}/access-token", json={"min_ttl": 86400}
        )
        assert access.status_code == 200, access.text
    count = pg_cluster.execute(
        pg_url, "SELECT refresh_count FROM tokens WHERE id = %s", (token_id,)
    )
    assert count[0][0] >= 3

    revoked = await _api(second, "DELETE", f"tokens/{token_id}")
    assert revoked.status_code in (200, 204), revoked.text
    gone = await _api(first, "GET", f"tokens/{token_id}")
    assert gone.status_code == 404 or gone.json()["status"] == "revoked", gone.text

    assert first.sigterm() == 0 and second.sigterm() == 0
    first_log, second_log = first.log(), second.log()
    assert "[D " in second_log  # --debug really logged at debug level
    for log in (first_log, second_log):
        assert pg_cluster.password not in log
        assert "Traceback" not in log, log[-3000:]
    assert "OfflineTokenApp.database_url is set inline" in first_log
    assert "database_url is set inline" not in second_log
    assert not list(tmp_path.rglob("vault.db")) and not list(tmp_path.rglob("vault.key"))


async def test_a_database_that_is_down_is_503_and_the_server_still_stops(
    tmp_path: Path, started: list[Server], pg_cluster: PostgresCluster
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
    started.append(server)
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


HAMMER = Path(__file__).parent / "pg_hammer.py"
ROUNDS = 10


class TestProcessesHammeringOneToken:
    """The server and two more processes on one PostgreSQL vault refresh one rotating token
    over and over: the database lease keeps every grant single, so none replays a rotated-out
    refresh token (the provider would answer invalid_grant)."""

    @pytest.fixture
    def offline_token_config(self, idp: Any, pg_url: str) -> dict[str, Any]:
        return {
            "issuer": idp.issuer,
            "client_id": idp.client_id,
            "client_secret": idp.client_secret,
            "database_url": pg_url,
            "encryption_keys": [TEST_KEY],
        }

    async def test_no_grant_is_made_twice(self, api: Any, idp: Any, pg_url: str) -> None:
        token_id = await grant(api, idp)
        before = idp.stats()
        given = {
            "url": pg_url,
            "key": TEST_KEY,
            "issuer": idp.issuer,
            "client_id": idp.client_id,
            "secret": idp.client_secret,
        }

        async def hammer() -> dict[str, Any]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(HAMMER),
                token_id,
                str(ROUNDS),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate(json.dumps(given).encode() + b"\n")
            assert proc.returncode == 0, err.decode()[-2000:]
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            return result

        async def serve() -> None:
            for _ in range(ROUNDS):
                status, body = await api.post(
                    "tokens", token_id, "access-token", body={"min_ttl": 86400}
                )
                assert status == 200, body

        *results, _ = await asyncio.gather(hammer(), hammer(), serve())
        assert results == [{"ok": ROUNDS, "errors": []}] * 2
        after = idp.stats()
        assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
        assert after["refresh_token_grants"] - before["refresh_token_grants"] >= 2 * ROUNDS
