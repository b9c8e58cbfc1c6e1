"""The suite's pytest plugin (registered by ``conftest.py``): one real dev OpenID provider per
session, a Jupyter server with the extension configured for it, and helpers to drive the REST API
and the consent flow. Test modules import the helpers from here (``from server_fixtures import
grant``); ``tests`` and ``dev`` are on the path by pytest's ``pythonpath`` setting."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from dev_provider import DevProvider
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets.config import Config

TEST_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"  # bytes 0..31, base64url; tests only


def _start_provider(**kwargs: Any) -> DevProvider:
    provider = DevProvider(**kwargs)
    provider.start()
    return provider


@pytest.fixture(scope="session")
def idp():
    """The dev provider with a 300 s access-token TTL, shared by the whole session."""
    provider = _start_provider(access_token_ttl=300)
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def idp_short_ttl():
    """A second dev provider whose access tokens live 3 s (refresh-heavy tests)."""
    provider = _start_provider(access_token_ttl=3)
    yield provider
    provider.stop()


class MultiUserIdentityProvider(IdentityProvider):
    """Test identity: ``Authorization: token user:<name>`` is user <name>; nothing else is."""

    def get_user(self, handler: Any) -> User | None:  # type: ignore[override]
        header = handler.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "token" and value.startswith("user:"):
            handler._token_authenticated = True  # API client: no XSRF cookie, like real tokens
            return User(username=value[len("user:") :])
        return None


@pytest.fixture
def provider_for_test(idp):
    """Which dev provider the server under test uses (override per module)."""
    return idp


@pytest.fixture
def offline_token_config(provider_for_test, tmp_path) -> dict[str, Any]:
    return {
        "issuer": provider_for_test.issuer,
        "client_id": provider_for_test.client_id,
        "client_secret": provider_for_test.client_secret,
        "vault_path": str(tmp_path / "vault" / "vault.db"),
        "encryption_keys": [TEST_KEY],
    }


@pytest.fixture
def multi_user() -> bool:
    return False


@pytest.fixture
def jp_server_config(offline_token_config, multi_user):
    config: dict[str, Any] = {
        "ServerApp": {"jpserver_extensions": {"jupyter_offline_token": True}},
        "OfflineTokenApp": offline_token_config,
    }
    if multi_user:
        config["ServerApp"]["identity_provider_class"] = MultiUserIdentityProvider
    return Config(config)


@pytest.fixture
def offline_app(jp_serverapp):
    """The running OfflineTokenApp instance."""
    return jp_serverapp.extension_manager.extension_points["jupyter_offline_token"].app


class Api:
    """Calls the REST API and returns ``(status, json_or_text)`` without raising."""

    def __init__(self, jp_fetch: Any, user: str | None = None) -> None:
        self._fetch = jp_fetch
        self.user = user
        self.last_headers: Any = None

    def as_user(self, user: str | None) -> Api:
        return Api(self._fetch, user)

    async def request(
        self,
        method: str,
        *parts: str,
        body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if self.user is not None:
            hdrs["Authorization"] = f"token user:{self.user}"
        data: bytes | None = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is None and method in ("POST", "PATCH", "PUT"):
            data = b""
        response = await self._fetch(
            *parts,
            method=method,
            body=data,
            params=params,
            headers=hdrs,
            raise_error=False,
            follow_redirects=False,
        )
        self.last_headers = response.headers
        text = response.body.decode() if response.body else ""
        content_type = response.headers.get("Content-Type", "")
        payload: Any = text
        if "json" in content_type and text:
            payload = json.loads(text)
        return response.code, payload

    async def get(self, *parts: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("GET", "api", "offline-token", *parts, **kw)

    async def post(self, *parts: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("POST", "api", "offline-token", *parts, **kw)

    async def delete(self, *parts: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("DELETE", "api", "offline-token", *parts, **kw)

    async def patch(self, *parts: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("PATCH", "api", "offline-token", *parts, **kw)

    async def callback(self, location: str) -> tuple[int, Any]:
        """Deliver the provider's redirect (a URL on this server) to the callback route."""
        params = dict(parse_qsl(urlsplit(location).query))
        return await self.request("GET", "offline-token", "callback", params=params)


@pytest.fixture
def api(jp_fetch) -> Api:
    return Api(jp_fetch)


async def consent_location(
    api: Api, provider: DevProvider, *, decision: str = "allow", **body: Any
) -> tuple[str, str]:
    """POST a consent and complete it at the provider; return (token id, redirect Location)."""
    status, created = await api.post("consents", body=body)
    assert status == 201, created
    location = await asyncio.to_thread(
        provider.complete_consent, created["consent_url"], decision=decision
    )
    return created["persistent_token_id"], location


async def grant(api: Api, provider: DevProvider, **body: Any) -> str:
    """The whole happy path: consent, login, allow, callback. Returns the active token id."""
    token_id, location = await consent_location(api, provider, **body)
    status, page = await api.callback(location)
    assert status in (200, 303), page
    status, token = await api.get("tokens", token_id)
    assert status == 200 and token["status"] == "active", token
    return token_id


async def metric(api: Api, name: str, **labels: str) -> float:
    """One sample of a Prometheus metric as jupyter_server's /metrics shows it."""
    status, text = await api.request("GET", "metrics")
    assert status == 200
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{wanted}}} ([0-9.e+-]+)$" if labels else rf"^{name} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


@pytest.fixture
def tasks(offline_app, jp_asyncio_loop):
    """The task service, built and started as the app does it; stopped after the test
    (which kills whatever still runs)."""
    service = offline_app.services.tasks
    service.cancel_grace = 2.0
    jp_asyncio_loop.run_until_complete(offline_app.services.ready())
    jp_asyncio_loop.run_until_complete(service.start())
    yield service
    jp_asyncio_loop.run_until_complete(service.stop())


def task_processes(task_id: str) -> list[int]:
    """Live processes (any depth) started for a task: they carry its id in their environment."""
    marker = f"JUPYTER_OFFLINE_TOKEN_TASK_ID={task_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def remember_refreshes(provider: Any) -> list[str]:
    """Wrap ``provider.refresh`` (passing every call through to the real provider); the list
    it returns fills with every access and refresh token those grants hand out, for tests that
    look for them where no secret may appear."""
    issued: list[str] = []
    refresh = provider.refresh

    async def spy_refresh(refresh_token: str) -> Any:
        response = await refresh(refresh_token)
        issued.extend(t for t in (response.access_token, response.refresh_token) if t)
        return response

    provider.refresh = spy_refresh
    return issued
