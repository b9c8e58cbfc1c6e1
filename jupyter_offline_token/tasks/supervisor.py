"""The runs of this server: launch a task's work through the runner, supervise it, settle how
it ended (with what the process reported), record that, and stop everything at shutdown.

Which server supervises a running row is its ``runner`` column (``host:pid:nonce``); a row whose
server is gone is interrupted at the next start (:func:`supervised_elsewhere`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import OfflineTokenError
from .credentials import hash_secret, new_task_secret
from .events import TaskUpdates
from .files import TaskFiles
from .models import (
    CANCELLED,
    COMPLETED,
    DEMO,
    INTERRUPTED,
    MAX_MESSAGE,
    MAX_TEXT,
    NOTEBOOK,
    PROCESS_KINDS,
    RUNNING,
    TASK_FAILED,
    TaskRecord,
)
from .runners import Outcome, TaskLaunch, TaskRun, TaskRunner
from .warmth import TaskWarmth

log = logging.getLogger("jupyter_offline_token.tasks")

Environment = Callable[[TaskRecord, str], dict[str, str]]
FetchToken = Callable[[TaskRecord], Awaitable[Any]]


@dataclass
class ActiveRun:
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


def new_runner_id() -> str:
    """Identifies this server process in running rows (see :func:`supervised_elsewhere`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def supervised_elsewhere(runner_id: str, runner: str | None) -> bool:
    """True when ``runner`` is another live server on this host (sharing the vault)."""
    if not runner or runner == runner_id:
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


class Supervisor:
    """Owns the runs of this server; the service holds its lock around launches."""

    def __init__(
        self,
        runner: TaskRunner,
        updates: TaskUpdates,
        warmth: TaskWarmth,
        files: TaskFiles,
        *,
        environment: Environment,
        fetch_token: FetchToken,
        cancel_grace: float,
        report_grace: float,
    ) -> None:
        if not cancel_grace >= 0:
            raise ValueError("cancel_grace must be >= 0")
        if not report_grace >= 0:
            raise ValueError("report_grace must be >= 0")
        self.runner = runner
        self.updates = updates
        self.warmth = warmth
        self.files = files
        self.environment = environment
        self.fetch_token = fetch_token
        self.cancel_grace = float(cancel_grace)
        # How long a process may keep running after reporting its own end before it is stopped.
        self.report_grace = float(report_grace)
        self.runner_id = new_runner_id()
        self.active: dict[str, ActiveRun] = {}
        # task id -> the stored credential hash of the run this process started (worker
        # credentials are minted from it; the store says whether the run still lives).
        self.run_hashes: dict[str, str] = {}
        self.on_run_end: Callable[[], Awaitable[None]] | None = None  # starts queued tasks
        self.stopping = False

    @property
    def clock(self) -> Callable[[], float]:
        return self.updates.clock

    # --- starting --------------------------------------------------------------------------
    async def mark_running(self, task: TaskRecord, *, credential_hash: str | None) -> TaskRecord:
        updated = await self.updates.update(
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
        if credential_hash is not None:
            self.run_hashes[updated.id] = credential_hash
        else:
            self.run_hashes.pop(updated.id, None)
        await self.warmth.add(updated)
        return updated

    async def mark_kernel_running(self, task: TaskRecord) -> TaskRecord:
        """A kernel task runs in its kernel: no process holds a secret, but the run still gets
        a credential hash, which keys its worker credentials (see worker_credentials.py)."""
        return await self.mark_running(task, credential_hash=hash_secret(new_task_secret()))

    async def launch_or_fail(self, task: TaskRecord) -> TaskRecord:
        """Launch the task's run; a run that cannot even be set up (a file system or
        environment fault) fails its task with the reason instead of escaping to the caller."""
        try:
            return await self._launch(task)
        except OfflineTokenError as exc:
            reason = exc.message
        except Exception as exc:
            log.exception("task %s: could not start", task.id)
            reason = f"could not start: {_describe(exc)}"
        self.active.pop(task.id, None)
        failed = await self.updates.update(
            task.id,
            expect=(task.status, RUNNING),
            status=TASK_FAILED,
            queued_at=None,
            completed_at=self.clock(),
            credential_hash=None,
            error=reason[:MAX_TEXT],
            message="could not start",
        )
        await self.warmth.remove(task.id, task.persistent_token_id)
        return failed

    async def _launch(self, task: TaskRecord) -> TaskRecord:
        """Start the run, mark the task running and supervise it (the token was checked)."""
        secret = new_task_secret() if task.kind in PROCESS_KINDS else None
        run = await self.runner.start(await self._prepare(task, secret))
        updated = await self.mark_running(
            task, credential_hash=hash_secret(secret) if secret else None
        )
        entry = ActiveRun(updated.id, updated.owner, updated.persistent_token_id, run)
        self.active[updated.id] = entry
        entry.supervisor = asyncio.create_task(
            self._supervise(entry), name=f"offline-token-task:{updated.id}"
        )
        return updated

    async def _prepare(self, task: TaskRecord, secret: str | None) -> TaskLaunch:
        """What the runner needs: callbacks for a demo; for a process its private directory,
        its resolved notebook and its environment with the scoped credential."""
        files = self.files
        launch = TaskLaunch(
            task=task,
            root_dir=files.root_dir,
            directory=files.task_dir(task.id),
            log_path=files.log_path(task.id),
            io=files.io,
        )
        if task.kind == DEMO:

            async def fetch() -> Any:
                return await self.fetch_token(task)

            async def report(progress: float, message: str) -> None:
                await self.updates.try_update(
                    task.id, expect=(RUNNING,), progress=progress, message=message
                )

            return dataclasses.replace(launch, fetch_token=fetch, report=report)
        assert secret is not None
        await files.prepare(task.id)
        notebook = None
        if task.kind == NOTEBOOK:
            assert task.notebook is not None
            notebook = await files.resolve_notebook(task.notebook)
        environment = self.environment(task, secret)
        return dataclasses.replace(launch, environment=environment, notebook_path=notebook)

    # --- stopping --------------------------------------------------------------------------
    def stop(self, entry: ActiveRun) -> None:
        """Ask a run to stop (SIGTERM, SIGKILL after ``cancel_grace``); once."""
        if entry.stopper is None:
            entry.stopper = asyncio.ensure_future(self.runner.stop(entry.run, self.cancel_grace))

    def record_report(self, entry: ActiveRun, status: str, error: str | None) -> None:
        """The process reported its end: its exit settles it, within ``report_grace``."""
        entry.reported = (status, error)
        if entry.end_timer is not None:
            return

        async def stop_late() -> None:
            await asyncio.sleep(self.report_grace)
            if entry.stopper is None and self.active.get(entry.task_id) is entry:
                log.info("task %s reported its end but still runs: stopping it", entry.task_id)
                entry.stopped_after_report = True
                self.stop(entry)

        entry.end_timer = asyncio.ensure_future(stop_late())

    async def shutdown(self) -> None:
        """Stop every run and wait for them (bounded); their tasks end ``interrupted``."""
        self.stopping = True
        active = list(self.active.values())
        for entry in active:
            if entry.end_timer is not None:
                entry.end_timer.cancel()
            entry.stopper = None
            self.stop(entry)
        pending = [e.supervisor for e in active if e.supervisor is not None]
        pending += [e.stopper for e in active if e.stopper is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.cancel_grace + 10)

    # --- ending ----------------------------------------------------------------------------
    async def _supervise(self, entry: ActiveRun) -> None:
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
            self.active.pop(entry.task_id, None)
            self.run_hashes.pop(entry.task_id, None)
        if not self.stopping and self.on_run_end is not None:
            try:
                await self.on_run_end()
            except Exception:
                log.exception("could not start the queued tasks")

    def _settle(self, entry: ActiveRun, outcome: Outcome) -> Outcome:
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

    async def _finish(self, entry: ActiveRun, outcome: Outcome) -> None:
        status = INTERRUPTED if self.stopping else outcome.status
        changes: dict[str, Any] = {
            "status": status,
            "completed_at": self.clock(),
            "credential_hash": None,
        }
        if self.stopping:
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
        updated = await self.updates.try_update(entry.task_id, expect=(RUNNING,), **changes)
        if updated is None:  # already ended (cancelled, or reported its own end)
            await self.updates.store.update(entry.task_id, credential_hash=None)
        await self.warmth.remove(entry.task_id, entry.token_id)


def _describe(exc: BaseException) -> str:
    """An exception as a short text for a task's error (OSError without its file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
