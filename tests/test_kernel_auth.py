"""``tok.auth``: bearer header and exactly one renewal on a 401 (httpx sync/async, requests)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from jupyter_offline_token.kernel import OfflineToken, request_offline_token
from jupyter_offline_token.kernel.testing import RESOURCE_URL, FakeOfflineTokenAPI


@pytest.fixture
def api() -> FakeOfflineTokenAPI:
    return FakeOfflineTokenAPI()


@pytest.fixture
def tok(api: FakeOfflineTokenAPI) -> OfflineToken:
    token = request_offline_token(label="auth", client=api.client(), display=False)
    api.grant(token.id)
    return token


def resource_calls(api: FakeOfflineTokenAPI) -> list[httpx.Request]:
    return [r for r in api.requests if r.url.host == "resource.test"]


def test_sync_auth_sets_bearer_from_the_cache(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    with httpx.Client(transport=api.transport(), auth=tok.auth) as http:
        assert http.get(RESOURCE_URL).status_code == 200
        assert http.get(RESOURCE_URL).status_code == 200
    calls = resource_calls(api)
    assert [c.headers["Authorization"] for c in calls] == [f"Bearer {tok.access_token()}"] * 2
    assert api.count("POST", "/access-token") == 1


def test_sync_auth_renews_once_on_401(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    stale = tok.access_token()
    api.invalidate_access_tokens()  # the provider dropped it; the server's cache still has it
    with httpx.Client(transport=api.transport()) as http:
        response = http.post(RESOURCE_URL, json={"x": 1}, auth=tok.auth)
    assert response.status_code == 200
    assert json.loads(response.json()["body"]) == {"x": 1}  # the body was sent again
    calls = resource_calls(api)
    assert len(calls) == 2
    assert calls[0].headers["Authorization"] == f"Bearer {stale}"
    fresh = tok.access_token()
    assert fresh != stale
    assert calls[1].headers["Authorization"] == f"Bearer {fresh}"
    # The renewal asked for more life than the cached token had, forcing the server to refresh.
    renew_body = json.loads(
        [r for r in api.requests if r.url.path.endswith("/access-token")][-1].content
    )
    assert renew_body["min_ttl"] > 300
    assert api.minted == 2


def test_sync_auth_retries_only_once(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    def always_401(request: httpx.Request) -> httpx.Response:
        if request.url.host == "resource.test":
            api.requests.append(request)
            return httpx.Response(401)
        return api.handle(request)

    with httpx.Client(transport=httpx.MockTransport(always_401)) as http:
        response = http.get(RESOURCE_URL, auth=tok.auth)
    assert response.status_code == 401
    assert len(resource_calls(api)) == 2
    assert api.count("POST", "/access-token") == 2


def test_async_auth_renews_once_on_401(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    async def scenario() -> tuple[str, httpx.Response]:
        async with httpx.AsyncClient(transport=api.transport(), auth=tok.auth) as http:
            assert (await http.get(RESOURCE_URL)).status_code == 200
            first = tok.access_token()
            api.invalidate_access_tokens()
            return first, await http.get(RESOURCE_URL)

    first, response = asyncio.run(scenario())
    assert response.status_code == 200
    calls = resource_calls(api)
    assert len(calls) == 3
    assert calls[1].headers["Authorization"] == f"Bearer {first}"
    assert calls[2].headers["Authorization"] == f"Bearer {tok.access_token()}"
    assert tok.access_token() != first
    assert api.count("POST", "/access-token") == 2


def test_async_auth_single_flight(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=api.transport(), auth=tok.auth) as http:
            return await asyncio.gather(*(http.get(RESOURCE_URL) for _ in range(10)))

    responses = asyncio.run(scenario())
    assert {r.status_code for r in responses} == {200}
    assert api.count("POST", "/access-token") == 1


def test_async_access_token_cached(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    async def scenario() -> tuple[str, str, int]:
        first = await tok.aaccess_token()
        before = len(api.requests)
        return first, await tok.aaccess_token(), before

    first, second, before = asyncio.run(scenario())
    assert second == first
    assert len(api.requests) == before  # the cached call made no request


# --- requests ----------------------------------------------------------------------------------


class _Resource(BaseHTTPRequestHandler):
    """A loopback protected resource that accepts only the fake's currently valid tokens."""

    api: FakeOfflineTokenAPI
    seen: list[str]

    def _answer(self) -> None:
        header = self.headers.get("Authorization", "")
        self.seen.append(header)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ok = header.startswith("Bearer ") and header[7:] in self.api.valid_access_tokens
        payload = json.dumps({"body": body.decode()} if ok else {"error": "invalid_token"})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NeverValid(set[str]):
    def add(self, value: str) -> None:
        pass


@pytest.fixture
def resource(api: FakeOfflineTokenAPI) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Resource,), {"api": api, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/userinfo", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_requests_auth_renews_once_on_401(
    api: FakeOfflineTokenAPI, tok: OfflineToken, resource: tuple[str, list[str]]
) -> None:
    requests = pytest.importorskip("requests")
    url, seen = resource
    with requests.Session() as session:
        assert session.get(url, auth=tok.auth).status_code == 200
        stale = tok.access_token()
        api.invalidate_access_tokens()
        response = session.post(url, data=b"payload", auth=tok.auth)
    assert response.status_code == 200
    assert response.json() == {"body": "payload"}
    assert [r.status_code for r in response.history] == [401]
    assert seen == [f"Bearer {stale}", f"Bearer {stale}", f"Bearer {tok.access_token()}"]
    assert tok.access_token() != stale


def test_requests_auth_retries_only_once(
    api: FakeOfflineTokenAPI, tok: OfflineToken, resource: tuple[str, list[str]]
) -> None:
    requests = pytest.importorskip("requests")
    url, seen = resource
    api.valid_access_tokens = _NeverValid()  # the provider rejects every token
    response = requests.get(url, auth=tok.auth, timeout=30)
    assert response.status_code == 401
    assert len(seen) == 2
