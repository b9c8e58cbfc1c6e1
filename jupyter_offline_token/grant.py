"""RefreshGrants: one refresh grant per token at a time, under the cross-process lease, with the
rotated refresh token durably stored before the access token leaves the process.

The broker's per-token lock serialises callers in this process; the store's refresh lease
serialises processes; a grant already under way (its caller cancelled) is joined, never
repeated: a replayed refresh token revokes the whole grant at most providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import health, metrics, models, rest_codes
from .access_token import (
    DEFAULT_MIN_TTL,
    AccessToken,
    access_token_from,
    adopted,
    idle_expiry,
    shared_from,
)
from .errors import (
    Conflict,
    DecryptionError,
    EntryGone,
    NotFound,
    PermanentProviderError,
    ProviderUnavailable,
    TransientProviderError,
    VaultError,
)
from .models import (
    ACTIVE,
    EXPIRED,
    FAILED,
    IDLE,
    PENDING,
    REVOKED,
    AuditEvent,
    RefreshStart,
    SharedAccessToken,
    TokenRecord,
)
from .oidc import ProviderClient, TokenResponse
from .takeover import CheckPending, check_taken_over

if TYPE_CHECKING:
    from .broker import TokenBroker

log = logging.getLogger("jupyter_offline_token.broker")


class ProviderFault(ProviderUnavailable):
    """A refresh attempt reached the provider and failed transiently. ``fault`` is the safe
    text of the fault itself (health's ``last_error``); ``provider_retry_after`` the provider's
    own Retry-After, if it sent one (never a made-up default)."""

    def __init__(self, message: str, *, fault: str, provider_retry_after: float | None) -> None:
        super().__init__(message, retry_after=provider_retry_after)
        self.fault = fault
        self.provider_retry_after = provider_retry_after


class _Lease:
    """Whether this grant's lease is already given up (by fail() or the durable record)."""

    released = False


@dataclass(frozen=True)
class Adoption:
    """When a shared access token (another process's grant) serves instead of a new grant:
    it must outlive wall time ``valid_until`` and expire after ``newer_than``."""

    valid_until: float
    newer_than: float = -math.inf


class RefreshGrants:
    """The grants under way for one broker, keyed by token id."""

    def __init__(self, broker: TokenBroker) -> None:
        self.broker = broker
        self.inflight: dict[str, asyncio.Future[AccessToken]] = {}
        self.closing = False
        # Entries whose interrupted refresh could not be checked yet (introspection failed
        # transiently): check again before their refresh token is ever sent.
        self.unchecked: set[str] = set()

    def adoption(self, token_id: str, reason: str, min_ttl: float) -> Adoption | None:
        """The rule for serving another process's access token instead of a grant. On demand:
        valid for the caller's ``min_ttl``. Proactive (warm, retry): newer than the one this
        process has cached and valid for DEFAULT_MIN_TTL, so a sibling's fresh grant is taken
        up rather than repeated. Keep-alive never adopts: its point is to use the refresh token."""
        if reason == "keepalive":
            return None
        now = self.broker.clock()
        if reason == "on_demand":
            return Adoption(now + min_ttl)
        cached = self.broker.cached(token_id)
        newer_than = cached.expires_at if cached is not None else -math.inf
        return Adoption(now + DEFAULT_MIN_TTL, newer_than)

    async def adopt(
        self,
        token_id: str,
        rule: Adoption | None,
        record: TokenRecord | None = None,
        *,
        stored: SharedAccessToken | Literal[False] | None = False,
    ) -> AccessToken | None:
        """Serve the shared access token when ``rule`` allows it (no grant). ``stored``: the
        shared token as already read under ``rule`` (``get_for_access``); False: read it."""
        if rule is None:
            return None
        broker = self.broker
        shared = (
            await broker.vault.read_access_token(token_id, valid_until=rule.valid_until)
            if stored is False
            else stored
        )
        if shared is None or shared.expires_at <= rule.newer_than:
            return None
        if record is None:
            record = await broker.vault.get(token_id)
            if record is None or record.status != ACTIVE:
                return None
        token = adopted(shared, owner=record.owner)
        broker.remember(token_id, token)
        metrics.access_token_requests_total.labels(source="shared").inc()
        await broker.notify_refreshed(record, token)
        return token

    async def run(
        self,
        token_id: str,
        *,
        reason: str = "on_demand",
        min_ttl: float = DEFAULT_MIN_TTL,
        record: TokenRecord | None = None,
        adopt_first: bool = True,
    ) -> AccessToken:
        """One refresh grant, or the access token another process's grant stored when it is
        good enough (``adoption``), looked for before the lease (unless the caller just did:
        ``adopt_first`` False) and again under it if a refresh was committed meanwhile. The
        caller holds this token's in-process lock and passes ``record``, the entry as read
        before that first look, if it has it."""
        broker = self.broker
        provider, _ = broker.require_provider()
        pending = self.inflight.get(token_id)
        if pending is not None:
            # A grant whose caller was cancelled is still running: never start a second one
            # with the same refresh token (a replay revokes the whole grant at most providers).
            return await asyncio.shield(pending)
        if self.closing:
            raise ProviderUnavailable("the server is shutting down; try again", retry_after=5)
        rule = self.adoption(token_id, reason, min_ttl)
        # Before the lease: a sibling's fresh token costs one read and takes no lock.
        found = await self.adopt(token_id, rule, record) if adopt_first else None
        if found is not None:
            return found
        started = time.perf_counter()
        try:
            start = await self.begin(token_id)
        except DecryptionError:
            failed = await broker.vault.get(token_id)
            if failed is not None:
                # Also releases the lease.
                await broker.fail(failed, health.DECRYPT_FAILED, kind=models.KIND_DECRYPT)
            raise Conflict(
                f"offline token {token_id} cannot be decrypted (wrong key or tampered): "
                "request consent again",
                code=rest_codes.TOKEN_FAILED,
            ) from None
        if record is not None and start.record.refresh_count == record.refresh_count:
            # No refresh was committed since the look before the lease (a refresh bumps the
            # count in the commit that stores its access token): no need to look again.
            rule = None
        # From here the provider may rotate the refresh token: the rest runs as its own task that
        # neither a shutdown nor a client hanging up can cut short, so a rotated token always
        # reaches the vault. aclose() waits for it; a second caller joins it (see above).
        work = asyncio.ensure_future(self._under_lease(provider, start, rule, reason, started))
        self.inflight[token_id] = work
        work.add_done_callback(lambda done: self._forget(token_id, done))
        return await asyncio.shield(work)

    async def join(self, token_id: str) -> None:
        """Let a grant under way for ``token_id`` finish (its rotated token must be stored)."""
        pending = self.inflight.get(token_id)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    def _forget(self, token_id: str, done: asyncio.Future[AccessToken]) -> None:
        if self.inflight.get(token_id) is done:
            del self.inflight[token_id]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that was cancelled cannot read it

    async def _under_lease(
        self,
        provider: ProviderClient,
        start: RefreshStart,
        rule: Adoption | None,
        reason: str,
        started: float,
    ) -> AccessToken:
        lease = _Lease()
        try:
            return await self._leased(provider, start, rule, reason, started, lease)
        finally:
            if not lease.released:
                with contextlib.suppress(EntryGone, VaultError):
                    await self.broker.vault.release_lease(start.record.id, self.broker.holder)

    async def _leased(
        self,
        provider: ProviderClient,
        start: RefreshStart,
        rule: Adoption | None,
        reason: str,
        started: float,
        lease: _Lease,
    ) -> AccessToken:
        record, refresh_token = start.record, start.refresh_token
        raise_unusable(record)
        if refresh_token is None:
            lease.released = True
            await self.broker.fail(
                record, "no refresh token stored", kind=models.KIND_GRANT_REJECTED
            )
            raise Conflict(
                f"offline token {record.id} has no refresh token: request consent again",
                code=rest_codes.TOKEN_FAILED,
            )
        if start.taken_over or record.id in self.unchecked:
            await self._check_taken_over(provider, record, refresh_token, lease)
        # Under the lease: another process may have refreshed while we waited for it.
        found = await self.adopt(record.id, rule, record)
        if found is not None:
            return found
        return await self._grant(provider, record, refresh_token, reason, started, lease)

    async def _check_taken_over(
        self, provider: ProviderClient, record: TokenRecord, refresh_token: str, lease: _Lease
    ) -> None:
        """The previous holder died or hung after taking the lease: its grant may have rotated
        the stored refresh token out. When the check cannot be made now, the lease is kept
        until it expires, so no process sends the token before it is checked."""
        try:
            await check_taken_over(self.broker, provider, record, refresh_token)
        except CheckPending as exc:
            lease.released = True  # kept on purpose: other processes take it over, and check
            self.unchecked.add(record.id)
            raise await self._transient(record, exc) from None
        except Conflict:
            lease.released = True  # fail() released it
            self.unchecked.discard(record.id)
            raise
        self.unchecked.discard(record.id)

    async def _grant(
        self,
        provider: ProviderClient,
        record: TokenRecord,
        refresh_token: str,
        reason: str,
        started: float,
        lease: _Lease,
    ) -> AccessToken:
        broker = self.broker
        token_id = record.id
        try:
            response = await provider.refresh(refresh_token)
        except PermanentProviderError as exc:
            lease.released = True  # fail() releases it
            raise await self._rejected(record, exc) from None
        except TransientProviderError as exc:
            raise await self._transient(record, exc) from None
        now = broker.clock()
        rotated = response.refresh_token if response.refresh_token != refresh_token else None
        token = access_token_from(response, now, owner=record.owner)
        # Durable (with the access token for the other processes) before anything from this
        # response leaves the process.
        try:
            updated = await self._record(provider, record, response, rotated, reason, token)
        except EntryGone:
            lease.released = True
            raise NotFound(f"offline token {token_id} was deleted during its refresh") from None
        lease.released = True
        broker.remember(token_id, token)
        metrics.refresh_total.labels(result="success").inc()
        metrics.refresh_duration_seconds.observe(time.perf_counter() - started)
        await broker.notify_refreshed(updated, token)
        if record.refresh_state != IDLE:
            await broker.notify_status_change(updated)
        return token

    async def _rejected(self, record: TokenRecord, exc: PermanentProviderError) -> Conflict:
        """The provider refused the refresh token for good: the entry fails."""
        metrics.refresh_total.labels(result="permanent_error").inc()
        kind = health.failure_kind(exc.error) or models.KIND_GRANT_REJECTED
        # last_error keeps the provider's code alone: health composes the sentence around it
        # (and tells a client problem from a dead grant by that code).
        await self.broker.fail(record, exc.error, kind=kind)
        return Conflict(
            f"offline token {record.id} no longer works: " + health.failure_detail(exc.error, kind),
            code=rest_codes.TOKEN_FAILED,
        )

    async def _transient(self, record: TokenRecord, exc: TransientProviderError) -> ProviderFault:
        """The retry state (count, backoff, refresh_state in the store) belongs to the gate; the
        caller reports this fault to it."""
        metrics.refresh_total.labels(result="transient_error").inc()
        await self.broker.audit(record, "refresh", "transient_error", str(exc))
        return ProviderFault(
            f"the OpenID provider is unavailable ({exc}); the offline token is kept, "
            "try again shortly",
            fault=str(exc),
            provider_retry_after=exc.retry_after,
        )

    async def _record(
        self,
        provider: ProviderClient,
        record: TokenRecord,
        response: TokenResponse,
        rotated: str | None,
        reason: str,
        token: AccessToken,
    ) -> TokenRecord:
        """Store the grant's result; if the entry vanished meanwhile (deleted by another
        process), revoke the orphaned rotated token so no live grant is left behind."""
        broker = self.broker
        token_id = record.id
        now = broker.clock()
        try:
            return await broker.vault.record_refresh(
                token_id,
                new_refresh_token=rotated,
                idle_expires_at=idle_expiry(response, now) or record.idle_expires_at,
                now=now,
                holder=broker.holder,
                audit=AuditEvent(
                    ts=now,
                    action="refresh",
                    result="ok",
                    token_id=token_id,
                    task_id=record.task_id,
                    owner=record.owner,
                    detail=f"{reason}{', rotated' if rotated else ''}",
                ),
                access=shared_from(token),
            )
        except EntryGone:
            if rotated:
                with contextlib.suppress(Exception):
                    await provider.revoke(rotated)
                log.warning("offline token %s was deleted during its refresh", token_id)
            raise

    async def begin(self, token_id: str) -> RefreshStart:
        """Wait for the cross-process refresh lease (another server may be refreshing), then
        return the entry and its refresh token, read under that lease."""
        broker = self.broker
        deadline = time.monotonic() + broker.lease_ttl + 5.0
        delay = 0.02
        while True:
            try:
                got = await broker.vault.begin_refresh(
                    token_id, broker.holder, broker.lease_ttl, broker.clock()
                )
            except EntryGone:
                raise NotFound(f"no offline token {token_id!r}") from None
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    "another process is refreshing this token; try again shortly", retry_after=2
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


def raise_unusable(record: TokenRecord) -> None:
    """Refuse (Conflict, by code) an entry that is not active: pending, failed, revoked, expired."""
    if record.status == ACTIVE:
        return
    if record.status == PENDING:
        raise Conflict(
            f"offline token {record.id} is waiting for the user to grant consent",
            code=rest_codes.WAITING_CONSENT,
        )
    if record.status == FAILED:
        raise Conflict(
            f"offline token {record.id} failed ({record.last_error or 'unknown reason'}): "
            "request consent again",
            code=rest_codes.TOKEN_FAILED,
        )
    if record.status == REVOKED:
        raise Conflict(f"offline token {record.id} was revoked", code=rest_codes.TOKEN_REVOKED)
    if record.status == EXPIRED:
        raise Conflict(
            f"the consent for offline token {record.id} was never completed and expired: "
            "request consent again",
            code=rest_codes.CONSENT_EXPIRED,
        )
    raise Conflict(f"offline token {record.id} is {record.status}", code=rest_codes.TOKEN_FAILED)
