"""The refresh path in SQL: the cross-process lease and the durable record of a refresh.

The lease (``lease_holder``, ``lease_expires_at`` on the entry's row) is read and written with
the row locked (``SELECT ... FOR UPDATE``), so at most one holder in the cluster has it: one
grant per token at a time. Never start a second grant with the same refresh token: a replay
revokes the whole grant at most providers.
"""

from __future__ import annotations

from typing import Any

from ...errors import EntryGone, VaultError
from ...models import RefreshStart, SharedAccessToken, TokenRecord
from ..aad import access_aad, refresh_aad
from ..shared.records import RECORD_COLUMNS, Refreshed, decode_access, encode_access, token_record
from ..shared.sealed import unseal
from ..shared.sql import REFRESHED, pyformat
from . import audit, rows
from .database import Conn, Database

_REFRESHED = pyformat(REFRESHED)


async def take(
    conn: Conn, token_id: str, holder: str, ttl: float, now: float, *, returning: str = "id"
) -> tuple[bool | None, dict[str, Any]]:
    """Inside a transaction: take the lease if it is free, expired or ours. False when another
    holder has it; None when it was another holder's, expired and never released (taken
    over); True otherwise; with the ``returning`` columns of the updated row. EntryGone."""
    row = await rows.locked(conn, token_id, "lease_holder, lease_expires_at")
    current, expires = row["lease_holder"], row["lease_expires_at"]
    if not (current is None or current == holder or expires is None or expires <= now):
        return False, {}
    cur = await conn.execute(
        "UPDATE tokens SET lease_holder = %s, lease_expires_at = %s "  # noqa: S608
        f"WHERE id = %s RETURNING {returning}",
        (holder, now + ttl, token_id),
    )
    updated = await cur.fetchone()
    assert updated is not None  # the row is locked
    return (None if current is not None and current != holder else True), updated


async def begin(
    database: Database, token_id: str, holder: str, ttl: float, now: float
) -> RefreshStart | None:
    """Lease + entry + refresh token in one transaction (no wait for the WAL flush: a lease
    needs no durability); decrypt after the commit."""

    columns = f"{RECORD_COLUMNS}, secret_ct, secret_nonce, secret_key_id"

    async def work(conn: Conn) -> tuple[bool | None, TokenRecord | None, dict[str, Any]]:
        taken, row = await take(conn, token_id, holder, ttl, now, returning=columns)
        if taken is False:
            return False, None, {}
        return taken, token_record(row), row

    taken, record, secret = await database.run(work, durable=False)
    if record is None:
        return None
    taken_over = taken is None
    if secret["secret_ct"] is None:
        return RefreshStart(record, None, taken_over)
    plain = unseal(database, secret, "secret", token_id, record.owner)
    return RefreshStart(record, plain.decode(), taken_over)


async def record_refresh(database: Database, conn: Conn, done: Refreshed) -> TokenRecord:
    """Inside the one durable transaction of a successful refresh."""
    token_id, holder, secret, access = done.token_id, done.holder, done.secret, done.access
    row = await rows.locked(conn, token_id, "owner, lease_holder")
    if holder is not None and row["lease_holder"] != holder:
        raise VaultError(
            f"the refresh lease of vault entry {token_id} is no longer held by "
            "this worker; the refresh result was not stored"
        )
    owner = row["owner"]
    assignments = ""
    rotated: tuple[object, ...] = ()
    if secret is not None:
        key_id, nonce, ct = database.keyring.encrypt(secret, refresh_aad(token_id, owner))
        assignments = "secret_ct = %s, secret_nonce = %s, secret_key_id = %s, "
        rotated = (ct, nonce, key_id)
    if holder is not None:
        assignments += "lease_holder = NULL, lease_expires_at = NULL, "
    shared: tuple[object, ...] = (None, None, None, None)
    if access is not None:
        key_id, nonce, ct = database.keyring.encrypt(
            encode_access(access), access_aad(token_id, owner)
        )
        shared = (ct, nonce, key_id, access.expires_at)
    # One statement (fewer round trips on the refresh path): ``assignments`` is built above
    # from constants only.
    cur = await conn.execute(
        f"UPDATE tokens SET {assignments}{_REFRESHED}, access_ct = %s, "  # noqa: S608
        "access_nonce = %s, access_key_id = %s, "
        f"access_expires_at = %s WHERE id = %s RETURNING {RECORD_COLUMNS}",
        (*rotated, done.now, done.idle_expires_at, done.now, *shared, token_id),
    )
    updated = await cur.fetchone()
    assert updated is not None  # the row is locked
    if done.event is not None:
        await audit.insert(conn, done.event, done.retention)
    return token_record(updated)


async def read_access(
    database: Database, token_id: str, valid_until: float
) -> SharedAccessToken | None:
    """The shared access token when active and valid at ``valid_until``; None otherwise."""

    async def work(conn: Conn) -> dict[str, object] | None:
        cur = await conn.execute(
            "SELECT owner, access_ct, access_nonce, access_key_id, access_expires_at FROM tokens "
            "WHERE id = %s AND status = 'active' AND access_ct IS NOT NULL "
            "AND access_expires_at > %s",
            (token_id, valid_until),
        )
        return await cur.fetchone()

    row = await database.read(work)
    if row is None:
        return None
    try:
        plain = unseal(database, row, "access", token_id, str(row["owner"]))
    except Exception:  # only a cache: a key or a row it cannot read is a miss
        return None
    return decode_access(plain, float(row["access_expires_at"]))  # type: ignore[arg-type]


__all__ = ["EntryGone", "begin", "read_access", "record_refresh", "take"]
