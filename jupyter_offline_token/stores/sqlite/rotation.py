"""Key rotation on a SQLite vault (see ``shared.rotation``): each batch is one ``BEGIN
IMMEDIATE`` transaction on the worker thread, so no other process writes between a row's read
and its compare and swap."""

from __future__ import annotations

import sqlite3

from ...errors import VaultError
from ..shared import rotation
from ..shared.rotation import Progress, RotationReport
from .database import Database
from .sql import transaction


def _batch(
    conn: sqlite3.Connection, database: Database, after: str, limit: int
) -> tuple[str | None, int, int, int, int, int]:
    keyring = database.keyring
    primary = keyring.primary_key_id
    with transaction(conn):
        rows = conn.execute(
            rotation.SELECT_STALE, (after, primary, primary, primary, limit)
        ).fetchall()
        plan = rotation.plan_batch(database, keyring, rows)
        done = skipped = cleared = 0
        for change in plan.changes:
            if conn.execute(change.sql, change.params).rowcount != 1:
                skipped += 1
            elif change.cleared:
                cleared += 1
            else:
                done += 1
    return plan.last_id, plan.rows, done, skipped, cleared, plan.unreadable


def _in_use(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(key_id): int(n) for key_id, n in conn.execute(rotation.KEY_IDS_IN_USE)}


class SQLiteKeyRotation:
    """``TokenStore.rotate_keys`` for ``SQLiteTokenStore`` (mixed in before TokenStore)."""

    database: Database

    async def rotate_keys(
        self,
        *,
        batch_size: int = rotation.DEFAULT_BATCH_SIZE,
        max_batches: int | None = None,
        progress: Progress | None = None,
    ) -> RotationReport:
        database = self.database
        if database.state != "open":
            raise VaultError("the vault is not open: call open() first")

        async def run_batch(after: str, limit: int) -> tuple[str | None, int, int, int, int, int]:
            return await database.run(_batch, database, after, limit)

        async def in_use() -> dict[str, int]:
            return await database.run(_in_use)

        return await rotation.rotate(
            database.keyring,
            run_batch,
            in_use,
            batch_size=batch_size,
            max_batches=max_batches,
            progress=progress,
        )
