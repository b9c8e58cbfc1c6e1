"""TaskService: create, execute, supervise, cancel and report tasks linked to offline tokens.

Owns every status change of a task, the bounded pool of running processes (with a FIFO queue
behind it), the scoped task credentials, and a per-task pub/sub that feeds the events stream.
All SQLite work goes through :class:`TaskStore` on the vault's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..broker import TokenBroker
from ..errors import Conflict, InvalidRequest, NotFound, OfflineTokenError
from ..models import ACTIVE, PENDING, TokenRecord
from ..paging import Cursor, Page
from ..stores import SQLiteTaskStore, SQLiteTokenStore
from .credentials import TaskPrincipal, hash_secret, new_task_secret, task_environment
from .models import (
    CANCELLED,
    COMMAND,
    COMPLETED,
    DEMO,
    INTERRUPTED,
    KERNEL,
    KINDS,
    MAX_DESCRIPTION,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_TEXT,
    NOTEBOOK,
    PROCESS_KINDS,
    RUNNING,
    STATUSES,
    TASK_FAILED,
    TASK_PENDING,
    TaskRecord,
)
from .runners import DemoRun, Outcome, ProcessRun, TaskRun

log = logging.getLogger("jupyter_offline_token.tasks")

MAX_ARGV = 256
MAX_ARG_CHARS = 8192
MAX_PARAMETERS_BYTES = 32 * 1024
MAX_PARAMETERS_DEPTH = 32
LOG_FILE = "output.log"
EXECUTED_NOTEBOOK = "executed.ipynb"
EVENT_QUEUE_SIZE = 1024
# Retention purge: rows per transaction, transactions per sweep.
PURGE_BATCH = 200
PURGE_MAX_BATCHES = 10

WarmHook = Callable[[str, bool], Awaitable[None]]


@dataclass
class _Active:
    """A run in this process: its work, the supervising asyncio task, and who it belongs to."""

    task_id: str
    owner: str
    token_id: str | None
    run: TaskRun
    supervisor: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    # The end the process reported itself (status, error); its exit still settles the task.
    reported: tuple[str, str | None] | None = None
    end_timer: asyncio.Task[None] | None = None
    stopped_after_report: bool = False


@dataclass
class _Subscribers:
    queues: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)


class TaskService:
    """Tasks of every user of this server; every public method takes the caller's ``owner``
    (None for trusted internal callers) and raises the errors of ``errors.py``."""

    def __init__(
        self,
        vault: SQLiteTokenStore,
        broker: TokenBroker,
        *,
        root_dir: str | Path,
        server_url: Callable[[], str] | str,
        max_running_tasks: int = 4,
        cancel_grace: float = 10.0,
        state_dir: str | Path | None = None,
        server_secrets: Callable[[], Iterable[str]] | None = None,
        python: str = sys.executable,
        keepalive_interval: float = 15.0,
        report_grace: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_running_tasks, bool) or not isinstance(max_running_tasks, int):
            raise ValueError("max_running_tasks must be an integer")
        if max_running_tasks < 1:
            raise ValueError("max_running_tasks must be at least 1")
        if not cancel_grace >= 0:
            raise ValueError("cancel_grace must be >= 0")
        if not report_grace >= 0:
            raise ValueError("report_grace must be >= 0")
        self.vault = vault
        self.broker = broker
        self.store = SQLiteTaskStore(vault)
        self.root_dir = Path(root_dir)
        self._server_url = server_url
        self.max_running_tasks = max_running_tasks
        self.cancel_grace = float(cancel_grace)
        self.state_dir = Path(state_dir) if state_dir else vault.path.parent / "tasks"
        self._server_secrets = server_secrets or (lambda: ())
        self.python = python
        self.keepalive_interval = keepalive_interval
        # How long a process may keep running after reporting its own end before it is stopped.
        self.report_grace = float(report_grace)
        self.clock = clock
        # Identifies this server process in running rows (see interrupt_leftovers).
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_warm_change: list[WarmHook] = []
        self._active: dict[str, _Active] = {}
        self._queue: deque[str] = deque()
        self._warm: dict[str, set[str]] = {}  # token id -> running task ids
        self._subscribers: dict[str, _Subscribers] = {}
        self._lock = asyncio.Lock()
        self._io_executor: ThreadPoolExecutor | None = None
        self._started = False
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"TaskService(running={len(self._active)}, queued={len(self._queue)}, "
            f"max_running_tasks={self.max_running_tasks})"
        )

    @property
    def _io(self) -> ThreadPoolExecutor:
        """One thread for task file work (logs, notebook paths): never on the event loop."""
        if self._io_executor is None:
            self._io_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="offline-token-task-io"
            )
        return self._io_executor

    @property
    def server_url(self) -> str:
        url = self._server_url() if callable(self._server_url) else self._server_url
        return url if url.endswith("/") else url + "/"

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Interrupt what a previous server left running; returns those task ids. Idempotent."""
        if self._started:
            return []
        ids = await self.store.interrupt_leftovers(
            self.clock(),
            "interrupted: the Jupyter server stopped while the task ran; execute it again",
            still_supervised=self._supervised_elsewhere,
        )
        self._started = True
        self._stopping = False
        if ids:
            log.info("%d task(s) left running by a previous server are interrupted", len(ids))
        return ids

    def _supervised_elsewhere(self, runner: str | None) -> bool:
        """True when ``runner`` is another live server on this host (sharing the vault)."""
        if not runner or runner == self.runner_id:
            return False
        host, _, rest = runner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != socket.gethostname() or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return False  # an earlier service of this very process: it is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def stop(self) -> None:
        """Stop every run of this server (SIGTERM, SIGKILL after the grace) and mark those
        tasks ``interrupted``; queued tasks too. Idempotent."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._queue.clear()
        active = list(self._active.values())
        for entry in active:
            if entry.end_timer is not None:
                entry.end_timer.cancel()
            entry.stopper = asyncio.ensure_future(entry.run.terminate(self.cancel_grace))
        pending = [e.supervisor for e in active if e.supervisor is not None]
        pending += [e.stopper for e in active if e.stopper is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.cancel_grace + 10)
        with contextlib.suppress(Exception):
            await self.store.interrupt_leftovers(
                self.clock(),
                "interrupted: the Jupyter server stopped while the task ran; execute it again",
                still_supervised=lambda runner: runner != self.runner_id,
            )
        # Kernel tasks have no process here but end with the server too (interrupted above):
        # their tokens stop being warm and the server stops counting them as activity.
        for token_id, running in list(self._warm.items()):
            for task_id in list(running):
                await self._warm_remove(task_id, token_id)
        for subscribers in self._subscribers.values():
            for queue in subscribers.queues:
                _offer(queue, {"_closed": True})
        if self._io_executor is not None:
            self._io_executor.shutdown(wait=False)
            self._io_executor = None
        self._started = False

    # --- reading -------------------------------------------------------------------------------
    async def get(self, owner: str | None, task_id: str) -> TaskRecord:
        if not _is_task_id(task_id):
            raise NotFound(f"no task {task_id!r}")
        task = await self.store.get(task_id)
        if task is None or (owner is not None and task.owner != owner):
            raise NotFound(f"no task {task_id!r}")
        return task

    async def list_tasks(self, owner: str | None, *, status: str | None = None) -> list[TaskRecord]:
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(STATUSES)}", code="invalid_query"
            )
        return await self.store.list(owner=owner, status=status)

    async def list_page(
        self,
        owner: str | None,
        *,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        """One page of tasks, newest first, after ``cursor``."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(STATUSES)}", code="invalid_query"
            )
        return await self.store.list_page(owner=owner, status=status, limit=limit, cursor=cursor)

    async def purge_finished(
        self, before: float, *, batch: int = PURGE_BATCH, max_batches: int = PURGE_MAX_BATCHES
    ) -> int:
        """Delete finished tasks unchanged since ``before`` and their files: at most
        ``max_batches`` short transactions of ``batch`` rows, so one sweep stays bounded (the
        rest goes next sweep). Returns how many were purged."""
        purged = 0
        for _ in range(max_batches):
            ids = await self.store.purge(before, limit=batch)
            for task_id in filter(_is_task_id, ids):  # a directory name never from raw text
                await asyncio.get_running_loop().run_in_executor(
                    self._io, shutil.rmtree, self.task_dir(task_id), True
                )
            purged += len(ids)
            if len(ids) < batch:
                break
        if purged:
            log.info("purged %d finished task(s) older than the retention", purged)
        return purged

    async def log_lines(self, owner: str | None, task_id: str, *, limit: int = 200) -> list[str]:
        """The last lines of a process task's output (live while it runs, else its log file)."""
        task = await self.get(owner, task_id)
        active = self._active.get(task.id)
        if active is not None:
            lines = active.run.log_lines()
        else:
            lines = await asyncio.get_running_loop().run_in_executor(
                self._io, _tail, self.task_dir(task.id) / LOG_FILE, limit
            )
        return lines[-limit:]

    def task_dir(self, task_id: str) -> Path:
        return self.state_dir / task_id

    # --- creating and linking ------------------------------------------------------------------
    async def create(
        self,
        owner: str,
        *,
        name: str,
        description: str = "",
        kind: str = KERNEL,
        command: Any = None,
        notebook: Any = None,
        persistent_token_id: str | None = None,
        parameters: Any = None,
    ) -> TaskRecord:
        """Validate everything first: bad input raises InvalidRequest and stores nothing."""
        name = _text("name", name, MAX_NAME).strip()
        if not name:
            raise InvalidRequest("field 'name' must not be empty", code="invalid_field")
        description = _text("description", description, MAX_DESCRIPTION)
        if kind not in KINDS:
            raise InvalidRequest(
                f"unknown kind {kind!r}: one of {', '.join(KINDS)}", code="invalid_kind"
            )
        if command is not None and kind != COMMAND:
            raise InvalidRequest("field 'command' is only for kind 'command'", code="invalid_field")
        if notebook is not None and kind != NOTEBOOK:
            raise InvalidRequest(
                "field 'notebook' is only for kind 'notebook'", code="invalid_field"
            )
        argv = _argv(command) if kind == COMMAND else None
        notebook_path: str | None = None
        if kind == NOTEBOOK:
            if not isinstance(notebook, str) or not notebook:
                raise InvalidRequest(
                    "a notebook task needs 'notebook': a path inside the server's root directory",
                    code="missing_field",
                )
            await self.resolve_notebook(notebook)
            notebook_path = str(PurePosixPath(notebook))
        params = _parameters(parameters)
        if kind == DEMO:
            _demo_interval(params)
        if persistent_token_id is not None:
            persistent_token_id = _token_ref(persistent_token_id)
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
            command=argv,
            notebook=notebook_path,
            parameters=params,
        )
        created = await self.store.create(task)
        self._publish(created)
        return created

    async def resolve_notebook(self, notebook: str) -> Path:
        """The notebook's real path, which must be a file inside the root dir (symlinks too)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._io, _resolve_notebook, self.root_dir, notebook
        )

    async def link(self, owner: str | None, task_id: str, token_id: str) -> TaskRecord:
        token_id = _token_ref(token_id)
        async with self._lock:
            task = await self.get(owner, task_id)
            await self.broker.get_token(task.owner, token_id)
            if task.status == RUNNING or task.queued:
                raise Conflict(
                    f"task {task_id} is {task.status}: cancel it before linking another token",
                    code="task_running",
                )
            updated = await self._update(
                task.id, expect=(task.status,), persistent_token_id=token_id
            )
        return updated

    async def delete(self, owner: str | None, task_id: str) -> None:
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.status == RUNNING or task.queued or task.id in self._active:
                raise Conflict(
                    f"task {task_id} is {'queued' if task.queued else 'running'}: cancel it first",
                    code="task_running",
                )
            await self.store.delete(task.id)
        await asyncio.get_running_loop().run_in_executor(
            self._io, shutil.rmtree, self.task_dir(task.id), True
        )

    # --- executing -----------------------------------------------------------------------------
    async def execute(self, owner: str | None, task_id: str) -> TaskRecord:
        """Start the task now, or queue it when ``max_running_tasks`` runs are busy. Retries a
        failed, cancelled, interrupted (or completed) task."""
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.status == RUNNING or task.queued:
                raise Conflict(
                    f"task {task_id} is already {'queued' if task.queued else 'running'}",
                    code="already_running",
                )
            if task.id in self._active:
                raise Conflict(
                    f"task {task_id} is still stopping its previous run; try again shortly",
                    code="already_running",
                )
            await self._check_token(task)
            if task.kind == NOTEBOOK and task.notebook is not None:
                await self.resolve_notebook(task.notebook)
            if task.kind == KERNEL:
                updated = await self._mark_running(task, credential_hash=None)
            elif self._slots_free() and not self._queue:
                updated = await self._launch_or_fail(task)
            else:
                self._queue.append(task.id)
                updated = await self._update(
                    task.id,
                    expect=(task.status,),
                    status=TASK_PENDING,
                    queued_at=self.clock(),
                    runner=self.runner_id,
                    progress=0,
                    message=_queued_message(len(self._queue) - 1),
                    result=None,
                    error=None,
                    started_at=None,
                    completed_at=None,
                )
        return updated

    def _slots_free(self) -> bool:
        return len(self._active) < self.max_running_tasks

    async def _check_token(self, task: TaskRecord) -> TokenRecord:
        if task.persistent_token_id is None:
            raise Conflict(
                f"task {task.id} has no offline token: request consent with this task_id, or "
                "link an active token",
                code="needs_consent",
            )
        try:
            token = await self.broker.get_token(task.owner, task.persistent_token_id)
        except NotFound:
            raise Conflict(
                f"the offline token of task {task.id} no longer exists: request consent again",
                code="needs_consent",
            ) from None
        if token.status == PENDING:
            raise Conflict(
                f"offline token {token.id} is waiting for the user to grant consent",
                code="waiting_consent",
            )
        if token.status != ACTIVE:
            raise Conflict(
                f"offline token {token.id} is {token.status}"
                + (f" ({token.last_error})" if token.last_error else "")
                + ": request consent again",
                code="token_failed",
            )
        return token

    async def _mark_running(self, task: TaskRecord, *, credential_hash: str | None) -> TaskRecord:
        updated = await self._update(
            task.id,
            expect=(task.status,),
            status=RUNNING,
            started_at=self.clock(),
            completed_at=None,
            queued_at=None,
            runner=self.runner_id,
            progress=0,
            message="running",
            result=None,
            error=None,
            credential_hash=credential_hash,
        )
        await self._warm_add(updated)
        return updated

    async def _launch_or_fail(self, task: TaskRecord) -> TaskRecord:
        """:meth:`_launch`, but a run that cannot even be set up (a file system or environment
        fault) fails its task with the reason instead of escaping to the caller."""
        try:
            return await self._launch(task)
        except OfflineTokenError as exc:
            reason = exc.message
        except Exception as exc:
            log.exception("task %s: could not start", task.id)
            reason = f"could not start: {_describe(exc)}"
        self._active.pop(task.id, None)
        failed = await self._update(
            task.id,
            expect=(task.status, RUNNING),
            status=TASK_FAILED,
            queued_at=None,
            completed_at=self.clock(),
            credential_hash=None,
            error=reason[:MAX_TEXT],
            message="could not start",
        )
        await self._warm_remove(task.id, task.persistent_token_id)
        return failed

    async def _launch(self, task: TaskRecord) -> TaskRecord:
        """Mark running and start the run (caller holds the lock and checked the token)."""
        secret = new_task_secret() if task.kind in PROCESS_KINDS else None
        run = await self._build_run(task, secret)
        updated = await self._mark_running(
            task, credential_hash=hash_secret(secret) if secret else None
        )
        entry = _Active(updated.id, updated.owner, updated.persistent_token_id, run)
        self._active[updated.id] = entry
        entry.supervisor = asyncio.create_task(
            self._supervise(entry), name=f"offline-token-task:{updated.id}"
        )
        return updated

    async def _build_run(self, task: TaskRecord, secret: str | None) -> TaskRun:
        if task.kind == DEMO:
            token_id = task.persistent_token_id
            assert token_id is not None

            async def fetch() -> Any:
                return await self.broker.get_access_token(task.owner, token_id)

            async def report(progress: float, message: str) -> None:
                await self._progress(task.id, progress, message)

            return DemoRun(fetch, report, interval=_demo_interval(task.parameters))
        assert secret is not None
        directory = self.task_dir(task.id)
        # Logs and executed notebooks may hold what the work printed: owner-only (0700 dirs,
        # 0600 files), also when the directories already existed with looser modes.
        await asyncio.get_running_loop().run_in_executor(
            self._io, _private_dirs, self.state_dir, directory
        )
        if task.kind == COMMAND:
            assert task.command is not None
            argv = list(task.command)
        else:
            assert task.notebook is not None
            path = await self.resolve_notebook(task.notebook)
            argv = [
                self.python,
                "-m",
                "jupyter_offline_token.tasks.run_notebook",
                str(path),
                "--output",
                str(directory / EXECUTED_NOTEBOOK),
            ]
        env = task_environment(
            None,
            server_url=self.server_url,
            task_id=task.id,
            token_id=task.persistent_token_id,
            secret=secret,
            parameters=task.parameters,
            server_secrets=list(self._server_secrets()),
        )
        return ProcessRun(
            argv,
            cwd=str(self.root_dir),
            env=env,
            log_path=directory / LOG_FILE,
            io_executor=self._io,
        )

    async def _supervise(self, entry: _Active) -> None:
        try:
            outcome = await entry.run.run()
        except Exception as exc:
            log.exception("task %s: the runner failed", entry.task_id)
            outcome = Outcome(TASK_FAILED, error=f"internal error: {type(exc).__name__}")
        finally:
            if entry.end_timer is not None:
                entry.end_timer.cancel()
        try:
            # Still listed while the end is recorded, so a late report is not lost.
            await self._finish(entry, self._settle(entry, outcome))
        except Exception:
            log.exception("task %s: could not record how it ended", entry.task_id)
        finally:
            self._active.pop(entry.task_id, None)
        if not self._stopping:
            try:
                await self._start_queued()
            except Exception:
                log.exception("could not start the queued tasks")

    def _settle(self, entry: _Active, outcome: Outcome) -> Outcome:
        """Combine the end a process reported with how it exited: a reported failure stands,
        a reported completion holds only if the process then exits with code 0."""
        if entry.reported is None:
            return outcome
        status, error = entry.reported
        if outcome.status == CANCELLED:
            if not entry.stopped_after_report:
                return outcome  # cancelled by the user (or the server is stopping)
            return Outcome(
                status,
                error=error,
                message=f"reported {status}; stopped because the process did not exit within "
                f"{self.report_grace:g} s",
            )
        if status == COMPLETED:
            if outcome.status == COMPLETED:
                return outcome
            return Outcome(
                TASK_FAILED,
                error=outcome.error,
                message=f"reported completed, but {outcome.message or 'failed'}",
            )
        errors = [e for e in (error, outcome.error if outcome.status == TASK_FAILED else None) if e]
        return Outcome(TASK_FAILED, error="\n\n".join(errors) or None, message=outcome.message)

    def _expect_end(self, entry: _Active) -> None:
        """After a reported end, stop the process if it has not exited ``report_grace`` s later."""
        if entry.end_timer is not None:
            return

        async def stop_late() -> None:
            await asyncio.sleep(self.report_grace)
            if entry.stopper is None and self._active.get(entry.task_id) is entry:
                log.info("task %s reported its end but still runs: stopping it", entry.task_id)
                entry.stopped_after_report = True
                entry.stopper = asyncio.ensure_future(entry.run.terminate(self.cancel_grace))

        entry.end_timer = asyncio.ensure_future(stop_late())

    async def _finish(self, entry: _Active, outcome: Outcome) -> None:
        status = INTERRUPTED if self._stopping else outcome.status
        changes: dict[str, Any] = {
            "status": status,
            "completed_at": self.clock(),
            "credential_hash": None,
        }
        if self._stopping:
            changes["message"] = "interrupted: the Jupyter server stopped; execute it again"
        else:
            if outcome.message is not None:
                changes["message"] = outcome.message[:MAX_MESSAGE]
            if outcome.error is not None:
                changes["error"] = outcome.error[-MAX_TEXT:]
            if outcome.result is not None:
                changes["result"] = outcome.result[:MAX_TEXT]
            if status == COMPLETED:
                changes["progress"] = 100
        updated = await self._try_update(entry.task_id, expect=(RUNNING,), **changes)
        if updated is None:  # already ended (cancelled, or reported its own end)
            await self.store.update(entry.task_id, credential_hash=None)
        await self._warm_remove(entry.task_id, entry.token_id)

    async def _start_queued(self) -> None:
        async with self._lock:
            while self._queue and self._slots_free() and not self._stopping:
                task_id = self._queue.popleft()
                task = await self.store.get(task_id)
                if task is None or not task.queued:
                    continue
                try:
                    await self._check_token(task)
                    if task.kind == NOTEBOOK and task.notebook is not None:
                        await self.resolve_notebook(task.notebook)
                except OfflineTokenError as exc:
                    await self._update(
                        task.id,
                        expect=(TASK_PENDING,),
                        status=TASK_FAILED,
                        queued_at=None,
                        completed_at=self.clock(),
                        error=exc.message,
                        message="could not start",
                    )
                    continue
                try:
                    await self._launch_or_fail(task)
                except Exception:  # even recording the failure failed: on with the queue
                    log.exception("task %s: could not start from the queue", task.id)
            await self._renumber_queue()

    async def _renumber_queue(self) -> None:
        for position, task_id in enumerate(self._queue):
            await self._try_update(
                task_id, expect=(TASK_PENDING,), message=_queued_message(position)
            )

    # --- reporting and ending ------------------------------------------------------------------
    async def _progress(self, task_id: str, progress: float, message: str) -> None:
        await self._try_update(task_id, expect=(RUNNING,), progress=progress, message=message)

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
        if status is not None and status not in (RUNNING, COMPLETED, TASK_FAILED):
            raise InvalidRequest(
                "field 'status' must be running, completed or failed", code="invalid_field"
            )
        if progress is not None and (
            isinstance(progress, bool)
            or not isinstance(progress, (int, float))
            or not (math.isfinite(progress) and 0 <= progress <= 100)
        ):
            raise InvalidRequest("field 'progress' must be between 0 and 100", code="invalid_field")
        changes: dict[str, Any] = {}
        if progress is not None:
            changes["progress"] = float(progress)
        if message is not None:
            changes["message"] = _text("message", message, MAX_MESSAGE)
        if result is not None:
            changes["result"] = _text("result", result, MAX_TEXT)
        if error is not None:
            changes["error"] = _text("error", error, MAX_TEXT)
        if not changes and status is None:
            raise InvalidRequest("nothing to update", code="missing_field")
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.terminal:
                raise Conflict(f"task {task_id} already {task.status}", code="task_finished")
            if task.status != RUNNING:
                raise Conflict(
                    f"task {task_id} is not running: execute it first", code="not_running"
                )
            supervised = task.kind in PROCESS_KINDS or task.kind == DEMO
            if status in (COMPLETED, TASK_FAILED) and supervised and not by_task:
                raise Conflict(
                    f"task {task_id} is a {task.kind} task: its process decides how it ends; "
                    "cancel it instead",
                    code="use_cancel",
                )
            entry = self._active.get(task.id)
            if status in (COMPLETED, TASK_FAILED) and supervised and entry is not None:
                if status == COMPLETED and progress is None:
                    changes["progress"] = 100.0
                if status == TASK_FAILED:
                    changes["error"] = changes.get("error") or "the task reported a failure"
                changes.setdefault("message", f"reported {status}; waiting for the process to exit")
                entry.reported = (status, changes.get("error") if status == TASK_FAILED else None)
                self._expect_end(entry)
                return await self._update(task.id, expect=(RUNNING,), **changes)
            if status in (COMPLETED, TASK_FAILED):
                changes.update(status=status, completed_at=self.clock(), credential_hash=None)
                if status == COMPLETED and progress is None:
                    changes["progress"] = 100.0
                if status == TASK_FAILED and error is None:
                    changes["error"] = "the task reported a failure"
            updated = await self._update(task.id, expect=(RUNNING,), **changes)
        if updated.terminal:
            await self._warm_remove(task.id, task.persistent_token_id)
        return updated

    async def cancel(self, owner: str | None, task_id: str) -> TaskRecord:
        """Cancelled at once; the process gets SIGTERM, then SIGKILL after ``cancel_grace``."""
        async with self._lock:
            task = await self.get(owner, task_id)
            if task.queued:
                with contextlib.suppress(ValueError):
                    self._queue.remove(task.id)
                updated = await self._update(
                    task.id,
                    expect=(TASK_PENDING,),
                    status=CANCELLED,
                    queued_at=None,
                    completed_at=self.clock(),
                    message="cancelled before it started",
                )
                await self._renumber_queue()
                return updated
            if task.status != RUNNING:
                raise Conflict(f"task {task_id} is {task.status}, not running", code="not_running")
            updated = await self._update(
                task.id,
                expect=(RUNNING,),
                status=CANCELLED,
                completed_at=self.clock(),
                credential_hash=None,
                message="cancelled",
            )
            entry = self._active.get(task.id)
            if entry is not None and entry.stopper is None:
                entry.stopper = asyncio.ensure_future(entry.run.terminate(self.cancel_grace))
        await self._warm_remove(task.id, task.persistent_token_id)
        return updated

    # --- broker integration --------------------------------------------------------------------
    async def authenticate(self, secret: str) -> TaskPrincipal | None:
        """The running task a scoped credential belongs to, or None."""
        if not secret or len(secret) > 256:
            return None
        task = await self.store.find_running_by_credential(hash_secret(secret))
        if task is None:
            return None
        return TaskPrincipal(task.id, task.persistent_token_id, task.owner)

    async def check_task_for_consent(self, owner: str, task_id: str) -> None:
        """For ``POST consents`` with a task_id: NotFound unless the caller owns the task."""
        await self.get(owner, task_id)

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
                await self.cancel(None, task_id)
                cancelled.append(task_id)
        return cancelled

    async def on_token_activated(self, record: TokenRecord) -> None:
        """A consent requested with ``task_id`` links its task when granted."""
        if not record.task_id or not _is_task_id(record.task_id):
            return
        async with self._lock:
            task = await self.store.get(record.task_id)
            if task is None or task.owner != record.owner:
                return
            if task.status == RUNNING or task.queued:
                log.info("task %s is running: not relinked to token %s", task.id, record.id)
                return
            await self._update(task.id, expect=(task.status,), persistent_token_id=record.id)

    async def on_token_status_change(self, record: TokenRecord) -> None:
        """Republish linked tasks (their offline_token_status changed); a deleted entry
        cancels its running tasks and is unlinked from the others."""
        tasks = await self.store.for_tokens([record.id])
        if not tasks:
            return
        if await self.vault.get(record.id) is None:
            await self.cancel_for_token(record.id)
            async with self._lock:
                for task in tasks:
                    await self._try_update(task.id, persistent_token_id=None)
            return
        for task in tasks:
            self._publish(task)

    # --- keep warm -----------------------------------------------------------------------------
    def warm_tokens(self) -> set[str]:
        """Tokens linked to a task running on this server."""
        return set(self._warm)

    async def _warm_add(self, task: TaskRecord) -> None:
        token_id = task.persistent_token_id
        if token_id is None:
            return
        running = self._warm.setdefault(token_id, set())
        first = not running
        running.add(task.id)
        if first:
            await self._notify_warm(token_id, True)

    async def _warm_remove(self, task_id: str, token_id: str | None) -> None:
        if token_id is None or token_id not in self._warm:
            return
        running = self._warm[token_id]
        running.discard(task_id)
        if not running:
            del self._warm[token_id]
            await self._notify_warm(token_id, False)

    async def _notify_warm(self, token_id: str, warm: bool) -> None:
        for hook in self.on_warm_change:
            try:
                await hook(token_id, warm)
            except Exception:
                log.exception("keep-warm hook failed for token %s", token_id)

    # --- events --------------------------------------------------------------------------------
    def subscribe(self, task_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._subscribers.setdefault(task_id, _Subscribers()).queues.add(queue)
        return queue

    def unsubscribe(self, task_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        subscribers = self._subscribers.get(task_id)
        if subscribers is None:
            return
        subscribers.queues.discard(queue)
        if not subscribers.queues:
            del self._subscribers[task_id]

    def subscriber_count(self, task_id: str) -> int:
        subscribers = self._subscribers.get(task_id)
        return len(subscribers.queues) if subscribers else 0

    def _publish(self, task: TaskRecord) -> None:
        subscribers = self._subscribers.get(task.id)
        if not subscribers:
            return
        event = task.to_json()
        event["_updated_at"] = task.updated_at
        for queue in list(subscribers.queues):
            _offer(queue, event)

    async def _try_update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord | None:
        """Store ``changes`` and publish the new state; None when the task is gone or its
        status is not in ``expect`` (a racing change won)."""
        changes["updated_at"] = self.clock()
        updated = await self.store.update(task_id, expect=expect, **changes)
        if updated is not None:
            self._publish(updated)
        return updated

    async def _update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord:
        """Like :meth:`_try_update`, but Conflict when a racing change won."""
        updated = await self._try_update(task_id, expect=expect, **changes)
        if updated is None:
            raise Conflict(f"task {task_id} changed meanwhile; try again", code="task_changed")
        return updated


# --- validation helpers ------------------------------------------------------------------------
def _is_task_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"field {name!r} must be a string", code="invalid_field")
    if len(value) > limit:
        raise InvalidRequest(
            f"field {name!r} is longer than {limit} characters", code="invalid_field"
        )
    if "\x00" in value:
        raise InvalidRequest(f"field {name!r} must not contain NUL", code="invalid_field")
    if not _encodable(value):
        raise InvalidRequest(f"field {name!r} is not valid Unicode text", code="invalid_field")
    return value


def _encodable(value: str) -> bool:
    """False for text UTF-8 cannot encode (lone surrogates): SQLite, argv and env refuse it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _token_ref(token_id: Any) -> str:
    if not isinstance(token_id, str) or not token_id or len(token_id) > 256:
        raise InvalidRequest("field 'persistent_token_id' must be a token id", code="invalid_field")
    if not _encodable(token_id) or "\x00" in token_id:
        raise InvalidRequest(
            "field 'persistent_token_id' is not valid Unicode text", code="invalid_field"
        )
    return token_id


def _describe(exc: BaseException) -> str:
    """An exception as a short text for a task's error (OSError without its file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _argv(command: Any) -> list[str]:
    if command is None:
        raise InvalidRequest(
            'a command task needs \'command\': an argv list such as ["python", "train.py"]',
            code="missing_field",
        )
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise InvalidRequest(
            "field 'command' must be an array of strings (argv; no shell)", code="invalid_field"
        )
    if not command or not command[0]:
        raise InvalidRequest(
            "field 'command' must not be empty: its first item is the program",
            code="invalid_field",
        )
    if len(command) > MAX_ARGV:
        raise InvalidRequest(
            f"field 'command' has more than {MAX_ARGV} items", code="invalid_field"
        )
    for arg in command:
        if len(arg) > MAX_ARG_CHARS or "\x00" in arg or not _encodable(arg):
            raise InvalidRequest(
                f"each command item must be valid text of at most {MAX_ARG_CHARS} characters "
                "without NUL",
                code="invalid_field",
            )
    return list(command)


def _parameters(parameters: Any) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidRequest("field 'parameters' must be an object", code="invalid_field")
    if _depth(parameters) > MAX_PARAMETERS_DEPTH:
        raise InvalidRequest(
            f"field 'parameters' is nested deeper than {MAX_PARAMETERS_DEPTH} levels",
            code="invalid_field",
        )
    try:
        text = json.dumps(parameters, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(
            "field 'parameters' must hold valid Unicode text only", code="invalid_field"
        ) from None
    except (ValueError, TypeError, RecursionError):
        raise InvalidRequest(
            "field 'parameters' must be JSON with finite numbers only", code="invalid_field"
        ) from None
    if size > MAX_PARAMETERS_BYTES:
        raise InvalidRequest(
            f"field 'parameters' is larger than {MAX_PARAMETERS_BYTES} bytes", code="invalid_field"
        )
    return dict(parameters)


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (iteratively: deep input never recurses)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= MAX_PARAMETERS_DEPTH:
                stack.extend((child, level + 1) for child in item)
    return deepest


def _demo_interval(parameters: dict[str, Any]) -> float:
    interval = parameters.get("interval", 1.0)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 < interval <= 3600
    ):
        raise InvalidRequest(
            "parameter 'interval' of a demo task must be a number of seconds in (0, 3600]",
            code="invalid_field",
        )
    return float(interval)


def _resolve_notebook(root_dir: Path, notebook: str) -> Path:
    """Blocking (filesystem): run on an executor."""
    escape = InvalidRequest(
        f"notebook {_shorten(notebook)!r} must be a relative path to a .ipynb file inside the "
        "server's root directory",
        code="invalid_notebook",
    )
    if "\x00" in notebook or len(notebook) > 4096 or "\\" in notebook:
        raise escape
    if not _encodable(notebook):
        raise escape
    relative = PurePosixPath(notebook)
    if relative.is_absolute() or notebook.startswith("~") or ".." in relative.parts:
        raise escape
    try:
        root = root_dir.resolve()
        real = (root / relative).resolve()  # follows symlinks: a link out of the root is refused
        if not real.is_relative_to(root) or real.suffix != ".ipynb":
            raise escape
        found = real.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop, no access
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unusable path"
        raise InvalidRequest(
            f"cannot use notebook {_shorten(notebook)!r}: {reason}", code="invalid_notebook"
        ) from None
    if not found:
        raise InvalidRequest(
            f"no notebook {_shorten(notebook)!r} in the server's root directory",
            code="invalid_notebook",
        )
    return real


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _private_dirs(*paths: Path) -> None:
    """Blocking: create each directory (parents first) and make it 0700."""
    for path in paths:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)


def _tail(path: Path, limit: int) -> list[str]:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return list(deque((line.rstrip("\n") for line in handle), maxlen=limit))
    except FileNotFoundError:
        return []


def _offer(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    """Queue an event; a subscriber that fell far behind loses its oldest events."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(event)


def _queued_message(ahead: int) -> str:
    return f"queued: {ahead} task{'s' if ahead != 1 else ''} ahead"
