"""The ``audit`` table: bounded per-token history (never a secret)."""

from __future__ import annotations

from typing import Any

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


def params(event: AuditEvent, retention: int) -> dict[str, Any]:
    """The named parameters of AFTER_UPDATE_CTES (prefixed ``ev_``)."""
    return {
        "ev_ts": event.ts,
        "ev_owner": event.owner,
        "ev_token_id": event.token_id,
        "ev_task_id": event.task_id,
        "ev_action": event.action,
        "ev_result": event.result,
        "ev_detail": event.detail,
        "ev_keep": retention - 1,
    }


# After a CTE ``upd`` that updated the event's entry: append the event and trim that token's
# events to the retention, only when ``upd`` changed a row, in the same statement.
AFTER_UPDATE_CTES = (
    "added AS (INSERT INTO audit (ts, owner, token_id, task_id, action, result, detail) "
    "SELECT %(ev_ts)s, %(ev_owner)s, %(ev_token_id)s, %(ev_task_id)s, %(ev_action)s, "
    "%(ev_result)s, %(ev_detail)s FROM upd RETURNING id), "
    "trimmed AS (DELETE FROM audit WHERE token_id = %(ev_token_id)s AND EXISTS (SELECT 1 FROM "
    "upd) AND id <= (SELECT id FROM audit WHERE token_id = %(ev_token_id)s ORDER BY id DESC "
    "OFFSET %(ev_keep)s LIMIT 1))"
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
