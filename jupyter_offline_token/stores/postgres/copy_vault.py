"""Move an existing SQLite vault into PostgreSQL without decrypting anything (issue 11).

Ciphertexts are bound to (id, owner, key id) by the same AAD in both backends (``stores/aad``),
so copied bytes decrypt unchanged with the same key ring. Leases and shared access tokens are
not copied (both are moot in a new home). Rows already present (same id; audit events by their
fields) are left as they are, so an interrupted copy can be run again. The SQLite file is only
read (a read-only connection, on a worker thread).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import VaultError
from .database import Conn
from .tokens import PostgresTokenStore

_BATCH = 500

ENTRY_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, task_id, "
    "subject, consent_expires_at, return_to, last_refresh_at, refresh_count, last_error, "
    "last_error_kind, refresh_state, next_attempt_at, retry_count, idle_expires_at, keep_warm, "
    "state_hash, consent_ct, consent_nonce, consent_key_id, secret_ct, secret_nonce, "
    "secret_key_id"
)
TASK_COLUMNS = (
    "id, owner, name, description, kind, status, persistent_token_id, progress, message, "
    "result, error, spec, created_at, updated_at, started_at, completed_at, queued_at, runner, "
    "credential_hash"
)
AUDIT_COLUMNS = "ts, owner, token_id, task_id, action, result, detail"
_KEEP_WARM = ENTRY_COLUMNS.split(", ").index("keep_warm")


@dataclass(frozen=True)
class CopyReport:
    tokens: int
    tasks: int
    audit: int


def _read_batch(path: Path, table: str, columns: str, after: int) -> list[tuple[Any, ...]]:
    """Up to _BATCH rows of ``table`` after rowid ``after``, rowid last (worker thread)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return conn.execute(
            f"SELECT {columns}, rowid FROM {table} WHERE rowid > ? "  # noqa: S608
            "ORDER BY rowid LIMIT ?",
            (after, _BATCH),
        ).fetchall()
    finally:
        conn.close()


def _check_source(path: Path) -> None:
    if not path.is_file():
        raise VaultError(f"no SQLite vault at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise VaultError(f"{path} is not a readable SQLite vault: {exc}") from None
    finally:
        conn.close()
    if version < 6:
        raise VaultError(
            f"the SQLite vault {path} has schema revision {version}: open it once with this "
            "version of jupyter-offline-token (it migrates on open), then copy it"
        )


# An audit event has no id both backends share: one already copied (same token, time, action,
# result and detail) is skipped, so a second run adds no event twice.
_AUDIT_INSERT = (
    f"INSERT INTO audit ({AUDIT_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s, %s "  # noqa: S608
    "WHERE NOT EXISTS (SELECT 1 FROM audit WHERE token_id IS NOT DISTINCT FROM %s AND ts = %s "
    "AND action = %s AND result = %s AND detail = %s)"
)


def _insert_sql(table: str, columns: str) -> str:
    if table == "audit":
        return _AUDIT_INSERT
    marks = ", ".join(["%s"] * len(columns.split(", ")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"  # noqa: S608


async def _copy_table(store: PostgresTokenStore, path: Path, table: str, columns: str) -> int:
    copied, after = 0, 0
    sql = _insert_sql(table, columns)
    while True:
        batch = await asyncio.to_thread(_read_batch, path, table, columns, after)
        if not batch:
            return copied
        after = batch[-1][-1]
        values = [_convert(table, row[:-1]) for row in batch]

        async def insert(conn: Conn, values: list[tuple[Any, ...]] = values) -> int:
            async with conn.cursor() as cur:
                await cur.executemany(sql, values)
                return cur.rowcount

        copied += max(0, await store.database.run(insert))


def _convert(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "audit":
        ts, _owner, token_id, _task_id, action, result, detail = row
        return (*row, token_id, ts, action, result, detail)
    if table != "tokens":
        return row
    converted = list(row)
    converted[_KEEP_WARM] = bool(converted[_KEEP_WARM])
    return tuple(converted)


async def copy_sqlite_vault(path: Path, store: PostgresTokenStore) -> CopyReport:
    """Copy every entry, task and audit event of the SQLite vault at ``path`` into the open
    PostgreSQL ``store``, in batches, ciphertexts byte for byte. Entries, tasks and audit
    events already present are skipped, so an interrupted copy can be run again."""
    await asyncio.to_thread(_check_source, Path(path))
    tokens = await _copy_table(store, path, "tokens", ENTRY_COLUMNS)
    tasks = await _copy_table(store, path, "tasks", TASK_COLUMNS)
    audit = await _copy_table(store, path, "audit", AUDIT_COLUMNS)
    return CopyReport(tokens=tokens, tasks=tasks, audit=audit)
