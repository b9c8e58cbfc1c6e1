"""The shared access token in SQL (issue 11: one grant per expiry across processes).

The last grant's access token is kept on the entry's row, encrypted like the refresh token
(AAD binds id, owner, key id and the column), so a second process sharing the vault serves it
instead of making its own grant. It is only a cache: anything wrong with it reads as None.
"""

from __future__ import annotations

import sqlite3

from ...errors import DecryptionError
from ...models import ACTIVE, SharedAccessToken
from ..shared.records import decode_access, encode_access
from ..shared.sealed import unseal
from . import rows
from .database import Database

# Clears the shared token; leaving ``active`` clears it too (a trigger, migration 6).
CLEAR_SQL = "access_ct = NULL, access_nonce = NULL, access_key_id = NULL, access_expires_at = NULL"


def store(
    database: Database,
    conn: sqlite3.Connection,
    token_id: str,
    owner: str,
    access: SharedAccessToken | None,
) -> None:
    """Inside the refresh's write transaction: store ``access`` encrypted (None: clear it)."""
    if access is None:
        conn.execute(f"UPDATE tokens SET {CLEAR_SQL} WHERE id = ?", (token_id,))  # noqa: S608
        return
    payload = encode_access(access)
    key_id, nonce, ct = database.keyring.encrypt(payload, rows.access_aad(token_id, owner))
    conn.execute(
        "UPDATE tokens SET access_ct = ?, access_nonce = ?, access_key_id = ?, "
        "access_expires_at = ? WHERE id = ?",
        (ct, nonce, key_id, access.expires_at, token_id),
    )


def read(
    database: Database, conn: sqlite3.Connection, token_id: str, valid_until: float
) -> SharedAccessToken | None:
    """On the worker thread: the shared token if the entry is active and it outlives
    ``valid_until``; None otherwise or when it does not decrypt (wrong key, moved, tampered)."""
    row = conn.execute(
        "SELECT owner, status, access_ct, access_nonce, access_key_id, access_expires_at "
        "FROM tokens WHERE id = ?",
        (token_id,),
    ).fetchone()
    if row is None or row["status"] != ACTIVE or row["access_ct"] is None:
        return None
    expires_at = row["access_expires_at"]
    if expires_at is None or expires_at <= valid_until:
        return None
    try:
        plain = unseal(database, row, "access", token_id, row["owner"])
    except (DecryptionError, ValueError, TypeError):
        return None
    return decode_access(plain, float(expires_at))
