"""A refresh on request (``POST .../tokens/{id}/refresh``), for the dashboard, the token widget
and ``%offline_token refresh``.

It is an ordinary grant (grant.py: the broker's per-token lock in this process, the store's
lease across processes, the rotated token stored first) with two limits on top, so a button
cannot hammer the provider: a caller that queued behind a grant takes that grant's result, and
a token refreshed less than ``min_refresh_interval`` ago (by anyone: the stored
``last_refresh_at`` is shared by every process) is refused with RefreshTooSoon (429,
Retry-After). While the provider fails, the scheduler's retry is the only next attempt: the
broker's 503 with its true time.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from .access_token import AccessToken
from .errors import RefreshTooSoon
from .grant import raise_unusable
from .models import TokenRecord

if TYPE_CHECKING:
    from .broker import TokenBroker

FORCED = "forced"  # the reason in the audit log ("refresh" / "ok" / "forced")


async def force_refresh(
    broker: TokenBroker, owner: str | None, token_id: str, *, min_interval: float
) -> tuple[TokenRecord, AccessToken]:
    """Refresh ``token_id`` now; the entry as stored after it and the access token (which the
    caller must not hand out: the REST answer is metadata only)."""
    raise_unusable(await broker.owned(owner, token_id))
    broker.require_provider()
    asked_at = time.monotonic()
    async with broker.token_lock(token_id):
        cached = broker.cached(token_id)
        if cached is not None and cached.obtained_at >= asked_at:
            # Single flight: a grant finished while this caller waited for the lock.
            return await broker.owned(owner, token_id), cached
        record = await broker.owned(owner, token_id)
        raise_unusable(record)
        broker.check_retry_wait(token_id)  # the provider is failing: 503 with the retry's time
        _check_interval(broker, record, min_interval)
        # Not adopting first: the point is a new grant. Under the lease a sibling's grant,
        # committed since ``record`` was read, is taken instead of repeated (grant.py).
        token = await broker.gated_grant(token_id, record, reason=FORCED)
    return await broker.owned(owner, token_id), token


def _check_interval(broker: TokenBroker, record: TokenRecord, min_interval: float) -> None:
    last = record.last_refresh_at
    if last is None:
        return
    # Capped: another process's clock may run ahead of this one's.
    wait = min(last + min_interval - broker.clock(), min_interval)
    if wait > 0:
        raise RefreshTooSoon(
            f"offline token {record.id} was refreshed {max(0, math.floor(min_interval - wait))} s "
            f"ago; a forced refresh is allowed once every {min_interval:g} s (next in "
            f"{math.ceil(wait)} s)",
            retry_after=math.ceil(wait),
        )


def drop_cached(broker: TokenBroker, token_id: str) -> bool:
    """Drop this process's cached access token of ``token_id`` (no revocation). The shared copy
    in the store stays: the store has no call to clear it, so the next request may still be
    served that token (adopted, not a cache hit) or refresh. True if one was cached."""
    return broker.evict([token_id]) == 1
