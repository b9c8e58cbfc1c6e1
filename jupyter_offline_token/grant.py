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
import time
from typing import TYPE_CHECKING

from . import health, metrics, models, rest_codes
from .access_token import AccessToken, access_token_from, idle_expiry
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
from .models import ACTIVE, EXPIRED, FAILED, IDLE, PENDING, REVOKED, AuditEvent, TokenRecord
from .oidc import ProviderClient, TokenResponse

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


class RefreshGrants:
    """The grants under way for one broker, keyed by token id."""

    def __init__(self, broker: TokenBroker) -> None:
        self.broker = broker
        self.inflight: dict[str, asyncio.Future[AccessToken]] = {}
        self.closing = False

    async def run(self, token_id: str, *, reason: str = "on_demand") -> AccessToken:
        """One refresh grant; the caller holds this token's in-process lock."""
        broker = self.broker
        provider, _ = broker.require_provider()
        pending = self.inflight.get(token_id)
        if pending is not None:
            # A grant whose caller was cancelled is still running: never start a second one
            # with the same refresh token (a replay revokes the whole grant at most providers).
            return await asyncio.shield(pending)
        if self.closing:
            raise ProviderUnavailable("the server is shutting down; try again", retry_after=5)
        started = time.perf_counter()
        try:
            record, refresh_token = await self.begin(token_id)
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
        # From here the provider may rotate the refresh token: the rest runs as its own task that
        # neither a shutdown nor a client hanging up can cut short, so a rotated token always
        # reaches the vault. aclose() waits for it; a second caller joins it (see above).
        work = asyncio.ensure_future(
            self._under_lease(provider, record, refresh_token, reason, started)
        )
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
        record: TokenRecord,
        refresh_token: str | None,
        reason: str,
        started: float,
    ) -> AccessToken:
        broker = self.broker
        token_id = record.id
        lease_released = False
        try:
            raise_unusable(record)
            if refresh_token is None:
                lease_released = True
                await broker.fail(
                    record, "no refresh token stored", kind=models.KIND_GRANT_REJECTED
                )
                raise Conflict(
                    f"offline token {token_id} has no refresh token: request consent again",
                    code=rest_codes.TOKEN_FAILED,
                )
            try:
                response = await provider.refresh(refresh_token)
            except PermanentProviderError as exc:
                lease_released = True  # fail() releases it
                raise await self._rejected(record, exc) from None
            except TransientProviderError as exc:
                raise await self._transient(record, exc) from None
            now = broker.clock()
            rotated = response.refresh_token if response.refresh_token != refresh_token else None
            # Durable before anything from this response leaves the process.
            try:
                updated = await self._record(provider, record, response, rotated, reason)
            except EntryGone:
                lease_released = True
                raise NotFound(f"offline token {token_id} was deleted during its refresh") from None
            lease_released = True
            token = access_token_from(response, now, owner=record.owner)
            broker.remember(token_id, token)
            metrics.refresh_total.labels(result="success").inc()
            metrics.refresh_duration_seconds.observe(time.perf_counter() - started)
            await broker.notify_refreshed(updated, token)
            if record.refresh_state != IDLE:
                await broker.notify_status_change(updated)
            return token
        finally:
            if not lease_released:
                with contextlib.suppress(EntryGone, VaultError):
                    await broker.vault.release_lease(token_id, broker.holder)

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
            )
        except EntryGone:
            if rotated:
                with contextlib.suppress(Exception):
                    await provider.revoke(rotated)
                log.warning("offline token %s was deleted during its refresh", token_id)
            raise

    async def begin(self, token_id: str) -> tuple[TokenRecord, str | None]:
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
                return got.record, got.refresh_token
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
