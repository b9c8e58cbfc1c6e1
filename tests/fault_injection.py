"""A fault-injecting transport in front of the real dev provider.

Requests pass through to the real provider unless a fault is armed for the endpoint they hit.
Refused connections and timeouts are real (a closed port; a socket that accepts and never
answers); 5xx, 429 and malformed bodies are synthesized, because the real provider cannot be made
to produce them on demand.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from jupyter_offline_token.oidc import ProviderClient


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BlackHole:
    """A loopback server that accepts connections and never answers (a hung provider)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self._sock.close()


class FaultInjector(httpx.AsyncBaseTransport):
    """Arm a fault with ``arm(mode, path_suffix="/token", times=None)``; ``disarm()`` clears it.

    Modes: ``refuse``, ``timeout``, ``500``, ``502``, ``503``, ``429`` (``retry_after`` seconds),
    ``malformed`` (200 with truncated JSON), ``delay`` (pass through after ``delay`` seconds),
    ``hold_answer`` (pass through, then hold the provider's answer ``delay`` seconds).
    """

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.mode: str | None = None
        self.path_suffix = "/token"
        self.remaining: int | None = None
        self.retry_after = 7
        self.delay = 0.0
        self.faults_served = 0
        self.passed_through = 0
        self._black_hole: BlackHole | None = None
        self.in_flight = asyncio.Event()

    def arm(self, mode: str, *, path_suffix: str = "/token", times: int | None = None) -> None:
        self.mode, self.path_suffix, self.remaining = mode, path_suffix, times

    def disarm(self) -> None:
        self.mode = None

    def _armed_for(self, request: httpx.Request) -> bool:
        if self.mode is None or not request.url.path.endswith(self.path_suffix):
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._armed_for(request):
            self.passed_through += 1
            return await self._real.handle_async_request(request)
        self.faults_served += 1
        mode = self.mode
        if mode == "refuse":
            url = request.url.copy_with(host="127.0.0.1", port=_closed_port())
            return await self._real.handle_async_request(_redirected(request, url))
        if mode == "timeout":
            if self._black_hole is None:
                self._black_hole = BlackHole()
            url = request.url.copy_with(host="127.0.0.1", port=self._black_hole.port)
            return await self._real.handle_async_request(_redirected(request, url))
        if mode == "delay":
            self.in_flight.set()
            await asyncio.sleep(self.delay)
            return await self._real.handle_async_request(request)
        if mode == "hold_answer":
            # The provider has answered (and rotated) before we are told: the worst moment.
            response = await self._real.handle_async_request(request)
            await response.aread()
            self.in_flight.set()
            await asyncio.sleep(self.delay)
            return response
        if mode in ("500", "502", "503"):
            return httpx.Response(int(mode), text="upstream trouble", request=request)
        if mode == "429":
            return httpx.Response(
                429,
                headers={"Retry-After": str(self.retry_after)},
                json={"error": "slow_down"},
                request=request,
            )
        if mode == "malformed":
            return httpx.Response(
                200,
                headers={"Content-Type": "application/json"},
                content=b'{"access_token": "abc", "token_ty',
                request=request,
            )
        raise AssertionError(f"unknown fault mode {mode!r}")

    async def aclose(self) -> None:
        await self._real.aclose()
        if self._black_hole is not None:
            self._black_hole.close()


def _redirected(request: httpx.Request, url: httpx.URL) -> httpx.Request:
    return httpx.Request(
        request.method,
        url,
        headers=request.headers,
        content=request.content,
        extensions=request.extensions,  # keeps the client's timeouts
    )


def provider_through_injector(
    offline_app: Any, idp: Any, loop: asyncio.AbstractEventLoop, *, http_timeout: float
) -> Iterator[FaultInjector]:
    """For an ``injector`` fixture: the server's broker reaches the real provider through a
    new FaultInjector (yielded) until the test ends, then gets its own client back."""
    fault = FaultInjector()
    broker = offline_app.services.broker
    original = broker.provider
    broker.provider = ProviderClient(
        idp.issuer, idp.client_id, idp.client_secret, http_timeout=http_timeout, transport=fault
    )
    yield fault
    loop.run_until_complete(broker.provider.aclose())
    broker.provider = original
