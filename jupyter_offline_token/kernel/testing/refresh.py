"""The fake's refresh routes: ``POST tokens/{id}/refresh`` (a forced refresh, rate-limited like
the server's) and ``DELETE tokens/{id}/access-token`` (drop the cached access token), and the
minting that the access-token route shares with them."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Any

import httpx

from ... import rest_codes as rc
from .rules import error_response, now_iso, parse_body


def unusable(entry: dict[str, Any]) -> httpx.Response | None:
    """The server's 409 for an entry that is not active (pending, failed, revoked, expired)."""
    status = entry["status"]
    if status == "pending":
        return error_response(409, rc.WAITING_CONSENT, "the consent has not been granted yet")
    if status == "failed":
        return error_response(
            409, rc.TOKEN_FAILED, f"{entry.get('last_error')}; request consent again"
        )
    if status == "revoked":
        return error_response(409, rc.TOKEN_REVOKED, "the offline token was revoked")
    if status == "expired":
        return error_response(409, rc.CONSENT_EXPIRED, "the consent expired before it was granted")
    return None


class RefreshRoutes:
    """Mixed into ``FakeOfflineTokenAPI``, which holds the state. ``min_refresh_interval``:
    seconds (on the fake's clock) before a token may be refreshed again by ``refresh``. Unlike
    the server, only forced refreshes count for it (the fake's access-token route mints the
    consent's first token too, which the server does not count as a refresh)."""

    min_refresh_interval: float = 10.0
    access_token_ttl: float
    clock: Callable[[], float]
    minted: int
    valid_access_tokens: set[str]
    provider_down_retry_after: float | None
    _cache: dict[str, tuple[str, float]]
    _minted: Any
    _refreshed: dict[str, float]  # token id -> the fake clock's time of its forced refresh

    def _entry(self, token_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def _public(self, entry: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _provider_down(self) -> httpx.Response | None:
        if self.provider_down_retry_after is None:
            return None
        return error_response(
            503,
            rc.PROVIDER_UNAVAILABLE,
            "the provider is unreachable",
            headers={"Retry-After": str(int(self.provider_down_retry_after))},
        )

    def _mint(self, token_id: str, entry: dict[str, Any], now: float) -> tuple[str, float]:
        """One refresh grant: a new access token, cached, and the entry's counters."""
        value = f"at-{next(self._minted)}-{secrets.token_urlsafe(8)}"
        self.minted += 1
        cached = (value, now + self.access_token_ttl)
        self._cache[token_id] = cached
        self.valid_access_tokens.add(value)
        entry["refresh_count"] += 1
        entry["last_refresh_at"] = now_iso()
        return cached

    def _refresh_token(self, request: httpx.Request, token_id: str) -> httpx.Response:
        parse_body(request, {})
        entry = self._entry(token_id)
        refused = unusable(entry) or self._provider_down()
        if refused is not None:
            return refused
        now = self.clock()
        last = self._refreshed.get(token_id)
        if last is not None and now - last < self.min_refresh_interval:
            wait = math.ceil(last + self.min_refresh_interval - now)
            return error_response(
                429,
                rc.REFRESH_TOO_SOON,
                f"refreshed moments ago; a forced refresh is allowed again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        self._mint(token_id, entry, now)
        self._refreshed[token_id] = now
        return httpx.Response(200, json=self._public(entry))

    def _clear_cache(self, request: httpx.Request, token_id: str) -> httpx.Response:
        self._entry(token_id)
        self._cache.pop(token_id, None)
        return httpx.Response(204)
