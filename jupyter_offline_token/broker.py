"""TokenBroker: consent, callback, fresh access tokens, refresh with rotation, revocation.

The broker is the only place that sees a refresh token in clear, and only for the few
milliseconds between decrypting it and sending it to the provider. Access tokens live in an
in-memory cache keyed by ``persistent_token_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import health, metrics
from .errors import (
    Conflict,
    DecryptionError,
    IdTokenInvalid,
    InvalidRequest,
    NotConfigured,
    NotFound,
    OfflineTokenError,
    PermanentProviderError,
    ProviderRejected,
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
    REFRESH_FAILED,
    REVOKED,
    AuditEvent,
    ConsentSecrets,
    TokenRecord,
    iso,
)
from .oidc import ProviderClient, TokenResponse, new_nonce, new_pkce, new_state
from .paging import Cursor, Page
from .refresh import RefreshGate, RefreshOutcome
from .settings import OfflineTokenSettings
from .stores import TokenStore
from .token_events import TokenEvents, TokenUsage

log = logging.getLogger("jupyter_offline_token.broker")

# RFC 6749 3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$")
REQUIRED_SCOPES = ("openid", "offline_access")
DEFAULT_ACCESS_TTL = 60.0  # when the provider does not say (no expires_in)
DEFAULT_MIN_TTL = 30.0  # seconds an access token must still live, unless the caller says
DECRYPT_FAILED = health.DECRYPT_FAILED


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


@dataclass(repr=False)
class AccessToken:
    """An access token in the broker's in-memory cache."""

    access_token: str
    token_type: str
    expires_at: float
    scope: str | None
    obtained_at: float  # monotonic, for single flight
    owner: str = ""  # the entry's owner, so a cache hit needs no vault read

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


class _ProviderFault(ProviderUnavailable):
    """A refresh attempt reached the provider and failed transiently. ``fault`` is the safe
    text of the fault itself (health's ``last_error``); ``provider_retry_after`` the provider's
    own Retry-After, if it sent one (never a made-up default)."""

    def __init__(self, message: str, *, fault: str, provider_retry_after: float | None) -> None:
        super().__init__(message, retry_after=provider_retry_after)
        self.fault = fault
        self.provider_retry_after = provider_retry_after


class ConsentFailed(OfflineTokenError):
    """The callback could not finish a consent; rendered as an HTML page, not JSON."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int = 400,
        record: TokenRecord | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.record = record
        self.hint = hint


@dataclass
class ProviderSettings:
    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 (a method name)
    scopes: list[str] = field(default_factory=lambda: list(REQUIRED_SCOPES))
    http_timeout: float = 15.0


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
        # consent_timeout, min_refresh_interval and http_timeout (``settings`` is the
        # provider's); the defaults when None.
        config = app_settings if app_settings is not None else OfflineTokenSettings()
        self.consent_timeout = config.consent_timeout
        self.min_refresh_interval = config.min_refresh_interval
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
        self._inflight: dict[str, asyncio.Future[AccessToken]] = {}  # grants under way
        self._closing = False
        # The refresh engine and the task service follow the entries (see token_events).
        self._listeners: list[TokenEvents] = []
        self._usage: TokenUsage | None = None

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
    async def _token_lock(self, token_id: str) -> AsyncIterator[None]:
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

    def _require_provider(self) -> tuple[ProviderClient, ProviderSettings]:
        if self.provider is None or self.settings is None:
            raise NotConfigured(self._not_configured_message or "the provider is not configured")
        return self.provider, self.settings

    async def _owned(self, owner: str | None, token_id: str) -> TokenRecord:
        """The entry, if ``owner`` may see it (None = trusted internal caller)."""
        if not _is_uuid(token_id):
            raise NotFound(f"no offline token {token_id!r}")
        record = await self.vault.get(token_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"no offline token {token_id!r}")
        return record

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

    async def _notify(self, event: Callable[[TokenEvents], Awaitable[None]]) -> None:
        for listener in self._listeners:
            try:
                await event(listener)
            except Exception:
                log.exception("offline-token listener %s failed", type(listener).__name__)

    # --- consent -------------------------------------------------------------------------------
    def normalize_scopes(self, scopes: list[str] | None) -> list[str]:
        _, settings = self._require_provider()
        requested = list(settings.scopes if scopes is None else scopes)
        for scope in requested:
            if not isinstance(scope, str) or not _SCOPE_TOKEN.match(scope):
                raise InvalidRequest(
                    f"invalid scope {scope!r}: scopes are single words of printable ASCII",
                    code="invalid_scope",
                )
        result: list[str] = []
        for scope in [*REQUIRED_SCOPES, *requested]:
            if scope not in result:
                result.append(scope)
        return result

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
        provider, settings = self._require_provider()
        scope_list = self.normalize_scopes(scopes)
        state, nonce = new_state(), new_nonce()
        verifier, challenge = new_pkce()
        try:
            url = await provider.authorization_url(
                redirect_uri=redirect_uri,
                scopes=scope_list,
                state=state,
                nonce=nonce,
                code_challenge=challenge,
            )
        except TransientProviderError as exc:
            raise ProviderUnavailable(
                f"the OpenID provider is unavailable: {exc}", retry_after=exc.retry_after
            ) from None
        except PermanentProviderError as exc:
            raise ProviderRejected(f"the OpenID provider refused: {exc}") from None
        now = self.clock()
        record = await self.vault.create_pending(
            owner=owner,
            issuer=settings.issuer,
            client_id=settings.client_id,
            scopes=scope_list,
            state_hash=hash_state(state),
            secrets=ConsentSecrets(code_verifier=verifier, nonce=nonce, redirect_uri=redirect_uri),
            consent_expires_at=now + self.consent_timeout,
            label=label,
            task_id=task_id,
            return_to=return_to,
            now=now,
        )
        if keep_warm:
            await self.vault.set_keep_warm(record.id, True, now=now)
            record = record.replace(keep_warm=True)
        await self.audit(record, "consent", "requested", f"scopes: {' '.join(scope_list)}")
        await self._notify(lambda listener: listener.token_status_changed(record))
        return record, url

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
        provider, _ = self._require_provider()
        if not state:
            raise ConsentFailed(
                "The provider's answer has no state parameter.",
                code="missing_state",
                hint="Start again from your notebook or the dashboard.",
            )
        record = await self.vault.find_by_state_hash(hash_state(state))
        if record is None:
            raise ConsentFailed(
                "This consent link is unknown.",
                code="unknown_state",
                hint="Request offline access again from your notebook or the dashboard.",
            )
        if record.owner != owner:
            # Do not consume it: the rightful owner may still finish it.
            raise ConsentFailed(
                "This consent request belongs to another Jupyter user.",
                code="foreign_state",
                status=403,
                hint="Sign in to Jupyter as the user who asked for offline access.",
            )
        if record.status != PENDING:
            raise ConsentFailed(
                "This consent link was already used.",
                code="state_used",
                status=409,
                record=record,
                hint="Each link works once. Request offline access again if you need a new token.",
            )
        now = self.clock()
        if record.consent_expires_at is not None and now > record.consent_expires_at:
            await self.vault.expire_pending(now)
            await self.audit(record, "consent", "expired")
            raise ConsentFailed(
                "This consent request expired before it was completed.",
                code="consent_expired",
                status=410,
                record=record,
                hint="Request offline access again and complete it within the time limit.",
            )
        if not error and not code:
            raise ConsentFailed(
                "The provider's answer has neither a code nor an error.",
                code="missing_code",
                record=record,
                hint="Try the consent link again; if it keeps happening, tell your administrator.",
            )
        try:
            secrets = await self.vault.consume_consent(record.id)
        except DecryptionError:
            raise await self._consent_failure(
                record,
                DECRYPT_FAILED,
                "The stored consent request cannot be decrypted.",
                code="decrypt_failed",
                status=503,
                hint="The vault's encryption key changed; request offline access again.",
            ) from None
        if secrets is None:
            raise ConsentFailed(
                "This consent link was already used.",
                code="state_used",
                status=409,
                record=record,
                hint="Each link works once. Request offline access again if you need a new token.",
            )
        if error:
            denied = error == "access_denied"
            message = (
                "You declined offline access at the provider."
                if denied
                else f"The provider reported an error: {error}"
                + (f" ({error_description[:200]})" if error_description else "")
            )
            raise await self._consent_failure(
                record,
                f"consent {error}",
                message,
                code=error if denied else "provider_error",
                status=403 if denied else 502,
                hint="Request offline access again and choose Allow at the provider."
                if denied
                else "Request offline access again; if it keeps failing, tell your administrator.",
            )
        assert code is not None
        try:
            response = await provider.exchange_code(
                code=code, redirect_uri=secrets.redirect_uri, code_verifier=secrets.code_verifier
            )
            claims: dict[str, Any] = {}
            if response.id_token:
                claims = await provider.validate_id_token(response.id_token, nonce=secrets.nonce)
        except IdTokenInvalid as exc:
            raise await self._consent_failure(
                record,
                f"id_token rejected: {exc.description}",
                f"The provider's id_token failed validation ({exc.description}).",
                code="invalid_id_token",
                status=502,
                hint="Tell your administrator: the issuer or client configuration may be wrong.",
            ) from None
        except PermanentProviderError as exc:
            raise await self._code_refused(record, exc) from None
        except TransientProviderError as exc:
            raise await self._consent_failure(
                record,
                f"provider unavailable during consent: {exc}",
                "The provider could not be reached to finish the consent.",
                code="provider_unavailable",
                status=503,
                hint="Wait a moment, then request offline access again.",
            ) from None
        if not response.refresh_token:
            raise await self._consent_failure(
                record,
                "the provider issued no refresh token",
                "The provider granted access but issued no offline (refresh) token.",
                code="no_refresh_token",
                status=502,
                hint="Your administrator must allow the offline_access scope for this client.",
            )
        granted = response.scope.split() if response.scope else record.scopes
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        now = self.clock()
        active = await self.vault.activate(
            record.id,
            refresh_token=response.refresh_token,
            subject=subject,
            scopes=granted,
            idle_expires_at=_idle_expiry(response, now),
            now=now,
        )
        self._cache[record.id] = _cached(response, now, owner=record.owner)
        await self.audit(active, "activate", "ok", f"subject {subject or '?'}")
        log.info("offline token %s activated for %s", record.id, owner)
        await self._notify(lambda listener: listener.token_activated(active))
        await self._notify(lambda listener: listener.token_status_changed(active))
        return active

    @property
    def not_configured_message(self) -> str:
        return self._not_configured_message or "the provider is not configured"

    async def _code_refused(
        self, record: TokenRecord, exc: PermanentProviderError
    ) -> ConsentFailed:
        """The provider refused the code exchange. A dead code (invalid_grant: unknown, used or
        expired) is the user's to retry, a 400; anything else is the provider refusing this
        server (a 502), and a refused client is the administrator's to fix."""
        if exc.error == "invalid_grant":
            return await self._consent_failure(
                record,
                "authorization code rejected: invalid_grant",
                "The provider rejected the authorization code (invalid_grant): it is unknown, "
                "already used or expired.",
                code="code_rejected",
                status=400,
                hint="Request offline access again from your notebook or the dashboard.",
            )
        return await self._consent_failure(
            record,
            f"code exchange refused: {exc.error}",
            f"The provider refused the authorization code ({exc.error}).",
            code="exchange_failed",
            status=502,
            hint="Tell your administrator: the provider rejected this server's client "
            "configuration."
            if exc.is_configuration_error
            else "Request offline access again; if it keeps failing, tell your administrator.",
        )

    async def _consent_failure(
        self,
        record: TokenRecord,
        reason: str,
        message: str,
        *,
        code: str,
        status: int,
        hint: str,
    ) -> ConsentFailed:
        """Mark the entry failed with ``reason`` and build the page's error."""
        await self._fail(record, reason)
        return ConsentFailed(message, code=code, status=status, record=record, hint=hint)

    async def _fail(self, record: TokenRecord, reason: str) -> None:
        self._cache.pop(record.id, None)
        now = self.clock()
        try:
            await self.vault.mark_failed(record.id, error=reason, now=now)
        except KeyError:
            return
        await self.audit(record, "fail", "failed", reason)
        failed = record.replace(status=FAILED, last_error=reason, refresh_state=REFRESH_FAILED)
        await self._notify(lambda listener: listener.token_status_changed(failed))

    # --- reading -------------------------------------------------------------------------------
    async def get_token(self, owner: str | None, token_id: str) -> TokenRecord:
        return await self._owned(owner, token_id)

    async def list_tokens(
        self,
        owner: str | None,
        *,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TokenRecord]:
        return await self.vault.list(owner=owner, status=status, limit=limit, offset=offset)

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
        callers queue on the token's lock before any vault read: the first one refreshes, the
        others take its result (the cache entry knows its owner), so a burst costs one read.
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
        async with self._token_lock(token_id):
            cached = self._cache.get(token_id)
            # Single flight: whoever waited behind a refresh takes its result.
            if cached is not None and (
                cached.obtained_at >= asked_at or cached.expires_at - self.clock() >= min_ttl
            ):
                if owner is not None and cached.owner != owner:
                    raise NotFound(f"no offline token {token_id!r}")
                return self._served_from_cache(token_id, cached)
            record = await self._owned(owner, token_id)
            _raise_unusable(record)
            self._require_provider()
            # Callers who queued behind a failed attempt must not each try again.
            self._check_retry_wait(token_id)
            if self._gate is not None:
                self._gate.attempt_started(token_id)
            try:
                token = await self._refresh_locked(token_id)
            except _ProviderFault as fault:
                raise await self._retry_later(token_id, fault) from None
        metrics.access_token_requests_total.labels(source="refresh").inc()
        return token

    def _check_retry_wait(self, token_id: str) -> None:
        """While the provider is failing, only the scheduler's retry tries again: refuse with the
        true time of that attempt."""
        wait = self._gate.retry_wait(token_id) if self._gate is not None else 0.0
        if wait > 0:
            raise ProviderUnavailable(
                "the OpenID provider failed moments ago; the offline token is kept, next "
                f"attempt in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )

    async def _retry_later(self, token_id: str, fault: _ProviderFault) -> ProviderUnavailable:
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
            async with self._token_lock(token_id):
                if self._gate is not None and self._gate.retry_wait(token_id) > 0:
                    # An on-demand attempt failed while this one waited for the lock.
                    return RefreshOutcome(kind="deferred")
                record = await self.vault.get(token_id)
                if record is None:
                    return RefreshOutcome(kind="gone")
                if record.status != ACTIVE:
                    return RefreshOutcome(kind="permanent", error=record.last_error or "inactive")
                token = await self._refresh_locked(token_id, reason=reason)
        except NotFound:
            return RefreshOutcome(kind="gone")
        except _ProviderFault as fault:
            return RefreshOutcome(
                kind="transient", retry_after=fault.provider_retry_after, error=fault.fault
            )
        except ProviderUnavailable as exc:
            return RefreshOutcome(kind="transient", retry_after=exc.retry_after, error=exc.message)
        except OfflineTokenError as exc:
            return RefreshOutcome(kind="permanent", error=exc.message)
        return RefreshOutcome(kind="success", next_refresh_at=token.expires_at)

    async def _refresh_locked(self, token_id: str, *, reason: str = "on_demand") -> AccessToken:
        """One refresh grant; the caller holds this token's in-process lock."""
        provider, _ = self._require_provider()
        pending = self._inflight.get(token_id)
        if pending is not None:
            # A grant whose caller was cancelled is still running: never start a second one
            # with the same refresh token (a replay revokes the whole grant at most providers).
            return await asyncio.shield(pending)
        if self._closing:
            raise ProviderUnavailable("the server is shutting down; try again", retry_after=5)
        started = time.perf_counter()
        try:
            record, refresh_token = await self._begin_refresh(token_id)
        except DecryptionError:
            failed = await self.vault.get(token_id)
            if failed is not None:
                await self._fail(failed, DECRYPT_FAILED)  # also releases the lease
            raise Conflict(
                f"offline token {token_id} cannot be decrypted (wrong key or tampered): "
                "request consent again",
                code="token_failed",
            ) from None
        # From here the provider may rotate the refresh token: the rest runs as its own task that
        # neither a shutdown nor a client hanging up can cut short, so a rotated token always
        # reaches the vault. aclose() waits for it; a second caller joins it (see above).
        work = asyncio.ensure_future(
            self._refresh_under_lease(provider, record, refresh_token, reason, started)
        )
        self._inflight[token_id] = work
        work.add_done_callback(lambda done: self._forget_inflight(token_id, done))
        return await asyncio.shield(work)

    def _forget_inflight(self, token_id: str, done: asyncio.Future[AccessToken]) -> None:
        if self._inflight.get(token_id) is done:
            del self._inflight[token_id]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that was cancelled cannot read it

    async def _refresh_under_lease(
        self,
        provider: ProviderClient,
        record: TokenRecord,
        refresh_token: str | None,
        reason: str,
        started: float,
    ) -> AccessToken:
        token_id = record.id
        holder_released = False
        try:
            _raise_unusable(record)
            if refresh_token is None:
                holder_released = True
                await self._fail(record, "no refresh token stored")
                raise Conflict(
                    f"offline token {token_id} has no refresh token: request consent again",
                    code="token_failed",
                )
            try:
                response = await provider.refresh(refresh_token)
            except PermanentProviderError as exc:
                metrics.refresh_total.labels(result="permanent_error").inc()
                holder_released = True
                # last_error keeps the provider's code alone: health composes the sentence
                # around it (and tells a client problem from a dead grant by that code).
                await self._fail(record, exc.error)
                self._cache.pop(token_id, None)
                raise Conflict(
                    f"offline token {token_id} no longer works: "
                    + health.failure_detail(exc.error, health.error_kind(exc.error)),
                    code="token_failed",
                ) from None
            except TransientProviderError as exc:
                # The retry state (count, backoff, refresh_state in the vault) belongs to the
                # gate; the caller reports this fault to it.
                metrics.refresh_total.labels(result="transient_error").inc()
                await self.audit(record, "refresh", "transient_error", str(exc))
                raise _ProviderFault(
                    f"the OpenID provider is unavailable ({exc}); the offline token is kept, "
                    "try again shortly",
                    fault=str(exc),
                    provider_retry_after=exc.retry_after,
                ) from None
            now = self.clock()
            rotated = response.refresh_token if response.refresh_token != refresh_token else None
            # Durable before anything from this response leaves the process.
            try:
                updated = await self._record_refresh(provider, record, response, rotated, reason)
            except KeyError:
                holder_released = True
                raise NotFound(f"offline token {token_id} was deleted during its refresh") from None
            holder_released = True
            token = _cached(response, now, owner=record.owner)
            self._cache[token_id] = token
            metrics.refresh_total.labels(result="success").inc()
            metrics.refresh_duration_seconds.observe(time.perf_counter() - started)
            await self._notify(lambda listener: listener.token_refreshed(updated, token))
            if record.refresh_state != IDLE:
                await self._notify(lambda listener: listener.token_status_changed(updated))
            return token
        finally:
            if not holder_released:
                try:
                    await self.vault.release_lease(token_id, self.holder)
                except (KeyError, VaultError):
                    pass

    async def _record_refresh(
        self,
        provider: ProviderClient,
        record: TokenRecord,
        response: TokenResponse,
        rotated: str | None,
        reason: str,
    ) -> TokenRecord:
        """Store the grant's result; if the entry vanished meanwhile (deleted by another
        process), revoke the orphaned rotated token so no live grant is left behind."""
        token_id = record.id
        now = self.clock()
        try:
            return await self.vault.record_refresh(
                token_id,
                new_refresh_token=rotated,
                idle_expires_at=_idle_expiry(response, now) or record.idle_expires_at,
                now=now,
                holder=self.holder,
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
        except KeyError:
            if rotated:
                with contextlib.suppress(Exception):
                    await provider.revoke(rotated)
                log.warning("offline token %s was deleted during its refresh", token_id)
            raise

    async def _begin_refresh(self, token_id: str) -> tuple[TokenRecord, str | None]:
        """Wait for the cross-process refresh lease (another server may be refreshing), then
        return the entry and its refresh token, read under that lease."""
        deadline = time.monotonic() + self.lease_ttl + 5.0
        delay = 0.02
        while True:
            try:
                got = await self.vault.begin_refresh(
                    token_id, self.holder, self.lease_ttl, self.clock()
                )
            except KeyError:
                raise NotFound(f"no offline token {token_id!r}") from None
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    "another process is refreshing this token; try again shortly", retry_after=2
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # --- revocation ----------------------------------------------------------------------------
    async def delete_token(
        self, owner: str | None, token_id: str, *, revoke: bool = True, force: bool = False
    ) -> dict[str, Any]:
        """Revoke at the provider (RFC 7009) unless ``revoke`` is False, then delete locally.

        A provider fault leaves the entry untouched (503): nothing is lost. The deletion waits
        for a refresh in flight (this process's lock, every process's lease), so what is revoked
        is the newest refresh token, never one a concurrent rotation just replaced.
        """
        await self._owned(owner, token_id)
        async with self._token_lock(token_id):
            pending = self._inflight.get(token_id)
            if pending is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            return await self._delete_locked(owner, token_id, revoke=revoke, force=force)

    async def _delete_locked(
        self, owner: str | None, token_id: str, *, revoke: bool, force: bool
    ) -> dict[str, Any]:
        record = await self._owned(owner, token_id)
        if self._usage is not None and not force:
            running = await self._usage.tokens_in_use(token_id)
            if running:
                raise Conflict(
                    f"offline token {token_id} is used by running task(s) {', '.join(running)}: "
                    "cancel them first or delete with force=true",
                    code="token_in_use",
                    extra={"tasks": running},
                )
        if force and self._usage is not None:
            await self._usage.cancel_for_token(token_id)
        revoked = False
        warning = ""
        shared_with: list[str] = []
        if revoke and record.has_secret and record.status in (ACTIVE, FAILED):
            provider, _ = self._require_provider()
            refresh_token: str | None = None
            try:
                _, refresh_token = await self._begin_refresh(token_id)  # takes the lease
            except DecryptionError:
                warning = "the stored token could not be decrypted, so it was not revoked"
            try:
                if refresh_token is not None:
                    revoked = await provider.revoke(refresh_token)
                    if not revoked:
                        warning = (
                            "the provider has no revocation endpoint; the token was only deleted"
                        )
            except TransientProviderError as exc:
                raise ProviderUnavailable(
                    f"the OpenID provider is unavailable ({exc}); the token was kept. "
                    "Try again, or delete without revoking (revoke=false)",
                    retry_after=exc.retry_after or 10.0,
                ) from None
            except PermanentProviderError as exc:
                raise ProviderRejected(
                    f"the provider refused the revocation ({exc.error}); the token was kept. "
                    "Delete without revoking (revoke=false) to remove it locally",
                ) from None
            finally:
                if not revoked:
                    with contextlib.suppress(KeyError, VaultError):
                        await self.vault.release_lease(token_id, self.holder)
            if record.subject:
                shared_with = [
                    other.id
                    for other in await self.vault.list(owner=record.owner, status=ACTIVE)
                    if other.id != token_id
                    and other.subject == record.subject
                    and other.client_id == record.client_id
                ]
                if shared_with and revoked:
                    warning = (
                        f"{len(shared_with)} other active offline token(s) share this account and "
                        "client; some providers (Keycloak) end the client's consent for all of "
                        "them when one is revoked"
                    )
        await self.vault.delete(token_id)
        self._cache.pop(token_id, None)
        await self.audit(record, "revoke", "revoked" if revoked else "deleted", warning)
        revoked_record = record.replace(status=REVOKED)
        await self._notify(lambda listener: listener.token_status_changed(revoked_record))
        return {"deleted": True, "revoked": revoked, "warning": warning, "shared_with": shared_with}

    async def expire_pending(self) -> list[str]:
        return await self.vault.expire_pending(self.clock())

    async def aclose(self, timeout: float | None = None) -> None:
        """Let refreshes in flight finish (their rotated tokens must reach the vault), then close.

        Waiting on every token's lock is what makes a restart in the middle of a
        rotation-enabled refresh lose nothing.
        """
        self._closing = True
        wait = self.lease_ttl if timeout is None else timeout

        async def drain() -> None:
            for lock in list(self._locks.values()):
                async with lock:
                    pass

        try:
            await asyncio.wait_for(drain(), wait)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=wait)
        except asyncio.TimeoutError:
            pass
        if self._inflight:
            log.warning("closing with a refresh still in flight after %.0f s", wait)
        self._cache.clear()
        if self.provider is not None:
            await self.provider.aclose()


def _raise_unusable(record: TokenRecord) -> None:
    if record.status == ACTIVE:
        return
    if record.status == PENDING:
        raise Conflict(
            f"offline token {record.id} is waiting for the user to grant consent",
            code="waiting_consent",
        )
    if record.status == FAILED:
        raise Conflict(
            f"offline token {record.id} failed ({record.last_error or 'unknown reason'}): "
            "request consent again",
            code="token_failed",
        )
    if record.status == REVOKED:
        raise Conflict(f"offline token {record.id} was revoked", code="token_revoked")
    if record.status == EXPIRED:
        raise Conflict(
            f"the consent for offline token {record.id} was never completed and expired: "
            "request consent again",
            code="consent_expired",
        )
    raise Conflict(f"offline token {record.id} is {record.status}", code="token_failed")


def _cached(response: TokenResponse, now: float, *, owner: str) -> AccessToken:
    ttl = float(response.expires_in) if response.expires_in else DEFAULT_ACCESS_TTL
    return AccessToken(
        access_token=response.access_token,
        token_type=response.token_type or "Bearer",
        expires_at=now + ttl,
        scope=response.scope,
        obtained_at=time.monotonic(),
        owner=owner,
    )


def _idle_expiry(response: TokenResponse, now: float) -> float | None:
    # Keycloak reports refresh_expires_in=0 for offline tokens: no fixed expiry.
    if response.refresh_expires_in and response.refresh_expires_in > 0:
        return now + response.refresh_expires_in
    return None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError, TypeError):
        return False
