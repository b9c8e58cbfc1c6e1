"""SQLiteTaskStore: the ``tasks`` table, in the token store's vault file and on its thread.

The table's DDL lives here too; ``schema.py`` puts it in the migration order.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...paging import Cursor, Page, check_limit
from ...tasks.models import RUNNING, TASK_PENDING, TERMINAL, TaskRecord
from ..base import TaskStore
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

_COLUMNS = ", ".join(
    f"t.{name}"
    for name in (
        "id owner name description kind status persistent_token_id progress message result "
        "error spec created_at updated_at started_at completed_at queued_at runner"
    ).split()
)
# Every read carries the linked entry's status, so a task's offline_token_status is exact.
_SELECT = (
    f"SELECT {_COLUMNS}, k.status AS token_status "  # noqa: S608
    "FROM tasks t LEFT JOIN tokens k ON k.id = t.persistent_token_id"
)
# Columns an update may set (spec and identity never change after creation).
_MUTABLE = frozenset(
    {
        "status",
        "persistent_token_id",
        "progress",
        "message",
        "result",
        "error",
        "started_at",
        "completed_at",
        "queued_at",
        "credential_hash",
        "runner",
    }
)


def _record(row: sqlite3.Row) -> TaskRecord:
    spec = json.loads(row["spec"] or "{}")
    return TaskRecord(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        status=row["status"],
        persistent_token_id=row["persistent_token_id"],
        progress=row["progress"],
        message=row["message"],
        result=row["result"],
        error=row["error"],
        command=spec.get("command"),
        notebook=spec.get("notebook"),
        parameters=spec.get("parameters") or {},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        queued_at=row["queued_at"],
        runner=row["runner"],
        token_status=row["token_status"],
    )


def _get(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    row = conn.execute(f"{_SELECT} WHERE t.id = ?", (task_id,)).fetchone()
    return _record(row) if row is not None else None


class SQLiteTaskStore(TaskStore):
    """CRUD for task rows. Every method runs on the token store's worker thread."""

    def __init__(self, token_store: SQLiteTokenStore, **kwargs: Any) -> None:
        """``token_store``: the SQLite token store whose vault file holds the tasks table.
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        self.token_store = token_store

    async def create(self, record: TaskRecord) -> TaskRecord:
        spec = json.dumps(
            {
                "command": record.command,
                "notebook": record.notebook,
                "parameters": record.parameters,
            }
        )

        def work(conn: sqlite3.Connection) -> TaskRecord:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO tasks (id, owner, name, description, kind, status, "
                    "persistent_token_id, progress, message, spec, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.owner,
                        record.name,
                        record.description,
                        record.kind,
                        record.status,
                        record.persistent_token_id,
                        record.progress,
                        record.message,
                        spec,
                        record.created_at,
                        record.updated_at,
                    ),
                )
                created = _get(conn, record.id)
            assert created is not None
            return created

        return await self.token_store.run(work)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self.token_store.run(_get, task_id)

    async def list(
        self, *, owner: str | None = None, status: str | None = None
    ) -> builtins.list[TaskRecord]:
        """Newest first."""
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if owner is not None:
            where.append("t.owner = ?")
            params.append(owner)
        if status is not None:
            where.append("t.status = ?")
            params.append(status)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.created_at DESC, t.rowid DESC"

        def work(conn: sqlite3.Connection) -> builtins.list[TaskRecord]:
            return [_record(row) for row in conn.execute(sql, params)]

        return await self.token_store.run(work)

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        """One page, newest first, after ``cursor`` (keyset: deep pages cost what the first
        one does)."""
        check_limit(limit)
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if owner is not None:
            where.append("t.owner = ?")
            params.append(owner)
        if status is not None:
            where.append("t.status = ?")
            params.append(status)
        if cursor is not None:
            where.append("(t.created_at, t.rowid) < (?, ?)")
            params += [cursor.created_at, cursor.rowid]
        sql = _SELECT.replace(" FROM tasks t", ", t.rowid AS _r FROM tasks t", 1)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.created_at DESC, t.rowid DESC LIMIT ?"
        params.append(limit + 1)

        def work(conn: sqlite3.Connection) -> Page[TaskRecord]:
            rows = conn.execute(sql, params).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            after = Cursor(rows[-1]["created_at"], rows[-1]["_r"]).encode() if more else None
            return Page([_record(row) for row in rows], after)

        return await self.token_store.run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """Delete up to ``limit`` finished tasks (completed, failed, cancelled, interrupted)
        unchanged since ``before``, in one short transaction; return their ids."""
        check_limit(limit)
        finished = tuple(sorted(TERMINAL))

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            return delete_stale(conn, "tasks", finished, before, limit)

        return await self.token_store.run(work)

    async def update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord | None:
        unknown = set(changes) - _MUTABLE - {"updated_at"}
        if unknown:
            raise ValueError(f"cannot update task column(s) {sorted(unknown)}")
        columns = sorted(changes)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        sql = f"UPDATE tasks SET {assignments} WHERE id = ?"  # noqa: S608
        values = [changes[name] for name in columns]

        def work(conn: sqlite3.Connection) -> TaskRecord | None:
            with transaction(conn):
                current = _get(conn, task_id)
                if current is None or (expect is not None and current.status not in expect):
                    return None
                conn.execute(sql, (*values, task_id))
                return _get(conn, task_id)

        return await self.token_store.run(work)

    async def delete(self, task_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return bool(conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount)

        return await self.token_store.run(work)

    async def find_running_by_credential(self, credential_hash: str) -> TaskRecord | None:
        """The running task whose scoped credential hashes to ``credential_hash``."""

        def work(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(
                f"{_SELECT} WHERE t.credential_hash = ? AND t.status = ?",
                (credential_hash, RUNNING),
            ).fetchone()
            return _record(row) if row is not None else None

        return await self.token_store.run(work)

    async def for_tokens(
        self, token_ids: builtins.list[str], *, owner: str | None = None
    ) -> builtins.list[TaskRecord]:
        """Tasks linked to any of ``token_ids`` (oldest first)."""
        if not token_ids:
            return []
        sql = f"{_SELECT} WHERE t.persistent_token_id IN ({marks(token_ids)})"
        params: builtins.list[Any] = list(token_ids)
        if owner is not None:
            # Unary + keeps the planner off the owner index: with it, SQLite walked every task
            # of the owner (100k: ~250 ms per token page) instead of the few linked ones.
            sql += " AND +t.owner = ?"
            params.append(owner)
        sql += " ORDER BY t.created_at, t.rowid"

        def work(conn: sqlite3.Connection) -> builtins.list[TaskRecord]:
            return [_record(row) for row in conn.execute(sql, params)]

        return await self.token_store.run(work)

    async def interrupt_leftovers(
        self, now: float, message: str, *, still_supervised: Callable[[str | None], bool]
    ) -> builtins.list[str]:
        """Tasks left ``running`` (or queued) by a server process that is gone become
        ``interrupted``, their credentials dead. ``still_supervised(runner)`` is True for a
        runner that is alive (another server sharing this vault). Returns their ids."""

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            with transaction(conn):
                ids = [
                    row["id"]
                    for row in conn.execute(
                        "SELECT id, runner FROM tasks WHERE status = ? "
                        "OR (status = ? AND queued_at IS NOT NULL)",
                        (RUNNING, TASK_PENDING),
                    )
                    if not still_supervised(row["runner"])
                ]
                conn.executemany(
                    "UPDATE tasks SET status = 'interrupted', credential_hash = NULL, "
                    "queued_at = NULL, runner = NULL, completed_at = ?, updated_at = ?, "
                    "message = ? WHERE id = ?",
                    [(now, now, message, task_id) for task_id in ids],
                )
            return ids

        return await self.token_store.run(work)
