"""One list of REST scenarios (request -> status, error code, shape), run against the real server
AND against ``kernel.testing.FakeOfflineTokenAPI`` by ``test_rest_contract.py``, so the fake
cannot drift from the server.

The steps run in order in one world: a step can save a value of its answer (``save``) that later
steps name as ``{placeholder}`` in their path, query or body. ``grant`` steps play the user
allowing a consent at the provider (the real dev provider, or the fake's consent page).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jupyter_offline_token import rest_codes as rc

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
# Both worlds run with this cap (OfflineTokenApp.max_pending_consents / the fake's argument).
MAX_PENDING = 3

TOKEN_KEYS = frozenset(
    {
        "persistent_token_id",
        "label",
        "task_id",
        "status",
        "subject",
        "scopes",
        "created_at",
        "updated_at",
        "last_refresh_at",
        "refresh_count",
        "last_error",
        "refresh_state",
        "keep_warm",
        "consent_expires_at",
        "idle_expires_at",
        "health",
        "tasks",
    }
)
TASK_KEYS = frozenset(
    {
        "id",
        "name",
        "description",
        "kind",
        "status",
        "persistent_token_id",
        "offline_token_status",
        "progress",
        "message",
        "result",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "command",
        "notebook",
        "parameters",
    }
)
WORKER_KEYS = frozenset({"credential", "task_id", "persistent_token_id", "url"})
CONSENT_KEYS = frozenset({"persistent_token_id", "consent_url", "status", "expires_at"})
ACCESS_KEYS = frozenset({"access_token", "token_type", "expires_in", "expires_at", "scope"})
HEALTH_KEYS = frozenset({"level", "counts", "configured", "message", "tokens", "next_cursor"})
HEALTH_LEVELS = frozenset({"healthy", "degraded", "unhealthy", "pending"})


class World(Protocol):
    """The API under test: the real server (jp_fetch) or the fake (httpx MockTransport)."""

    async def request(
        self, method: str, path: str, *, raw: bytes | None, params: dict[str, str]
    ) -> tuple[int, Any]:
        """``path`` is relative to ``api/offline-token/``; returns (status, JSON or text)."""

    async def grant(self, consent_url: str) -> None:
        """The user signs in at the provider and allows the consent."""


@dataclass(frozen=True)
class Step:
    name: str
    method: str = "GET"
    path: str = ""
    status: int = 200
    error: str | None = None
    body: Any = None
    raw: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    keys: frozenset[str] | None = None  # the answer's exact top-level keys
    fields: dict[str, Any] = field(default_factory=dict)  # answer values that must match
    check: Callable[[Any], bool] | None = None
    save: dict[str, str] = field(default_factory=dict)  # placeholder -> answer key
    grant: str | None = None  # a placeholder holding a consent_url: grant it instead


def _bad_body(path: str, raw: bytes, error: str, method: str = "POST", status: int = 400) -> Step:
    return Step(f"{method} {path} {raw[:30]!r}", method, path, status, error, raw=raw)


def _next_cursor(answer: Any) -> bool:
    return answer["next_cursor"] is not None and len(answer["tokens"]) == 1


SCENARIOS: list[Step] = [
    # --- consents and tokens ------------------------------------------------------------------
    Step(
        "create a consent",
        "POST",
        "consents",
        201,
        body={"label": "contract"},
        keys=CONSENT_KEYS,
        fields={"status": "pending"},
        save={"pending": "persistent_token_id"},
    ),
    _bad_body("consents", b"{not json", rc.INVALID_JSON),
    _bad_body("consents", b"[1, 2]", rc.INVALID_JSON),
    _bad_body("consents", b'{"surprise": 1}', rc.UNKNOWN_FIELD),
    _bad_body("consents", b'{"label": 5}', rc.INVALID_FIELD),
    _bad_body("consents", b'{"keep_warm": "yes"}', rc.INVALID_FIELD),
    _bad_body("consents", b'{"scopes": "openid"}', rc.INVALID_FIELD),
    _bad_body("consents", b'{"scopes": [1]}', rc.INVALID_FIELD),
    _bad_body("consents", b'{"scopes": ["has space"]}', rc.INVALID_SCOPE),
    _bad_body("consents", b'{"return_to": "https://elsewhere.test/"}', rc.INVALID_RETURN_TO),
    _bad_body("consents", b'{"return_to": "https://x.test/", "scopes": [1]}', rc.INVALID_RETURN_TO),
    _bad_body("consents", b'{"scopes": ["openid", "a\\\\b"]}', rc.INVALID_SCOPE),
    Step(
        "a consent for an unknown task",
        "POST",
        "consents",
        404,
        rc.NOT_FOUND,
        body={"task_id": UNKNOWN_ID},
    ),
    Step("a pending token", path="tokens/{pending}", keys=TOKEN_KEYS, fields={"status": "pending"}),
    Step("an unknown token", path=f"tokens/{UNKNOWN_ID}", status=404, error=rc.NOT_FOUND),
    Step(
        "audit of an unknown token",
        path=f"tokens/{UNKNOWN_ID}/audit",
        status=404,
        error=rc.NOT_FOUND,
    ),
    Step("audit of a token", path="tokens/{pending}/audit", keys=frozenset({"events"})),
    Step(
        "no access token while pending",
        "POST",
        "tokens/{pending}/access-token",
        409,
        rc.WAITING_CONSENT,
    ),
    Step(
        "no access token of an unknown token",
        "POST",
        f"tokens/{UNKNOWN_ID}/access-token",
        404,
        rc.NOT_FOUND,
    ),
    _bad_body("tokens/{pending}/access-token", b'{"min_ttl": -1}', rc.INVALID_FIELD),
    _bad_body("tokens/{pending}/access-token", b'{"min_ttl": true}', rc.INVALID_FIELD),
    _bad_body("tokens/{pending}/access-token", b'{"min_ttl": 99999}', rc.INVALID_FIELD),
    _bad_body("tokens/{pending}/access-token", b'{"surprise": 1}', rc.UNKNOWN_FIELD),
    Step("no refresh while pending", "POST", "tokens/{pending}/refresh", 409, rc.WAITING_CONSENT),
    Step(
        "no refresh of an unknown token", "POST", f"tokens/{UNKNOWN_ID}/refresh", 404, rc.NOT_FOUND
    ),
    _bad_body("tokens/{pending}/refresh", b'{"min_ttl": 5}', rc.UNKNOWN_FIELD),
    _bad_body("tokens/{pending}/refresh", b"[1]", rc.INVALID_JSON),
    Step(
        "no cache to clear of an unknown token",
        "DELETE",
        f"tokens/{UNKNOWN_ID}/access-token",
        404,
        rc.NOT_FOUND,
    ),
    Step(
        "create a second consent",
        "POST",
        "consents",
        201,
        body={"label": "to grant"},
        save={"active": "persistent_token_id", "active_url": "consent_url"},
    ),
    Step("the user allows it", grant="active_url"),
    Step("an active token", path="tokens/{active}", keys=TOKEN_KEYS, fields={"status": "active"}),
    Step(
        "an access token",
        "POST",
        "tokens/{active}/access-token",
        body={"min_ttl": 0},
        keys=ACCESS_KEYS,
        fields={"token_type": "Bearer"},
    ),
    Step(
        "refresh now",
        "POST",
        "tokens/{active}/refresh",
        body={},
        keys=TOKEN_KEYS,
        fields={"status": "active"},
        check=lambda a: a["refresh_count"] >= 1 and a["last_refresh_at"] is not None,
    ),
    Step("refresh again at once", "POST", "tokens/{active}/refresh", 429, rc.REFRESH_TOO_SOON),
    Step("clear the cached access token", "DELETE", "tokens/{active}/access-token", 204),
    Step(
        "an access token after clearing",
        "POST",
        "tokens/{active}/access-token",
        body={"min_ttl": 0},
        keys=ACCESS_KEYS,
    ),
    # --- lists and paging --------------------------------------------------------------------
    Step("the token list", path="tokens", keys=frozenset({"tokens", "next_cursor"})),
    Step(
        "a page of one",
        path="tokens",
        params={"limit": "1"},
        check=_next_cursor,
        save={"cursor": "next_cursor"},
    ),
    Step(
        "the next page",
        path="tokens",
        params={"limit": "1", "cursor": "{cursor}"},
        check=lambda a: len(a["tokens"]) == 1,
    ),
    Step(
        "a filtered list",
        path="tokens",
        params={"status": "pending"},
        check=lambda a: [t["status"] for t in a["tokens"]] == ["pending"],
    ),
    Step(
        "a bad status filter",
        path="tokens",
        params={"status": "bogus"},
        status=400,
        error=rc.INVALID_QUERY,
    ),
    Step(
        "a forged cursor",
        path="tokens",
        params={"cursor": "not-a-cursor!"},
        status=400,
        error=rc.INVALID_CURSOR,
    ),
    Step("an offset", path="tokens", params={"offset": "5"}, status=400, error=rc.INVALID_QUERY),
    Step("limit 0", path="tokens", params={"limit": "0"}, status=400, error=rc.INVALID_QUERY),
    Step("limit abc", path="tokens", params={"limit": "abc"}, status=400, error=rc.INVALID_QUERY),
    Step("limit 1001", path="tokens", params={"limit": "1001"}, status=400, error=rc.INVALID_QUERY),
    Step(
        "health",
        path="health",
        keys=HEALTH_KEYS,
        check=lambda a: set(a["counts"]) == HEALTH_LEVELS and a["configured"] is True,
    ),
    Step(
        "health limit 0", path="health", params={"limit": "0"}, status=400, error=rc.INVALID_QUERY
    ),
    Step(
        "a forged health cursor",
        path="health",
        params={"cursor": "not-a-cursor!"},
        status=400,
        error=rc.INVALID_CURSOR,
    ),
    Step("a method the route does not take", "PUT", "tokens", 405, rc.METHOD_NOT_ALLOWED, raw=b""),
    # --- tasks ---------------------------------------------------------------------------------
    Step(
        "create a task",
        "POST",
        "tasks",
        201,
        body={"name": "contract"},
        keys=TASK_KEYS,
        fields={"status": "pending", "kind": "kernel", "progress": 0},
        save={"task": "id"},
    ),
    _bad_body("tasks", b"", rc.INVALID_JSON),
    _bad_body("tasks", b"{}", rc.MISSING_FIELD),
    _bad_body("tasks", b'{"name": 5}', rc.INVALID_FIELD),
    _bad_body("tasks", b'{"name": "x", "kind": "bogus"}', rc.INVALID_FIELD),
    _bad_body("tasks", b'{"name": "x", "surprise": 1}', rc.UNKNOWN_FIELD),
    _bad_body("tasks", b'{"name": "  "}', rc.INVALID_FIELD),
    _bad_body(
        "tasks",
        b'{"name": "x", "persistent_token_id": "' + UNKNOWN_ID.encode() + b'"}',
        rc.NOT_FOUND,
        status=404,
    ),
    Step("a task", path="tasks/{task}", keys=TASK_KEYS),
    Step("an unknown task", path=f"tasks/{UNKNOWN_ID}", status=404, error=rc.NOT_FOUND),
    Step("a task id that is no id", path="tasks/nope", status=404, error=rc.NOT_FOUND),
    Step("the task list", path="tasks", keys=frozenset({"tasks", "next_cursor"})),
    Step(
        "a bad task filter",
        path="tasks",
        params={"status": "bogus"},
        status=400,
        error=rc.INVALID_QUERY,
    ),
    Step(
        "a task list limit 0",
        path="tasks",
        params={"limit": "0"},
        status=400,
        error=rc.INVALID_QUERY,
    ),
    Step("execute without a token", "POST", "tasks/{task}/execute", 409, rc.NEEDS_CONSENT),
    Step(
        "progress before execute",
        "PATCH",
        "tasks/{task}",
        409,
        rc.NOT_RUNNING,
        body={"progress": 10},
    ),
    Step("cancel before execute", "POST", "tasks/{task}/cancel", 409, rc.NOT_RUNNING),
    Step(
        "worker credentials before execute",
        "POST",
        "tasks/{task}/worker-credentials",
        409,
        rc.NOT_RUNNING,
    ),
    _bad_body("tasks/{task}/link", b"{}", rc.MISSING_FIELD),
    Step(
        "link an unknown token",
        "POST",
        "tasks/{task}/link",
        404,
        rc.NOT_FOUND,
        body={"persistent_token_id": UNKNOWN_ID},
    ),
    Step(
        "link the pending token",
        "POST",
        "tasks/{task}/link",
        body={"persistent_token_id": "{pending}"},
        keys=TASK_KEYS,
        fields={"persistent_token_id": "{pending}", "offline_token_status": "pending"},
    ),
    Step("execute while the token waits", "POST", "tasks/{task}/execute", 409, rc.WAITING_CONSENT),
    Step(
        "link the active token",
        "POST",
        "tasks/{task}/link",
        body={"persistent_token_id": "{active}"},
        fields={"offline_token_status": "active"},
    ),
    Step(
        "execute",
        "POST",
        "tasks/{task}/execute",
        202,
        keys=frozenset({"status", "task"}),
        fields={"status": "executing"},
        check=lambda a: a["task"]["status"] == "running",
    ),
    Step("execute again", "POST", "tasks/{task}/execute", 409, rc.ALREADY_RUNNING),
    Step(
        "worker credentials",
        "POST",
        "tasks/{task}/worker-credentials",
        201,
        keys=WORKER_KEYS,
        fields={"task_id": "{task}", "persistent_token_id": "{active}"},
        check=lambda a: a["credential"].startswith("jotw1.") and a["url"].endswith("/"),
    ),
    _bad_body("tasks/{task}/worker-credentials", b'{"surprise": 1}', rc.UNKNOWN_FIELD),
    Step(
        "worker credentials of an unknown task",
        "POST",
        f"tasks/{UNKNOWN_ID}/worker-credentials",
        404,
        rc.NOT_FOUND,
    ),
    Step(
        "link while running",
        "POST",
        "tasks/{task}/link",
        409,
        rc.TASK_RUNNING,
        body={"persistent_token_id": "{pending}"},
    ),
    Step(
        "report progress",
        "PATCH",
        "tasks/{task}",
        body={"progress": 50, "message": "half"},
        keys=TASK_KEYS,
        fields={"progress": 50, "message": "half", "status": "running"},
    ),
    _bad_body("tasks/{task}", b'{"progress": 101}', rc.INVALID_FIELD, "PATCH"),
    _bad_body("tasks/{task}", b'{"progress": true}', rc.INVALID_FIELD, "PATCH"),
    _bad_body("tasks/{task}", b'{"status": "cancelled"}', rc.INVALID_FIELD, "PATCH"),
    _bad_body("tasks/{task}", b'{"surprise": 1}', rc.UNKNOWN_FIELD, "PATCH"),
    _bad_body("tasks/{task}", b"{}", rc.MISSING_FIELD, "PATCH"),
    Step("delete a running task", "DELETE", "tasks/{task}", 409, rc.TASK_RUNNING),
    Step(
        "revoke a token a task uses",
        "DELETE",
        "tokens/{active}",
        409,
        rc.TOKEN_IN_USE,
        keys=frozenset({"error", "message", "tasks"}),
    ),
    Step("the token lists its task", path="tokens/{active}", check=lambda a: len(a["tasks"]) == 1),
    Step("cancel", "POST", "tasks/{task}/cancel", keys=TASK_KEYS, fields={"status": "cancelled"}),
    Step("cancel again", "POST", "tasks/{task}/cancel", 409, rc.NOT_RUNNING),
    Step(
        "worker credentials after the end",
        "POST",
        "tasks/{task}/worker-credentials",
        409,
        rc.TASK_FINISHED,
    ),
    Step(
        "progress after the end",
        "PATCH",
        "tasks/{task}",
        409,
        rc.TASK_FINISHED,
        body={"progress": 1},
    ),
    Step("the task's log", path="tasks/{task}/log", keys=frozenset({"lines"})),
    Step("delete the task", "DELETE", "tasks/{task}", 204),
    Step("the task is gone", path="tasks/{task}", status=404, error=rc.NOT_FOUND),
    Step("delete an unknown task", "DELETE", f"tasks/{UNKNOWN_ID}", 404, rc.NOT_FOUND),
    # --- deleting tokens, and the cap on pending consents -------------------------------------
    Step("delete an unknown token", "DELETE", f"tokens/{UNKNOWN_ID}", 404, rc.NOT_FOUND),
    Step(
        "a bad force flag",
        "DELETE",
        "tokens/{pending}",
        400,
        rc.INVALID_QUERY,
        params={"force": "maybe"},
    ),
    Step("delete the pending token", "DELETE", "tokens/{pending}", 204),
    Step("the token is gone", path="tokens/{pending}", status=404, error=rc.NOT_FOUND),
    *[
        Step(f"pending consent {n + 1} of {MAX_PENDING}", "POST", "consents", 201, body={})
        for n in range(MAX_PENDING)
    ],
    Step(
        "one consent too many",
        "POST",
        "consents",
        429,
        rc.TOO_MANY_PENDING_CONSENTS,
        body={},
    ),
]


def _fill(value: Any, saved: dict[str, Any]) -> Any:
    if isinstance(value, str):
        for name, saved_value in saved.items():
            value = value.replace("{" + name + "}", str(saved_value))
        return value
    if isinstance(value, dict):
        return {k: _fill(v, saved) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, saved) for v in value]
    return value


async def run(world: World) -> list[str]:
    """Run every step; return one line per difference from the expected answer."""
    saved: dict[str, Any] = {}
    problems: list[str] = []
    for step in SCENARIOS:
        if step.grant is not None:
            if step.grant not in saved:
                problems.append(f"{step.name}: nothing to grant; stopped here")
                break
            await world.grant(saved[step.grant])
            continue
        raw = step.raw if step.raw is not None else None
        if raw is None and step.body is not None:
            raw = json.dumps(_fill(step.body, saved)).encode()
        path = _fill(step.path, saved)
        status, answer = await world.request(
            step.method, path, raw=raw, params=_fill(step.params, saved)
        )
        where = f"{step.name} ({step.method} {path})"
        if status != step.status:
            problems.append(f"{where}: status {status}, expected {step.status}: {answer!r:.200}")
            continue
        if step.error is not None:
            shape = step.keys or frozenset({"error", "message"})
            if not isinstance(answer, dict) or set(answer) != shape:
                problems.append(f"{where}: not an error body with {sorted(shape)}: {answer!r:.200}")
            elif answer["error"] != step.error or not answer["message"]:
                problems.append(f"{where}: error {answer['error']!r}, expected {step.error!r}")
            continue
        if step.keys is not None and set(answer) != step.keys:
            missing, extra = sorted(step.keys - set(answer)), sorted(set(answer) - step.keys)
            problems.append(f"{where}: keys missing {missing}, unexpected {extra}")
        for key, expected in _fill(step.fields, saved).items():
            if answer.get(key) != expected:
                problems.append(f"{where}: {key}={answer.get(key)!r}, expected {expected!r}")
        if step.check is not None and not step.check(answer):
            problems.append(f"{where}: check failed on {answer!r:.300}")
        for name, key in step.save.items():
            saved[name] = answer[key]
    return problems


class ServerWorld:
    """The scenarios' world on the real server: ``api`` (server_fixtures.Api, or
    test_openapi's CheckedApi that also checks every answer against the spec) and the dev
    provider that grants consent."""

    def __init__(self, api: Any, provider: Any) -> None:
        self.api = api
        self.provider = provider

    async def request(
        self, method: str, path: str, *, raw: bytes | None, params: dict[str, str]
    ) -> tuple[int, Any]:
        parts = path.split("/")
        return await self.api.request(
            method, "api", "offline-token", *parts, raw=raw, params=params or None
        )

    async def grant(self, consent_url: str) -> None:
        location = await asyncio.to_thread(self.provider.complete_consent, consent_url)
        status, page = await self.api.callback(location)
        assert status in (200, 303), page
