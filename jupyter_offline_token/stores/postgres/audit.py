"""The ``audit`` table: bounded per-token history (never a secret)."""

from __future__ import annotations

from ...models import AuditEvent
from .database import Conn


async def insert(conn: Conn, event: AuditEvent, retention: int) -> None:
    """Inside a transaction: append one event and drop that token's events beyond
    ``retention`` (events without a token form one group of their own)."""
    await conn.execute(
        "INSERT INTO audit (ts, owner, token_id, task_id, action, result, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            event.ts,
            event.owner,
            event.token_id,
            event.task_id,
            event.action,
            event.result,
            event.detail,
        ),
    )
    # "= NULL" is never true and "IS NOT DISTINCT FROM" uses no index: two spellings.
    same = "token_id IS NULL" if event.token_id is None else "token_id = %(t)s"
    await conn.execute(
        f"DELETE FROM audit WHERE {same} AND id < ("  # noqa: S608
        f" SELECT MIN(id) FROM (SELECT id FROM audit WHERE {same}"
        " ORDER BY id DESC LIMIT %(n)s) kept)",
        {"t": event.token_id, "n": retention},
    )


async def newest(conn: Conn, token_id: str, limit: int) -> list[AuditEvent]:
    cur = await conn.execute(
        "SELECT id, ts, owner, token_id, task_id, action, result, detail FROM audit "
        "WHERE token_id = %s ORDER BY id DESC LIMIT %s",
        (token_id, limit),
    )
    return [
        AuditEvent(
            ts=row["ts"],
            action=row["action"],
            result=row["result"],
            token_id=row["token_id"],
            task_id=row["task_id"],
            owner=row["owner"],
            detail=row["detail"],
            id=row["id"],
        )
        for row in await cur.fetchall()
    ]
