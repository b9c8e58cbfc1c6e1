"""The running parts of the extension, built by the app and shared by every handler."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import rest_codes
from .broker import TokenBroker
from .errors import ErrorKind, OfflineTokenError, VaultError
from .refresh.engine import RefreshEngine
from .stores import SQLiteTokenStore

log = logging.getLogger("jupyter_offline_token")


class VaultUnavailable(OfflineTokenError):
    kind = ErrorKind.UNAVAILABLE
    code = rest_codes.VAULT_UNAVAILABLE


class Services:
    """Opens the vault once (off the event loop) and hands out the broker.

    A vault that cannot open (wrong key, newer schema) does not stop the Jupyter server: every
    API call answers 503 ``vault_unavailable`` with the actionable message, and the log says it
    once at start.
    """

    def __init__(self, vault: SQLiteTokenStore, broker: TokenBroker, engine: RefreshEngine) -> None:
        self.vault = vault
        self.broker = broker
        self.engine = engine
        self.extras: dict[str, Any] = {}
        self.on_start: list[Any] = []  # async callables run once the vault is open
        self.on_stop: list[Any] = []  # async callables run before the vault closes
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
        """Start the refresh engine and whatever else registered (tasks); once."""
        if self._started:
            return
        self._started = True
        await self.engine.start()
        for hook in self.on_start:
            await hook()

    async def close(self) -> None:
        """Stop background work, let in-flight refreshes land in the vault, close the vault."""
        if self._started:
            for hook in reversed(self.on_stop):
                try:
                    await hook()
                except Exception:
                    log.exception("offline-token shutdown hook failed")
            await self.engine.stop()
            self._started = False
        await self.broker.aclose()
        await self.vault.close()
        self._opened = False
