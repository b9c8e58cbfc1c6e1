"""Worker credentials: fresh access tokens and progress from processes a task spreads to.

``task.worker_credential()`` asks the server for a credential narrower than the task's own: it
fetches access tokens of the task's token and reports progress, and stops working when the task
run ends (``TaskEnded``). It is a small picklable object: send it to Dask workers (see
:mod:`.dask`), or put :meth:`WorkerCredential.environ` into a remote process's environment,
where ``current_task()``, ``OfflineToken`` and ``token.auth`` then work as in a task process.

Per process and credential there is one client, one cached access token (single flight across
threads and coroutines, so N calls cost one broker request per token lifetime) and one progress
reporter that sends at most one report per ``progress_interval`` (the last value always goes).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .auth import OfflineTokenAuth
from .client import AccessToken, OfflineTokenClient, set_default_client
from .discovery import ENV_TASK_ID, ENV_TASK_SECRET, ENV_TOKEN_ID, ENV_URL, ServerInfo
from .errors import OfflineTokenClientError, TaskCancelled, TaskEnded, TaskError
from .tasks import Task, to_percent
from .tokens import OfflineToken

log = logging.getLogger("jupyter_offline_token.kernel")

WORKER_PREFIX = "jotw1."  # the server's worker credentials start so (tasks/worker_credentials)
# The broker is asked for this much more life than the cache needs: the server rounds
# ``expires_in`` down, so without it a refetch could get the same, nearly expired token again.
FETCH_MARGIN = 2.0
ENV_PROGRESS_INTERVAL = "JUPYTER_OFFLINE_TOKEN_PROGRESS_INTERVAL"


@dataclass(frozen=True)
class WorkerCredential:
    """Where the broker is and the worker secret of one task run; the secret is never shown.

    Example::

        cred = task.worker_credential()
        httpx.get(url, auth=cred.auth)   # in any process: fresh tokens while the task runs
    """

    url: str
    task_id: str
    token_id: str | None
    secret: str = field(repr=False)
    min_ttl: float = 30.0
    progress_interval: float = 1.0

    def __repr__(self) -> str:
        return (
            f"WorkerCredential(url={self.url!r}, task_id={self.task_id!r}, "
            f"token_id={self.token_id!r})"
        )

    @classmethod
    def from_answer(cls, body: Mapping[str, Any], *, url: str | None = None) -> WorkerCredential:
        """From the server's ``POST tasks/{id}/worker-credentials`` answer."""
        return cls(
            url=url or str(body["url"]),
            task_id=str(body["task_id"]),
            token_id=body.get("persistent_token_id") or None,
            secret=str(body["credential"]),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerCredential | None:
        """The worker credential in the environment (see :meth:`environ`), else ``None``."""
        env = os.environ if environ is None else environ
        secret = env.get(ENV_TASK_SECRET, "")
        if not secret.startswith(WORKER_PREFIX) or not env.get(ENV_URL) or not env.get(ENV_TASK_ID):
            return None
        try:
            interval = float(env.get(ENV_PROGRESS_INTERVAL) or 1.0)
        except ValueError:
            interval = 1.0
        return cls(
            url=env[ENV_URL],
            task_id=env[ENV_TASK_ID],
            token_id=env.get(ENV_TOKEN_ID) or None,
            secret=secret,
            progress_interval=interval,
        )

    def environ(self) -> dict[str, str]:
        """Environment variables that configure ``jupyter_offline_token.kernel`` in a remote
        process as this worker (they hold the worker secret: keep them out of logs)."""
        return {
            ENV_URL: self.url,
            ENV_TASK_ID: self.task_id,
            ENV_TOKEN_ID: self.token_id or "",
            ENV_TASK_SECRET: self.secret,
            ENV_PROGRESS_INTERVAL: repr(self.progress_interval),
        }

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            self.url,
            authorization=f"OfflineTokenTask {self.secret}",
            source="worker credential",
            task_id=self.task_id,
            token_id=self.token_id,
        )

    # --- what this process shares -------------------------------------------------------------
    def client(self) -> WorkerClient:
        """This process's client for the credential (one per process)."""
        return _shared(self).client

    def token(self) -> WorkerToken:
        """This process's ``OfflineToken`` of the task's token: one cache, single flight."""
        token = _shared(self).token
        if token is None:
            raise TaskError(f"task {self.task_id} has no offline token linked")
        return token

    def task(self) -> WorkerTask:
        """The task, as seen from this worker (progress is coalesced)."""
        return WorkerTask(self)

    @property
    def auth(self) -> OfflineTokenAuth:
        """A picklable auth for httpx and requests: every process that unpickles it uses its
        own cached token (one broker request per token lifetime per process)."""
        return OfflineTokenAuth(ProcessToken(self), min_ttl=self.min_ttl)

    def broker_fetches(self) -> int:
        """How many access tokens this process fetched from the broker with this credential."""
        return _shared(self).client.fetches

    def install(self) -> None:
        """Make this credential the process's configuration: ``current_task()`` returns its
        task and the default client authenticates with it."""
        global _installed
        with _lock:
            _installed = self
        set_default_client(self.client())

    def flush_progress(self) -> None:
        """Send the last progress report now, if one waits (a worker's teardown calls it)."""
        shared = _SHARED.get(self)
        if shared is not None:
            shared.progress.flush()


class WorkerClient(OfflineTokenClient):
    """An ``OfflineTokenClient`` that counts broker fetches and asks ``FETCH_MARGIN`` s more."""

    fetches = 0

    def access_token(
        self, token_id: str, *, min_ttl: float = 30, keep_warm: bool | None = None
    ) -> AccessToken:
        with self._lock:
            self.fetches += 1
        return super().access_token(token_id, min_ttl=min_ttl + FETCH_MARGIN, keep_warm=keep_warm)

    async def aaccess_token(
        self, token_id: str, *, min_ttl: float = 30, keep_warm: bool | None = None
    ) -> AccessToken:
        with self._lock:
            self.fetches += 1
        return await super().aaccess_token(
            token_id, min_ttl=min_ttl + FETCH_MARGIN, keep_warm=keep_warm
        )


class WorkerToken(OfflineToken):
    """This process's ``OfflineToken`` of a worker credential: calls without a ``min_ttl`` (and
    ``.auth``) use the credential's ``min_ttl``, so short-lived tokens are cached too."""

    def __init__(self, token_id: str, *, client: WorkerClient, min_ttl: float) -> None:
        super().__init__(token_id, client=client)
        self.min_ttl = min_ttl

    def access_token(self, min_ttl: float | None = None) -> str:
        return self.access_token_info(min_ttl).value

    def access_token_info(self, min_ttl: float | None = None) -> AccessToken:
        return super().access_token_info(self.min_ttl if min_ttl is None else min_ttl)

    async def aaccess_token(self, min_ttl: float | None = None) -> str:
        return (await self.aaccess_token_info(min_ttl)).value

    async def aaccess_token_info(self, min_ttl: float | None = None) -> AccessToken:
        return await super().aaccess_token_info(self.min_ttl if min_ttl is None else min_ttl)

    @property
    def auth(self) -> OfflineTokenAuth:
        if self._auth is None:
            self._auth = OfflineTokenAuth(self, min_ttl=self.min_ttl)
        return self._auth


class ProcessToken:
    """The picklable stand-in for this process's ``OfflineToken`` of a worker credential."""

    def __init__(self, credential: WorkerCredential) -> None:
        self.credential = credential

    def __repr__(self) -> str:
        return f"ProcessToken({self.credential!r})"

    def access_token_info(self, min_ttl: float = 30) -> AccessToken:
        return self.credential.token().access_token_info(min_ttl)

    def renew_access_token(self, stale: AccessToken) -> AccessToken:
        return self.credential.token().renew_access_token(stale)

    async def aaccess_token_info(self, min_ttl: float = 30) -> AccessToken:
        return await self.credential.token().aaccess_token_info(min_ttl)

    async def arenew_access_token(self, stale: AccessToken) -> AccessToken:
        return await self.credential.token().arenew_access_token(stale)


class ProgressReporter:
    """Coalesces progress reports of one process: the first goes at once, later ones at most
    once per ``interval`` seconds, and the last one always goes (a timer sends it)."""

    def __init__(self, client: OfflineTokenClient, task_id: str, interval: float) -> None:
        self._client = client
        self._task_id = task_id
        self.interval = interval
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one send at a time: flush() waits for one in flight
        self._pending: dict[str, Any] | None = None
        self._timer: threading.Timer | None = None
        self._last_sent = float("-inf")
        self.sent = 0
        self.ended: TaskError | None = None  # set once the server says the task is over

    def report(self, progress: float, message: str | None) -> None:
        if self.ended is not None:
            raise self.ended
        with self._lock:
            self._pending = {"progress": progress, "message": message}
            if self._timer is None:
                delay = max(0.0, self._last_sent + self.interval - time.monotonic())
                self._timer = threading.Timer(delay, self._send_pending)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._send_pending()

    def _send_pending(self) -> None:
        with self._sending:
            self._send_locked()

    def _send_locked(self) -> None:
        with self._lock:
            body, self._pending, self._timer = self._pending, None, None
            if body is None:
                return
            self._last_sent = time.monotonic()
        try:
            info = self._client.update_task(self._task_id, **body)
            self.sent += 1
        except (TaskEnded, TaskError) as exc:
            self.ended = TaskCancelled(f"task {self._task_id} is over: {exc.message}")
            return
        except OfflineTokenClientError as exc:  # unreachable for now: the next report retries
            log.warning("task %s: progress not sent: %s", self._task_id, exc.message)
            with self._lock:
                self._pending = self._pending or body
            return
        if info.get("status") == "cancelled":
            self.ended = TaskCancelled(f"task {self._task_id} was cancelled")


class WorkerTask(Task):
    """The task seen from a worker: ``progress()`` is coalesced per process, and raises
    ``TaskCancelled`` once a report found the task cancelled or over."""

    def __init__(self, credential: WorkerCredential) -> None:
        info = {"id": credential.task_id, "persistent_token_id": credential.token_id}
        super().__init__(credential.task_id, client=credential.client(), info=info)
        self._token = credential.token() if credential.token_id else None
        self._reporter = _shared(credential).progress

    def progress(self, value: float, message: str | None = None) -> Task:
        """Report progress; sent at most once per ``progress_interval`` from this process."""
        self._reporter.report(to_percent(value), message)
        return self


@dataclass
class _Shared:
    client: WorkerClient
    token: WorkerToken | None
    progress: ProgressReporter


_lock = threading.Lock()
_SHARED: dict[WorkerCredential, _Shared] = {}
_installed: WorkerCredential | None = None


def _shared(credential: WorkerCredential) -> _Shared:
    with _lock:
        shared = _SHARED.get(credential)
        if shared is None:
            client = WorkerClient(credential.server_info())
            token_id, min_ttl = credential.token_id, credential.min_ttl
            token = WorkerToken(token_id, client=client, min_ttl=min_ttl) if token_id else None
            reporter = ProgressReporter(client, credential.task_id, credential.progress_interval)
            atexit.register(reporter.flush)  # the last report also leaves a process that exits
            shared = _SHARED[credential] = _Shared(client, token, reporter)
        return shared


def installed_credential() -> WorkerCredential | None:
    """The credential installed in this process (``install()``, the Dask plugin), or one from
    the environment; ``None`` outside a worker."""
    with _lock:
        installed = _installed
    return installed or WorkerCredential.from_environ()
