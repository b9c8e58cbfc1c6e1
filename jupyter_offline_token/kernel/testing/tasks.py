"""The fake's task routes (create, list, get, patch, link, execute, cancel, delete, events, log)."""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import uuid
from typing import Any

import httpx

from ... import rest_codes as rc
from .rules import (
    LINK_FIELDS,
    PATCH_FIELDS,
    TASK_FIELDS,
    TASK_STATUSES,
    TASK_TERMINAL,
    Reject,
    error_response,
    now_iso,
    parse_body,
    status_filter,
)


class TaskRoutes:
    """Mixed into ``FakeOfflineTokenAPI``, which holds the state and the token routes."""

    tokens: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    task_history: dict[str, list[dict[str, Any]]]
    _order: dict[str, int]
    _sequence: itertools.count[int]
    base_url: str
    run_hashes: dict[str, str]  # task id -> its run's hash (worker credential "jotw1.<hash>")

    def _caller(self, request: httpx.Request) -> str | None:
        raise NotImplementedError

    def _worker_caller(self, secret: str) -> str:
        """``worker:<task id>`` for a worker credential of a running task, else ``ended``."""
        for task_id, run_hash in self.run_hashes.items():
            running = self.tasks.get(task_id, {}).get("status") == "running"
            if running and secret == "jotw1." + run_hash:
                return f"worker:{task_id}"
        return "ended"

    def _worker_credentials(self, request: httpx.Request, task_id: str) -> httpx.Response:
        caller = self._caller(request) or ""
        if caller.startswith("worker:"):
            return error_response(403, rc.FORBIDDEN, "a worker cannot mint worker credentials")
        parse_body(request, {}, allow_empty=True)
        task = self._task(task_id)
        if task["status"] != "running":
            code = rc.TASK_FINISHED if task["status"] in TASK_TERMINAL else rc.NOT_RUNNING
            return error_response(409, code, f"the task is {task['status']}, not running")
        body = {
            "credential": "jotw1." + self.run_hashes[task_id],
            "task_id": task_id,
            "persistent_token_id": task.get("persistent_token_id"),
            "url": self.base_url,
        }
        return httpx.Response(201, json=body)

    def _entry(self, token_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def _page(
        self, request: httpx.Request, items: list[dict[str, Any]], key: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        raise NotImplementedError

    # --- tasks ---------------------------------------------------------------------------------
    def _task(self, task_id: str) -> dict[str, Any]:
        task = self.tasks.get(task_id)
        if task is None:
            raise Reject(error_response(404, rc.NOT_FOUND, f"no task {task_id!r}"))
        return task

    def _task_changed(self, task: dict[str, Any]) -> None:
        token = self.tokens.get(task.get("persistent_token_id") or "")
        task["offline_token_status"] = (
            "none"
            if token is None
            else {"expired": "failed", "revoked": "failed"}.get(token["status"], token["status"])
        )
        self.task_history.setdefault(task["id"], []).append(dict(task))

    def _create_task(self, request: httpx.Request) -> httpx.Response:
        body = parse_body(request, TASK_FIELDS, allow_empty=False)
        if not body["name"].strip():
            return error_response(400, rc.INVALID_FIELD, "field 'name' must not be empty")
        kind = body.get("kind") or "kernel"
        token_id = body.get("persistent_token_id")
        if token_id is not None:
            self._entry(token_id)
        task = {
            "id": str(uuid.uuid4()),
            "name": body["name"],
            "description": body.get("description") or "",
            "kind": kind,
            "status": "pending",
            "persistent_token_id": token_id,
            "progress": 0,
            "message": "",
            "result": None,
            "error": None,
            "created_at": now_iso(),
            "started_at": None,
            "completed_at": None,
            "command": body.get("command"),
            "notebook": body.get("notebook"),
            "parameters": body.get("parameters") or {},
        }
        self._order[task["id"]] = next(self._sequence)
        self.tasks[task["id"]] = task
        self._task_changed(task)
        return httpx.Response(201, json=task)

    def _list_tasks(self, request: httpx.Request) -> httpx.Response:
        status = status_filter(request, TASK_STATUSES)
        tasks = [dict(t) for t in reversed(self.tasks.values())]
        if status:
            tasks = [t for t in tasks if t["status"] == status]
        page, after = self._page(request, tasks, "id")
        return httpx.Response(200, json={"tasks": page, "next_cursor": after})

    def _get_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        return httpx.Response(200, json=self._task(task_id))

    def _delete_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        if self._task(task_id)["status"] == "running":
            return error_response(409, rc.TASK_RUNNING, "cancel the task before deleting it")
        del self.tasks[task_id]
        return httpx.Response(204)

    def _link_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        task = self._task(task_id)
        body = parse_body(request, LINK_FIELDS, allow_empty=False)
        self._entry(body["persistent_token_id"])
        if task["status"] == "running":
            return error_response(
                409, rc.TASK_RUNNING, "cancel the task before linking another token"
            )
        task["persistent_token_id"] = body["persistent_token_id"]
        self._task_changed(task)
        return httpx.Response(200, json=task)

    def _execute_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        task = self._task(task_id)
        if task["status"] == "running":
            return error_response(409, rc.ALREADY_RUNNING, "the task is already running")
        token = self.tokens.get(task.get("persistent_token_id") or "")
        if token is None:
            return error_response(409, rc.NEEDS_CONSENT, "link an offline token to this task first")
        if token["status"] == "pending":
            return error_response(
                409, rc.WAITING_CONSENT, "the linked token is waiting for consent"
            )
        if token["status"] != "active":
            return error_response(
                409, rc.TOKEN_FAILED, "the linked token cannot be used; request consent again"
            )
        task.update(status="running", started_at=now_iso(), error=None, completed_at=None)
        self.run_hashes[task_id] = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        self._task_changed(task)
        return httpx.Response(202, json={"status": "executing", "task": task})

    def _cancel_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        task = self._task(task_id)
        if task["status"] != "running":
            return error_response(409, rc.NOT_RUNNING, f"the task is {task['status']}, not running")
        task.update(status="cancelled", completed_at=now_iso())
        self._task_changed(task)
        return httpx.Response(200, json=task)

    def _patch_task(self, request: httpx.Request, task_id: str) -> httpx.Response:
        task = self._task(task_id)
        body = parse_body(request, PATCH_FIELDS, allow_empty=False)
        if not body:
            return error_response(400, rc.MISSING_FIELD, "nothing to update")
        if task["status"] in TASK_TERMINAL:
            return error_response(409, rc.TASK_FINISHED, f"the task is already {task['status']}")
        if task["status"] != "running":
            return error_response(409, rc.NOT_RUNNING, "the task is not running: execute it first")
        status = body.get("status")
        ends = any(body.get(k) is not None for k in ("status", "result", "error"))
        if ends and (self._caller(request) or "").startswith("worker:"):
            return error_response(403, rc.FORBIDDEN, "a worker reports progress and message only")
        for key in ("progress", "message", "result", "error"):
            if body.get(key) is not None:
                task[key] = body[key]
        if status:
            task["status"] = status
            if status in TASK_TERMINAL:
                task["completed_at"] = now_iso()
        self._task_changed(task)
        return httpx.Response(200, json=task)

    def _task_events(self, request: httpx.Request, task_id: str) -> httpx.Response:
        """Replays the task's recorded states as SSE (with a keepalive comment); ends there."""
        self._task(task_id)
        chunks = [": keepalive\n\n"]
        chunks += [
            f"event: task\ndata: {json.dumps(state)}\n\n" for state in self.task_history[task_id]
        ]
        return httpx.Response(
            200,
            headers={"Content-Type": "text/event-stream"},
            content="".join(chunks).encode(),
        )

    def _task_log(self, request: httpx.Request, task_id: str) -> httpx.Response:
        self._task(task_id)
        return httpx.Response(200, json={"lines": ["started", "done"]})
