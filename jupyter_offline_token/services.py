"""The running parts of the extension, built by the app and shared by every handler."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import rest_codes
from .errors import ErrorKind, OfflineTokenError, VaultError

if TYPE_CHECKING:
    from .activity import ServerActivity
    from .broker import TokenBroker
    from .refresh.engine import RefreshEngine
    from .stores import TaskStore, TokenStore
    from .tasks.service import TaskService

log = logging.getLogger("jupyter_offline_token")

# Re-opening a vault that could not open at start (a database not up yet): the first retry
# after RETRY_FIRST seconds, each wait doubled up to RETRY_MAX, +-RETRY_JITTER of it at random
# (replicas of a service do not all knock on a recovering database at once).
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
RETRY_JITTER = 0.2


class VaultUnavailable(OfflineTokenError):
    kind = ErrorKind.UNAVAILABLE
    code = rest_codes.VAULT_UNAVAILABLE


def _jitter() -> float:
    """A factor in [1 - RETRY_JITTER, 1 + RETRY_JITTER]."""
    return 1 - RETRY_JITTER + 2 * RETRY_JITTER * secrets.randbelow(1001) / 1000


def unavailable(exc: VaultError) -> VaultUnavailable:
    """The 503 for a store that failed (could not open, or its database went away): the
    message names the setting to look at; most already do."""
    message = str(exc) or type(exc).__name__
    if "OfflineTokenApp." not in message:
        message += "; check OfflineTokenApp.vault_path"
    return VaultUnavailable(message)


class Services:
    """Every part, typed: the stores, the broker, the refresh engine, the task service and the
    activity beat. Opens the stores once (off the event loop), starts and stops background work
    in a fixed order.

    A vault that cannot open (a database not reachable yet, wrong key, newer schema) does not
    stop the Jupyter server: every API call answers 503 ``vault_unavailable`` with the
    actionable message while ``retry_open`` tries again in the background with a growing wait
    (``RETRY_FIRST`` doubled up to ``RETRY_MAX``); once the vault opens, background work starts
    and the extension serves, without a restart. The log says each change of state once.
    """

    def __init__(
        self,
        *,
        vault: TokenStore,
        broker: TokenBroker,
        engine: RefreshEngine,
        tasks: TaskService,
        activity: ServerActivity,
    ) -> None:
        self.vault = vault
        self.task_store: TaskStore = tasks.store
        self.broker = broker
        self.engine = engine
        self.tasks = tasks
        self.activity = activity
        self._started = False
        self._lock = asyncio.Lock()
        self._opened = False
        self._tried = False
        self._error: str | None = None
        self._retry: asyncio.Task[None] | None = None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def retrying(self) -> bool:
        return self._retry is not None and not self._retry.done()

    async def ready(self) -> TokenBroker:
        """The broker once the vault is open; VaultUnavailable (503) while it is not. Only the
        first call tries to open; later ones answer at once (``retry_open`` tries again)."""
        if self._opened:
            return self.broker
        if self._error is None:
            # The first open may be under way in another request: wait for it, never answer
            # 503 meanwhile. (While a retry runs, _error is set and callers answer at once.)
            async with self._lock:
                if not self._tried:
                    self._tried = True
                    await self._open_once()
        if self._error is not None:
            raise VaultUnavailable(self._error)
        if not self._opened:  # closed meanwhile
            raise VaultUnavailable("the vault is closed")
        return self.broker

    async def _open_once(self) -> bool:
        """One attempt to open both stores (the lock held); logs a new error or a recovery."""
        try:
            await self.vault.open()
            await self.task_store.open()
        except VaultError as exc:
            message = str(unavailable(exc))
            if message != self._error:
                log.error("offline-token vault unavailable: %s", message)
            self._error = message
            return False
        if self._error is not None:
            log.warning("offline-token vault is available again")
        self._error = None
        self._opened = True
        return True

    def retry_open(self, then: Callable[[], Awaitable[None]]) -> None:
        """Keep trying to open the vault in the background until it opens (then await
        ``then()``, e.g. start background work) or ``close`` is called."""
        if self._opened or self.retrying:
            return
        self._retry = asyncio.create_task(self._retry_loop(then), name="offline-token-reopen")

    async def _retry_loop(self, then: Callable[[], Awaitable[None]]) -> None:
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay * _jitter())
            delay = min(delay * 2, RETRY_MAX)
            async with self._lock:
                self._tried = True
                opened = self._opened or await self._open_once()
            if opened:
                break
        await then()

    async def start_background(self) -> None:
        """Start the refresh engine, then the task service; once."""
        if self._started:
            return
        self._started = True
        await self.engine.start()
        await self.tasks.start()

    async def close(self) -> None:
        """Stop retrying and background work, let in-flight refreshes land in the vault, close
        the vault."""
        retry, self._retry = self._retry, None
        if retry is not None and not retry.done() and retry is not asyncio.current_task():
            retry.cancel()
            await asyncio.gather(retry, return_exceptions=True)
        if self._started:
            for name, stop in (("tasks", self.tasks.stop), ("activity", self.activity.stop)):
                try:
                    await stop()
                except Exception:
                    log.exception("offline-token: stopping %s failed", name)
            await self.engine.stop()
            self._started = False
        await self.broker.aclose()
        await self.task_store.close()
        await self.vault.close()
        self._opened = False
