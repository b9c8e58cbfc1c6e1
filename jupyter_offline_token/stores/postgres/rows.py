"""Small queries on the ``tokens`` table (records: ``shared.records``)."""

from __future__ import annotations

from typing import Any

from ...errors import EntryGone
from ...models import TokenRecord
from ..shared.records import RECORD_COLUMNS as RECORD_COLUMNS
from ..shared.records import token_record
from ..shared.sql import RECORD_BY_ID, pyformat
from .database import Conn

_RECORD_BY_ID = pyformat(RECORD_BY_ID)


async def find(conn: Conn, token_id: str) -> TokenRecord | None:
    row = await (await conn.execute(_RECORD_BY_ID, (token_id,))).fetchone()
    return token_record(row) if row is not None else None


async def find_row(conn: Conn, token_id: str, columns: str) -> dict[str, Any] | None:
    """``columns`` of the entry's row (not locked), or None."""
    cur = await conn.execute(
        f"SELECT {columns} FROM tokens WHERE id = %s",  # noqa: S608
        (token_id,),
    )
    return await cur.fetchone()


async def existing(conn: Conn, token_id: str) -> TokenRecord:
    """The entry; EntryGone when it does not exist."""
    found = await find(conn, token_id)
    if found is None:
        raise EntryGone(token_id)
    return found


async def locked(conn: Conn, token_id: str, columns: str) -> dict[str, Any]:
    """``columns`` of the entry's row, locked (``FOR UPDATE``) until the transaction ends, so
    a read-modify-write is atomic across processes. EntryGone."""
    cur = await conn.execute(
        f"SELECT {columns} FROM tokens WHERE id = %s FOR UPDATE",  # noqa: S608
        (token_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise EntryGone(token_id)
    return row


async def ids(conn: Conn, statement: str, params: Any) -> list[str]:
    cur = await conn.execute(statement, params)
    return [row["id"] for row in await cur.fetchall()]
