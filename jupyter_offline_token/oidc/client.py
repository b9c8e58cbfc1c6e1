"""``ProviderClient``: one OpenID provider for one client (authorization URL, code exchange,
refresh, revocation, id_token validation)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import httpx

from .. import defaults
from ..errors import IdTokenInvalid, PermanentProviderError, TransientProviderError
from .discovery import ProviderMetadata, discovery_url, normalise_issuer, parse_metadata
from .id_token import IdTokenValidator
from .tokens import TokenResponse, parse_token_response
from .transport import ProviderTransport, json_object, status_error

#: Token endpoint client authentication methods (OpenID Connect Core 9).
TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


class ProviderClient:
    """Talks to one OpenID provider for one client.

    All methods raise only ``TransientProviderError`` (network, timeout, 5xx, 429 with
    ``retry_after`` from Retry-After, malformed JSON or a 200 without ``access_token``) or
    ``PermanentProviderError`` (an OAuth error answer such as ``invalid_grant``,
    ``invalid_client``; ``IdTokenInvalid`` for id_token failures) from ``errors.py``. No message
    or repr contains a token, code, verifier or client secret.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str = "",
        *,
        token_endpoint_auth_method: str = "client_secret_basic",  # noqa: S107 (a method name)
        http_timeout: float = defaults.HTTP_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if token_endpoint_auth_method not in TOKEN_ENDPOINT_AUTH_METHODS:
            raise ValueError(
                f"unknown token_endpoint_auth_method {token_endpoint_auth_method!r}; "
                f"expected one of {', '.join(TOKEN_ENDPOINT_AUTH_METHODS)}"
            )
        if not http_timeout > 0:
            raise ValueError("http_timeout must be a positive number of seconds")
        self.issuer = normalise_issuer(issuer)
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_endpoint_auth_method = token_endpoint_auth_method
        self._clock = clock
        self._transport = ProviderTransport(http_timeout=http_timeout, transport=transport)
        self._metadata: ProviderMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self._id_tokens = IdTokenValidator(
            issuer=self.issuer, client_id=client_id, fetch_json=self._get_json, clock=clock
        )

    def __repr__(self) -> str:
        return (
            f"ProviderClient(issuer={self.issuer!r}, client_id={self.client_id!r}, "
            f"token_endpoint_auth_method={self.token_endpoint_auth_method!r})"
        )

    # --- discovery -------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """Discovery document from ``<issuer>/.well-known/openid-configuration``.

        Cached after success; a failure is not cached (the next call fetches again). The
        document's ``issuer`` must equal the configured issuer (trailing slash ignored).
        """
        if self._metadata is not None:
            return self._metadata
        async with self._metadata_lock:  # concurrent first callers share one fetch
            if self._metadata is None:
                self._metadata = await self._fetch_metadata()
            return self._metadata

    async def _fetch_metadata(self) -> ProviderMetadata:
        url = discovery_url(self.issuer)
        response = await self._transport.send("GET", url, what="discovery")
        if not response.is_success:
            raise self._status_error(response, "discovery", url)
        document = json_object(response, "discovery", url)
        return parse_metadata(
            document, url=url, status_code=response.status_code, issuer=self.issuer
        )

    # --- authorization ---------------------------------------------------------------------

    async def authorization_url(
        self, *, redirect_uri: str, scopes: list[str], state: str, nonce: str, code_challenge: str
    ) -> str:
        """URL with response_type=code, client_id, redirect_uri, scope, state, nonce,
        code_challenge, code_challenge_method=S256 and prompt=consent."""
        for name, value in (
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", code_challenge),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if not scopes or not all(isinstance(s, str) and s and " " not in s for s in scopes):
            raise ValueError("scopes must be a non-empty list of scope names without spaces")
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(dict.fromkeys(scopes)),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "prompt": "consent",
        }
        try:
            return str(httpx.URL(meta.authorization_endpoint).copy_merge_params(params))
        except httpx.InvalidURL as exc:
            raise TransientProviderError(
                "discovery document has an invalid authorization_endpoint", kind="malformed"
            ) from exc

    # --- token endpoint --------------------------------------------------------------------

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        """``grant_type=authorization_code`` with the PKCE verifier."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token_request(form, redact=(code, code_verifier))

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """``grant_type=refresh_token``."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(form, redact=(refresh_token,))

    async def _token_request(self, form: dict[str, str], redact: tuple[str, ...]) -> TokenResponse:
        meta = await self.metadata()
        url = meta.token_endpoint
        response = await self._post_with_client_auth(url, form, what="token endpoint")
        if not response.is_success:
            raise self._status_error(response, "token endpoint", url, redact=redact)
        body = json_object(response, "token endpoint", url)
        return parse_token_response(body, url, response.status_code)

    async def revoke(self, token: str, *, token_type_hint: str = "refresh_token") -> bool:  # noqa: S107
        """RFC 7009. Returns False when the provider has no revocation endpoint."""
        meta = await self.metadata()
        url = meta.revocation_endpoint
        if not url:
            return False
        form = {"token": token, "token_type_hint": token_type_hint}
        response = await self._post_with_client_auth(url, form, what="revocation endpoint")
        if not response.is_success:
            raise self._status_error(response, "revocation endpoint", url, redact=(token,))
        return True

    async def introspect(
        self,
        token: str,
        *,
        token_type_hint: str = "refresh_token",  # noqa: S107 (a hint name)
    ) -> bool | None:
        """RFC 7662: whether the provider says ``token`` is active; None when it has no
        introspection endpoint. TransientProviderError when it cannot tell now (network, 5xx,
        an answer without a boolean ``active``); PermanentProviderError for an OAuth error
        answer (such as a client not allowed to introspect)."""
        meta = await self.metadata()
        url = meta.introspection_endpoint
        if not url:
            return None
        form = {"token": token, "token_type_hint": token_type_hint}
        response = await self._post_with_client_auth(url, form, what="introspection endpoint")
        if not response.is_success:
            raise self._status_error(response, "introspection endpoint", url, redact=(token,))
        active = json_object(response, "introspection endpoint", url).get("active")
        if not isinstance(active, bool):
            raise TransientProviderError(
                "introspection endpoint answered without a boolean 'active'",
                kind="malformed",
                status_code=response.status_code,
            )
        return active

    def _client_auth(self, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Form and headers with this client's authentication added (OIDC Core 9)."""
        form = dict(form)
        headers: dict[str, str] = {}
        method = self.token_endpoint_auth_method
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif method == "client_secret_post":
            form["client_id"] = self.client_id
            form["client_secret"] = self._client_secret
        else:
            form["client_id"] = self.client_id
        return form, headers

    async def _post_with_client_auth(
        self, url: str, form: dict[str, str], *, what: str
    ) -> httpx.Response:
        data, headers = self._client_auth(form)
        return await self._transport.send("POST", url, what=what, data=data, headers=headers)

    # --- id_token --------------------------------------------------------------------------

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Verify signature (JWKS, refetched once on an unknown ``kid``), iss, aud, exp (small
        leeway) and nonce with joserfc; return the claims or raise ``IdTokenInvalid``."""
        if not isinstance(id_token, str) or not id_token:
            raise IdTokenInvalid("id_token is missing")
        if not isinstance(nonce, str) or not nonce:
            raise IdTokenInvalid("no expected nonce to compare with")
        meta = await self.metadata()
        return await self._id_tokens.validate(
            id_token, nonce=nonce, jwks_uri=meta.jwks_uri, discovered_issuer=meta.issuer
        )

    # --- transport -------------------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        response = await self._transport.send("GET", url, what=what)
        if not response.is_success:
            raise self._status_error(response, what, url)
        return json_object(response, what, url)

    def _status_error(
        self, response: httpx.Response, what: str, url: str, *, redact: tuple[str, ...] = ()
    ) -> TransientProviderError | PermanentProviderError:
        return status_error(
            response, what, url, redact=(*redact, self._client_secret), now=self._clock()
        )

    async def aclose(self) -> None:
        """Close the HTTP client. Safe to call more than once."""
        await self._transport.aclose()
