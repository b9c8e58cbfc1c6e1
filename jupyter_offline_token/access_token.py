"""The access token as the broker caches it in memory, built from a provider's token response."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from .models import SharedAccessToken, iso
from .oidc import TokenResponse

DEFAULT_ACCESS_TTL = 60.0  # when the provider does not say (no expires_in)
DEFAULT_MIN_TTL = 30.0  # seconds an access token must still live, unless the caller says


@dataclass(repr=False)
class AccessToken:
    """An access token in the broker's in-memory cache."""

    access_token: str
    token_type: str
    expires_at: float
    scope: str | None
    obtained_at: float  # monotonic, for single flight
    owner: str = ""  # the entry's owner, so a cache hit needs no vault read
    from_store: bool = False  # another process's grant, read from the shared store

    def __repr__(self) -> str:
        return f"AccessToken(token_type={self.token_type!r}, expires_at={self.expires_at!r})"

    @functools.cached_property
    def expires_at_iso(self) -> str | None:
        """Formatted once: a warm token is served from the cache many times."""
        return iso(self.expires_at)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": max(0, int(self.expires_at - now)),
            "expires_at": self.expires_at_iso,
            "scope": self.scope,
        }


def access_token_from(response: TokenResponse, now: float, *, owner: str) -> AccessToken:
    """The cache entry for a grant's ``response`` received at wall time ``now``."""
    ttl = float(response.expires_in) if response.expires_in else DEFAULT_ACCESS_TTL
    return AccessToken(
        access_token=response.access_token,
        token_type=response.token_type or "Bearer",
        expires_at=now + ttl,
        scope=response.scope,
        obtained_at=time.monotonic(),
        owner=owner,
    )


def shared_from(token: AccessToken) -> SharedAccessToken:
    """What the store keeps of a grant's access token for the other processes."""
    return SharedAccessToken(
        access_token=token.access_token,
        token_type=token.token_type,
        expires_at=token.expires_at,
        scope=token.scope,
    )


def adopted(shared: SharedAccessToken, *, owner: str) -> AccessToken:
    """The cache entry for an access token another process obtained (read from the store)."""
    return AccessToken(
        access_token=shared.access_token,
        token_type=shared.token_type,
        expires_at=shared.expires_at,
        scope=shared.scope,
        obtained_at=time.monotonic(),
        owner=owner,
        from_store=True,
    )


def idle_expiry(response: TokenResponse, now: float) -> float | None:
    """When the offline session ends if unused (``refresh_expires_in``), or None."""
    # Keycloak reports refresh_expires_in=0 for offline tokens: no fixed expiry.
    if response.refresh_expires_in and response.refresh_expires_in > 0:
        return now + response.refresh_expires_in
    return None
