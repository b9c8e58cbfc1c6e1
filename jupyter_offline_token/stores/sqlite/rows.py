"""Rows of the ``tokens`` table as records, and the AAD that binds a ciphertext to its row."""

from __future__ import annotations

import sqlite3

from ...errors import EntryGone
from ...models import TokenRecord
from ..aad import access_aad as access_aad
from ..aad import consent_aad as consent_aad
from ..aad import refresh_aad as refresh_aad
from ..shared import sql
from ..shared.records import token_record


def find(conn: sqlite3.Connection, token_id: str) -> TokenRecord | None:
    row = conn.execute(sql.RECORD_BY_ID, (token_id,)).fetchone()
    return token_record(row) if row is not None else None


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
