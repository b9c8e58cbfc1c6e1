"""How a task's work runs: a supervised subprocess (command, notebook) or in-process (demo).

A :class:`TaskRunner` (swappable: the default is :class:`LocalTaskRunner`) turns a task into a
:class:`TaskRun`. A run is started once, reports what happened as an :class:`Outcome`, and can be
asked to stop. The service owns status changes; runs only do the work and say how it ended.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import sys
from abc import ABC, ABCMeta, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from traitlets import Unicode
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import MetaHasTraits

from .. import rest_codes
from ..errors import OfflineTokenError
from .files import EXECUTED_NOTEBOOK
from .models import (
    CANCELLED,
    COMMAND,
    COMPLETED,
    DEMO,
    NOTEBOOK,
    TASK_FAILED,
    TaskRecord,
    demo_interval,
)

log = logging.getLogger("jupyter_offline_token.tasks")

ERROR_TAIL_LINES = 20
MAX_LINE_CHARS = 4000
READ_CHUNK = 65536


@dataclass
class Outcome:
    """How a run ended: a terminal status with an optional error, result and message."""

    status: str
    error: str | None = None
    result: str | None = None
    message: str | None = None


class TaskRun(ABC):
    """One execution of one task."""

    def __init__(self) -> None:
        self.stop_requested = False

    @abstractmethod
    async def run(self) -> Outcome:
        """Do the work; return when it is over (also after :meth:`terminate`)."""

    @abstractmethod
    async def terminate(self, grace: float) -> None:
        """Ask the work to stop; force it after ``grace`` seconds; return when it is gone."""

    def log_lines(self) -> list[str]:
        """The last lines of output, when the run has any."""
        return []


class ProcessRun(TaskRun):
    """A supervised subprocess: no shell, its own session (so the whole process group can be
    signalled), stdout and stderr merged into a ring buffer and a log file."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        log_path: Path,
        io_executor: Executor,
        ring_lines: int = 500,
    ) -> None:
        super().__init__()
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self._io = io_executor
        self.lines: deque[str] = deque(maxlen=ring_lines)
        self.process: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._exited = asyncio.Event()

    def __repr__(self) -> str:  # the env holds the task credential: never show it
        return f"ProcessRun(argv0={self.argv[0]!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_lines(self) -> list[str]:
        return list(self.lines)

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        log_file: IO[str] | None = await loop.run_in_executor(self._io, self._open_log)
        try:
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                reason = f"cannot start {self.argv[0]!r}: {exc.strerror or type(exc).__name__}"
                await self._emit(log_file, reason)
                return Outcome(TASK_FAILED, error=reason, message="could not start")
            except ValueError as exc:  # UnicodeEncodeError, NUL: argv or env not passable
                what = "is not valid text" if isinstance(exc, UnicodeEncodeError) else "is invalid"
                reason = (
                    f"cannot start {self.argv[0]!r}: an argument or environment variable {what} "
                    f"({type(exc).__name__})"
                )
                await self._emit(log_file, reason)
                return Outcome(TASK_FAILED, error=reason, message="could not start")
            finally:
                self._started.set()
            assert self.process.stdout is not None
            await self._pump(self.process.stdout, log_file)
            code = await self.process.wait()
        finally:
            self._exited.set()
            if self.process is not None:
                self._signal_group(signal.SIGKILL)  # leftovers of the command, if any
            if log_file is not None:
                await loop.run_in_executor(self._io, log_file.close)
        if self.stop_requested:
            return Outcome(CANCELLED, message="cancelled")
        if code == 0:
            return Outcome(COMPLETED, message="exited with code 0")
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = "\n".join(list(self.lines)[-ERROR_TAIL_LINES:])
        return Outcome(TASK_FAILED, error=f"{how}\n{tail}".strip(), message=how)

    def _open_log(self) -> IO[str] | None:
        try:
            self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a log left by an earlier run keeps its mode otherwise
            return os.fdopen(fd, "w", encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("task log %s unavailable: %s", self.log_path, exc.strerror)
            return None

    async def _emit(self, log_file: IO[str] | None, line: str) -> None:
        line = line[:MAX_LINE_CHARS]
        self.lines.append(line)
        if log_file is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._io, _write_line, log_file, line)

    async def _pump(self, stream: asyncio.StreamReader, log_file: IO[str] | None) -> None:
        """Read output in chunks (no line-length limit) and split it into lines."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            chunk = await stream.read(READ_CHUNK)
            text = decoder.decode(chunk, final=not chunk)
            pending += text
            *complete, pending = pending.split("\n")
            if len(pending) > MAX_LINE_CHARS:  # an endless line: cut it
                complete.append(pending)
                pending = ""
            for line in complete:
                await self._emit(log_file, line.rstrip("\r"))
            if not chunk:
                break
        if pending:
            await self._emit(log_file, pending.rstrip("\r"))

    def _signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def terminate(self, grace: float) -> None:
        self.stop_requested = True
        await self._started.wait()
        if self.process is None or self._exited.is_set():
            return
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), timeout=grace)
        except asyncio.TimeoutError:
            log.info("task process %s ignored SIGTERM for %ss: SIGKILL", self.pid, grace)
            self._signal_group(signal.SIGKILL)
            await self._exited.wait()


def _write_line(log_file: IO[str], line: str) -> None:
    log_file.write(line + "\n")
    log_file.flush()


class DemoRun(TaskRun):
    """The seed behaviour: a fresh access token, then +10 % every ``interval`` seconds with a
    token fetched again at each step; a failed fetch fails the task with the reason."""

    def __init__(
        self,
        fetch_token: Callable[[], Awaitable[Any]],
        report: Callable[[float, str], Awaitable[None]],
        *,
        interval: float = 1.0,
    ) -> None:
        super().__init__()
        self._fetch = fetch_token
        self._report = report
        self.interval = interval
        self._stop = asyncio.Event()
        self._done = asyncio.Event()

    async def run(self) -> Outcome:
        try:
            return await self._steps()
        finally:
            self._done.set()

    async def _steps(self) -> Outcome:
        fetched = 0
        for progress in range(0, 101, 10):
            if progress:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
            if self._stop.is_set():
                return Outcome(CANCELLED, message="cancelled")
            try:
                await self._fetch()
            except OfflineTokenError as exc:
                return Outcome(
                    TASK_FAILED,
                    error=f"could not get an access token: {exc.message}",
                    message="access token refused",
                )
            fetched += 1
            if self._stop.is_set():
                return Outcome(CANCELLED, message="cancelled")
            if progress < 100:
                await self._report(progress, f"{progress}%: fresh access token ok")
        return Outcome(
            COMPLETED,
            result=f"demo finished: {fetched} fresh access tokens obtained",
            message="done",
        )

    async def terminate(self, grace: float) -> None:
        self.stop_requested = True
        self._stop.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=max(grace, 0.1) + 30)


@dataclass(frozen=True)
class TaskLaunch:
    """What the service hands a runner to start one task: the task, where its files go, and for
    a process its environment (the scoped task credential inside: never shown in a repr)."""

    task: TaskRecord
    root_dir: Path  # the working directory of a process: the server's root directory
    directory: Path  # the task's private (0700) directory, created before the launch
    log_path: Path
    io: Executor  # the service's thread for file work
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    notebook_path: Path | None = None  # a notebook task's resolved notebook
    fetch_token: Callable[[], Awaitable[Any]] | None = field(default=None, repr=False)
    report: Callable[[float, str], Awaitable[None]] | None = field(default=None, repr=False)


class _RunnerMeta(ABCMeta, MetaHasTraits):
    """ABC and traitlets' metaclass combined (as jupyter_server_fileid does for its manager)."""


class TaskRunner(ABC, LoggingConfigurable, metaclass=_RunnerMeta):
    """Starts and stops the work of ``command``, ``notebook`` and ``demo`` tasks.

    The service calls :meth:`start` for each launch (then marks the task running), awaits the
    returned run's :meth:`TaskRun.run` for its :class:`Outcome`, and calls :meth:`stop` to
    cancel it. A runner never changes a task's status itself; an exception from :meth:`start`
    fails the task with the reason."""

    @abstractmethod
    async def start(self, launch: TaskLaunch) -> TaskRun:
        """The run of ``launch.task``, ready to be awaited; raise to fail the task's start."""

    async def stop(self, run: TaskRun, grace: float) -> None:
        """Ask ``run`` to stop; force it after ``grace`` seconds; return when it is gone."""
        await run.terminate(grace)


class LocalTaskRunner(TaskRunner):
    """Runs processes on this machine (no shell, their own session) and demos in this loop."""

    python = Unicode(
        sys.executable,
        config=True,
        help="The Python interpreter that executes notebook tasks "
        "(default: the one running the Jupyter server).",
    )

    async def start(self, launch: TaskLaunch) -> TaskRun:
        task = launch.task
        if task.kind == DEMO:
            assert launch.fetch_token is not None and launch.report is not None
            return DemoRun(
                launch.fetch_token, launch.report, interval=demo_interval(task.parameters)
            )
        return ProcessRun(
            self.argv(launch),
            cwd=str(launch.root_dir),
            env=launch.environment,
            log_path=launch.log_path,
            io_executor=launch.io,
        )

    def argv(self, launch: TaskLaunch) -> list[str]:
        """The command line of a process task: its own argv, or the notebook executor."""
        task = launch.task
        if task.kind == COMMAND:
            assert task.command is not None
            return list(task.command)
        if task.kind != NOTEBOOK or launch.notebook_path is None:
            raise OfflineTokenError(
                f"a {task.kind} task has no process", code=rest_codes.INVALID_KIND
            )
        return [
            self.python,
            "-m",
            "jupyter_offline_token.tasks.run_notebook",
            str(launch.notebook_path),
            "--output",
            str(launch.directory / EXECUTED_NOTEBOOK),
        ]
