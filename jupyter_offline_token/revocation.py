"""TokenRevocation: revoke an entry's refresh token at the provider (RFC 7009), then delete it.

A provider fault leaves the entry untouched: nothing is lost. The deletion waits for a refresh in
flight (the broker's per-token lock, every process's lease), so what is revoked is the newest
refresh token, never one a concurrent rotation just replaced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import rest_codes
from .errors import (
    Conflict,
    DecryptionError,
    EntryGone,
    PermanentProviderError,
    ProviderRejected,
    ProviderUnavailable,
    TransientProviderError,
    VaultError,
)
from .models import ACTIVE, FAILED, REVOKED, TokenRecord

if TYPE_CHECKING:
    from .broker import TokenBroker


@dataclass
class Deletion:
    """What a deletion did: revoked at the provider or only deleted, and why (``warning``)."""

    revoked: bool = False
    warning: str = ""
    shared_with: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "deleted": True,
            "revoked": self.revoked,
            "warning": self.warning,
            "shared_with": self.shared_with or [],
        }


class TokenRevocation:
    """Deletes entries for one broker (its vault, provider, locks and hooks)."""

    def __init__(self, broker: TokenBroker) -> None:
        self.broker = broker

    async def delete_token(
        self, owner: str | None, token_id: str, *, revoke: bool = True, force: bool = False
    ) -> dict[str, Any]:
        """Revoke at the provider unless ``revoke`` is False, then delete locally."""
        broker = self.broker
        await broker.owned(owner, token_id)
        async with broker.token_lock(token_id):
            await broker.grants.join(token_id)
            record = await broker.owned(owner, token_id)
            await self.check_in_use(token_id, force=force)
            usage = broker.token_usage
            if force and usage is not None:
                await usage.cancel_for_token(token_id)  # its tasks end before it is revoked
            result = Deletion()
            if revoke and record.has_secret and record.status in (ACTIVE, FAILED):
                result = await self.revoke(record)
            await broker.vault.delete(token_id)
            broker.forget(token_id)
            await broker.audit(
                record, "revoke", "revoked" if result.revoked else "deleted", result.warning
            )
            await broker.notify_status_change(record.replace(status=REVOKED))
            return result.to_json()

    async def check_in_use(self, token_id: str, *, force: bool) -> None:
        """Refuse to delete a token that running tasks use, unless ``force``."""
        usage = self.broker.token_usage
        if usage is None or force:
            return
        running = await usage.tokens_in_use(token_id)
        if running:
            raise Conflict(
                f"offline token {token_id} is used by running task(s) {', '.join(running)}: "
                "cancel them first or delete with force=true",
                code=rest_codes.TOKEN_IN_USE,
                extra={"tasks": running},
            )

    async def revoke(self, record: TokenRecord) -> Deletion:
        """Revoke the newest refresh token (read under the refresh lease) at the provider."""
        broker = self.broker
        token_id = record.id
        provider, _ = broker.require_provider()
        result = Deletion()
        refresh_token: str | None = None
        try:
            refresh_token = (await broker.grants.begin(token_id)).refresh_token  # takes the lease
        except DecryptionError:
            result.warning = "the stored token could not be decrypted, so it was not revoked"
        try:
            if refresh_token is not None:
                result.revoked = await provider.revoke(refresh_token)
                if not result.revoked:
                    result.warning = (
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
            if not result.revoked:
                with contextlib.suppress(EntryGone, VaultError):
                    await broker.vault.release_lease(token_id, broker.holder)
        await self.warn_shared(record, result)
        return result

    async def warn_shared(self, record: TokenRecord, result: Deletion) -> None:
        """Other active entries of the same account and client: some providers end them all."""
        if not record.subject:
            return
        result.shared_with = await self.broker.vault.sharing_account(
            record.id, owner=record.owner, subject=record.subject, client_id=record.client_id
        )
        if result.shared_with and result.revoked:
            result.warning = (
                f"{len(result.shared_with)} other active offline token(s) share this account and "
                "client; some providers (Keycloak) end the client's consent for all of them when "
                "one is revoked"
            )
