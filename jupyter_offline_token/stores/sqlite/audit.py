"""The ``audit`` table: bounded per-token history (never a secret)."""

from __future__ import annotations

import sqlite3

from ...models import AuditEvent


def insert(conn: sqlite3.Connection, event: AuditEvent, retention: int) -> None:
    """Inside a transaction: append one event and drop that token's events beyond
    ``retention`` (events without a token form one group of their own)."""
    conn.execute(
        "INSERT INTO audit (ts, owner, token_id, task_id, action, result, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    conn.execute(
        "DELETE FROM audit WHERE token_id IS ? AND id NOT IN "
        "(SELECT id FROM audit WHERE token_id IS ? ORDER BY id DESC LIMIT ?)",
        (event.token_id, event.token_id, retention),
    )
