"""REST handlers for consents, tokens, access tokens, audit and health."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..broker import DECRYPT_FAILED
from ..errors import InvalidRequest
from ..health import overall_level, token_health
from ..models import TOKEN_STATUSES, TokenRecord, iso
from ..paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Cursor
from ..public_url import browser_origin
from .base import Field, OfflineTokenHandler, authenticated_or_task, in_range, max_len

CONSENT_FIELDS = {
    "label": Field(str, check=max_len(200)),
    "task_id": Field(str, check=max_len(64)),
    "scopes": Field(list, check=lambda v: None if len(v) <= 32 else "has more than 32 scopes"),
    "return_to": Field(str, check=max_len(2048)),
    "keep_warm": Field(bool),
}
ACCESS_FIELDS = {
    "min_ttl": Field(int, check=in_range(0, 86400)),
    "keep_warm": Field(bool),
}


def token_json(
    record: TokenRecord,
    *,
    now: float | None = None,
    failing_since: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The public view of an entry: metadata, status and health; never a secret."""
    now = time.time() if now is None else now
    last_error_kind = None
    if record.last_error == DECRYPT_FAILED:
        last_error_kind = "decrypt"
    elif record.last_error and "fix the client configuration" in record.last_error:
        last_error_kind = "configuration"
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
            last_error_kind=last_error_kind,
            last_refresh_at=record.last_refresh_at,
        ),
    }
    body.update(extra)
    return body


def page_query(handler: OfflineTokenHandler) -> tuple[int, Cursor | None]:
    """``limit`` (default DEFAULT_PAGE_SIZE) and ``cursor`` of a list request. ``offset`` is
    refused (400): a deep offset costs what skipping every row before it costs."""
    offset = handler.get_query_argument("offset", None)
    if offset is not None and offset != "0":
        raise InvalidRequest(
            "query parameter 'offset' is not supported: lists page by cursor; pass the "
            "previous page's next_cursor as 'cursor'",
            code="invalid_query",
        )
    limit = handler.query_int("limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    raw = handler.get_query_argument("cursor", None)
    return limit or DEFAULT_PAGE_SIZE, Cursor.decode(raw) if raw is not None else None


def check_return_to(value: str, base_url: str) -> str:
    """Only a path on this server under its base_url; anything else is an open redirect."""
    parts = urlsplit(value)
    if (
        parts.scheme
        or parts.netloc
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 for c in value)
        or not value.startswith(base_url)
    ):
        raise InvalidRequest(
            f"return_to must be a path on this server starting with {base_url!r}",
            code="invalid_return_to",
        )
    return value


class ConsentsHandler(OfflineTokenHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body(CONSENT_FIELDS)
        broker = await self.services.ready()
        return_to = body.get("return_to")
        if return_to is not None:
            return_to = check_return_to(return_to, self.base_url)
        scopes = body.get("scopes")
        if scopes is not None and not all(isinstance(s, str) for s in scopes):
            raise InvalidRequest("field 'scopes' must be an array of strings", code="invalid_field")
        task_id = body.get("task_id")
        if task_id is not None:
            await self.task_service.check_task_for_consent(self.owner, task_id)
        record, url = await broker.create_consent(
            self.owner,
            redirect_uri=self.redirect_uri(),
            label=body.get("label", ""),
            task_id=task_id,
            scopes=scopes,
            return_to=return_to,
            keep_warm=body.get("keep_warm", False),
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
    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = self.get_query_argument("status", None)
        if status is not None and status not in TOKEN_STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(TOKEN_STATUSES)}", code="invalid_query"
            )
        limit, cursor = page_query(self)
        broker = await self.services.ready()
        page = await broker.list_token_page(self.owner, status=status, limit=limit, cursor=cursor)
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
    @web.authenticated
    @authorized
    async def get(self, token_id: str) -> None:
        broker = await self.services.ready()
        record = await broker.get_token(self.owner, token_id)
        linked = await self._linked_tasks([record.id])
        self.write_json(
            token_json(
                record, failing_since=self.failing_since(record.id), tasks=linked.get(record.id, [])
            )
        )

    @web.authenticated
    @authorized
    async def delete(self, token_id: str) -> None:
        revoke = self.query_flag("revoke", True)
        force = self.query_flag("force", False)
        broker = await self.services.ready()
        result = await broker.delete_token(self.owner, token_id, revoke=revoke, force=force)
        if result["warning"]:
            self.write_json(result)
        else:
            self.no_content()


class AccessTokenHandler(OfflineTokenHandler):
    """The one endpoint whose body holds a secret: a fresh access token. Also open to the
    scoped credential of a running task, for that task's token only."""

    @authenticated_or_task
    async def post(self, token_id: str) -> None:
        body = self.body(ACCESS_FIELDS)
        broker = await self.services.ready()
        token = await broker.get_access_token(
            self.owner, token_id, min_ttl=float(body.get("min_ttl", 30))
        )
        keep_warm = body.get("keep_warm")
        # A task's token is kept warm while it runs; a task may not change the user's setting.
        if keep_warm is not None and self.task_principal is None:
            await self.engine.set_keep_warm(token_id, keep_warm)
        self.write_json(token.to_json(time.time()))


class AuditHandler(OfflineTokenHandler):
    @web.authenticated
    @authorized
    async def get(self, token_id: str) -> None:
        broker = await self.services.ready()
        await broker.get_token(self.owner, token_id)
        events = await broker.vault.list_audit(token_id, limit=200)
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
        limit, cursor = page_query(self)
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
        page = await broker.list_token_page(self.owner, limit=limit, cursor=cursor, attention=True)
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
