"""Rows of the ``tokens`` table as records, and the AAD that binds a ciphertext to its row."""

from __future__ import annotations

import sqlite3
from typing import Any

from ...errors import EntryGone
from ...models import ACTIVE, TokenRecord
from ..aad import access_aad as access_aad
from ..aad import consent_aad as consent_aad
from ..aad import refresh_aad as refresh_aad

RECORD_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, task_id, "
    "subject, consent_expires_at, return_to, last_refresh_at, refresh_count, last_error, "
    "last_error_kind, refresh_state, next_attempt_at, retry_count, idle_expires_at, keep_warm, "
    "secret_ct IS NOT NULL AS has_secret"
)


def record(row: sqlite3.Row) -> TokenRecord:
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


def scopes_text(scopes: list[str]) -> str:
    for scope in scopes:
        if not isinstance(scope, str) or not scope or scope != "".join(scope.split()):
            raise ValueError("each scope must be a non-empty string without whitespace")
    return " ".join(scopes)


def find(conn: sqlite3.Connection, token_id: str) -> TokenRecord | None:
    row = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
        (token_id,),
    ).fetchone()
    return record(row) if row is not None else None


def existing(conn: sqlite3.Connection, token_id: str) -> TokenRecord:
    """The entry; EntryGone when it does not exist."""
    found = find(conn, token_id)
    if found is None:
        raise EntryGone(token_id)
    return found


def owner_of(conn: sqlite3.Connection, token_id: str) -> str:
    row = conn.execute("SELECT owner FROM tokens WHERE id = ?", (token_id,)).fetchone()
    if row is None:
        raise EntryGone(token_id)
    return str(row["owner"])


def check_settings(audit_retention: int, max_pending_consents: int | None) -> None:
    if isinstance(audit_retention, bool) or not isinstance(audit_retention, int):
        raise ValueError("audit_retention must be an integer")
    if audit_retention < 1:
        raise ValueError("audit_retention must be at least 1")
    if max_pending_consents is not None and (
        isinstance(max_pending_consents, bool)
        or not isinstance(max_pending_consents, int)
        or max_pending_consents < 1
    ):
        raise ValueError("max_pending_consents must be a positive integer or None")


def owner_status_filter(owner: str | None, status: str | None) -> tuple[list[str], list[Any]]:
    """The owner/status filter every listing shares."""
    where: list[str] = []
    params: list[Any] = []
    if owner is not None:
        where.append("owner = ?")
        params.append(owner)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    return where, params


def sharing_account(
    conn: sqlite3.Connection, token_id: str, owner: str, subject: str, client_id: str, limit: int
) -> list[str]:
    """The owner's other active entries of one provider account and client (newest first)."""
    return [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM tokens WHERE owner = ? AND status = ? AND subject = ? "
            "AND client_id = ? AND id != ? ORDER BY created_at DESC LIMIT ?",
            (owner, ACTIVE, subject, client_id, token_id, limit),
        )
    ]
