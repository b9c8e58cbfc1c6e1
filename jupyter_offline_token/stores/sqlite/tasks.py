"""SQLiteTaskStore: the ``tasks`` table, in the token store's vault file and on its thread.

The table's DDL lives here too; ``schema.py`` puts it in the migration order.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...paging import check_limit
from ...tasks.models import RUNNING, TASK_PENDING, TERMINAL, TaskRecord
from ..base import TaskStore
from ..shared import checks, sql
from ..shared.records import Row, task_record, task_values
from ..shared.task_reads import TaskReads
from .sql import delete_stale, marks, transaction

if TYPE_CHECKING:
    from .tokens import SQLiteTokenStore

# Schema revision 2 (issue 4): long-running work linked to an entry. ``spec`` is JSON (command
# argv, notebook path, parameters); ``runner`` names the server process supervising a running
# task; ``credential_hash`` is the SHA-256 of the task process's scoped credential, set only
# while the task runs. No foreign key: a task outlives its token's entry.
TASKS_TABLE = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    persistent_token_id TEXT,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    queued_at REAL,
    runner TEXT,
    credential_hash TEXT UNIQUE
);
CREATE INDEX tasks_owner_created ON tasks (owner, created_at);
CREATE INDEX tasks_token ON tasks (persistent_token_id);
CREATE INDEX tasks_status ON tasks (status);
"""

# Part of schema revision 4 (issue 9): status-filtered pages, and the retention purge finds old
# rows by range.
TASKS_INDEXES_4 = """
CREATE INDEX tasks_owner_status_created ON tasks (owner, status, created_at);
CREATE INDEX tasks_status_updated ON tasks (status, updated_at);
"""

_SELECT = sql.select_tasks("rowid")


def _get(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    row = conn.execute(f"{_SELECT} WHERE t.id = ?", (task_id,)).fetchone()
    return task_record(row) if row is not None else None


class SQLiteTaskStore(TaskReads, TaskStore):
    """CRUD for task rows. Every method runs on the token store's worker thread."""

    order_key = "rowid"

    def __init__(self, token_store: SQLiteTokenStore, **kwargs: Any) -> None:
        """``token_store``: the SQLite token store whose vault file holds the tasks table.
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        self.token_store = token_store

    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        return await self.token_store.run(lambda conn: conn.execute(statement, params).fetchall())

    async def create(self, record: TaskRecord) -> TaskRecord:
        values = task_values(record)

        def work(conn: sqlite3.Connection) -> TaskRecord:
            with transaction(conn):
                conn.execute(sql.INSERT_TASK, values)
                created = _get(conn, record.id)
            assert created is not None
            return created

        return await self.token_store.run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        check_limit(limit)
        finished = tuple(sorted(TERMINAL))

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            return delete_stale(conn, "tasks", finished, before, limit)

        return await self.token_store.run(work)

    async def update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord | None:
        columns, values = checks.task_changes(changes)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        statement = f"UPDATE tasks SET {assignments} WHERE id = ?"  # noqa: S608

        def work(conn: sqlite3.Connection) -> TaskRecord | None:
            with transaction(conn):
                current = _get(conn, task_id)
                if current is None or (expect is not None and current.status not in expect):
                    return None
                conn.execute(statement, (*values, task_id))
                return _get(conn, task_id)

        return await self.token_store.run(work)

    async def delete(self, task_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return bool(conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount)

        return await self.token_store.run(work)

    async def for_tokens(
        self, token_ids: builtins.list[str], *, owner: str | None = None
    ) -> builtins.list[TaskRecord]:
        if not token_ids:
            return []
        statement = f"{_SELECT} WHERE t.persistent_token_id IN ({marks(token_ids)})"
        params: builtins.list[Any] = list(token_ids)
        if owner is not None:
            # Unary + keeps the planner off the owner index: with it, SQLite walked every task
            # of the owner (100k: ~250 ms per token page) instead of the few linked ones.
            statement += " AND +t.owner = ?"
            params.append(owner)
        statement += " ORDER BY t.created_at, t.rowid"
        return [task_record(row) for row in await self._fetch(statement, params)]

    async def interrupt_leftovers(
        self, now: float, message: str, *, still_supervised: Callable[[str | None], bool]
    ) -> builtins.list[str]:
        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            with transaction(conn):
                found = conn.execute(sql.TASK_LEFTOVERS, (RUNNING, TASK_PENDING))
                ids = [row["id"] for row in found if not still_supervised(row["runner"])]
                conn.executemany(
                    f"UPDATE tasks SET {sql.SET_INTERRUPTED} WHERE id = ?",  # noqa: S608
                    [(now, now, message, task_id) for task_id in ids],
                )
            return ids

        return await self.token_store.run(work)
