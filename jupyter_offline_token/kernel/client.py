"""``OfflineTokenClient``: a thin synchronous httpx wrapper over the extension's REST API.

Every method is one HTTP call over :class:`~.connection.ServerConnection` (credentials,
transport, error mapping); failures become the typed errors of :mod:`.errors`. The higher
level objects (:class:`~.tokens.OfflineToken`, :class:`~.tasks.Task`) are built on it. The client
never logs or reprs its credential, and the only secret it returns is the access token, wrapped in
:class:`AccessToken` whose repr hides the value.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .connection import ServerConnection
from .errors import OfflineTokenClientError

API = "api/offline-token/"
MAX_MIN_TTL = 86400  # the server accepts min_ttl in [0, 86400]


@dataclass(frozen=True)
class AccessToken:
    """One answer of the access-token endpoint; ``value`` is the secret and never in the repr.

    ``deadline`` is on the ``time.monotonic()`` clock, measured from when the request was sent,
    so :meth:`remaining` errs on the short side.

    Example::

        info = tok.access_token_info()
        print(info.token_type, round(info.remaining()))
    """

    value: str = field(repr=False)
    token_type: str
    expires_in: float
    deadline: float
    expires_at: str | None = None
    scope: str | None = None

    def remaining(self) -> float:
        """Seconds left before the provider considers this token expired."""
        return self.deadline - time.monotonic()


def clamp_min_ttl(min_ttl: float) -> int:
    """The server takes an integer ``min_ttl`` in ``[0, 86400]``; round up into that range.

    Example::

        clamp_min_ttl(2.5)  # 3
    """
    if isinstance(min_ttl, bool) or not isinstance(min_ttl, (int, float)):
        raise TypeError("min_ttl must be a number of seconds")
    if math.isnan(min_ttl):
        raise ValueError("min_ttl must be a number of seconds, not NaN")
    if min_ttl <= 0:
        return 0
    if math.isinf(min_ttl):
        return MAX_MIN_TTL
    return min(MAX_MIN_TTL, math.ceil(min_ttl))


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _token_from_body(body: Any, started: float) -> AccessToken:
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise OfflineTokenClientError("the server's access-token answer has no access_token")
    try:
        expires_in = float(body.get("expires_in") or 0)
    except (TypeError, ValueError):
        expires_in = 0.0
    return AccessToken(
        value=body["access_token"],
        token_type=str(body.get("token_type") or "Bearer"),
        expires_in=expires_in,
        deadline=started + expires_in,
        expires_at=body.get("expires_at"),
        scope=body.get("scope"),
    )


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class OfflineTokenClient(ServerConnection):
    """Synchronous client for ``api/offline-token/*`` on one Jupyter server.

    ``server`` is a :class:`~.discovery.ServerInfo`, a URL (then ``token`` is the Jupyter server
    token), or ``None`` to run :func:`~.discovery.find_server`. ``transport``/``async_transport``
    are passed to httpx (tests use ``httpx.MockTransport``, which serves both).

    Example::

        client = OfflineTokenClient("http://127.0.0.1:8888/", token="abc")
        for entry in client.list_tokens():
            print(entry["persistent_token_id"], entry["status"])
    """

    # --- tokens --------------------------------------------------------------------------------
    def create_consent(
        self,
        *,
        label: str | None = None,
        task_id: str | None = None,
        scopes: list[str] | None = None,
        return_to: str | None = None,
        keep_warm: bool | None = None,
    ) -> dict[str, Any]:
        """``POST consents``: a pending entry and the consent URL to open.

        Example::

            body = client.create_consent(label="nightly")
            print(body["consent_url"])
        """
        body = _drop_none(
            {
                "label": label,
                "task_id": task_id,
                "scopes": list(scopes) if scopes is not None else None,
                "return_to": return_to,
                "keep_warm": keep_warm,
            }
        )
        return dict(self._json(self.request("POST", API + "consents", json_body=body)))

    def _pages(
        self, path: str, key: str, status: str | None, page_size: int | None
    ) -> list[dict[str, Any]]:
        """Every item of a paged list: follows ``next_cursor`` until the last page."""
        params: dict[str, Any] = {}
        if status:
            params["status"] = status
        if page_size is not None:
            params["limit"] = page_size
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            body = self._json(self.request("GET", path, params=params or None))
            if not isinstance(body, dict):
                return items
            items.extend(body.get(key, []))
            cursor = body.get("next_cursor")
            if not isinstance(cursor, str) or not cursor or cursor in seen:
                return items
            seen.add(cursor)
            params["cursor"] = cursor

    def list_tokens(
        self, status: str | None = None, *, page_size: int | None = None
    ) -> list[dict[str, Any]]:
        """``GET tokens``: every entry of the current user, newest first (all pages, following
        ``next_cursor``; ``page_size`` entries per request, default the server's).

        Example::

            [t["label"] for t in client.list_tokens(status="active")]
        """
        return self._pages(API + "tokens", "tokens", status, page_size)

    def get_token(self, token_id: str) -> dict[str, Any]:
        """``GET tokens/{id}``: metadata, status and health of one entry.

        Example::

            client.get_token(tid)["status"]
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}"
        return dict(self._json(self.request("GET", path)))

    def _access_body(self, min_ttl: float, keep_warm: bool | None) -> dict[str, Any]:
        return _drop_none({"min_ttl": clamp_min_ttl(min_ttl), "keep_warm": keep_warm})

    def access_token(
        self, token_id: str, *, min_ttl: float = 30, keep_warm: bool | None = None
    ) -> AccessToken:
        """``POST tokens/{id}/access-token``: an access token with at least ``min_ttl`` s left.

        Example::

            header = {"Authorization": f"Bearer {client.access_token(tid).value}"}
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}/access-token"
        started = time.monotonic()
        response = self.request("POST", path, json_body=self._access_body(min_ttl, keep_warm))
        return _token_from_body(self._json(response), started)

    async def aaccess_token(
        self, token_id: str, *, min_ttl: float = 30, keep_warm: bool | None = None
    ) -> AccessToken:
        """Async twin of :meth:`access_token`.

        Example::

            token = await client.aaccess_token(tid)
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}/access-token"
        started = time.monotonic()
        response = await self.arequest(
            "POST", path, json_body=self._access_body(min_ttl, keep_warm)
        )
        return _token_from_body(self._json(response), started)

    def refresh_token(self, token_id: str) -> dict[str, Any]:
        """``POST tokens/{id}/refresh``: one refresh grant now; the entry's metadata and health
        after it (never a token). ``RefreshTooSoon`` within the server's min_refresh_interval
        of the last refresh, ``ProviderUnavailable`` while the provider fails.

        Example::

            client.refresh_token(tid)["last_refresh_at"]
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}/refresh"
        return dict(self._json(self.request("POST", path, json_body={})))

    def clear_access_token(self, token_id: str) -> None:
        """``DELETE tokens/{id}/access-token``: the server process drops its cached access
        token (nothing is revoked); the next request reads the vault, and may refresh.

        Example::

            client.clear_access_token(tid)
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}/access-token"
        self.request("DELETE", path)

    def delete_token(
        self, token_id: str, *, revoke: bool = True, force: bool = False
    ) -> dict[str, Any]:
        """``DELETE tokens/{id}``: revoke at the provider (unless ``revoke=False``) and delete.

        Returns ``{"deleted": True, ...}`` plus ``warning``/``shared_with`` when the server sends
        them.

        Example::

            print(client.delete_token(tid).get("warning", "deleted"))
        """
        params: dict[str, str] = {}
        if not revoke:
            params["revoke"] = "false"
        if force:
            params["force"] = "true"
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}"
        response = self.request("DELETE", path, params=params or None)
        if response.status_code == 204 or not response.content:
            return {"deleted": True}
        body = self._json(response)
        return dict(body) if isinstance(body, dict) else {"deleted": True}

    def token_audit(self, token_id: str) -> list[dict[str, Any]]:
        """``GET tokens/{id}/audit``: the entry's audit events (no secrets).

        Example::

            for ev in client.token_audit(tid):
                print(ev["ts"], ev["action"], ev["result"])
        """
        path = f"{API}tokens/{_segment(token_id, 'persistent_token_id')}/audit"
        body = self._json(self.request("GET", path))
        return list(body.get("events", [])) if isinstance(body, dict) else []

    def health(self) -> dict[str, Any]:
        """``GET health``: overall level, counts per level, and the first page of the entries
        that need attention (failed, retrying).

        Example::

            client.health()["level"]
        """
        return dict(self._json(self.request("GET", API + "health")))

    # --- tasks ---------------------------------------------------------------------------------
    def create_task(
        self,
        name: str,
        *,
        kind: str = "kernel",
        description: str | None = None,
        command: list[str] | None = None,
        notebook: str | None = None,
        persistent_token_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST tasks``: a new task (``pending``).

        Example::

            task = client.create_task("train", persistent_token_id=tid)
        """
        body = _drop_none(
            {
                "name": name,
                "kind": kind,
                "description": description,
                "command": list(command) if command is not None else None,
                "notebook": notebook,
                "persistent_token_id": persistent_token_id,
                "parameters": parameters,
            }
        )
        return dict(self._json(self.request("POST", API + "tasks", json_body=body)))

    def list_tasks(
        self, status: str | None = None, *, page_size: int | None = None
    ) -> list[dict[str, Any]]:
        """``GET tasks``: the user's tasks, newest first (all pages, following
        ``next_cursor``; ``page_size`` tasks per request, default the server's).

        Example::

            client.list_tasks(status="running")
        """
        return self._pages(API + "tasks", "tasks", status, page_size)

    def _task_path(self, task_id: str, suffix: str = "") -> str:
        return f"{API}tasks/{_segment(task_id, 'task id')}{suffix}"

    def get_task(self, task_id: str) -> dict[str, Any]:
        """``GET tasks/{id}``.

        Example::

            client.get_task(task_id)["progress"]
        """
        return dict(self._json(self.request("GET", self._task_path(task_id))))

    def delete_task(self, task_id: str) -> None:
        """``DELETE tasks/{id}`` (the server refuses while it runs).

        Example::

            client.delete_task(task_id)
        """
        self.request("DELETE", self._task_path(task_id))

    def link_task(self, task_id: str, persistent_token_id: str) -> dict[str, Any]:
        """``POST tasks/{id}/link``: attach an offline token to the task.

        Example::

            client.link_task(task_id, tid)["offline_token_status"]
        """
        body = {"persistent_token_id": persistent_token_id}
        return dict(
            self._json(self.request("POST", self._task_path(task_id, "/link"), json_body=body))
        )

    def execute_task(self, task_id: str) -> dict[str, Any]:
        """``POST tasks/{id}/execute``: returns the task (running, or queued as pending).

        Example::

            client.execute_task(task_id)["status"]
        """
        body = self._json(self.request("POST", self._task_path(task_id, "/execute")))
        task = body.get("task") if isinstance(body, dict) else None
        return dict(task) if isinstance(task, dict) else dict(body)

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """``POST tasks/{id}/cancel``.

        Example::

            client.cancel_task(task_id)["status"]  # "cancelled"
        """
        return dict(self._json(self.request("POST", self._task_path(task_id, "/cancel"))))

    def update_task(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """``PATCH tasks/{id}`` with ``progress``, ``message``, ``status``, ``result``, ``error``.

        Example::

            client.update_task(task_id, progress=50, message="half way")
        """
        body = _drop_none(fields)
        return dict(self._json(self.request("PATCH", self._task_path(task_id), json_body=body)))

    def create_worker_credential(self, task_id: str) -> dict[str, Any]:
        """``POST tasks/{id}/worker-credentials``: a worker credential of the running task.

        Example::

            body = client.create_worker_credential(task_id)  # {"credential", "url", ...}
        """
        path = self._task_path(task_id, "/worker-credentials")
        return dict(self._json(self.request("POST", path)))

    def task_log(self, task_id: str) -> list[str]:
        """``GET tasks/{id}/log``: the last output lines of a process task.

        Example::

            print("\\n".join(client.task_log(task_id)))
        """
        body = self._json(self.request("GET", self._task_path(task_id, "/log")))
        return [str(line) for line in body.get("lines", [])] if isinstance(body, dict) else []

    def task_events(self, task_id: str) -> Iterator[dict[str, Any]]:
        """``GET tasks/{id}/events``: yield each task state from the server-sent-events stream.

        The stream ends after a terminal status.

        Example::

            for state in client.task_events(task_id):
                print(state["progress"], state["message"])
        """
        yield from self.sse(self._task_path(task_id, "/events"), "task")


_default_client: OfflineTokenClient | None = None
_default_lock = threading.Lock()


def get_default_client() -> OfflineTokenClient:
    """The process-wide client, discovered on first use (see :func:`~.discovery.find_server`).

    Example::

        get_default_client().server.url
    """
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = OfflineTokenClient()
        return _default_client


def set_default_client(client: OfflineTokenClient | None) -> OfflineTokenClient | None:
    """Replace the process-wide client (``None`` to rediscover); returns the previous one.

    Example::

        set_default_client(OfflineTokenClient("http://127.0.0.1:8888/", token="abc"))
    """
    global _default_client
    with _default_lock:
        previous, _default_client = _default_client, client
        return previous
