"""PostgresTaskStore: the ``tasks`` table, in the token store's database and pool."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from typing import Any

from ...paging import Cursor, Page, check_limit
from ...tasks.models import RUNNING, TASK_PENDING, TERMINAL, TaskRecord
from ..base import TaskStore, TokenStore
from .database import Conn
from .tokens import PostgresTokenStore

_COLUMNS = ", ".join(
    f"t.{name}"
    for name in (
        "id owner name description kind status persistent_token_id progress message result "
        "error spec created_at updated_at started_at completed_at queued_at runner"
    ).split()
)
# Every read carries the linked entry's status, so a task's offline_token_status is exact.
_SELECT = (
    f"SELECT {_COLUMNS}, t.seq AS _r, k.status AS token_status "  # noqa: S608
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


def _record(row: dict[str, Any]) -> TaskRecord:
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


async def _select(conn: Conn, where: str, params: Any) -> builtins.list[TaskRecord]:
    cur = await conn.execute(f"{_SELECT} {where}", params)
    return [_record(row) for row in await cur.fetchall()]


async def _get(conn: Conn, task_id: str) -> TaskRecord | None:
    found = await _select(conn, "WHERE t.id = %s", (task_id,))
    return found[0] if found else None


def _filters(
    owner: str | None, status: str | None
) -> tuple[builtins.list[str], builtins.list[Any]]:
    where: builtins.list[str] = []
    params: builtins.list[Any] = []
    if owner is not None:
        where.append("t.owner = %s")
        params.append(owner)
    if status is not None:
        where.append("t.status = %s")
        params.append(status)
    return where, params


class PostgresTaskStore(TaskStore):
    """CRUD for task rows, on the PostgreSQL token store's pool (opened and closed by it)."""

    def __init__(self, token_store: TokenStore, **kwargs: Any) -> None:
        """``token_store``: the PostgresTokenStore whose database holds the tasks table.
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        if not isinstance(token_store, PostgresTokenStore):
            raise TypeError("PostgresTaskStore needs a PostgresTokenStore as token_store")
        self.database = token_store.database

    async def create(self, record: TaskRecord) -> TaskRecord:
        spec = json.dumps(
            {
                "command": record.command,
                "notebook": record.notebook,
                "parameters": record.parameters,
            }
        )
        values: tuple[object, ...] = (
            record.id,
            record.owner,
            record.name,
            record.description,
            record.kind,
        )
        values += (record.status, record.persistent_token_id, record.progress, record.message)
        values += (spec, record.created_at, record.updated_at)

        async def work(conn: Conn) -> TaskRecord:
            await conn.execute(
                "INSERT INTO tasks (id, owner, name, description, kind, status, "
                "persistent_token_id, progress, message, spec, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                values,
            )
            created = await _get(conn, record.id)
            assert created is not None
            return created

        return await self.database.run(work)

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self.database.read(lambda conn: _get(conn, task_id))

    async def list(
        self, *, owner: str | None = None, status: str | None = None
    ) -> builtins.list[TaskRecord]:
        where, params = _filters(owner, status)
        sql = ("WHERE " + " AND ".join(where)) if where else ""
        sql += " ORDER BY t.created_at DESC, t.seq DESC"
        return await self.database.read(lambda conn: _select(conn, sql, params))

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        check_limit(limit)
        where, params = _filters(owner, status)
        if cursor is not None:
            where.append("(t.created_at, t.seq) < (%s, %s)")
            params += [cursor.created_at, cursor.rowid]
        sql = ("WHERE " + " AND ".join(where)) if where else ""
        sql += " ORDER BY t.created_at DESC, t.seq DESC LIMIT %s"
        params.append(limit + 1)

        async def work(conn: Conn) -> Page[TaskRecord]:
            found = await (await conn.execute(f"{_SELECT} {sql}", params)).fetchall()
            more = len(found) > limit
            found = found[:limit]
            after = Cursor(found[-1]["created_at"], found[-1]["_r"]).encode() if more else None
            return Page([_record(row) for row in found], after)

        return await self.database.read(work)

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
        unknown = set(changes) - _MUTABLE - {"updated_at"}
        if unknown:
            raise ValueError(f"cannot update task column(s) {sorted(unknown)}")
        columns = sorted(changes)
        assignments = ", ".join(f"{name} = %s" for name in columns)
        values = [changes[name] for name in columns]

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

    async def find_running_by_credential(self, credential_hash: str) -> TaskRecord | None:
        async def work(conn: Conn) -> TaskRecord | None:
            found = await _select(
                conn, "WHERE t.credential_hash = %s AND t.status = %s", (credential_hash, RUNNING)
            )
            return found[0] if found else None

        return await self.database.read(work)

    async def for_tokens(
        self, token_ids: builtins.list[str], *, owner: str | None = None
    ) -> builtins.list[TaskRecord]:
        if not token_ids:
            return []
        sql = "WHERE t.persistent_token_id = ANY(%s)"
        params: builtins.list[Any] = [list(token_ids)]
        if owner is not None:
            sql += " AND t.owner = %s"
            params.append(owner)
        sql += " ORDER BY t.created_at, t.seq"
        return await self.database.read(lambda conn: _select(conn, sql, params))

    async def interrupt_leftovers(
        self, now: float, message: str, *, still_supervised: Callable[[str | None], bool]
    ) -> builtins.list[str]:
        """Rows are locked while ``still_supervised`` decides, so two servers starting at once
        do not both interrupt (or spare) the same task."""

        async def work(conn: Conn) -> builtins.list[str]:
            cur = await conn.execute(
                "SELECT id, runner FROM tasks WHERE status = %s "
                "OR (status = %s AND queued_at IS NOT NULL) FOR UPDATE",
                (RUNNING, TASK_PENDING),
            )
            ids = [row["id"] for row in await cur.fetchall() if not still_supervised(row["runner"])]
            if ids:
                await conn.execute(
                    "UPDATE tasks SET status = 'interrupted', credential_hash = NULL, "
                    "queued_at = NULL, runner = NULL, completed_at = %s, updated_at = %s, "
                    "message = %s WHERE id = ANY(%s)",
                    (now, now, message, ids),
                )
            return ids

        return await self.database.run(work)
