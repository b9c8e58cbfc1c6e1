"""LISTEN for the eviction log's notifications on a dedicated connection.

``wait_for_evictions`` returns as soon as any process commits an eviction (the trigger's
``pg_notify``). The connection is opened on first use; when it fails, every waiter is woken (so
it re-reads the log: a notification may have been lost), and waiting falls back to polling
(sleeping the timeout) until a reconnect succeeds on a later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from .schema import EVICTION_CHANNEL

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5
_RETRY_AFTER = 5.0  # seconds between reconnect attempts while the database is unreachable


class EvictionListener:
    def __init__(self, url: str, shown_url: str) -> None:
        self._url = url
        self._shown_url = shown_url
        self._task: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._next_attempt = 0.0
        self._closed = False
        # A notification that came while nobody waited: the next wait returns at once (the
        # caller read the log before that notification's commit, perhaps).
        self._pending = False
        self._starting = asyncio.Lock()  # concurrent waiters open one connection, not several

    @property
    def listening(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self, timeout: float) -> None:
        """Return on the next notification, or after ``timeout`` seconds."""
        if self._closed:
            await asyncio.sleep(timeout)
            return
        if self._pending:
            self._pending = False
            return
        loop = asyncio.get_running_loop()
        if not self.listening and loop.time() >= self._next_attempt:
            async with self._starting:
                if not self.listening and not self._closed:
                    await self._start()
        if not self.listening:
            await asyncio.sleep(timeout)  # polling fallback
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
            )
        except psycopg.Error:
            self._next_attempt = loop.time() + _RETRY_AFTER
            log.warning(
                "offline-token vault %s: cannot LISTEN for evictions, polling meanwhile",
                self._shown_url,
            )
            return
        try:
            await conn.execute(f"LISTEN {EVICTION_CHANNEL}")
        except psycopg.Error:
            await conn.close()
            self._next_attempt = loop.time() + _RETRY_AFTER
            return
        self._task = asyncio.create_task(self._consume(conn), name="offline-token-evictions")

    async def _consume(self, conn: psycopg.AsyncConnection[object]) -> None:
        try:
            async for _ in conn.notifies():
                self._wake()
        except psycopg.Error:
            log.warning(
                "offline-token vault %s: the eviction LISTEN connection was lost; polling "
                "until it is back",
                self._shown_url,
            )
        finally:
            self._wake()  # whatever was missed meanwhile, the log has it
            with contextlib.suppress(Exception):
                await conn.close()

    def _wake(self) -> None:
        if not self._waiters:
            self._pending = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake()
