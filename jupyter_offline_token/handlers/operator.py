"""The operators' view of the JupyterHub service: health across every user, no secrets."""

from __future__ import annotations

import time

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..health import overall_level
from ..hub_scopes import HEALTH_SCOPE, holds, hub_scopes
from .base import OfflineTokenHandler, forbidden
from .token_requests import HealthQuery
from .tokens import token_json

# Statuses that are health (revoked and expired entries are history).
_LIVE = ("active", "pending", "failed")


class OperatorHealthHandler(OfflineTokenHandler):
    """``GET api/offline-token/operator/health``: entries per status of every user (SQL
    counts) and one page of those that need attention (failed, retrying, refresh-failed),
    each with its owner and health; needs custom:offline-token:health. Its cost does not grow
    with the vault."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        if not holds(hub_scopes(self.current_user), HEALTH_SCOPE):
            raise forbidden(f"the service's health across users needs the scope {HEALTH_SCOPE}")
        query = HealthQuery.parse(self)
        configured = self.services.broker.configured
        broker = await self.services.ready()
        counts = await broker.vault.count_by_status(None)
        page = await broker.vault.list_page(
            owner=None, limit=query.page.limit, cursor=query.page.cursor, attention=True
        )
        now = time.time()
        tokens = []
        for record in page.items:
            view = token_json(record, now=now, failing_since=self.failing_since(record.id))
            tokens.append(
                {
                    "persistent_token_id": record.id,
                    "owner": record.owner,
                    "label": record.label,
                    "status": record.status,
                    "health": view["health"],
                }
            )
        level = overall_level(t["health"]["level"] for t in tokens)
        if not configured or counts.get("failed"):
            level = "unhealthy"
        self.write_json(
            {
                "level": level,
                "counts": {status: counts.get(status, 0) for status in _LIVE},
                "configured": configured,
                "tokens": tokens,
                "next_cursor": page.next_cursor,
            }
        )
