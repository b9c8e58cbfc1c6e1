"""PostgresTaskStore: the ``tasks`` table, in the token store's database and pool."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from ...paging import check_limit
from ...tasks.models import RUNNING, TASK_PENDING, TERMINAL, TaskRecord
from ..base import TaskStore, TokenStore
from ..shared import checks, sql
from ..shared.records import Row, task_record, task_values
from ..shared.task_reads import TaskReads
from .database import Conn
from .tokens import PostgresTokenStore

_SELECT = sql.select_tasks("seq")
_INSERT_TASK = sql.pyformat(sql.INSERT_TASK)
_LEFTOVERS = sql.pyformat(sql.TASK_LEFTOVERS) + " FOR UPDATE"
_INTERRUPT = sql.pyformat(f"UPDATE tasks SET {sql.SET_INTERRUPTED} WHERE id = ANY(?)")  # noqa: S608


async def _get(conn: Conn, task_id: str) -> TaskRecord | None:
    row = await (await conn.execute(f"{_SELECT} WHERE t.id = %s", (task_id,))).fetchone()
    return task_record(row) if row is not None else None


class PostgresTaskStore(TaskReads, TaskStore):
    """CRUD for task rows, on the PostgreSQL token store's pool (opened and closed by it)."""

    order_key = "seq"

    def __init__(self, token_store: TokenStore, **kwargs: Any) -> None:
        """``token_store``: the PostgresTokenStore whose database holds the tasks table.
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        if not isinstance(token_store, PostgresTokenStore):
            raise TypeError("PostgresTaskStore needs a PostgresTokenStore as token_store")
        self.database = token_store.database

    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        async def work(conn: Conn) -> builtins.list[Row]:
            return [*await (await conn.execute(sql.pyformat(statement), params)).fetchall()]

        return await self.database.read(work)

    async def create(self, record: TaskRecord) -> TaskRecord:
        values = task_values(record)

        async def work(conn: Conn) -> TaskRecord:
            await conn.execute(_INSERT_TASK, values)
            created = await _get(conn, record.id)
            assert created is not None
            return created

        return await self.database.run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """At most ``limit`` finished tasks unchanged since ``before``; rows another process is
        purging are skipped, never waited for."""
        check_limit(limit)
        finished = sorted(TERMINAL)

        async def work(conn: Conn) -> builtins.list[str]:
            cur = await conn.execute(
                "WITH doomed AS (SELECT id FROM tasks WHERE status = ANY(%s) AND updated_at < %s "
                "ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                "DELETE FROM tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id",
                (finished, before, limit),
            )
            return [row["id"] for row in await cur.fetchall()]

        return await self.database.run(work)

    async def update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord | None:
        columns, values = checks.task_changes(changes)
        assignments = ", ".join(f"{name} = %s" for name in columns)

        async def work(conn: Conn) -> TaskRecord | None:
            cur = await conn.execute(
                "SELECT status FROM tasks WHERE id = %s FOR UPDATE", (task_id,)
            )
            row = await cur.fetchone()
            if row is None or (expect is not None and row["status"] not in expect):
                return None
            if columns:
                await conn.execute(
                    f"UPDATE tasks SET {assignments} WHERE id = %s",  # noqa: S608
                    (*values, task_id),
                )
            return await _get(conn, task_id)

        return await self.database.run(work)

    async def delete(self, task_id: str) -> bool:
        async def work(conn: Conn) -> bool:
            return (await conn.execute("DELETE FROM tasks WHERE id = %s", (task_id,))).rowcount > 0

        return await self.database.run(work)

    async def for_tokens(
        self, token_ids: builtins.list[str], *, owner: str | None = None
    ) -> builtins.list[TaskRecord]:
        if not token_ids:
            return []
        where = "WHERE t.persistent_token_id = ANY(?)"
        params: builtins.list[Any] = [list(token_ids)]
        if owner is not None:
            where += " AND t.owner = ?"
            params.append(owner)
        return await self._tasks(where + " ORDER BY t.created_at, t.seq", params)

    async def interrupt_leftovers(
        self, now: float, message: str, *, still_supervised: Callable[[str | None], bool]
    ) -> builtins.list[str]:
        """Rows are locked while ``still_supervised`` decides, so two servers starting at once
        do not both interrupt (or spare) the same task."""

        async def work(conn: Conn) -> builtins.list[str]:
            cur = await conn.execute(_LEFTOVERS, (RUNNING, TASK_PENDING))
            ids = [row["id"] for row in await cur.fetchall() if not still_supervised(row["runner"])]
            if ids:
                await conn.execute(_INTERRUPT, (now, now, message, ids))
            return ids

        return await self.database.run(work)
