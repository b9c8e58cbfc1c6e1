"""OpenID Connect provider client over httpx (adapter layer: imports no service or handler).

INTERFACE STUB: to be implemented. Signatures and documented behaviour are the contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None = None
    revocation_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    introspection_endpoint: str | None = None


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A token endpoint answer. ``repr`` never shows a token."""

    access_token: str
    token_type: str
    expires_in: int | None
    refresh_token: str | None
    refresh_expires_in: int | None
    scope: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return (
            f"TokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in!r}, "
            f"scope={self.scope!r}, refresh_token={'<redacted>' if self.refresh_token else None})"
        )


def new_state() -> str:
    """32 random bytes, base64url without padding."""
    raise NotImplementedError


def new_nonce() -> str:
    raise NotImplementedError


def new_pkce() -> tuple[str, str]:
    """Return ``(code_verifier, code_challenge)`` for PKCE S256 (RFC 7636)."""
    raise NotImplementedError


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
        token_endpoint_auth_method: str = "client_secret_basic",
        http_timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        raise NotImplementedError

    async def metadata(self) -> ProviderMetadata:
        """Discovery document from ``<issuer>/.well-known/openid-configuration``.

        Cached after success; a failure is not cached (the next call fetches again). The
        document's ``issuer`` must equal the configured issuer (trailing slash ignored).
        """
        raise NotImplementedError

    async def authorization_url(
        self, *, redirect_uri: str, scopes: list[str], state: str, nonce: str, code_challenge: str
    ) -> str:
        """URL with response_type=code, client_id, redirect_uri, scope, state, nonce,
        code_challenge, code_challenge_method=S256 and prompt=consent."""
        raise NotImplementedError

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        raise NotImplementedError

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """``grant_type=refresh_token``."""
        raise NotImplementedError

    async def revoke(self, token: str, *, token_type_hint: str = "refresh_token") -> bool:
        """RFC 7009. Returns False when the provider has no revocation endpoint."""
        raise NotImplementedError

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Verify signature (JWKS, refetched once on an unknown ``kid``), iss, aud, exp (small
        leeway) and nonce with joserfc; return the claims or raise ``IdTokenInvalid``."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError
