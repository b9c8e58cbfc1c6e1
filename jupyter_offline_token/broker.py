"""TokenBroker: the access-token cache, on-demand access tokens (single flight), and the one
entry point to consent (consent.py), refresh grants (grant.py) and revocation (revocation.py).

The broker is the only place that sees a refresh token in clear, and only for the few
milliseconds between decrypting it and sending it to the provider. Access tokens live in an
in-memory cache keyed by ``persistent_token_id``; the last grant's is also kept encrypted in the
store, so processes sharing it make one grant per expiry (grant.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import defaults, metrics
from .access_token import DEFAULT_MIN_TTL, AccessToken
from .consent import REQUIRED_SCOPES, ConsentFlow
from .errors import EntryGone, NotConfigured, NotFound, OfflineTokenError, ProviderUnavailable
from .grant import ProviderFault, RefreshGrants, raise_unusable
from .models import ACTIVE, FAILED, REFRESH_FAILED, AuditEvent, TokenRecord
from .oidc import ProviderClient
from .paging import Cursor, Page
from .refresh.policy import RefreshGate, RefreshOutcome
from .revocation import TokenRevocation
from .settings import OfflineTokenSettings
from .stores import TokenStore
from .token_events import TokenEvents, TokenUsage

__all__ = [
    "DEFAULT_MIN_TTL",
    "AccessToken",
    "ProviderSettings",
    "TokenBroker",
]

log = logging.getLogger("jupyter_offline_token.broker")


@dataclass
class ProviderSettings:
    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 (a method name)
    scopes: list[str] = field(default_factory=lambda: list(REQUIRED_SCOPES))
    http_timeout: float = defaults.HTTP_TIMEOUT


class TokenBroker:
    """Owns the access-token cache and every state change of a vault entry."""

    def __init__(
        self,
        vault: TokenStore,
        provider: ProviderClient | None,
        settings: ProviderSettings | None,
        *,
        app_settings: OfflineTokenSettings | None = None,
        lease_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        not_configured_message: str = "",
    ) -> None:
        self.vault = vault
        self.provider = provider
        self.settings = settings
        # consent_timeout and http_timeout come from the app's settings (``settings`` is the
        # provider's); the defaults when None.
        config = app_settings if app_settings is not None else OfflineTokenSettings()
        self.consent_timeout = config.consent_timeout
        # Long enough to cover one grant at the provider plus the durable write.
        self.lease_ttl = lease_ttl if lease_ttl is not None else 2 * config.http_timeout + 15.0
        self.clock = clock
        self.holder = f"{uuid.uuid4().hex[:12]}:{id(self):x}"
        self._not_configured_message = not_configured_message
        self._cache: dict[str, AccessToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}  # holders and waiters; the lock goes with the last
        # When a token may next be tried, and its retry state: one owner (the refresh scheduler).
        self._gate: RefreshGate | None = None
        # The refresh engine and the task service follow the entries (see token_events).
        self._listeners: list[TokenEvents] = []
        self._usage: TokenUsage | None = None
        self.grants = RefreshGrants(self)
        self.consents = ConsentFlow(self)
        self.revocation = TokenRevocation(self)

    # --- helpers -------------------------------------------------------------------------------
    def use_gate(self, gate: RefreshGate) -> None:
        """Let ``gate`` (the refresh scheduler) decide when a token may next be tried."""
        self._gate = gate

    def add_listener(self, listener: TokenEvents) -> None:
        """Tell ``listener`` about every entry change, after the listeners added before it."""
        self._listeners.append(listener)

    def use_token_usage(self, usage: TokenUsage) -> None:
        """Ask ``usage`` (the task service) which tasks hold a token before deleting it."""
        self._usage = usage

    @contextlib.asynccontextmanager
    async def token_lock(self, token_id: str) -> AsyncIterator[None]:
        """This token's in-process lock; dropped when nobody holds or waits for it, so ids
        that callers merely ask about (unknown, another user's) leave nothing behind."""
        lock = self._locks.get(token_id)
        if lock is None:
            lock = self._locks[token_id] = asyncio.Lock()
        self._lock_users[token_id] = self._lock_users.get(token_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            users = self._lock_users[token_id] - 1
            if users:
                self._lock_users[token_id] = users
            else:
                del self._lock_users[token_id]
                if self._locks.get(token_id) is lock:
                    del self._locks[token_id]

    @property
    def configured(self) -> bool:
        return self.provider is not None and self.settings is not None

    def require_provider(self) -> tuple[ProviderClient, ProviderSettings]:
        if self.provider is None or self.settings is None:
            raise NotConfigured(self._not_configured_message or "the provider is not configured")
        return self.provider, self.settings

    async def owned(self, owner: str | None, token_id: str) -> TokenRecord:
        """The entry, if ``owner`` may see it (None = trusted internal caller)."""
        if not _is_uuid(token_id):
            raise NotFound(f"no offline token {token_id!r}")
        return _owned_by(owner, token_id, await self.vault.get(token_id))

    async def audit(
        self,
        record: TokenRecord | None,
        action: str,
        result: str,
        detail: str = "",
        *,
        token_id: str | None = None,
        task_id: str | None = None,
    ) -> None:
        event = AuditEvent(
            ts=self.clock(),
            action=action,
            result=result,
            token_id=record.id if record else token_id,
            task_id=task_id if task_id is not None else (record.task_id if record else None),
            owner=record.owner if record else None,
            detail=detail[:500],
        )
        try:
            await self.vault.add_audit(event)
        except Exception as exc:  # audit must never break the operation it records
            log.warning("could not write audit event %s/%s: %s", action, result, type(exc).__name__)

    @property
    def token_usage(self) -> TokenUsage | None:
        return self._usage

    async def notify_status_change(self, record: TokenRecord) -> None:
        await self._notify(lambda listener: listener.token_status_changed(record))

    async def notify_activated(self, record: TokenRecord) -> None:
        await self._notify(lambda listener: listener.token_activated(record))

    def remember(self, token_id: str, token: AccessToken) -> None:
        """Cache a fresh access token (a consent's first one)."""
        self._cache[token_id] = token

    def forget(self, token_id: str) -> None:
        """Drop a cached access token (its entry failed, was revoked or deleted)."""
        self._cache.pop(token_id, None)

    async def notify_refreshed(self, record: TokenRecord, token: AccessToken) -> None:
        await self._notify(lambda listener: listener.token_refreshed(record, token))

    async def _notify(self, event: Callable[[TokenEvents], Awaitable[None]]) -> None:
        for listener in self._listeners:
            try:
                await event(listener)
            except Exception:
                log.exception("offline-token listener %s failed", type(listener).__name__)

    # --- consent and revocation (ConsentFlow, TokenRevocation) --------------------------------
    def normalize_scopes(self, scopes: list[str] | None) -> list[str]:
        return self.consents.normalize_scopes(scopes)

    async def create_consent(
        self,
        owner: str,
        *,
        redirect_uri: str,
        label: str = "",
        task_id: str | None = None,
        scopes: list[str] | None = None,
        return_to: str | None = None,
        keep_warm: bool = False,
    ) -> tuple[TokenRecord, str]:
        """Create a ``pending`` entry and the provider URL the user must visit."""
        return await self.consents.create_consent(
            owner,
            redirect_uri=redirect_uri,
            label=label,
            task_id=task_id,
            scopes=scopes,
            return_to=return_to,
            keep_warm=keep_warm,
        )

    async def complete_consent(
        self,
        owner: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> TokenRecord:
        """Finish the consent the provider redirected back with; raise ConsentFailed."""
        return await self.consents.complete_consent(
            owner, state=state, code=code, error=error, error_description=error_description
        )

    async def delete_token(
        self, owner: str | None, token_id: str, *, revoke: bool = True, force: bool = False
    ) -> dict[str, Any]:
        """Revoke at the provider (RFC 7009) unless ``revoke`` is False, then delete locally."""
        return await self.revocation.delete_token(owner, token_id, revoke=revoke, force=force)

    @property
    def not_configured_message(self) -> str:
        return self._not_configured_message or "the provider is not configured"

    async def fail(self, record: TokenRecord, reason: str, *, kind: str) -> None:
        """Mark the entry failed: ``reason`` is the stored code or short fact (``last_error``),
        ``kind`` its failure kind (health.FAILURE_KINDS)."""
        self._cache.pop(record.id, None)
        now = self.clock()
        try:
            await self.vault.mark_failed(record.id, error=reason, kind=kind, now=now)
        except EntryGone:
            return
        await self.audit(record, "fail", "failed", reason)
        failed = record.replace(status=FAILED, last_error=reason, refresh_state=REFRESH_FAILED)
        await self._notify(lambda listener: listener.token_status_changed(failed))

    # --- reading -------------------------------------------------------------------------------
    async def get_token(self, owner: str | None, token_id: str) -> TokenRecord:
        return await self.owned(owner, token_id)

    async def list_token_page(
        self,
        owner: str,
        *,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
        attention: bool = False,
    ) -> Page[TokenRecord]:
        """One page of the owner's entries, newest first (``attention``: only those health
        lists: failed, retrying, refresh-failed)."""
        return await self.vault.list_page(
            owner=owner, status=status, limit=limit, cursor=cursor, attention=attention
        )

    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        """``{(status, refresh_state): entries}`` of the owner, from SQL (never a list)."""
        return await self.vault.count_by_state(owner)

    def cached(self, token_id: str) -> AccessToken | None:
        return self._cache.get(token_id)

    # --- access tokens -------------------------------------------------------------------------
    async def get_access_token(
        self, owner: str | None, token_id: str, *, min_ttl: float = DEFAULT_MIN_TTL
    ) -> AccessToken:
        """A cached access token with at least ``min_ttl`` seconds left, else one refresh.

        The cache is checked first: entries leave it when their token fails, is revoked or is
        deleted, so a hit needs no vault read (the hot path of every warm token). On a miss,
        callers queue on the token's lock before any vault read: the first one serves the
        access token another process stored for this expiry, if it lives ``min_ttl``, or
        refreshes (looking again under the cross-process lease); the others take its result
        (the cache entry knows its owner), so a burst costs one read.
        """
        if self._gate is not None:
            self._gate.check_clock()  # a laptop's wake: due refreshes run now, not in 30 s
        cached = self._cache.get(token_id)
        if (
            cached is not None
            and (owner is None or cached.owner == owner)
            and cached.expires_at - self.clock() >= min_ttl
        ):
            return self._served_from_cache(token_id, cached)
        if not _is_uuid(token_id):
            raise NotFound(f"no offline token {token_id!r}")
        asked_at = time.monotonic()
        async with self.token_lock(token_id):
            cached = self._cache.get(token_id)
            # Single flight: whoever waited behind a refresh takes its result.
            if cached is not None and (
                cached.obtained_at >= asked_at or cached.expires_at - self.clock() >= min_ttl
            ):
                if owner is not None and cached.owner != owner:
                    raise NotFound(f"no offline token {token_id!r}")
                return self._served_from_cache(token_id, cached)
            # Another process's grant for this expiry, if it stored one (issue 11): even while
            # the provider fails for this process. Read with the entry: one round trip.
            rule = self.grants.adoption(token_id, "on_demand", min_ttl)
            record, stored = await self.vault.get_for_access(
                token_id, valid_until=rule.valid_until if rule is not None else None
            )
            record = _owned_by(owner, token_id, record)
            raise_unusable(record)
            self.require_provider()
            shared = await self.grants.adopt(token_id, rule, record, stored=stored)
            if shared is not None:
                return shared
            # Callers who queued behind a failed attempt must not each try again.
            self.check_retry_wait(token_id)
            token = await self.gated_grant(token_id, record, min_ttl=min_ttl)
        if not token.from_store:  # counted as "shared" where it was read
            metrics.access_token_requests_total.labels(source="refresh").inc()
        return token

    async def gated_grant(
        self,
        token_id: str,
        record: TokenRecord,
        *,
        reason: str = "on_demand",
        min_ttl: float = DEFAULT_MIN_TTL,
    ) -> AccessToken:
        """One grant (``grants.run``, not adopting first: the caller just looked) told to the
        provider gate as an attempt, a transient fault turned into the 503 that says when the
        scheduler's retry comes (``_retry_later``). The caller holds the token's lock and has
        asked ``check_retry_wait``."""
        if self._gate is not None:
            self._gate.attempt_started(token_id)
        try:
            return await self.grants.run(
                token_id, reason=reason, min_ttl=min_ttl, record=record, adopt_first=False
            )
        except ProviderFault as fault:
            raise await self._retry_later(token_id, fault) from None

    def check_retry_wait(self, token_id: str) -> None:
        """While the provider is failing, only the scheduler's retry tries again: refuse with the
        true time of that attempt."""
        wait = self._gate.retry_wait(token_id) if self._gate is not None else 0.0
        if wait > 0:
            raise ProviderUnavailable(
                "the OpenID provider failed moments ago; the offline token is kept, next "
                f"attempt in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )

    async def _retry_later(self, token_id: str, fault: ProviderFault) -> ProviderUnavailable:
        """Report an on-demand attempt's transient failure to the gate and build the 503 that
        says when the next attempt (the scheduler's retry) will be made."""
        if self._gate is None:
            return fault
        await self._gate.report_transient(
            token_id, fault.fault, retry_after=fault.provider_retry_after
        )
        wait = self._gate.retry_wait(token_id)
        if wait <= 0:
            return fault
        return ProviderUnavailable(
            f"the OpenID provider is unavailable ({fault.fault}); the offline token is kept, "
            f"next attempt in {math.ceil(wait)} s",
            retry_after=math.ceil(wait),
        )

    def _served_from_cache(self, token_id: str, cached: AccessToken) -> AccessToken:
        metrics.access_from_cache.inc()
        for listener in self._listeners:
            listener.token_served_from_cache(token_id)
        return cached

    async def refresh(self, token_id: str, reason: str = "proactive") -> RefreshOutcome:
        """Refresh now for the scheduler; maps failures to a RefreshOutcome."""
        try:
            async with self.token_lock(token_id):
                if self._gate is not None and self._gate.retry_wait(token_id) > 0:
                    # An on-demand attempt failed while this one waited for the lock.
                    return RefreshOutcome(kind="deferred")
                record = await self.vault.get(token_id)
                if record is None:
                    return RefreshOutcome(kind="gone")
                if record.status != ACTIVE:
                    return RefreshOutcome(kind="permanent", error=record.last_error or "inactive")
                token = await self.grants.run(token_id, reason=reason, record=record)
        except NotFound:
            return RefreshOutcome(kind="gone")
        except ProviderFault as fault:
            return RefreshOutcome(
                kind="transient", retry_after=fault.provider_retry_after, error=fault.fault
            )
        except ProviderUnavailable as exc:
            return RefreshOutcome(kind="transient", retry_after=exc.retry_after, error=exc.message)
        except OfflineTokenError as exc:
            return RefreshOutcome(kind="permanent", error=exc.message)
        return RefreshOutcome(kind="success", next_refresh_at=token.expires_at)

    async def expire_pending(self) -> list[str]:
        return await self.vault.expire_pending(self.clock())

    async def aclose(self, timeout: float | None = None) -> None:
        """Let refreshes in flight finish (their rotated tokens must reach the vault), then close.

        Waiting on every token's lock is what makes a restart in the middle of a
        rotation-enabled refresh lose nothing.
        """
        self.grants.closing = True
        wait = self.lease_ttl if timeout is None else timeout

        async def drain() -> None:
            for lock in list(self._locks.values()):
                async with lock:
                    pass

        try:
            await asyncio.wait_for(drain(), wait)
            if self.grants.inflight:
                await asyncio.wait(list(self.grants.inflight.values()), timeout=wait)
        except asyncio.TimeoutError:
            pass
        if self.grants.inflight:
            log.warning("closing with a refresh still in flight after %.0f s", wait)
        self._cache.clear()
        if self.provider is not None:
            await self.provider.aclose()

    # --- cross-process eviction (issue 11) -----------------------------------------------------
    def evict(self, ids: Iterable[str] | None) -> int:
        """Drop the cached access tokens of ``ids`` (entries another process deleted, revoked
        or failed: the eviction watcher's hook), or every cached token when None. Returns how
        many were dropped. A grant in flight for one of them cannot cache its result: the
        store refuses to record a refresh of an entry that is gone or lost its lease."""
        if ids is None:
            dropped = len(self._cache)
            self._cache.clear()
            return dropped
        return sum(self._cache.pop(token_id, None) is not None for token_id in ids)


def _is_uuid(value: str) -> bool:
    """True for a token id: a UUID in its canonical lowercase form, the one rule task ids
    follow too (tasks.models.is_task_id). Any other text names no entry: a 404, no lookup."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def _owned_by(owner: str | None, token_id: str, record: TokenRecord | None) -> TokenRecord:
    """``record`` if ``owner`` may see it (None = trusted internal caller); NotFound otherwise."""
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"no offline token {token_id!r}")
    return record
