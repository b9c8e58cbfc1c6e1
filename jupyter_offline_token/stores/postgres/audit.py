"""The ``audit`` table: bounded per-token history (never a secret)."""

from __future__ import annotations

from ...models import AuditEvent
from .database import Conn


async def insert(conn: Conn, event: AuditEvent, retention: int) -> None:
    """Inside a transaction: append one event and drop that token's events beyond
    ``retention`` (events without a token form one group of their own), in one statement.
    The DELETE does not see the row its own statement inserts: it keeps ``retention - 1`` of
    the older ones."""
    # "= NULL" is never true and "IS NOT DISTINCT FROM" uses no index: two spellings.
    same = "token_id IS NULL" if event.token_id is None else "token_id = %(token_id)s"
    await conn.execute(
        "WITH added AS (INSERT INTO audit (ts, owner, token_id, task_id, action, result, "  # noqa: S608
        "detail) VALUES (%(ts)s, %(owner)s, %(token_id)s, %(task_id)s, %(action)s, %(result)s, "
        f"%(detail)s) RETURNING id) DELETE FROM audit WHERE {same} AND id <= ("
        f"SELECT id FROM audit WHERE {same} ORDER BY id DESC OFFSET %(keep)s LIMIT 1)",
        {
            "ts": event.ts,
            "owner": event.owner,
            "token_id": event.token_id,
            "task_id": event.task_id,
            "action": event.action,
            "result": event.result,
            "detail": event.detail,
            "keep": retention - 1,
        },
    )
