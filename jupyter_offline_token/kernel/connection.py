"""The kernel side's connection to one Jupyter server: credentials, httpx clients, errors.

:class:`ServerConnection` sends requests to ``<server>/<path>`` with the server's authorization,
turns transport failures into :class:`~.errors.ServerUnreachable` and error answers into the
typed errors of :mod:`.errors`, and reads server-sent-event streams. The typed REST methods live
on its subclass :class:`~.client.OfflineTokenClient`. It never logs or reprs its credential.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx

from .discovery import ServerInfo, find_server
from .errors import (
    AuthenticationFailed,
    OfflineTokenClientError,
    ServerUnreachable,
    error_from_response,
)

_Connection = TypeVar("_Connection", bound="ServerConnection")


class ServerConnection:
    """Requests to one Jupyter server, sync (a shared ``httpx.Client``) or async.

    ``server`` is a :class:`~.discovery.ServerInfo`, a URL (then ``token`` is the Jupyter server
    token), or ``None`` to run :func:`~.discovery.find_server`. ``transport``/``async_transport``
    are passed to httpx (tests use ``httpx.MockTransport``, which serves both).
    """

    def __init__(
        self,
        server: ServerInfo | str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if server is None:
            server = find_server()
        elif isinstance(server, str):
            server = ServerInfo(
                server, authorization=f"token {token}" if token else None, source="explicit URL"
            )
        self.server = server
        self.timeout = timeout
        if transport is None and server.uds:
            transport = httpx.HTTPTransport(uds=server.uds)
        if async_transport is None:
            if isinstance(transport, httpx.AsyncBaseTransport):
                async_transport = transport
            elif server.uds:
                async_transport = httpx.AsyncHTTPTransport(uds=server.uds)
        self._transport = transport
        self._async_transport = async_transport
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.server.url!r}, source={self.server.source!r})"

    def _headers(self) -> dict[str, str]:
        from .. import __version__

        headers = {
            "Accept": "application/json",
            "User-Agent": f"jupyter-offline-token/{__version__}",
        }
        if self.server.authorization:
            headers["Authorization"] = self.server.authorization
        return headers

    @property
    def http(self) -> httpx.Client:
        """The shared ``httpx.Client`` (created on first use)."""
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.server.url,
                    headers=self._headers(),
                    timeout=self.timeout,
                    transport=self._transport,
                )
            return self._http

    def close(self) -> None:
        """Close the connection pool."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def __enter__(self: _Connection) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if 300 <= response.status_code < 400:
            raise AuthenticationFailed(
                f"the server answered with a redirect (HTTP {response.status_code}), usually to a "
                "login page: set JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN to the server's token",
                status=response.status_code,
            )
        if response.is_error:
            raise error_from_response(response)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        return ServerUnreachable(
            f"cannot reach the Jupyter server at {self.server.url} ({type(exc).__name__}); "
            f"found via {self.server.source or 'configuration'}. Is it still running?"
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request to ``<server>/<path>``; raise the typed error on failure.

        Example::

            client.request("GET", "api/offline-token/health").json()
        """
        try:
            response = self.http.request(
                method, path, json=json_body, params=dict(params) if params else None
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return self._check(response)

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Async twin of :meth:`request` (a short-lived ``httpx.AsyncClient``).

        Example::

            response = await client.arequest("GET", "api/offline-token/health")
        """
        async with httpx.AsyncClient(
            base_url=self.server.url,
            headers=self._headers(),
            timeout=self.timeout,
            transport=self._async_transport,
        ) as http:
            try:
                response = await http.request(
                    method, path, json=json_body, params=dict(params) if params else None
                )
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
        return self._check(response)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise OfflineTokenClientError(
                f"the server sent a non-JSON answer (HTTP {response.status_code})",
                status=response.status_code,
            ) from None

    def sse(self, path: str, event: str) -> Iterator[dict[str, Any]]:
        """``GET path`` as a server-sent-events stream: yield the JSON object of each ``event``.

        The read timeout is at least a minute: the server sends a keep-alive comment well within.
        """
        headers = {"Accept": "text/event-stream"}
        timeout = httpx.Timeout(self.timeout, read=max(60.0, self.timeout))
        try:
            with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.is_error or 300 <= response.status_code < 400:
                    response.read()
                    self._check(response)
                yield from _parse_sse(response.iter_lines(), event)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def _parse_sse(lines: Iterator[str], wanted: str) -> Iterator[dict[str, Any]]:
    """The ``wanted`` events of a text/event-stream, decoded from JSON."""
    event = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data and event == wanted:
                try:
                    decoded = json.loads("\n".join(data))
                except ValueError:
                    decoded = None
                if isinstance(decoded, dict):
                    yield decoded
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data and event == wanted:
        try:
            decoded = json.loads("\n".join(data))
        except ValueError:
            return
        if isinstance(decoded, dict):
            yield decoded
