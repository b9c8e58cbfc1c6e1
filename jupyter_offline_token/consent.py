"""ConsentFlow: the pending entry and provider URL of a consent, then the callback's checks.

``complete_consent`` runs named checks in order (state, owner, pending, expiry, answer, error),
then exchanges the code, validates the id_token and activates the entry. Each failure raises
:class:`ConsentFailed` with a :class:`ConsentFailure` kind; the callback handler maps kinds to
HTTP statuses and the page's copy. A failure after the state was consumed marks the entry
failed: the code is spent, a new consent is needed.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from . import health, models, rest_codes
from .access_token import access_token_from, idle_expiry
from .errors import (
    DecryptionError,
    IdTokenInvalid,
    NotConfigured,
    OfflineTokenError,
    PermanentProviderError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    TransientProviderError,
)
from .models import PENDING, ConsentSecrets, TokenRecord
from .oidc import ProviderClient, TokenResponse, new_nonce, new_pkce, new_state

if TYPE_CHECKING:
    from .broker import TokenBroker

log = logging.getLogger("jupyter_offline_token.broker")

# RFC 6749 3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$")
REQUIRED_SCOPES = ("openid", "offline_access")


def is_scope_token(scope: str) -> bool:
    """One RFC 6749 scope: a single word of printable ASCII, at most 128 characters."""
    return bool(_SCOPE_TOKEN.match(scope))


def hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


class ConsentFailure(enum.Enum):
    """Why a consent could not be completed; the value is the error's ``code``."""

    MISSING_STATE = rest_codes.MISSING_STATE
    UNKNOWN_STATE = rest_codes.UNKNOWN_STATE
    FOREIGN_STATE = rest_codes.FOREIGN_STATE  # another Jupyter user's consent: not consumed
    STATE_USED = rest_codes.STATE_USED
    EXPIRED = rest_codes.CONSENT_EXPIRED
    MISSING_CODE = rest_codes.MISSING_CODE  # neither a code nor an error
    DECRYPT_FAILED = rest_codes.DECRYPT_FAILED
    DENIED = rest_codes.ACCESS_DENIED  # the user declined at the provider
    PROVIDER_ERROR = rest_codes.PROVIDER_ERROR  # the provider redirected back with another error
    CODE_REJECTED = rest_codes.CODE_REJECTED  # invalid_grant: unknown, used or expired code
    # invalid_client & co: the administrator must act
    CLIENT_REJECTED = rest_codes.CLIENT_REJECTED
    EXCHANGE_FAILED = rest_codes.EXCHANGE_FAILED  # any other refusal of the code exchange
    INVALID_ID_TOKEN = rest_codes.INVALID_ID_TOKEN
    PROVIDER_UNAVAILABLE = rest_codes.PROVIDER_UNAVAILABLE
    # offline_access is not allowed for this client
    NO_REFRESH_TOKEN = rest_codes.NO_REFRESH_TOKEN


class ConsentFailed(OfflineTokenError):
    """The callback could not finish a consent; rendered as an HTML page, not JSON."""

    def __init__(
        self, failure: ConsentFailure, message: str, *, record: TokenRecord | None = None
    ) -> None:
        super().__init__(message, code=failure.value)
        self.failure = failure
        self.record = record


class ConsentFlow:
    """Creates consents and completes them for one broker (its vault, provider and hooks)."""

    def __init__(self, broker: TokenBroker) -> None:
        self.broker = broker

    # --- creating ------------------------------------------------------------------------------
    def normalize_scopes(self, scopes: list[str] | None) -> list[str]:
        """The scopes to request: the required ones, then ``scopes`` (already checked by the
        request model) or, if None, the configured ones."""
        _, settings = self.broker.require_provider()
        if scopes is None:
            scopes = list(settings.scopes)
            bad = [s for s in scopes if not is_scope_token(s)]
            if bad:
                raise NotConfigured(
                    f"c.OfflineTokenApp.scopes has an invalid scope {bad[0]!r}: scopes are "
                    "single words of printable ASCII"
                )
        result: list[str] = []
        for scope in [*REQUIRED_SCOPES, *scopes]:
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
        broker = self.broker
        provider, settings = broker.require_provider()
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
        now = broker.clock()
        record = await broker.vault.create_pending(
            owner=owner,
            issuer=settings.issuer,
            client_id=settings.client_id,
            scopes=scope_list,
            state_hash=hash_state(state),
            secrets=ConsentSecrets(code_verifier=verifier, nonce=nonce, redirect_uri=redirect_uri),
            consent_expires_at=now + broker.consent_timeout,
            label=label,
            task_id=task_id,
            return_to=return_to,
            now=now,
        )
        if keep_warm:
            await broker.vault.set_keep_warm(record.id, True, now=now)
            record = record.replace(keep_warm=True)
        await broker.audit(record, "consent", "requested", f"scopes: {' '.join(scope_list)}")
        await broker.notify_status_change(record)
        return record, url

    # --- completing ----------------------------------------------------------------------------
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
        provider, _ = self.broker.require_provider()
        record = await self.check_state(state)
        self.check_owner(record, owner)
        self.check_pending(record)
        await self.check_expiry(record)
        self.check_answer(record, code, error)
        secrets = await self.consume(record)
        if error:
            raise await self.check_error(record, error, error_description)
        assert code is not None
        response = await self.exchange_code(provider, record, code, secrets)
        claims = await self.validate_id_token(provider, record, response, secrets)
        if not response.refresh_token:
            raise await self._failed(
                record,
                "the provider issued no refresh token",
                ConsentFailure.NO_REFRESH_TOKEN,
                "The provider granted access but issued no offline (refresh) token.",
            )
        return await self.activate(record, response, claims)

    async def check_state(self, state: str | None) -> TokenRecord:
        """The pending entry whose (hashed) state the provider sent back."""
        if not state:
            raise ConsentFailed(
                ConsentFailure.MISSING_STATE, "The provider's answer has no state parameter."
            )
        record = await self.broker.vault.find_by_state_hash(hash_state(state))
        if record is None:
            raise ConsentFailed(ConsentFailure.UNKNOWN_STATE, "This consent link is unknown.")
        return record

    @staticmethod
    def check_owner(record: TokenRecord, owner: str) -> None:
        if record.owner != owner:
            # Do not consume it: the rightful owner may still finish it.
            raise ConsentFailed(
                ConsentFailure.FOREIGN_STATE,
                "This consent request belongs to another Jupyter user.",
            )

    @staticmethod
    def check_pending(record: TokenRecord) -> None:
        if record.status != PENDING:
            raise _state_used(record)

    async def check_expiry(self, record: TokenRecord) -> None:
        now = self.broker.clock()
        if record.consent_expires_at is not None and now > record.consent_expires_at:
            await self.broker.vault.expire_pending(now)
            await self.broker.audit(record, "consent", "expired")
            raise ConsentFailed(
                ConsentFailure.EXPIRED,
                "This consent request expired before it was completed.",
                record=record,
            )

    @staticmethod
    def check_answer(record: TokenRecord, code: str | None, error: str | None) -> None:
        if not error and not code:
            raise ConsentFailed(
                ConsentFailure.MISSING_CODE,
                "The provider's answer has neither a code nor an error.",
                record=record,
            )

    async def consume(self, record: TokenRecord) -> ConsentSecrets:
        """Spend the state (single use) and read the consent's PKCE verifier and nonce."""
        try:
            secrets = await self.broker.vault.consume_consent(record.id)
        except DecryptionError:
            raise await self._failed(
                record,
                health.DECRYPT_FAILED,
                ConsentFailure.DECRYPT_FAILED,
                "The stored consent request cannot be decrypted.",
                kind=models.KIND_DECRYPT,
            ) from None
        if secrets is None:
            raise _state_used(record)
        return secrets

    async def check_error(
        self, record: TokenRecord, error: str, error_description: str | None
    ) -> ConsentFailed:
        """The provider redirected back with an error instead of a code."""
        if error == "access_denied":
            failure, message = ConsentFailure.DENIED, "You declined offline access at the provider."
        else:
            failure = ConsentFailure.PROVIDER_ERROR
            message = f"The provider reported an error: {error}" + (
                f" ({error_description[:200]})" if error_description else ""
            )
        return await self._failed(record, f"consent {error}", failure, message)

    async def exchange_code(
        self, provider: ProviderClient, record: TokenRecord, code: str, secrets: ConsentSecrets
    ) -> TokenResponse:
        try:
            return await provider.exchange_code(
                code=code, redirect_uri=secrets.redirect_uri, code_verifier=secrets.code_verifier
            )
        except ProviderError as exc:
            raise await self._provider_failed(record, exc) from None

    async def validate_id_token(
        self,
        provider: ProviderClient,
        record: TokenRecord,
        response: TokenResponse,
        secrets: ConsentSecrets,
    ) -> dict[str, Any]:
        """The id_token's claims (signature, iss, aud, exp, nonce checked), or none."""
        if not response.id_token:
            return {}
        try:
            return await provider.validate_id_token(response.id_token, nonce=secrets.nonce)
        except ProviderError as exc:
            raise await self._provider_failed(record, exc) from None

    async def activate(
        self, record: TokenRecord, response: TokenResponse, claims: dict[str, Any]
    ) -> TokenRecord:
        """Store the refresh token (encrypted) and make the entry active."""
        broker = self.broker
        assert response.refresh_token
        granted = response.scope.split() if response.scope else record.scopes
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        now = broker.clock()
        active = await broker.vault.activate(
            record.id,
            refresh_token=response.refresh_token,
            subject=subject,
            scopes=granted,
            idle_expires_at=idle_expiry(response, now),
            now=now,
        )
        broker.remember(record.id, access_token_from(response, now, owner=record.owner))
        await broker.audit(active, "activate", "ok", f"subject {subject or '?'}")
        log.info("offline token %s activated for %s", record.id, record.owner)
        await broker.notify_activated(active)
        await broker.notify_status_change(active)
        return active

    # --- failures ------------------------------------------------------------------------------
    async def _provider_failed(self, record: TokenRecord, exc: ProviderError) -> ConsentFailed:
        """The code exchange or the id_token validation failed at the provider."""
        if isinstance(exc, IdTokenInvalid):
            return await self._failed(
                record,
                f"id_token rejected: {exc.description}",
                ConsentFailure.INVALID_ID_TOKEN,
                f"The provider's id_token failed validation ({exc.description}).",
            )
        if isinstance(exc, PermanentProviderError):
            return await self._code_refused(record, exc)
        return await self._failed(
            record,
            f"provider unavailable during consent: {exc}",
            ConsentFailure.PROVIDER_UNAVAILABLE,
            "The provider could not be reached to finish the consent.",
        )

    async def _code_refused(
        self, record: TokenRecord, exc: PermanentProviderError
    ) -> ConsentFailed:
        """A dead code (invalid_grant: unknown, used or expired) is the user's to retry; a
        refused client is the administrator's to fix; anything else is the provider's."""
        if exc.error == "invalid_grant":
            return await self._failed(
                record,
                "authorization code rejected: invalid_grant",
                ConsentFailure.CODE_REJECTED,
                "The provider rejected the authorization code (invalid_grant): it is unknown, "
                "already used or expired.",
            )
        return await self._failed(
            record,
            f"code exchange refused: {exc.error}",
            ConsentFailure.CLIENT_REJECTED
            if exc.is_configuration_error
            else ConsentFailure.EXCHANGE_FAILED,
            f"The provider refused the authorization code ({exc.error}).",
        )

    async def _failed(
        self,
        record: TokenRecord,
        reason: str,
        failure: ConsentFailure,
        message: str,
        *,
        kind: str = models.KIND_CONSENT,
    ) -> ConsentFailed:
        """Mark the entry failed with ``reason`` (and the failure ``kind`` health reports),
        then build the page's error."""
        await self.broker.fail(record, reason, kind=kind)
        return ConsentFailed(failure, message, record=record)


def _state_used(record: TokenRecord) -> ConsentFailed:
    return ConsentFailed(
        ConsentFailure.STATE_USED, "This consent link was already used.", record=record
    )
