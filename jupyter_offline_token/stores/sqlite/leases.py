"""The refresh path in SQL: the cross-process lease and the durable record of a refresh.

The lease (``lease_holder``, ``lease_expires_at`` on the entry's row) is taken inside
``BEGIN IMMEDIATE``, so at most one holder in any process sharing the file has it: one grant
per token at a time, cluster-wide. Never start a second grant with the same refresh token: a
replay revokes the whole grant at most providers.
"""

from __future__ import annotations

import contextlib
import sqlite3

from ...errors import EntryGone, VaultError
from ...models import RefreshStart, TokenRecord
from ..shared import sql
from ..shared.records import Refreshed
from ..shared.sealed import unseal
from . import audit, rows, shared_access
from .database import Database
from .sql import transaction


def take(
    conn: sqlite3.Connection, token_id: str, holder: str, ttl: float, now: float
) -> bool | None:
    """Inside a write transaction: take the refresh lease if it is free, expired or ours.
    False when another holder has it; None when it was another holder's, expired and never
    released (taken over); True otherwise."""
    row = conn.execute(
        "SELECT lease_holder, lease_expires_at FROM tokens WHERE id = ?", (token_id,)
    ).fetchone()
    if row is None:
        raise EntryGone(token_id)
    current, expires = row["lease_holder"], row["lease_expires_at"]
    if not (current is None or current == holder or expires is None or expires <= now):
        return False
    conn.execute(
        "UPDATE tokens SET lease_holder = ?, lease_expires_at = ? WHERE id = ?",
        (holder, now + ttl, token_id),
    )
    return None if current is not None and current != holder else True


def begin(
    database: Database, token_id: str, holder: str, ttl: float, now: float
) -> RefreshStart | None:
    """On the worker thread: lease + entry + refresh token in one transaction of the lease
    connection (no fsync: a lease needs no durability); decrypt after the commit."""
    conn = database.lease_connection()
    try:
        with transaction(conn):
            taken = take(conn, token_id, holder, ttl, now)
            if taken is False:
                return None
            record = rows.existing(conn, token_id)
            secret = conn.execute(
                f"SELECT {sql.SECRET_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
                (token_id,),
            ).fetchone()
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
    taken_over = taken is None
    if secret["secret_ct"] is None:
        return RefreshStart(record, None, taken_over)
    plain = unseal(database, secret, "secret", token_id, record.owner)
    return RefreshStart(record, plain.decode(), taken_over)


def record_refresh(database: Database, conn: sqlite3.Connection, done: Refreshed) -> TokenRecord:
    """On the worker thread: the one durable transaction of a successful refresh (with the
    grant's access token for the other processes, or None to clear the shared one)."""
    token_id, holder = done.token_id, done.holder
    with transaction(conn):
        row = conn.execute(
            "SELECT owner, lease_holder FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
        if row is None:
            raise EntryGone(token_id)
        if holder is not None and row["lease_holder"] != holder:
            raise VaultError(
                f"the refresh lease of vault entry {token_id} is no longer held by "
                "this worker; the refresh result was not stored"
            )
        if done.secret is not None:
            key_id, nonce, ct = database.keyring.encrypt(
                done.secret, rows.refresh_aad(token_id, row["owner"])
            )
            conn.execute(
                "UPDATE tokens SET secret_ct = ?, secret_nonce = ?, secret_key_id = ? WHERE id = ?",
                (ct, nonce, key_id, token_id),
            )
        shared_access.store(database, conn, token_id, row["owner"], done.access)
        conn.execute(
            f"UPDATE tokens SET {sql.REFRESHED} WHERE id = ?",  # noqa: S608
            (done.now, done.idle_expires_at, done.now, token_id),
        )
        if holder is not None:
            conn.execute(
                "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL WHERE id = ?",
                (token_id,),
            )
        if done.event is not None:
            audit.insert(conn, done.event, done.retention)
        return rows.existing(conn, token_id)


def read_refresh_token(database: Database, conn: sqlite3.Connection, token_id: str) -> str:
    """On the worker thread: decrypt the stored refresh token (EntryGone when none)."""
    row = conn.execute(
        f"SELECT {sql.SECRET_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
        (token_id,),
    ).fetchone()
    if row is None or row["secret_ct"] is None:
        raise EntryGone(token_id, "refresh token of vault entry")
    plain = unseal(database, row, "secret", token_id, row["owner"])
    return plain.decode()
