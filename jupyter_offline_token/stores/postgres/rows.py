"""Rows of the ``tokens`` table as records, the owner/status filter, and shared small queries."""

from __future__ import annotations

from typing import Any

from ...errors import EntryGone
from ...models import TokenRecord
from .database import Conn

RECORD_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, task_id, "
    "subject, consent_expires_at, return_to, last_refresh_at, refresh_count, last_error, "
    "last_error_kind, refresh_state, next_attempt_at, retry_count, idle_expires_at, keep_warm, "
    "secret_ct IS NOT NULL AS has_secret"
)


def record(row: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        owner=row["owner"],
        issuer=row["issuer"],
        client_id=row["client_id"],
        status=row["status"],
        scopes=row["scopes"].split(),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        label=row["label"],
        task_id=row["task_id"],
        subject=row["subject"],
        consent_expires_at=row["consent_expires_at"],
        return_to=row["return_to"],
        last_refresh_at=row["last_refresh_at"],
        refresh_count=row["refresh_count"],
        last_error=row["last_error"],
        last_error_kind=row["last_error_kind"],
        refresh_state=row["refresh_state"],
        next_attempt_at=row["next_attempt_at"],
        retry_count=row["retry_count"],
        idle_expires_at=row["idle_expires_at"],
        keep_warm=bool(row["keep_warm"]),
        has_secret=bool(row["has_secret"]),
    )


async def find(conn: Conn, token_id: str) -> TokenRecord | None:
    cur = await conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM tokens WHERE id = %s",  # noqa: S608
        (token_id,),
    )
    row = await cur.fetchone()
    return record(row) if row is not None else None


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


def owner_status_filter(
    owner: str | None, status: str | None, *, prefix: str = ""
) -> tuple[list[str], list[Any]]:
    """The owner/status filter every listing shares."""
    where: list[str] = []
    params: list[Any] = []
    if owner is not None:
        where.append(f"{prefix}owner = %s")
        params.append(owner)
    if status is not None:
        where.append(f"{prefix}status = %s")
        params.append(status)
    return where, params


async def ids(conn: Conn, sql: str, params: Any) -> list[str]:
    cur = await conn.execute(sql, params)
    return [row["id"] for row in await cur.fetchall()]


def check_settings(audit_retention: int, max_pending_consents: int | None, pool_size: int) -> None:
    for name, value in (("audit_retention", audit_retention), ("pool_size", pool_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer")
    if max_pending_consents is not None and (
        isinstance(max_pending_consents, bool)
        or not isinstance(max_pending_consents, int)
        or max_pending_consents < 1
    ):
        raise ValueError("max_pending_consents must be a positive integer or None")


def scopes_text(scopes: list[str]) -> str:
    for scope in scopes:
        if not isinstance(scope, str) or not scope or scope != "".join(scope.split()):
            raise ValueError("each scope must be a non-empty string without whitespace")
    return " ".join(scopes)
