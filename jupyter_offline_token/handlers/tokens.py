"""REST handlers for consents, tokens, access tokens, audit and health."""

from __future__ import annotations

import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..forced_refresh import drop_cached, force_refresh
from ..health import failure_kind, overall_level, token_health
from ..models import TokenRecord, iso
from ..public_url import browser_origin
from .base import OfflineTokenHandler, authenticated_or_task
from .token_requests import (
    AccessTokenRequest,
    AuditQuery,
    CreateConsent,
    DeleteTokenQuery,
    HealthQuery,
    RefreshRequest,
    TokensQuery,
)

# handlers/tasks.py pages its list the same way and imports it from here.
from .token_requests import page_query as page_query


def token_json(
    record: TokenRecord,
    *,
    now: float | None = None,
    failing_since: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The public view of an entry: metadata, status and health; never a secret."""
    now = time.time() if now is None else now
    body: dict[str, Any] = {
        "persistent_token_id": record.id,
        "label": record.label,
        "task_id": record.task_id,
        "status": record.status,
        "subject": record.subject,
        "scopes": record.scopes,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "last_refresh_at": iso(record.last_refresh_at),
        "refresh_count": record.refresh_count,
        "last_error": record.last_error,
        "refresh_state": record.refresh_state,
        "keep_warm": record.keep_warm,
        "consent_expires_at": iso(record.consent_expires_at),
        "idle_expires_at": iso(record.idle_expires_at),
        "health": token_health(
            status=record.status,
            refresh_state=record.refresh_state,
            last_error=record.last_error,
            next_attempt_at=record.next_attempt_at,
            retry_count=record.retry_count,
            failing_since=failing_since,
            now=now,
            last_error_kind=record.last_error_kind or failure_kind(record.last_error),
            last_refresh_at=record.last_refresh_at,
        ),
    }
    body.update(extra)
    return body


class ConsentsHandler(OfflineTokenHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = CreateConsent.parse(self.request.body or b"", base_url=self.base_url)
        broker = await self.services.ready()
        task_id = request.task_id
        if task_id is not None:
            await self.task_service.check_task_for_consent(self.owner, task_id)
        record, url = await broker.create_consent(
            self.owner,
            redirect_uri=self.redirect_uri(),
            label=request.label,
            task_id=task_id,
            scopes=request.scopes,
            return_to=request.return_to,
            keep_warm=request.keep_warm,
        )
        self.write_json(
            {
                "persistent_token_id": record.id,
                "consent_url": url,
                "status": record.status,
                "expires_at": iso(record.consent_expires_at),
            },
            status=201,
        )

    def redirect_uri(self) -> str:
        browser = None
        if not self.token_authenticated:
            browser = browser_origin(self.request.headers, self.request.host)
        return self.callback_url.redirect_uri(
            request_origin=f"{self.request.protocol}://{self.request.host}", browser_origin=browser
        )


class TokensHandler(OfflineTokenHandler):
    operator_methods = frozenset({"GET"})

    @web.authenticated
    @authorized
    async def get(self) -> None:
        query = TokensQuery.parse(self)
        broker = await self.services.ready()
        page = await broker.list_token_page(
            self.owner, status=query.status, limit=query.page.limit, cursor=query.page.cursor
        )
        records = page.items
        linked = await self._linked_tasks([r.id for r in records])
        now = time.time()
        self.write_json(
            {
                "tokens": [
                    token_json(
                        r,
                        now=now,
                        failing_since=self.failing_since(r.id),
                        tasks=linked.get(r.id, []),
                    )
                    for r in records
                ],
                "next_cursor": page.next_cursor,
            }
        )

    async def _linked_tasks(self, ids: list[str]) -> dict[str, list[str]]:
        if not ids:
            return {}
        return await self.task_service.linked_tasks(self.owner, ids)


class TokenHandler(TokensHandler):
    operator_methods = frozenset({"GET", "DELETE"})

    @web.authenticated
    @authorized
    async def get(self, token_id: str) -> None:
        broker = await self.services.ready()
        record = await broker.get_token(self.owner, token_id)
        linked = await self._linked_tasks([record.id])
        await self.audit_operator(record.id, "read")
        self.write_json(
            token_json(
                record, failing_since=self.failing_since(record.id), tasks=linked.get(record.id, [])
            )
        )

    @web.authenticated
    @authorized
    async def delete(self, token_id: str) -> None:
        query = DeleteTokenQuery.parse(self)
        broker = await self.services.ready()
        result = await broker.delete_token(
            self.owner, token_id, revoke=query.revoke, force=query.force
        )
        await self.audit_operator(token_id, "revoke")
        if result["warning"]:
            self.write_json(result)
        else:
            self.no_content()


class AccessTokenHandler(OfflineTokenHandler):
    """The one endpoint whose body holds a secret: a fresh access token. Also open to the
    scoped credential of a running task, for that task's token only."""

    @authenticated_or_task
    async def post(self, token_id: str) -> None:
        request = AccessTokenRequest.parse(self.request.body or b"")
        broker = await self.services.ready()
        token = await broker.get_access_token(self.owner, token_id, min_ttl=request.min_ttl)
        keep_warm = request.keep_warm
        # A task's token is kept warm while it runs; a task may not change the user's setting.
        if keep_warm is not None and self.task_principal is None:
            await self.engine.set_keep_warm(token_id, keep_warm)
        self.write_json(token.to_json(time.time()))

    @web.authenticated
    @authorized
    async def delete(self, token_id: str) -> None:
        """Drop this process's cached access token (no revocation; the vault's shared copy
        stays: see forced_refresh.drop_cached)."""
        broker = await self.services.ready()
        await broker.get_token(self.owner, token_id)
        drop_cached(broker, token_id)
        self.no_content()


class TokenRefreshHandler(OfflineTokenHandler):
    """``POST tokens/{id}/refresh``: one grant now (forced_refresh); the answer is the entry's
    metadata and health, never a token."""

    @web.authenticated
    @authorized
    async def post(self, token_id: str) -> None:
        RefreshRequest.parse(self.request.body or b"")
        broker = await self.services.ready()
        interval = self.engine.scheduler.min_refresh_interval
        record, _ = await force_refresh(broker, self.owner, token_id, min_interval=interval)
        linked = await self.task_service.linked_tasks(self.owner, [record.id])
        self.write_json(
            token_json(
                record, failing_since=self.failing_since(record.id), tasks=linked.get(record.id, [])
            )
        )


class AuditHandler(OfflineTokenHandler):
    operator_methods = frozenset({"GET"})

    @web.authenticated
    @authorized
    async def get(self, token_id: str) -> None:
        query = AuditQuery.parse(self)
        broker = await self.services.ready()
        await broker.get_token(self.owner, token_id)
        events = await broker.vault.list_audit(token_id, limit=query.limit)
        await self.audit_operator(token_id, "audit")
        self.write_json(
            {
                "events": [
                    {
                        "ts": iso(e.ts),
                        "action": e.action,
                        "result": e.result,
                        "detail": e.detail,
                        "task_id": e.task_id,
                    }
                    for e in events
                ]
            }
        )


class HealthHandler(OfflineTokenHandler):
    """Counts per level from SQL (``token_counts``) and one page of the entries that need
    attention (failed, retrying, refresh-failed), newest first: its cost does not grow with the
    vault. Pending entries are counted, not listed (they wait for the user, not for a fix);
    revoked and expired ones are history, not health."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        query = HealthQuery.parse(self)
        configured = self.services.broker.configured
        broker = await self.services.ready()
        now = time.time()
        counts = {"healthy": 0, "degraded": 0, "unhealthy": 0, "pending": 0}
        for (status, refresh_state), n in (await broker.count_by_state(self.owner)).items():
            if status in ("revoked", "expired"):
                continue
            level = token_health(
                status=status,
                refresh_state=refresh_state,
                last_error=None,
                next_attempt_at=None,
                retry_count=0,
                failing_since=None,
                now=now,
            )["level"]
            counts[level] = counts.get(level, 0) + n
        page = await broker.list_token_page(
            self.owner, limit=query.page.limit, cursor=query.page.cursor, attention=True
        )
        tokens = []
        for record in page.items:
            view = token_json(record, now=now, failing_since=self.failing_since(record.id))
            tokens.append(
                {
                    "persistent_token_id": record.id,
                    "label": record.label,
                    "status": record.status,
                    "health": view["health"],
                }
            )
        level = overall_level(name for name, n in counts.items() if n)
        if not configured:
            level = "unhealthy"
        self.write_json(
            {
                "level": level,
                "counts": counts,
                "configured": configured,
                "message": None if configured else broker.not_configured_message,
                "tokens": tokens,
                "next_cursor": page.next_cursor,
            }
        )
