"""Real ``jupyter server`` processes sharing one vault (a SQLite file, or a PostgreSQL database
when given its URL), for the issue-11 tests (test_grant_shared.py, test_grant_killed.py): start
one configured for a dev provider, grant consent through it, ask it for access tokens. Started
with ``test_app_config_server.start_server`` (own config/data/runtime dirs, this checkout first on
the path)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from server_fixtures import TEST_KEY
from test_app_config_server import Server, start_server


def start_vault_server(
    workdir: Path,
    idp,
    vault_path: Path,
    *,
    proxy: str | None = None,
    http_timeout: float = 5.0,
    database_url: str | None = None,
) -> Server:
    """A server for ``idp`` on the vault at ``vault_path``, or in the PostgreSQL database at
    ``database_url`` when given; ``proxy``: an HTTP proxy URL its provider requests go
    through."""
    config = (
        f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
        f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
        f"c.OfflineTokenApp.vault_path = {str(vault_path)!r}\n"
        f"c.OfflineTokenApp.http_timeout = {http_timeout!r}\n"
    )
    env = {
        "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": idp.client_secret,
        "JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY,
    }
    if database_url is not None:
        env["JUPYTER_OFFLINE_TOKEN_DATABASE_URL"] = database_url
    env.update({"NO_PROXY": "", "no_proxy": ""})
    if proxy is not None:
        env.update({"HTTP_PROXY": proxy, "http_proxy": proxy})
    return start_server(workdir, config=config, env=env)


async def consent(server: Server, idp) -> str:
    """Consent through ``server`` (login and allow at the provider); the active token's id."""
    created = await asyncio.to_thread(server.api, "POST", "consents", json={})
    assert created.status_code == 201, created.text
    location = await asyncio.to_thread(idp.complete_consent, created.json()["consent_url"])
    callback = urlsplit(location)
    page = await asyncio.to_thread(
        httpx.get,
        f"{server.base.rstrip('/')}{callback.path}?{callback.query}",
        headers=server.headers,
    )
    assert page.status_code == 200, page.text
    return str(created.json()["persistent_token_id"])


async def access_token(
    client: httpx.AsyncClient, server: Server, token_id: str, min_ttl: int
) -> httpx.Response:
    return await client.post(
        f"{server.base}api/offline-token/tokens/{token_id}/access-token",
        headers=server.headers,
        json={"min_ttl": min_ttl},
    )
