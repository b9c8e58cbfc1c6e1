"""``Task``: long-running work linked to an offline token, reporting progress to the server.

A ``kernel`` task runs in this kernel: ``with task.running():`` marks it running (after the
server checked its token), and completes or fails it when the block ends. Inside a ``command`` or
``notebook`` task process, :func:`current_task` returns the process's own task, authenticated with
its scoped credential.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .client import OfflineTokenClient, get_default_client
from .discovery import find_server, task_environment
from .errors import ConsentPending, OfflineTokenClientError, TaskCancelled, TaskError
from .remote import RemoteRecord
from .tokens import OfflineToken

if TYPE_CHECKING:
    from .widgets import StaticView, TaskProgressWidget
    from .workers import WorkerCredential

TERMINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})
MAX_ERROR_CHARS = 2000


def to_percent(value: float) -> float:
    """Progress as a percent: a float in ``[0.0, 1.0]`` is a fraction, anything else a percent.

    So ``0.5`` and ``50`` both mean 50 %, ``1.0`` means 100 % and the integer ``1`` means 1 %.

    Example::

        to_percent(0.25)  # 25.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("progress must be a number: a fraction 0.0-1.0 or a percent 0-100")
    if math.isnan(value) or math.isinf(value):
        raise ValueError("progress must be a finite number")
    percent = float(value) * 100 if isinstance(value, float) and 0.0 <= value <= 1.0 else value
    if not 0 <= percent <= 100:
        raise ValueError(f"progress {value!r} is outside 0-100 % (or 0.0-1.0 as a fraction)")
    return round(float(percent), 3)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:MAX_ERROR_CHARS]


class Task(RemoteRecord):
    """A task on the server (``kernel``, ``command``, ``notebook`` or ``demo`` kind).

    Example::

        task = create_task("train", token=tok)
        with task.running():
            for i in range(10):
                task.progress((i + 1) / 10, message=f"epoch {i + 1}")
    """

    def __init__(
        self,
        task_id: str,
        *,
        client: OfflineTokenClient | None = None,
        info: dict[str, Any] | None = None,
        token: OfflineToken | None = None,
    ) -> None:
        if not isinstance(task_id, str) or not task_id.strip():
            raise ValueError("task id must be a non-empty string")
        self._id = task_id
        self._client = client
        self._info: dict[str, Any] = dict(info or {})
        self._info.setdefault("id", task_id)
        self._token = token

    @property
    def name(self) -> str:
        """The task's name (last known)."""
        return str(self._info.get("name") or "")

    def _remember(self, info: dict[str, Any]) -> Task:
        self._info = dict(info)
        return self

    def refresh(self) -> dict[str, Any]:
        """Fetch the task from the server and remember it.

        Example::

            task.refresh()["progress"]
        """
        self._remember(self.client.get_task(self._id))
        return dict(self._info)

    def __repr__(self) -> str:
        return f"<Task id={self._id!r} name={self.name!r} status={self.known_status!r}>"

    # --- token ---------------------------------------------------------------------------------
    @property
    def token(self) -> OfflineToken | None:
        """The linked offline token (``None`` when none is linked).

        Example::

            httpx.get(url, auth=task.token.auth)
        """
        token_id = self._info.get("persistent_token_id")
        if not token_id and self.client.server.task_id == self._id:
            token_id = self.client.server.token_id
        if not token_id:
            return None
        if self._token is None or self._token.id != token_id:
            self._token = OfflineToken(str(token_id), client=self._client)
        return self._token

    def access_token(self, min_ttl: float = 30) -> str:
        """An access token from the linked offline token (cached; see ``OfflineToken``).

        Example::

            headers = {"Authorization": f"Bearer {current_task().access_token()}"}
        """
        token = self.token
        if token is None:
            from .errors import ConsentRequired

            raise ConsentRequired(
                f"task {self._id} has no offline token linked: request one with "
                "request_offline_token(task=task) or call task.link(token)"
            )
        return token.access_token(min_ttl)

    def link(self, token: OfflineToken | str) -> Task:
        """Link an offline token (object or id) to this task.

        Example::

            task.link(tok)
        """
        token_id = token.id if isinstance(token, OfflineToken) else token
        self._remember(self.client.link_task(self._id, token_id))
        if isinstance(token, OfflineToken):
            self._token = token
        return self

    def worker_credential(
        self, *, url: str | None = None, min_ttl: float = 30, progress_interval: float = 1.0
    ) -> WorkerCredential:
        """A credential for processes this running task spreads to (Dask workers, jobs on other
        machines): access tokens of its token and progress reports, until the task ends.

        ``url``: the server as the workers reach it (default: the server's own URL). Picklable;
        its repr hides the secret. See :mod:`.dask` for Dask.

        Example::

            cred = task.worker_credential()
            client.register_plugin(OfflineTokenPlugin(cred))
        """
        from .workers import WorkerCredential

        body = self.client.create_worker_credential(self._id)
        credential = WorkerCredential.from_answer(body, url=url)
        return replace(credential, min_ttl=min_ttl, progress_interval=progress_interval)

    # --- lifecycle -----------------------------------------------------------------------------
    def execute(self) -> Task:
        """Start (or retry) the task; the server checks its token first.

        Raises ``ConsentRequired`` (no token), ``ConsentPending``, ``TokenFailed`` or
        ``TaskAlreadyRunning``.

        Example::

            task.execute()
        """
        return self._remember(self.client.execute_task(self._id))

    def _update(self, **fields: Any) -> Task:
        try:
            info = self.client.update_task(self._id, **fields)
        except TaskError as exc:
            if self.refresh().get("status") == "cancelled":
                raise TaskCancelled(f"task {self._id} was cancelled") from exc
            raise
        self._remember(info)
        return self

    def progress(self, value: float, message: str | None = None) -> Task:
        """Report progress: a fraction (``0.0``-``1.0`` float) or a percent (``0``-``100``).

        Raises :class:`TaskCancelled` when the task was cancelled meanwhile, so loops stop.

        Example::

            task.progress(0.5, message="half way")
            task.progress(75)
        """
        self._update(progress=to_percent(value), message=message)
        if self.known_status == "cancelled":
            raise TaskCancelled(f"task {self._id} was cancelled")
        return self

    def complete(self, result: Any = None) -> Task:
        """Mark the task completed (progress 100 %) with an optional result.

        Non-string results are sent as JSON text.

        Example::

            task.complete(result="42 files processed")
        """
        if result is not None and not isinstance(result, str):
            result = json.dumps(result, default=str)
        return self._update(status="completed", progress=100, result=result)

    def fail(self, error: BaseException | str) -> Task:
        """Mark the task failed with an error text.

        Example::

            task.fail("input file missing")
        """
        text = error if isinstance(error, str) else _describe(error)
        return self._update(status="failed", error=text[:MAX_ERROR_CHARS])

    def cancel(self) -> Task:
        """Cancel the task (a process task is terminated by the server).

        Example::

            task.cancel()
        """
        return self._remember(self.client.cancel_task(self._id))

    def delete(self) -> None:
        """Delete the task record (the server refuses while it runs).

        Example::

            task.delete()
        """
        self.client.delete_task(self._id)

    def log(self) -> list[str]:
        """The last output lines of a command/notebook task.

        Example::

            print("\\n".join(task.log()))
        """
        return self.client.task_log(self._id)

    def events(self) -> Iterator[dict[str, Any]]:
        """Follow the task's live updates (server-sent events) until it ends.

        Example::

            for state in task.events():
                print(state["status"], state["progress"])
        """
        for state in self.client.task_events(self._id):
            self._remember(state)
            yield dict(state)

    @contextmanager
    def running(self, *, wait_for_consent: bool = True) -> Iterator[Task]:
        """Run a block as this task: execute on entry, complete or fail on exit.

        An exception in the block fails the task with its text and propagates. A
        :class:`TaskCancelled` raised by ``progress()`` ends the block quietly (the task is
        already cancelled). With ``wait_for_consent`` a pending linked token is waited for.

        Example::

            with task.running():
                for step in range(5):
                    task.progress((step + 1) / 5)
        """
        if self.refresh().get("status") != "running":
            try:
                self.execute()
            except ConsentPending:
                token = self.token
                if not wait_for_consent or token is None:
                    raise
                token.wait()
                self.execute()
        try:
            yield self
        except TaskCancelled:
            print(f"task {self._id} was cancelled; stopped")
            return
        except BaseException as exc:
            try:
                self.fail(exc)
            except OfflineTokenClientError as report_error:
                print(
                    f"could not mark task {self._id} failed: {report_error.message}",
                    file=sys.stderr,
                )
            raise
        if self.known_status == "running":
            try:
                self.complete()
            except TaskCancelled:
                print(f"task {self._id} was cancelled before it completed")

    # --- display -------------------------------------------------------------------------------
    def widget(self, *, poll_interval: float = 1.0) -> TaskProgressWidget | StaticView:
        """A live progress widget: bar, status badge, message and Cancel button.

        Without ipywidgets: a snapshot of the progress that says what to install for live widgets.

        Example::

            display(task.widget())
        """
        from .widgets import task_view

        return task_view(self, poll_interval=poll_interval)


def create_task(
    name: str,
    token: OfflineToken | str | None = None,
    kind: str = "kernel",
    *,
    description: str | None = None,
    command: list[str] | None = None,
    notebook: str | None = None,
    parameters: dict[str, Any] | None = None,
    client: OfflineTokenClient | None = None,
) -> Task:
    """Create a task, optionally linked to an offline token (object or id).

    Example::

        task = create_task("nightly sync", token=tok)
        task = create_task("etl", token=tok, kind="command", command=["python", "etl.py"])
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a task needs a non-empty name")
    if isinstance(token, OfflineToken):
        client = client or token._client
        token_id: str | None = token.id
    else:
        token_id = token
    client = client or get_default_client()
    info = client.create_task(
        name,
        kind=kind,
        description=description,
        command=command,
        notebook=notebook,
        persistent_token_id=token_id,
        parameters=parameters,
    )
    return Task(
        str(info["id"]),
        client=client,
        info=info,
        token=token if isinstance(token, OfflineToken) else None,
    )


def current_task(*, client: OfflineTokenClient | None = None) -> Task | None:
    """Inside a command/notebook task process, or a worker given a worker credential (installed
    or in the environment): its own Task, else ``None``.

    Uses the process's scoped credential, so ``.access_token()`` and ``.progress()`` work while
    the task runs (and nothing else does). In a worker, progress reports are coalesced.

    Example::

        task = current_task()
        if task is not None:
            task.progress(0.1, "started")
    """
    from .workers import installed_credential

    worker = installed_credential()
    if worker is not None and client is None:
        return worker.task()
    env = task_environment()
    if env is None:
        return None
    task_id, token_id = env
    client = client or OfflineTokenClient(find_server())
    info: dict[str, Any] = {"id": task_id}
    if token_id:
        info["persistent_token_id"] = token_id
    return Task(task_id, client=client, info=info)
