"""``FakeOfflineTokenAPI``: the in-memory REST API (wiring, controls, routing, token routes)."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from ... import rest_codes as rc
from ..client import OfflineTokenClient
from ..discovery import ServerInfo
from .refresh import RefreshRoutes, unusable
from .rules import (
    ACCESS_FIELDS,
    CONSENT_FIELDS,
    HEALTH_LEVELS,
    SCOPE_TOKEN,
    TOKEN_STATUSES,
    Reject,
    error_response,
    is_local_path,
    keyset_page,
    now_iso,
    parse_body,
    query_flag,
    status_filter,
)
from .tasks import TaskRoutes

RESOURCE_URL = "http://resource.test/userinfo"


class FakeOfflineTokenAPI(RefreshRoutes, TaskRoutes):
    """In-memory REST API emulation; pass :meth:`transport` to an ``OfflineTokenClient``.

    ``access_token_ttl``: lifetime of minted access tokens; ``clock``: monotonic seconds.

    Example::

        api = FakeOfflineTokenAPI(access_token_ttl=300)
        client = api.client()
    """

    def __init__(
        self,
        *,
        base_url: str = "http://jupyter.test/user/alice/",
        server_token: str | None = None,
        access_token_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        consent_url_base: str = "http://idp.test/authorize",
        max_pending_consents: int = 50,
        page_size: int = 100,
    ) -> None:
        self.base_url = base_url
        self.max_pending_consents = max_pending_consents
        self.page_size = page_size  # default ``limit`` of list pages, as on the server
        self._order: dict[str, int] = {}  # token or task id -> creation sequence (cursor key)
        self._sequence = itertools.count(1)
        self.server_token = server_token or secrets.token_urlsafe(16)
        self.access_token_ttl = access_token_ttl
        self.clock = clock
        self.consent_url_base = consent_url_base
        self._states: dict[str, str] = {}  # consent state -> token id
        self.tokens: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.task_history: dict[str, list[dict[str, Any]]] = {}
        self.task_secrets: dict[str, str] = {}  # secret -> task id
        self.run_hashes: dict[str, str] = {}
        self.requests: list[httpx.Request] = []
        self.provider_down_retry_after: float | None = None
        self.valid_access_tokens: set[str] = set()
        self._cache: dict[str, tuple[str, float]] = {}  # token id -> (access token, expires)
        self._minted = itertools.count(1)
        self._refreshed: dict[str, float] = {}
        self.minted = 0
        self._lock = threading.RLock()
        self._path = httpx.URL(base_url).path

    # --- wiring --------------------------------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        """A transport usable by both ``httpx.Client`` and ``httpx.AsyncClient``."""
        return httpx.MockTransport(self.handle)

    def server_info(self, authorization: str | None = None) -> ServerInfo:
        """A ServerInfo for this fake (the server token unless another credential is given)."""
        return ServerInfo(
            self.base_url,
            authorization=authorization or f"token {self.server_token}",
            source="FakeOfflineTokenAPI",
        )

    def client(self, authorization: str | None = None) -> OfflineTokenClient:
        """An ``OfflineTokenClient`` wired to this fake."""
        return OfflineTokenClient(self.server_info(authorization), transport=self.transport())

    def task_client(self, task_id: str) -> OfflineTokenClient:
        """A client authenticated with a task's scoped credential (as a task process is)."""
        secret = secrets.token_urlsafe(16)
        with self._lock:
            self.task_secrets[secret] = task_id
        info = ServerInfo(
            self.base_url,
            authorization=f"OfflineTokenTask {secret}",
            source="FakeOfflineTokenAPI task credential",
            task_id=task_id,
            token_id=self.tasks[task_id].get("persistent_token_id"),
        )
        return OfflineTokenClient(info, transport=self.transport())

    # --- scenario controls ---------------------------------------------------------------------
    def grant(self, token_id: str, subject: str = "alice") -> None:
        """Complete the consent as the provider callback would: the entry becomes active."""
        with self._lock:
            entry = self.tokens[token_id]
            entry.update(status="active", subject=subject, updated_at=now_iso())
            if entry.get("task_id") in self.tasks:
                task = self.tasks[entry["task_id"]]
                task["persistent_token_id"] = token_id
                self._task_changed(task)

    def fail(self, token_id: str, error: str = "refresh token rejected by the provider") -> None:
        """Mark an entry failed, as an ``invalid_grant`` would."""
        with self._lock:
            self.tokens[token_id].update(status="failed", last_error=error, updated_at=now_iso())
            self._cache.pop(token_id, None)

    def set_status(self, token_id: str, status: str) -> None:
        """Force an entry's status (``expired``, ``revoked``, ...)."""
        with self._lock:
            self.tokens[token_id]["status"] = status

    def invalidate_access_tokens(self) -> None:
        """The provider stops accepting every minted access token (the server cache keeps them)."""
        with self._lock:
            self.valid_access_tokens.clear()

    def count(self, method: str, path_suffix: str) -> int:
        """How many recorded requests had this method and a path ending in ``path_suffix``."""
        return sum(
            1 for r in self.requests if r.method == method and r.url.path.endswith(path_suffix)
        )

    # --- handler -------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler."""
        with self._lock:
            # A snapshot: httpx reuses (and mutates) the Request object when an auth flow retries.
            self.requests.append(
                httpx.Request(
                    request.method,
                    request.url,
                    headers=request.headers.copy(),
                    content=request.content,
                )
            )
            if request.url.host == "resource.test":
                return self._resource(request)
            if str(request.url).startswith(self.consent_url_base + "?"):
                return self._consent_page(request)
            try:
                return self._route(request)
            except Reject as reject:
                return reject.response

    def _resource(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme != "Bearer" or value not in self.valid_access_tokens:
            return httpx.Response(401, json={"error": "invalid_token"})
        return httpx.Response(200, json={"sub": "alice", "body": request.content.decode() or None})

    def _consent_page(self, request: httpx.Request) -> httpx.Response:
        """Visiting the consent URL plays "user signs in and allows": the entry turns active."""
        token_id = self._states.pop(request.url.params.get("state", ""), None)
        if token_id is None or self.tokens.get(token_id, {}).get("status") != "pending":
            return httpx.Response(400, html="<p>unknown or used consent state</p>")
        self.grant(token_id)
        return httpx.Response(200, html="<p>Access granted, you can close this tab.</p>")

    def _caller(self, request: httpx.Request) -> str | None:
        """``"user"`` for the server token, the task id for a task credential, else None."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme == "token" and value == self.server_token:
            return "user"
        if scheme == "OfflineTokenTask" and value in self.task_secrets:
            task_id = self.task_secrets[value]
            if self.tasks.get(task_id, {}).get("status") == "running":
                return f"task:{task_id}"
        if scheme == "OfflineTokenTask":
            return self._worker_caller(value)
        return None

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if not path.startswith(self._path + "api/offline-token/"):
            return error_response(404, rc.NOT_FOUND, "no such route")
        route = path[len(self._path + "api/offline-token/") :]
        caller = self._caller(request)
        if caller is None:
            return error_response(403, rc.FORBIDDEN, "authentication required")
        if caller == "ended":
            return error_response(403, rc.TASK_CREDENTIAL_ENDED, "its task has ended")
        method = request.method
        if caller.startswith(("task:", "worker:")):
            task_id = caller.partition(":")[2]
            token_id = self.tasks[task_id].get("persistent_token_id")
            allowed = (
                (method == "POST" and route == f"tokens/{token_id}/access-token")
                or (method in ("GET", "PATCH") and route == f"tasks/{task_id}")
                or (method == "GET" and route == f"tasks/{task_id}/events")
                or (method == "POST" and route == f"tasks/{task_id}/worker-credentials")
            )
            if not allowed:
                return error_response(
                    403, rc.FORBIDDEN, "a task credential is limited to its own task"
                )
        for pattern, verb, handler in self._routes():
            match = re.fullmatch(pattern, route)
            if match and verb == method:
                return handler(request, *match.groups())
        if any(re.fullmatch(p, route) for p, _, _ in self._routes()):
            return error_response(405, rc.METHOD_NOT_ALLOWED, f"{method} is not allowed here")
        return error_response(404, rc.NOT_FOUND, "no such route")

    def _routes(self) -> list[tuple[str, str, Callable[..., httpx.Response]]]:
        return [
            (r"consents", "POST", self._create_consent),
            (r"tokens", "GET", self._list_tokens),
            (r"tokens/([^/]+)", "GET", self._get_token),
            (r"tokens/([^/]+)", "DELETE", self._delete_token),
            (r"tokens/([^/]+)/access-token", "POST", self._access_token),
            (r"tokens/([^/]+)/access-token", "DELETE", self._clear_cache),
            (r"tokens/([^/]+)/refresh", "POST", self._refresh_token),
            (r"tokens/([^/]+)/audit", "GET", self._audit),
            (r"health", "GET", self._health),
            (r"tasks", "POST", self._create_task),
            (r"tasks", "GET", self._list_tasks),
            (r"tasks/([^/]+)", "GET", self._get_task),
            (r"tasks/([^/]+)", "DELETE", self._delete_task),
            (r"tasks/([^/]+)", "PATCH", self._patch_task),
            (r"tasks/([^/]+)/link", "POST", self._link_task),
            (r"tasks/([^/]+)/execute", "POST", self._execute_task),
            (r"tasks/([^/]+)/cancel", "POST", self._cancel_task),
            (r"tasks/([^/]+)/events", "GET", self._task_events),
            (r"tasks/([^/]+)/log", "GET", self._task_log),
            (r"tasks/([^/]+)/worker-credentials", "POST", self._worker_credentials),
        ]

    # --- tokens --------------------------------------------------------------------------------
    def _entry(self, token_id: str) -> dict[str, Any]:
        entry = self.tokens.get(token_id)
        if entry is None:
            raise Reject(error_response(404, rc.NOT_FOUND, f"no offline token {token_id!r}"))
        return entry

    def _public(self, entry: dict[str, Any]) -> dict[str, Any]:
        level = {"active": "healthy", "pending": "pending"}.get(entry["status"], "unhealthy")
        action = {"active": "none", "pending": "wait"}.get(entry["status"], "request_consent")
        body = dict(entry)
        body["health"] = {
            "level": level,
            "detail": entry.get("last_error") or entry["status"],
            "action": action,
            "next_attempt_at": None,
            "retry_count": 0,
        }
        body["tasks"] = [
            t["id"]
            for t in self.tasks.values()
            if t.get("persistent_token_id") == entry["persistent_token_id"]
        ]
        return body

    def _create_consent(self, request: httpx.Request) -> httpx.Response:
        body = parse_body(request, CONSENT_FIELDS)
        self._check_consent_request(body)
        token_id = self._new_pending_entry(body)
        state = secrets.token_urlsafe(16)
        self._states[state] = token_id
        return httpx.Response(
            201,
            json={
                "persistent_token_id": token_id,
                "consent_url": f"{self.consent_url_base}?response_type=code&state={state}",
                "status": "pending",
                "expires_at": self.tokens[token_id]["consent_expires_at"],
            },
        )

    def _check_consent_request(self, body: dict[str, Any]) -> None:
        """The server's checks of a consent request, in its order; raise ``Reject``."""
        return_to = body.get("return_to")
        if return_to is not None and not is_local_path(return_to, self._path):
            raise Reject(
                error_response(
                    400,
                    rc.INVALID_RETURN_TO,
                    f"return_to must be a path on this server starting with {self._path!r}",
                )
            )
        scopes = body.get("scopes") or []
        if not all(isinstance(scope, str) for scope in scopes):
            raise Reject(
                error_response(400, rc.INVALID_FIELD, "field 'scopes' must be an array of strings")
            )
        if body.get("task_id") is not None:
            self._task(body["task_id"])
        for scope in scopes:
            if not SCOPE_TOKEN.match(scope):
                raise Reject(
                    error_response(
                        400,
                        rc.INVALID_SCOPE,
                        f"invalid scope {scope!r}: scopes are single words of printable ASCII",
                    )
                )
        pending = sum(1 for e in self.tokens.values() if e["status"] == "pending")
        if pending >= self.max_pending_consents:
            raise Reject(
                error_response(
                    429,
                    rc.TOO_MANY_PENDING_CONSENTS,
                    f"{pending} consents of this user are still waiting to be granted (at most "
                    f"{self.max_pending_consents}, OfflineTokenApp.max_pending_consents)",
                    headers={"Retry-After": "600"},
                )
            )

    def _new_pending_entry(self, body: dict[str, Any]) -> str:
        """Store a pending entry for a checked consent request; return its id."""
        token_id = str(uuid.uuid4())
        now = now_iso()
        self._order[token_id] = next(self._sequence)
        self.tokens[token_id] = {
            "persistent_token_id": token_id,
            "label": body.get("label") or "",
            "task_id": body.get("task_id"),
            "status": "pending",
            "subject": None,
            "scopes": body.get("scopes") or ["openid", "offline_access"],
            "created_at": now,
            "updated_at": now,
            "last_refresh_at": None,
            "refresh_count": 0,
            "last_error": None,
            "refresh_state": "idle",
            "keep_warm": bool(body.get("keep_warm")),
            "consent_expires_at": now,
            "idle_expires_at": None,
        }
        return token_id

    def _page(
        self, request: httpx.Request, items: list[dict[str, Any]], key: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        return keyset_page(request, items, key, order=self._order, page_size=self.page_size)

    def _list_tokens(self, request: httpx.Request) -> httpx.Response:
        status = status_filter(request, TOKEN_STATUSES)
        entries = [self._public(e) for e in reversed(self.tokens.values())]
        if status:
            entries = [e for e in entries if e["status"] == status]
        page, after = self._page(request, entries, "persistent_token_id")
        return httpx.Response(200, json={"tokens": page, "next_cursor": after})

    def _get_token(self, request: httpx.Request, token_id: str) -> httpx.Response:
        return httpx.Response(200, json=self._public(self._entry(token_id)))

    def _delete_token(self, request: httpx.Request, token_id: str) -> httpx.Response:
        query_flag(request, "revoke", True)
        force = query_flag(request, "force", False)
        self._entry(token_id)
        running = [
            t
            for t in self.tasks.values()
            if t.get("persistent_token_id") == token_id and t["status"] == "running"
        ]
        if running and not force:
            response = error_response(
                409, rc.TOKEN_IN_USE, "a running task uses this token; cancel it first"
            )
            body = {**json.loads(response.content), "tasks": [t["id"] for t in running]}
            return httpx.Response(409, json=body)
        for task in running:
            task["status"] = "cancelled"
            self._task_changed(task)
        del self.tokens[token_id]
        cached = self._cache.pop(token_id, None)
        if cached:
            self.valid_access_tokens.discard(cached[0])
        return httpx.Response(204)

    def _access_token(self, request: httpx.Request, token_id: str) -> httpx.Response:
        body = parse_body(request, ACCESS_FIELDS)
        min_ttl = body.get("min_ttl", 30)
        entry = self._entry(token_id)
        refused = unusable(entry) or self._provider_down()
        if refused is not None:
            return refused
        now = self.clock()
        cached = self._cache.get(token_id)
        if cached is None or cached[1] - now < min_ttl:
            cached = self._mint(token_id, entry, now)
        return httpx.Response(
            200,
            json={
                "access_token": cached[0],
                "token_type": "Bearer",
                "expires_in": int(cached[1] - now),
                "expires_at": now_iso(),
                "scope": " ".join(entry["scopes"]),
            },
        )

    def _audit(self, request: httpx.Request, token_id: str) -> httpx.Response:
        self._entry(token_id)
        return httpx.Response(200, json={"events": []})

    def _health(self, request: httpx.Request) -> httpx.Response:
        """Counts per level (revoked and expired entries are history, not health) and one page
        of the entries that need attention (failed ones), as on the server."""
        counts = dict.fromkeys(HEALTH_LEVELS, 0)
        attention = []
        for entry in self.tokens.values():
            if entry["status"] in ("revoked", "expired"):
                continue
            view = self._public(entry)
            counts[view["health"]["level"]] += 1
            if entry["status"] == "failed":
                attention.append(
                    {
                        "persistent_token_id": entry["persistent_token_id"],
                        "label": entry["label"],
                        "status": entry["status"],
                        "health": view["health"],
                    }
                )
        page, after = self._page(request, attention, "persistent_token_id")
        order = ["healthy", "pending", "degraded", "unhealthy"]
        level = max((n for n, c in counts.items() if c), key=order.index, default="healthy")
        return httpx.Response(
            200,
            json={
                "level": level,
                "counts": counts,
                "configured": True,
                "message": None,
                "tokens": page,
                "next_cursor": after,
            },
        )
