"""The consent half of an entry's life in SQL: pending insert (capped), single-use secrets."""

from __future__ import annotations

from ...errors import EntryGone, VaultError
from ...models import ConsentSecrets, TokenRecord
from ..shared import sql
from ..shared.checks import check_pending_count
from ..shared.records import decode_consent
from ..shared.sealed import unseal
from .database import LOCK_PENDING_CAP, Conn, Database
from .rows import existing, locked

_COUNT_PENDING = sql.pyformat(sql.COUNT_PENDING)
_INSERT_PENDING = sql.pyformat(sql.INSERT_PENDING) + " ON CONFLICT (state_hash) DO NOTHING"


async def check_pending_cap(conn: Conn, owner: str, now: float, cap: int | None) -> None:
    """Inside the insert's transaction: TooManyPendingConsents when ``owner`` has ``cap``
    unexpired pending entries. A per-owner advisory lock, held to COMMIT, makes the count and
    the insert one step across processes (row locks cannot: the competing rows do not exist
    yet)."""
    if cap is None:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_PENDING_CAP, owner))
    row = await (await conn.execute(_COUNT_PENDING, (owner, now))).fetchone()
    assert row is not None
    check_pending_count(row, cap, now)


async def insert_pending(
    conn: Conn, values: tuple[object, ...], *, owner: str, now: float, cap: int | None
) -> TokenRecord:
    """Inside a transaction: the cap check and the insert of a pending entry (``values`` in
    the column order below; the first is its id)."""
    await check_pending_cap(conn, owner, now, cap)
    cur = await conn.execute(_INSERT_PENDING, values)
    if cur.rowcount == 0:
        raise VaultError("a consent with this state already exists")
    return await existing(conn, str(values[0]))


async def consume(database: Database, conn: Conn, token_id: str) -> ConsentSecrets | None:
    """Inside a transaction: decrypt and erase the consent secrets (the row locked, so one
    caller in the cluster gets them)."""
    row = await locked(conn, token_id, sql.CONSENT_COLUMNS)
    if row["consent_ct"] is None:
        return None
    plain = unseal(database, row, "consent", token_id, row["owner"])
    await conn.execute(f"UPDATE tokens SET {sql.ERASE_CONSENT} WHERE id = %s", (token_id,))  # noqa: S608
    return decode_consent(plain, token_id)


__all__ = ["EntryGone", "check_pending_cap", "consume", "insert_pending"]
