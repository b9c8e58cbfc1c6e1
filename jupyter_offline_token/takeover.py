"""A refresh lease taken over from a holder that died or hung mid-refresh (issue 11).

That holder may have redeemed the stored refresh token at the provider and never stored the
rotated one. Sending the stored token again would be a replay, which revokes the whole grant at
most providers, so it is introspected first (RFC 7662): active, the refresh goes on; inactive,
the entry fails with the reason ("request consent again") and the token is never sent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import health, models, rest_codes
from .errors import Conflict, PermanentProviderError, TransientProviderError
from .models import TokenRecord
from .oidc import ProviderClient

if TYPE_CHECKING:
    from .broker import TokenBroker

log = logging.getLogger("jupyter_offline_token.broker")


class CheckPending(TransientProviderError):
    """The provider could not say now whether the stored refresh token is still active."""


async def check_taken_over(
    broker: TokenBroker, provider: ProviderClient, record: TokenRecord, refresh_token: str
) -> None:
    """Return when ``refresh_token`` may be sent; Conflict (the entry failed) when the provider
    says it is no longer active; CheckPending when it cannot tell now (nothing changed)."""
    try:
        active = await provider.introspect(refresh_token)
    except TransientProviderError as exc:
        raise CheckPending(
            f"cannot check the refresh token after an interrupted refresh ({exc})",
            kind=exc.kind,
            status_code=exc.status_code,
            retry_after=exc.retry_after,
        ) from None
    except PermanentProviderError as exc:
        log.warning(
            "offline token %s: a refresh was interrupted and the provider refused to "
            "introspect its refresh token (%s); refreshing with it anyway",
            record.id,
            exc.error,
        )
        return
    if active is None:
        log.warning(
            "offline token %s: a refresh was interrupted and the provider has no "
            "introspection endpoint; refreshing with the stored refresh token (if the provider "
            "had already rotated it, the grant is lost)",
            record.id,
        )
        return
    if active:
        log.info("offline token %s: taking over an interrupted refresh", record.id)
        return
    await broker.fail(record, health.REFRESH_INTERRUPTED, kind=models.KIND_GRANT_REJECTED)
    raise Conflict(
        f"offline token {record.id} no longer works: "
        + health.failure_detail(health.REFRESH_INTERRUPTED, models.KIND_GRANT_REJECTED),
        code=rest_codes.TOKEN_FAILED,
    )
