"""A server process SIGKILLed mid-refresh loses nothing and causes no replay (issue 11), with
real processes: server A (its provider traffic through tests/holding_proxy.py) and server B on
one vault, the real dev provider (rotating refresh tokens; a replay revokes the grant). (b) and
(c) run on a SQLite vault, then on a PostgreSQL one; (a), whose take-over is the lease expiry (b)
also waits for, on SQLite alone (it costs a lease's lifetime).

(a) killed while its grant is held before reaching the provider: B takes the lease over once it
    expires, introspection says active, B refreshes; no invalid_grant at the provider.
(b) killed after the provider answered (rotated) but before A stored the answer: B takes over,
    introspection says inactive, the entry fails with the reason and the provider sees NO
    replay of the rotated-out refresh token.
(c) killed right after the commit: B refreshes with the rotated token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
from holding_proxy import HoldingProxy
from vault_servers import access_token, consent, start_vault_server

pytestmark = pytest.mark.timeout(300)

FORCE = 86400  # min_ttl beyond any lifetime: every call is a grant (or a failure)


@pytest.fixture(scope="module")
def proxy():
    holding = HoldingProxy()
    yield holding
    holding.close()


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("killed")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request):
    """None: the SQLite vault under vault_dir; else a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").create_database()


@pytest.fixture(scope="module")
def server_b(vault_dir, idp, database_url):
    workdir = vault_dir / ("b-postgres" if database_url else "b-sqlite")
    vault = vault_dir / "vault" / "vault.db"
    server = start_vault_server(workdir, idp, vault, database_url=database_url)
    yield server
    server.sigterm()


@pytest.fixture
def server_a(vault_dir, idp, proxy, request, database_url):
    proxy.mode = "pass"
    proxy.held.clear()
    workdir = vault_dir / f"a-{request.node.name}"
    vault = vault_dir / "vault" / "vault.db"
    server = start_vault_server(workdir, idp, vault, proxy=proxy.url, database_url=database_url)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(timeout=10)


async def _kill_once_held(server, proxy: HoldingProxy, call: asyncio.Future) -> None:
    deadline = time.monotonic() + 60
    while not proxy.held.is_set():
        assert time.monotonic() < deadline, "the grant never reached the proxy"
        assert not call.done(), call.result().text
        await asyncio.sleep(0.05)
    server.proc.kill()
    server.proc.wait(timeout=10)
    with contextlib.suppress(httpx.HTTPError):
        await call


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_killed_before_reaching_the_provider(server_a, server_b, proxy, idp):
    token_id = await consent(server_a, idp)
    async with httpx.AsyncClient(timeout=120.0) as client:
        proxy.mode = "hold_request"
        forwarded = proxy.refresh_grants_forwarded
        call = asyncio.ensure_future(access_token(client, server_a, token_id, FORCE))
        await _kill_once_held(server_a, proxy, call)
        assert proxy.refresh_grants_forwarded == forwarded  # A never reached the provider
        before = idp.stats()
        answer = await access_token(client, server_b, token_id, FORCE)  # after A's lease expired
    assert answer.status_code == 200, answer.text
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 1
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
    info = await asyncio.to_thread(idp.userinfo, answer.json()["access_token"])
    assert info.status_code == 200


async def test_b_killed_after_the_provider_answered(server_a, server_b, proxy, idp):
    token_id = await consent(server_a, idp)
    async with httpx.AsyncClient(timeout=120.0) as client:
        proxy.mode = "hold_response"
        call = asyncio.ensure_future(access_token(client, server_a, token_id, FORCE))
        await _kill_once_held(server_a, proxy, call)
        before = idp.stats()  # A's grant is counted: the provider answered and rotated
        answer = await access_token(client, server_b, token_id, FORCE)
        shown = await client.get(
            f"{server_b.base}api/offline-token/tokens/{token_id}", headers=server_b.headers
        )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "token_failed"
    assert "interrupted" in answer.json()["message"]
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"]  # nothing sent
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]  # no replay
    token = shown.json()
    assert token["status"] == "failed", token
    assert token["health"]["action"] == "request_consent", token
    assert "interrupted" in token["health"]["detail"]


async def test_c_killed_right_after_the_commit(server_a, server_b, proxy, idp):
    token_id = await consent(server_a, idp)
    async with httpx.AsyncClient(timeout=120.0) as client:
        first = await access_token(client, server_a, token_id, FORCE)  # answered after commit
        assert first.status_code == 200, first.text
        server_a.proc.kill()
        server_a.proc.wait(timeout=10)
        before = idp.stats()
        answer = await access_token(client, server_b, token_id, FORCE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["access_token"] != first.json()["access_token"]
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 1
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
