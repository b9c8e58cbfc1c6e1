"""A task's files: its private directory, its output log, and the notebook it executes.

Every method that touches the file system runs on the service's one I/O thread, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from .. import rest_codes
from ..errors import InvalidRequest

LOG_FILE = "output.log"
EXECUTED_NOTEBOOK = "executed.ipynb"


class TaskFiles:
    """Where tasks keep their files (``state_dir/<task id>``) and where notebooks come from
    (``root_dir``, the server's root directory)."""

    def __init__(self, state_dir: Path, root_dir: Path) -> None:
        self.state_dir = state_dir
        self.root_dir = root_dir
        self._executor: ThreadPoolExecutor | None = None

    @property
    def io(self) -> ThreadPoolExecutor:
        """One thread for task file work (logs, notebook paths): never on the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="offline-token-task-io"
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def task_dir(self, task_id: str) -> Path:
        return self.state_dir / task_id

    def log_path(self, task_id: str) -> Path:
        return self.task_dir(task_id) / LOG_FILE

    async def prepare(self, task_id: str) -> Path:
        """The task's directory, created owner-only (0700) with its parent."""
        directory = self.task_dir(task_id)
        await asyncio.get_running_loop().run_in_executor(
            self.io, private_dirs, self.state_dir, directory
        )
        return directory

    async def remove(self, task_id: str) -> None:
        """Delete the task's directory and everything in it (none is fine)."""
        await asyncio.get_running_loop().run_in_executor(
            self.io, shutil.rmtree, self.task_dir(task_id), True
        )

    async def tail(self, task_id: str, limit: int) -> list[str]:
        """The last ``limit`` lines of the task's log file."""
        return await asyncio.get_running_loop().run_in_executor(
            self.io, tail, self.log_path(task_id), limit
        )

    async def resolve_notebook(self, notebook: str) -> Path:
        """The notebook's real path, which must be a file inside the root dir (symlinks too)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.io, resolve_notebook, self.root_dir, notebook
        )


def private_dirs(*paths: Path) -> None:
    """Blocking: create each directory (parents first) and make it 0700. Logs and executed
    notebooks may hold what the work printed: owner-only, also where the directory existed."""
    for path in paths:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)


def tail(path: Path, limit: int) -> list[str]:
    """Blocking: the last ``limit`` lines of a file; none when there is no file."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return list(deque((line.rstrip("\n") for line in handle), maxlen=limit))
    except FileNotFoundError:
        return []


def resolve_notebook(root_dir: Path, notebook: str) -> Path:
    """Blocking: the real path of a ``.ipynb`` file inside ``root_dir``; InvalidRequest for a
    path that leaves it (``..``, absolute, ``~``, a symlink out) or names no file."""
    escape = InvalidRequest(
        f"notebook {_shorten(notebook)!r} must be a relative path to a .ipynb file inside the "
        "server's root directory",
        code=rest_codes.INVALID_NOTEBOOK,
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
            f"cannot use notebook {_shorten(notebook)!r}: {reason}",
            code=rest_codes.INVALID_NOTEBOOK,
        ) from None
    if not found:
        raise InvalidRequest(
            f"no notebook {_shorten(notebook)!r} in the server's root directory",
            code=rest_codes.INVALID_NOTEBOOK,
        )
    return real


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
