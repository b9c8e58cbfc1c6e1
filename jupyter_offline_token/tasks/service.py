"""TaskService: create, link, execute, cancel, report and delete tasks linked to offline tokens.

The facade the handlers, the app and the broker call. It owns every status change a request
makes, under one lock; the parts it delegates to are named for what they hold: the run queue
(:mod:`.queue`), the runs of this server (:mod:`.supervisor`, starting work through a
:class:`~.runners.TaskRunner`), the events stream (:mod:`.events`), the tokens running tasks
keep warm (:mod:`.warmth`), task files (:mod:`.files`) and the scoped credential
(:mod:`.credentials`). Input arrives validated (``handlers/task_requests.py``); the service
enforces state rules (409) and ownership (404); the store works on the vault's thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .. import rest_codes
from ..broker import TokenBroker
from ..errors import Conflict, NotFound, OfflineTokenError
from ..paging import Cursor, Page
from ..settings import OfflineTokenSettings
from ..stores import SQLiteTaskStore, SQLiteTokenStore, TaskStore, TokenStore
from .credentials import task_environment
from .events import TaskEvents, TaskUpdates
from .files import TaskFiles
from .models import (
    CANCELLED,
    COMPLETED,
    DEMO,
    KERNEL,
    NOTEBOOK,
    PROCESS_KINDS,
    RUNNING,
    TASK_FAILED,
    TASK_PENDING,
    TaskRecord,
    is_task_id,
)
from .queue import RunQueue
from .runners import LocalTaskRunner, TaskRunner
from .supervisor import ActiveRun, Supervisor, supervised_elsewhere
from .token_links import TokenLinks
from .warmth import TaskWarmth

log = logging.getLogger("jupyter_offline_token.tasks")

# Retention purge: rows per transaction, transactions per sweep.
PURGE_BATCH = 200
PURGE_MAX_BATCHES = 10
LEFTOVER_MESSAGE = "interrupted: the Jupyter server stopped while the task ran; execute it again"


class TaskService:
    """Tasks of every user of this server; every public method takes the caller's ``owner``
    (None for trusted internal callers) and raises the errors of ``errors.py``."""

    def __init__(
        self,
        vault: TokenStore,
        broker: TokenBroker,
        *,
        store: TaskStore | None = None,
        root_dir: str | Path,
        server_url: Callable[[], str] | str,
        settings: OfflineTokenSettings | None = None,
        state_dir: str | Path | None = None,
        server_secrets: Callable[[], Iterable[str]] | None = None,
        python: str = sys.executable,
        keepalive_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        runner: TaskRunner | None = None,
    ) -> None:
        self.vault = vault
        self.broker = broker
        # max_running_tasks, task_cancel_grace and task_report_grace; defaults when None.
        settings = settings if settings is not None else OfflineTokenSettings()
        if store is None or state_dir is None:  # defaults for the SQLite vault (tests, tools)
            assert isinstance(vault, SQLiteTokenStore), "a task store and state_dir are required"
            store = store if store is not None else SQLiteTaskStore(vault)
            state_dir = state_dir if state_dir is not None else vault.path.parent / "tasks"
        self.store = store
        self._server_url = server_url
        self._server_secrets = server_secrets or (lambda: ())
        self.keepalive_interval = keepalive_interval
        self.clock = clock
        self.runner = runner if runner is not None else LocalTaskRunner(python=python)
        self.files = TaskFiles(Path(state_dir), Path(root_dir))
        self.events = TaskEvents()
        self.updates = TaskUpdates(self.store, self.events, clock)
        self.warmth = TaskWarmth()
        self.queue = RunQueue(settings.max_running_tasks)
        self._lock = asyncio.Lock()
        # The broker's side: its hooks and the handlers call these (see TokenLinks).
        self.links = TokenLinks(self, self._lock)
        self.supervisor = Supervisor(
            self.runner,
            self.updates,
            self.warmth,
            self.files,
            environment=self._environment,
            fetch_token=self.links.fetch_access_token,
            cancel_grace=settings.task_cancel_grace,
            report_grace=settings.task_report_grace,
        )
        self.supervisor.on_run_end = self._start_queued
        self.authenticate = self.links.authenticate
        self.worker_credential = self.links.worker_credential
        self.check_task_for_consent = self.links.check_task_for_consent
        self.linked_tasks = self.links.linked_tasks
        self.tokens_in_use = self.links.tokens_in_use
        self.cancel_for_token = self.links.cancel_for_token
        self._started = False
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"TaskService(running={len(self.supervisor.active)}, queued={len(self.queue)}, "
            f"max_running_tasks={self.max_running_tasks})"
        )

    # --- settings ----------------------------------------------------------------------------
    @property
    def max_running_tasks(self) -> int:
        return self.queue.max_running

    @property
    def cancel_grace(self) -> float:
        return self.supervisor.cancel_grace

    @cancel_grace.setter
    def cancel_grace(self, value: float) -> None:
        self.supervisor.cancel_grace = float(value)

    @property
    def state_dir(self) -> Path:
        return self.files.state_dir

    @property
    def server_url(self) -> str:
        url = self._server_url() if callable(self._server_url) else self._server_url
        return url if url.endswith("/") else url + "/"

    def _environment(self, task: TaskRecord, secret: str) -> dict[str, str]:
        return task_environment(
            None,
            server_url=self.server_url,
            task_id=task.id,
            token_id=task.persistent_token_id,
            secret=secret,
            parameters=task.parameters,
            server_secrets=list(self._server_secrets()),
        )

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Interrupt what a previous server left running; returns those task ids. Idempotent."""
        if self._started:
            return []
        runner_id = self.supervisor.runner_id
        ids = await self.store.interrupt_leftovers(
            self.clock(),
            LEFTOVER_MESSAGE,
            still_supervised=lambda runner: supervised_elsewhere(runner_id, runner),
        )
        self._started = True
        self._stopping = False
        self.supervisor.stopping = False
        if ids:
            log.info("%d task(s) left running by a previous server are interrupted", len(ids))
        return ids

    async def stop(self) -> None:
        """Stop every run of this server (SIGTERM, SIGKILL after the grace) and mark those
        tasks ``interrupted``; queued tasks too. Idempotent."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self.queue.clear()
        await self.supervisor.shutdown()
        try:
            await self.store.interrupt_leftovers(
                self.clock(),
                LEFTOVER_MESSAGE,
                still_supervised=lambda runner: runner != self.supervisor.runner_id,
            )
        except Exception:
            log.debug("could not mark the leftovers interrupted", exc_info=True)
        # Kernel tasks have no process here but end with the server too (interrupted above):
        # their tokens stop being warm and the server stops counting them as activity.
        await self.warmth.clear()
        self.events.close()
        self.files.close()
        self._started = False

    # --- reading ---------------------------------------------------------------------------
    async def get(self, owner: str | None, task_id: str) -> TaskRecord:
        """The task, NotFound for an id that is not a task id or not the caller's."""
        task = await self.store.get(task_id) if is_task_id(task_id) else None
        if task is None or (owner is not None and task.owner != owner):
            raise NotFound(f"no task {task_id!r}")
        return task

    async def list_page(
        self,
        owner: str | None,
        *,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        """One page of tasks, newest first, after ``cursor``."""
        return await self.store.list_page(owner=owner, status=status, limit=limit, cursor=cursor)

    async def log_lines(self, owner: str | None, task_id: str, *, limit: int = 200) -> list[str]:
        """The last lines of a process task's output (live while it runs, else its log file)."""
        active = self.supervisor.active.get((await self.get(owner, task_id)).id)
        lines = active.run.log_lines() if active else await self.files.tail(task_id, limit)
        return lines[-limit:]

    def task_dir(self, task_id: str) -> Path:
        return self.files.task_dir(task_id)

    async def resolve_notebook(self, notebook: str) -> Path:
        """The notebook's real path, which must be a file inside the root dir (symlinks too)."""
        return await self.files.resolve_notebook(notebook)

    async def purge_finished(
        self, before: float, *, batch: int = PURGE_BATCH, max_batches: int = PURGE_MAX_BATCHES
    ) -> int:
        """Delete finished tasks unchanged since ``before`` and their files: at most
        ``max_batches`` short transactions of ``batch`` rows, so one sweep stays bounded (the
        rest goes next sweep). Returns how many were purged."""
        purged = 0
        for _ in range(max_batches):
            ids = await self.store.purge(before, limit=batch)
            for task_id in filter(is_task_id, ids):  # a directory name never from raw text
                await self.files.remove(task_id)
            purged += len(ids)
            if len(ids) < batch:
                break
        if purged:
            log.info("purged %d finished task(s) older than the retention", purged)
        return purged

    def warm_tokens(self) -> set[str]:
        """Tokens linked to a task running on this server."""
        return self.warmth.tokens()

    # --- creating, linking, deleting -------------------------------------------------------
    async def create(
        self,
        owner: str,
        *,
        name: str,
        description: str = "",
        kind: str = KERNEL,
        command: list[str] | None = None,
        notebook: str | None = None,
        persistent_token_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> TaskRecord:
        """Store a new pending task (validated input: see ``handlers/task_requests.py``).
        InvalidRequest for a notebook not in the root dir, NotFound for a foreign token."""
        if notebook is not None:
            await self.resolve_notebook(notebook)
            notebook = str(PurePosixPath(notebook))
        if persistent_token_id is not None:
            await self.broker.get_token(owner, persistent_token_id)  # NotFound for a foreign one
        now = self.clock()
        task = TaskRecord(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            description=description,
            kind=kind,
            status=TASK_PENDING,
            created_at=now,
            updated_at=now,
            persistent_token_id=persistent_token_id,
            command=list(command) if command is not None else None,
            notebook=notebook,
            parameters=dict(parameters or {}),
        )
        created = await self.store.create(task)
        self.events.publish(created)
        return created

    async def link(self, owner: str | None, task_id: str, token_id: str) -> TaskRecord:
        async with self._lock:
            task = await self.get(owner, task_id)
            await self.broker.get_token(task.owner, token_id)
            if task.status == RUNNING or task.queued:
                raise Conflict(
                    f"task {task_id} is {task.status}: cancel it before linking another token",
                    code=rest_codes.TASK_RUNNING,
                )
            return await self.updates.update(
                task.id, expect=(task.status,), persistent_token_id=token_id
            )

    async def delete(self, owner: str | None, task_id: str) -> None:
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.status == RUNNING or task.queued or task.id in self.supervisor.active:
                raise Conflict(
                    f"task {task_id} is {'queued' if task.queued else 'running'}: cancel it first",
                    code=rest_codes.TASK_RUNNING,
                )
            await self.store.delete(task.id)
        await self.files.remove(task.id)

    # --- executing -------------------------------------------------------------------------
    async def execute(self, owner: str | None, task_id: str) -> TaskRecord:
        """Start the task now, or queue it when ``max_running_tasks`` runs are busy. Retries a
        failed, cancelled, interrupted (or completed) task."""
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.status == RUNNING or task.queued:
                raise Conflict(
                    f"task {task_id} is already {'queued' if task.queued else 'running'}",
                    code=rest_codes.ALREADY_RUNNING,
                )
            if task.id in self.supervisor.active:
                raise Conflict(
                    f"task {task_id} is still stopping its previous run; try again shortly",
                    code=rest_codes.ALREADY_RUNNING,
                )
            await self._check_startable(task)
            if task.kind == KERNEL:
                return await self.supervisor.mark_kernel_running(task)
            if self.queue.slot_free(len(self.supervisor.active)) and not self.queue:
                return await self.supervisor.launch_or_fail(task)
            return await self.updates.update(
                task.id,
                expect=(task.status,),
                status=TASK_PENDING,
                queued_at=self.clock(),
                runner=self.supervisor.runner_id,
                progress=0,
                message=self.queue.append(task.id),
                result=None,
                error=None,
                started_at=None,
                completed_at=None,
            )

    async def _check_startable(self, task: TaskRecord) -> None:
        """Conflict unless the task's token is active; InvalidRequest for a notebook gone."""
        await self.links.check_token(task)
        if task.kind == NOTEBOOK and task.notebook is not None:
            await self.resolve_notebook(task.notebook)

    async def _start_queued(self) -> None:
        """Start queued tasks while slots are free (a run just ended)."""
        async with self._lock:
            while (
                self.queue
                and self.queue.slot_free(len(self.supervisor.active))
                and not self._stopping
            ):
                task = await self.store.get(self.queue.pop())
                if task is None or not task.queued:
                    continue
                try:
                    await self._check_startable(task)
                except OfflineTokenError as exc:
                    await self._fail_queued(task, exc)
                    continue
                try:
                    await self.supervisor.launch_or_fail(task)
                except Exception:  # even recording the failure failed: on with the queue
                    log.exception("task %s: could not start from the queue", task.id)
            await self.queue.renumber(self.updates)

    async def _fail_queued(self, task: TaskRecord, exc: OfflineTokenError) -> None:
        await self.updates.update(
            task.id,
            expect=(TASK_PENDING,),
            status=TASK_FAILED,
            queued_at=None,
            completed_at=self.clock(),
            error=exc.message,
            message="could not start",
        )

    # --- reporting and ending --------------------------------------------------------------
    async def patch(
        self,
        owner: str | None,
        task_id: str,
        *,
        progress: float | None = None,
        message: str | None = None,
        status: str | None = None,
        result: str | None = None,
        error: str | None = None,
        by_task: bool = False,
    ) -> TaskRecord:
        """Progress and end reports from the work itself (kernel helper or task process).

        A process (``command``, ``notebook``) or ``demo`` run decides how it ends: the Jupyter
        user cannot end one with a status (409 ``use_cancel``: cancel it instead), and a task
        process's own report (``by_task``, its scoped credential) is recorded, while its exit
        still settles the task: a reported failure stands, a completion needs exit code 0, and a
        process still running ``report_grace`` seconds after its report is stopped."""
        changes: dict[str, Any] = {
            k: v
            for k, v in (("progress", progress), ("message", message), ("result", result))
            if v is not None
        }
        if error is not None:
            changes["error"] = error
        ending = status in (COMPLETED, TASK_FAILED)
        if status == COMPLETED and progress is None:
            changes["progress"] = 100.0
        async with self._lock:
            task = await self._running(owner, task_id)
            supervised = task.kind in PROCESS_KINDS or task.kind == DEMO
            if ending and supervised and not by_task:
                raise Conflict(
                    f"task {task_id} is a {task.kind} task: its process decides how it ends; "
                    "cancel it instead",
                    code=rest_codes.USE_CANCEL,
                )
            entry = self.supervisor.active.get(task.id)
            if ending and supervised and entry is not None:
                assert status is not None
                return await self._record_report(entry, task, status, changes)
            if ending:
                changes.update(status=status, completed_at=self.clock(), credential_hash=None)
                if status == TASK_FAILED and error is None:
                    changes["error"] = "the task reported a failure"
            updated = await self.updates.update(task.id, expect=(RUNNING,), **changes)
        if updated.terminal:
            self.supervisor.run_hashes.pop(task.id, None)
            await self.warmth.remove(task.id, task.persistent_token_id)
        return updated

    async def _record_report(
        self, entry: ActiveRun, task: TaskRecord, status: str, changes: dict[str, Any]
    ) -> TaskRecord:
        """A supervised process reported its end: recorded now, settled when it exits."""
        if status == TASK_FAILED:
            changes["error"] = changes.get("error") or "the task reported a failure"
        changes.setdefault("message", f"reported {status}; waiting for the process to exit")
        error = changes["error"] if status == TASK_FAILED else None
        self.supervisor.record_report(entry, status, error)
        return await self.updates.update(task.id, expect=(RUNNING,), **changes)

    async def _running(self, owner: str | None, task_id: str) -> TaskRecord:
        task = await self.get(owner, task_id)
        if task.terminal:
            raise Conflict(f"task {task_id} already {task.status}", code=rest_codes.TASK_FINISHED)
        if task.status != RUNNING:
            raise Conflict(
                f"task {task_id} is not running: execute it first", code=rest_codes.NOT_RUNNING
            )
        return task

    async def cancel(self, owner: str | None, task_id: str) -> TaskRecord:
        """Cancelled at once; the process gets SIGTERM, then SIGKILL after ``cancel_grace``."""
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.queued:
                self.queue.remove(task.id)
                updated = await self.updates.update(
                    task.id,
                    expect=(TASK_PENDING,),
                    status=CANCELLED,
                    queued_at=None,
                    completed_at=self.clock(),
                    message="cancelled before it started",
                )
                await self.queue.renumber(self.updates)
                return updated
            if task.status != RUNNING:
                raise Conflict(
                    f"task {task_id} is {task.status}, not running", code=rest_codes.NOT_RUNNING
                )
            updated = await self.updates.update(
                task.id,
                expect=(RUNNING,),
                status=CANCELLED,
                completed_at=self.clock(),
                credential_hash=None,
                message="cancelled",
            )
            entry = self.supervisor.active.get(task.id)
            if entry is not None:
                self.supervisor.stop(entry)
            self.supervisor.run_hashes.pop(task.id, None)
        await self.warmth.remove(task.id, task.persistent_token_id)
        return updated
