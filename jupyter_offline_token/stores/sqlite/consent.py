"""The consent half of an entry's life in SQL: pending insert (capped), single-use secrets."""

from __future__ import annotations

import sqlite3

from ...errors import EntryGone
from ...models import ConsentSecrets
from ..shared import sql
from ..shared.checks import check_pending_count
from ..shared.records import decode_consent
from ..shared.sealed import unseal
from .database import Database
from .sql import transaction


def check_pending_cap(conn: sqlite3.Connection, owner: str, now: float, cap: int | None) -> None:
    """TooManyPendingConsents when ``owner`` has ``cap`` unexpired pending entries (an indexed
    COUNT of at most cap + not yet swept rows, never a list)."""
    if cap is None:
        return
    check_pending_count(conn.execute(sql.COUNT_PENDING, (owner, now)).fetchone(), cap, now)


def consume(database: Database, conn: sqlite3.Connection, token_id: str) -> ConsentSecrets | None:
    """On the worker thread: decrypt and erase the consent secrets in one transaction."""
    with transaction(conn):
        row = conn.execute(
            f"SELECT {sql.CONSENT_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
            (token_id,),
        ).fetchone()
        if row is None:
            raise EntryGone(token_id)
        if row["consent_ct"] is None:
            return None
        plain = unseal(database, row, "consent", token_id, row["owner"])
        conn.execute(f"UPDATE tokens SET {sql.ERASE_CONSENT} WHERE id = ?", (token_id,))  # noqa: S608
    return decode_consent(plain, token_id)
