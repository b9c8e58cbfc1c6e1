"""Key rotation on a PostgreSQL vault (see ``shared.rotation``): each batch is one short
transaction that locks its rows (``FOR UPDATE``: a concurrent refresh of one of them waits for
the commit, or commits first and is read here), with the crypto on a worker thread."""

from __future__ import annotations

import asyncio

from ..shared import rotation, sql
from ..shared.rotation import Progress, RotationReport
from .database import Conn, Database

_SELECT_STALE = sql.pyformat(rotation.SELECT_STALE) + " FOR UPDATE"
_KEY_IDS_IN_USE = sql.pyformat(rotation.KEY_IDS_IN_USE)


class PostgresKeyRotation:
    """``TokenStore.rotate_keys`` for ``PostgresTokenStore`` (mixed in before TokenStore)."""

    database: Database

    async def rotate_keys(
        self,
        *,
        batch_size: int = rotation.DEFAULT_BATCH_SIZE,
        max_batches: int | None = None,
        progress: Progress | None = None,
    ) -> RotationReport:
        database = self.database
        database.check_usable()  # VaultError unless open
        keyring = database.keyring

        async def run_batch(after: str, limit: int) -> tuple[str | None, int, int, int, int, int]:
            primary = keyring.primary_key_id

            async def work(conn: Conn) -> tuple[str | None, int, int, int, int, int]:
                cur = await conn.execute(_SELECT_STALE, (after, primary, primary, primary, limit))
                rows = await cur.fetchall()
                plan = await asyncio.to_thread(rotation.plan_batch, database, keyring, rows)
                done = skipped = cleared = 0
                for change in plan.changes:
                    cur = await conn.execute(sql.pyformat(change.sql), change.params)
                    if cur.rowcount != 1:
                        skipped += 1
                    elif change.cleared:
                        cleared += 1
                    else:
                        done += 1
                return plan.last_id, plan.rows, done, skipped, cleared, plan.unreadable

            return await database.run(work)

        async def in_use() -> dict[str, int]:
            async def work(conn: Conn) -> dict[str, int]:
                cur = await conn.execute(_KEY_IDS_IN_USE)
                return {str(row["key_id"]): int(row["n"]) for row in await cur.fetchall()}

            return await database.read(work)

        return await rotation.rotate(
            keyring,
            run_batch,
            in_use,
            batch_size=batch_size,
            max_batches=max_batches,
            progress=progress,
        )
