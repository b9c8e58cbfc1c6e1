"""``OfflineTokenAuth``: one object that authenticates httpx (sync and async) and requests calls.

It sets ``Authorization: Bearer <access token>`` from an :class:`~.tokens.OfflineToken` (served
from its in-process cache when fresh enough) and, when the target answers 401, asks the server
for a *new* access token once and repeats the request once.

The same object is an ``httpx.Auth`` and a plain ``requests`` auth callable (requests only needs
``auth(prepared_request) -> prepared_request``), so ``tok.auth`` works with both libraries without
importing requests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Protocol

import httpx

from .client import AccessToken


class AccessTokenSource(Protocol):
    """What the auth needs: a cached token, and a forced renewal after a 401."""

    def access_token_info(self, min_ttl: float = 30) -> AccessToken: ...

    def renew_access_token(self, stale: AccessToken) -> AccessToken: ...

    async def aaccess_token_info(self, min_ttl: float = 30) -> AccessToken: ...

    async def arenew_access_token(self, stale: AccessToken) -> AccessToken: ...


def _bearer(token: AccessToken) -> str:
    return f"Bearer {token.value}"


class OfflineTokenAuth(httpx.Auth):
    """Bearer auth for httpx and requests from an offline token, retrying once on a 401.

    ``min_ttl``: an access token is reused while it has at least this many seconds left.

    Example::

        httpx.get(url, auth=tok.auth)
        async with httpx.AsyncClient(auth=tok.auth) as http:
            await http.get(url)
        requests.get(url, auth=tok.auth)
    """

    # Keep the body in memory so the request can be sent again after a 401.
    requires_request_body = True

    def __init__(self, source: AccessTokenSource, *, min_ttl: float = 30) -> None:
        self._source = source
        self.min_ttl = min_ttl

    def __repr__(self) -> str:
        return f"OfflineTokenAuth({self._source!r}, min_ttl={self.min_ttl!r})"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._source.access_token_info(self.min_ttl)
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code == 401:
            fresh = self._source.renew_access_token(token)
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._source.aaccess_token_info(self.min_ttl)
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code == 401:
            fresh = await self._source.arenew_access_token(token)
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    # --- requests ------------------------------------------------------------------------------
    def __call__(self, prepared: Any) -> Any:
        """requests' auth protocol: set the header and install a one-shot 401 retry hook."""
        token = self._source.access_token_info(self.min_ttl)
        prepared.headers["Authorization"] = _bearer(token)
        body: Any = getattr(prepared, "body", None)
        position = None
        if hasattr(body, "tell") and hasattr(body, "seek"):
            try:
                position = body.tell()
            except OSError:
                position = None
        prepared.register_hook("response", self._requests_retry_hook(token, position))
        return prepared

    def _requests_retry_hook(self, token: AccessToken, position: int | None) -> Callable[..., Any]:
        def retry_on_401(response: Any, **kwargs: Any) -> Any:
            request = response.request
            if response.status_code != 401 or getattr(request, "_offline_token_retried", False):
                return response
            body: Any = getattr(request, "body", None)
            if hasattr(body, "seek"):
                if position is None:
                    return response  # a stream we cannot rewind: hand back the 401
                body.seek(position)
            fresh = self._source.renew_access_token(token)
            # Release the connection before reusing it, as requests' own digest auth does.
            _ = response.content
            response.close()
            retry = request.copy()
            retry.headers["Authorization"] = _bearer(fresh)
            retry._offline_token_retried = True
            new = response.connection.send(retry, **kwargs)
            new.history.append(response)
            new.request = retry
            return new

        return retry_on_401
