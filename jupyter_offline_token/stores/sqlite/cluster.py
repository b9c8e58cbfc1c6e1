"""Cluster coordination on one SQLite vault file: the eviction log and the sweep claims.

Several processes (several Jupyter servers of one user) may share the file. The ``evictions``
log is written by triggers (schema migration 6) in the same transaction as the change that
makes an entry unusable, and every process tails it by ``seq`` to drop cached access tokens;
the ``sweeps`` table lets one process per interval run each periodic job.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3

from ...paging import check_limit
from ..shared import sql
from ..shared.checks import check_sweep_args
from .database import Database
from .sql import transaction


def evictions_after(
    conn: sqlite3.Connection, cursor: int | None, limit: int
) -> tuple[int, list[str]]:
    """One indexed range read on ``seq`` (the primary key): cheap enough to poll."""
    if cursor is None:
        # sqlite_sequence keeps the highest seq ever handed out, even after a prune emptied
        # the log; without a row yet, nothing was ever logged.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'evictions'").fetchone()
        return (int(row[0]) if row is not None else 0), []
    found = conn.execute(sql.EVICTIONS_AFTER, (cursor, limit)).fetchall()
    if not found:
        return cursor, []
    return int(found[-1]["seq"]), [row["token_id"] for row in found]


def prune_evictions(conn: sqlite3.Connection, before: float, limit: int) -> int:
    with transaction(conn):
        return conn.execute(
            "DELETE FROM evictions WHERE seq IN "
            "(SELECT seq FROM evictions WHERE ts < ? ORDER BY seq LIMIT ?)",
            (before, limit),
        ).rowcount


def claim_sweep(
    conn: sqlite3.Connection, name: str, holder: str, interval: float, now: float
) -> bool:
    """Under the write lock (``BEGIN IMMEDIATE``), so two processes never both win."""
    with transaction(conn):
        row = conn.execute("SELECT next_at FROM sweeps WHERE name = ?", (name,)).fetchone()
        if row is not None and now < row["next_at"]:
            return False
        conn.execute(
            "INSERT INTO sweeps (name, holder, next_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "next_at = excluded.next_at",
            (name, holder, now + interval),
        )
        return True


class SQLiteClusterMethods:
    """The TokenStore's cluster methods for ``SQLiteTokenStore`` (mixed in before TokenStore),
    kept here so the token store's module stays about entries."""

    database: Database

    async def evictions_after(
        self, cursor: int | None, *, limit: int = 1000
    ) -> tuple[int, builtins.list[str]]:
        check_limit(limit)
        return await self.database.run(evictions_after, cursor, limit)

    async def wait_for_evictions(self, timeout: float) -> None:
        """SQLite cannot notify another process: sleep on the event loop (never on the vault's
        one worker thread, which other callers need); the caller's next ``evictions_after`` is
        the cheap check."""
        await asyncio.sleep(max(0.0, timeout))

    async def prune_evictions(self, before: float, *, limit: int) -> int:
        check_limit(limit)
        return await self.database.run(prune_evictions, before, limit)

    async def claim_sweep(self, name: str, holder: str, *, interval: float, now: float) -> bool:
        check_sweep_args(name, holder, interval)
        return await self.database.run(claim_sweep, name, holder, interval, now)
