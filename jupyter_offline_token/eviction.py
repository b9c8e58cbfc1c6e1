"""EvictionWatcher: a revocation or failure in any process reaches this process's cache at once.

Every process sharing a store keeps access tokens in memory (the broker's cache), and a cache hit
reads no database. When another process deletes, revokes or fails an entry, the store logs its id
(``TokenStore.evictions_after``); this watcher tails that log and drops those ids from the
broker's cache, so the next request for them reads the vault and is refused. Polling backends
(SQLite) are read every ``eviction_poll_interval`` seconds; a backend with notifications
(PostgreSQL's LISTEN/NOTIFY) wakes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .broker import TokenBroker

log = logging.getLogger("jupyter_offline_token.eviction")

BATCH = 1000  # log rows per read; a backlog is read in several
MAX_BACKOFF = 10.0  # seconds between attempts while the store fails
# While the store notifies every eviction (PostgreSQL's LISTEN), the log is still read this
# often as a safety net, instead of every poll_interval: an idle server costs the database
# one query per NOTIFIED_POLL, not four a second.
NOTIFIED_POLL = 5.0


class EvictionWatcher:
    """Tails the store's eviction log for one broker, from ``start()`` to ``stop()``."""

    def __init__(self, broker: TokenBroker, *, poll_interval: float) -> None:
        if not poll_interval > 0:
            raise ValueError("poll_interval must be positive")
        self.broker = broker
        self.store = broker.vault
        self.poll_interval = poll_interval
        self.cursor: int | None = None
        self.evicted = 0  # cache entries dropped so far (tests and debugging)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Take the log's current end as the starting point (earlier rows concern nothing this
        process has cached yet), then tail it in the background. A store error here is not
        fatal: the loop takes the end later and then drops the whole cache, since it cannot
        know what was logged in between."""
        if self._task is not None:
            return
        try:
            self.cursor, _ = await self.store.evictions_after(None)
        except Exception as exc:
            log.warning("offline-token eviction log unreadable at start: %s", type(exc).__name__)
        self._task = asyncio.create_task(self._run(), name="offline-token-evictions")

    def wait_timeout(self) -> float:
        """How long the next wait may last without a notification."""
        if self.store.evictions_notified:
            return max(self.poll_interval, NOTIFIED_POLL)
        return self.poll_interval

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loop and wait for it, at most ``timeout`` seconds."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
            await asyncio.wait_for(task, timeout)

    async def catch_up(self) -> int:
        """Read everything logged since the cursor and drop those ids from the cache; how many
        cached tokens were dropped. Store errors propagate (the loop backs off)."""
        if self.cursor is None:
            self.cursor, _ = await self.store.evictions_after(None)
            dropped = self.broker.evict(None)
            self.evicted += dropped
            return dropped
        dropped = 0
        while True:
            cursor, ids = await self.store.evictions_after(self.cursor, limit=BATCH)
            self.cursor = cursor
            if ids:
                dropped += self.broker.evict(ids)
            if len(ids) < BATCH:
                break
        self.evicted += dropped
        return dropped

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if failures == 0:
                    await self.store.wait_for_evictions(self.wait_timeout())
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher must never die: log, back off, continue
                failures += 1
                delay = min(MAX_BACKOFF, self.poll_interval * 2**failures)
                if failures == 1:
                    log.warning(
                        "offline-token eviction log unreadable (%s); retrying every %.3g s up "
                        "to %.3g s",
                        type(exc).__name__,
                        delay,
                        MAX_BACKOFF,
                    )
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("offline-token eviction log readable again after %d failure(s)", failures)
                failures = 0
