"""The TaskStore reads whose logic is the same in every SQL backend; a backend supplies
``_fetch`` (one read statement, ``?`` placeholders) and its order key."""

from __future__ import annotations

import builtins
from abc import abstractmethod
from typing import Any, ClassVar

from ...paging import Cursor, Page, check_limit
from ...tasks.models import RUNNING, TaskRecord
from . import sql
from .records import Row, keyset_page, task_record


class TaskReads:
    """Mixed in before ``TaskStore``."""

    # The column that orders tasks created at the same ``created_at`` (SQLite's rowid).
    order_key: ClassVar[str]

    @abstractmethod
    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        """The rows of one read statement."""

    async def _tasks(self, where: str, params: Any) -> builtins.list[TaskRecord]:
        statement = f"{sql.select_tasks(self.order_key)} {where}"
        return [task_record(row) for row in await self._fetch(statement, params)]

    async def get(self, task_id: str) -> TaskRecord | None:
        found = await self._tasks("WHERE t.id = ?", (task_id,))
        return found[0] if found else None

    async def list(
        self, *, owner: str | None = None, status: str | None = None
    ) -> builtins.list[TaskRecord]:
        where, params = sql.owner_status_filter(owner, status, prefix="t.")
        order = f" ORDER BY t.created_at DESC, t.{self.order_key} DESC"
        return await self._tasks(sql.where_clause(where) + order, params)

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        check_limit(limit)
        order = self.order_key
        where, params = sql.owner_status_filter(owner, status, prefix="t.")
        if cursor is not None:
            where.append(f"(t.created_at, t.{order}) < (?, ?)")
            params += [cursor.created_at, cursor.rowid]
        statement = sql.select_tasks(order) + sql.where_clause(where)
        statement += f" ORDER BY t.created_at DESC, t.{order} DESC LIMIT ?"
        params.append(limit + 1)
        return keyset_page(await self._fetch(statement, params), limit, task_record)

    async def find_running_by_credential(self, credential_hash: str) -> TaskRecord | None:
        found = await self._tasks(
            "WHERE t.credential_hash = ? AND t.status = ?", (credential_hash, RUNNING)
        )
        return found[0] if found else None
