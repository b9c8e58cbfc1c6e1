"""The running parts of the extension, built by the app and shared by every handler."""

from __future__ import annotations

import asyncio
import logging
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


class VaultUnavailable(OfflineTokenError):
    kind = ErrorKind.UNAVAILABLE
    code = rest_codes.VAULT_UNAVAILABLE


class Services:
    """Every part, typed: the stores, the broker, the refresh engine, the task service and the
    activity beat. Opens the stores once (off the event loop), starts and stops background work
    in a fixed order.

    A vault that cannot open (wrong key, newer schema) does not stop the Jupyter server: every
    API call answers 503 ``vault_unavailable`` with the actionable message, and the log says it
    once at start.
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
        self._error: str | None = None

    @property
    def error(self) -> str | None:
        return self._error

    async def ready(self) -> TokenBroker:
        if self._opened:
            return self.broker
        async with self._lock:
            if not self._opened and self._error is None:
                try:
                    await self.vault.open()
                    await self.task_store.open()
                except VaultError as exc:
                    # Every message names the setting to look at; most already do.
                    message = str(exc)
                    if "OfflineTokenApp." not in message:
                        message += "; check OfflineTokenApp.vault_path"
                    self._error = message
                    log.error("offline-token vault unavailable: %s", message)
                else:
                    self._opened = True
        if self._error is not None:
            raise VaultUnavailable(self._error)
        return self.broker

    async def start_background(self) -> None:
        """Start the refresh engine, then the task service; once."""
        if self._started:
            return
        self._started = True
        await self.engine.start()
        await self.tasks.start()

    async def close(self) -> None:
        """Stop background work, let in-flight refreshes land in the vault, close the vault."""
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
