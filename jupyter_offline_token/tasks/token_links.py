"""The task side of the token broker: which token a task runs with, and what happens to tasks
when their token is granted, fails or is deleted; plus the scoped task credential's check."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .. import rest_codes
from ..crypto import KeyRing
from ..errors import Conflict, Forbidden, NotFound, OfflineTokenError, VaultError
from ..models import ACTIVE, PENDING, TokenRecord
from .credentials import TaskPrincipal, hash_secret
from .models import RUNNING, TaskRecord, is_task_id
from .worker_credentials import is_worker_shaped, worker_run_hash, worker_secret

if TYPE_CHECKING:
    import asyncio

    from ..broker import AccessToken
    from .service import TaskService

log = logging.getLogger("jupyter_offline_token.tasks")

MAX_SECRET_CHARS = 256


class TokenLinks:
    """Tasks and their offline tokens, for the service and the broker: it is the task side's
    ``TokenEvents`` listener and ``TokenUsage`` (see ``token_events``)."""

    def __init__(self, service: TaskService, lock: asyncio.Lock) -> None:
        self.service = service
        self.store = service.store
        self._lock = lock

    async def check_token(self, task: TaskRecord) -> TokenRecord:
        """The task's token, if it may run now; Conflict saying what to do otherwise."""
        if task.persistent_token_id is None:
            raise Conflict(
                f"task {task.id} has no offline token: request consent with this task_id, or "
                "link an active token",
                code=rest_codes.NEEDS_CONSENT,
            )
        try:
            token = await self.service.broker.get_token(task.owner, task.persistent_token_id)
        except NotFound:
            raise Conflict(
                f"the offline token of task {task.id} no longer exists: request consent again",
                code=rest_codes.NEEDS_CONSENT,
            ) from None
        if token.status == PENDING:
            raise Conflict(
                f"offline token {token.id} is waiting for the user to grant consent",
                code=rest_codes.WAITING_CONSENT,
            )
        if token.status != ACTIVE:
            raise Conflict(
                f"offline token {token.id} is {token.status}"
                + (f" ({token.last_error})" if token.last_error else "")
                + ": request consent again",
                code=rest_codes.TOKEN_FAILED,
            )
        return token

    async def fetch_access_token(self, task: TaskRecord) -> Any:
        """A fresh access token of a demo task's token (each step proves the token works)."""
        assert task.persistent_token_id is not None
        return await self.service.broker.get_access_token(task.owner, task.persistent_token_id)

    async def authenticate(self, secret: str) -> TaskPrincipal | None:
        """The running task a scoped credential belongs to, or None."""
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return None
        worker_hash = worker_run_hash(secret, self._keyring()) if is_worker_shaped(secret) else None
        if is_worker_shaped(secret) and worker_hash is None:
            return None  # forged, or keyed by a key no longer in the ring
        run_hash = worker_hash or hash_secret(secret)
        task = await self.store.find_running_by_credential(run_hash)
        if task is None:
            return None
        return TaskPrincipal(
            task.id, task.persistent_token_id, task.owner, worker_hash is not None, run_hash
        )

    def _keyring(self) -> KeyRing | None:
        try:
            return self.service.broker.vault.keyring
        except (AttributeError, VaultError):  # a closed store: nothing authenticates
            return None

    async def worker_credential(
        self, owner: str | None, task_id: str, principal: TaskPrincipal | None
    ) -> dict[str, Any]:
        """A worker credential for a running task: asked by the task itself (``principal``) or
        by its owner on the server that started the run (which remembers the run's hash)."""
        if principal is not None and principal.worker:
            raise Forbidden("a worker credential cannot mint worker credentials")
        task = await self.service.get(owner, task_id)
        if task.status != RUNNING:
            code = rest_codes.TASK_FINISHED if task.terminal else rest_codes.NOT_RUNNING
            raise Conflict(f"task {task_id} is {task.status}, not running", code=code)
        run_hash = principal.run_hash if principal is not None else None
        run_hash = run_hash or self.service.supervisor.run_hashes.get(task.id)
        found = await self.store.find_running_by_credential(run_hash) if run_hash else None
        if found is None or found.id != task.id:
            raise Conflict(
                f"task {task_id} was started by another server process: ask for worker "
                "credentials from inside the task (current_task().worker_credential())",
                code=rest_codes.NOT_RUNNING,
            )
        assert run_hash is not None
        return {
            "credential": worker_secret(run_hash, self.service.broker.vault.keyring),
            "task_id": task.id,
            "persistent_token_id": task.persistent_token_id,
            "url": self.service.server_url,
        }

    async def check_task_for_consent(self, owner: str, task_id: str) -> None:
        """For ``POST consents`` with a task_id: NotFound unless the caller owns the task."""
        await self.service.get(owner, task_id)

    async def linked_tasks(self, owner: str | None, token_ids: list[str]) -> dict[str, list[str]]:
        linked: dict[str, list[str]] = {}
        for task in await self.store.for_tokens(list(token_ids), owner=owner):
            assert task.persistent_token_id is not None
            linked.setdefault(task.persistent_token_id, []).append(task.id)
        return linked

    async def tokens_in_use(self, token_id: str) -> list[str]:
        """Tasks running (or queued) with this token: DELETE answers 409 token_in_use."""
        return [
            t.id for t in await self.store.for_tokens([token_id]) if t.status == RUNNING or t.queued
        ]

    async def cancel_for_token(self, token_id: str) -> list[str]:
        """Cancel every running or queued task of a token (DELETE ...?force=true)."""
        cancelled = []
        for task_id in await self.tokens_in_use(token_id):
            with contextlib.suppress(OfflineTokenError):
                await self.service.cancel(None, task_id)
                cancelled.append(task_id)
        return cancelled

    async def token_activated(self, record: TokenRecord) -> None:
        """A consent requested with ``task_id`` links its task when granted."""
        if not record.task_id or not is_task_id(record.task_id):
            return
        async with self._lock:
            task = await self.store.get(record.task_id)
            if task is None or task.owner != record.owner:
                return
            if task.status == RUNNING or task.queued:
                log.info("task %s is running: not relinked to token %s", task.id, record.id)
                return
            await self.service.updates.update(
                task.id, expect=(task.status,), persistent_token_id=record.id
            )

    async def token_status_changed(self, record: TokenRecord) -> None:
        """Republish linked tasks (their offline_token_status changed); a deleted entry
        cancels its running tasks and is unlinked from the others."""
        tasks = await self.store.for_tokens([record.id])
        if not tasks:
            return
        if await self.service.vault.get(record.id) is None:
            await self.cancel_for_token(record.id)
            async with self._lock:
                for task in tasks:
                    await self.service.updates.try_update(task.id, persistent_token_id=None)
            return
        for task in tasks:
            self.service.events.publish(task)

    async def token_refreshed(self, record: TokenRecord, token: AccessToken) -> None:
        """Nothing to do: a task fetches its access token when it needs one."""

    def token_served_from_cache(self, token_id: str) -> None:
        """Nothing to do (the refresh engine counts cache hits)."""
