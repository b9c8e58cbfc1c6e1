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


class Owners:
    """Entries' owners by id, remembered from the lease (an owner never changes), so a refresh
    records its result without reading the row first (bounded)."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def remember(self, token_id: str, owner: str) -> str:
        if len(self._owners) >= self.LIMIT:
            self._owners.clear()  # refilled by the next refreshes
        self._owners[token_id] = owner
        return owner

    async def of(self, database: Database, token_id: str) -> str:
        """The entry's owner. EntryGone."""
        known = self._owners.get(token_id)
        if known is not None:
            return known
        row = await database.read(lambda conn: rows.find_row(conn, token_id, "owner"))
        if row is None:
            raise EntryGone(token_id)
        return self.remember(token_id, str(row["owner"]))


# The lease in one statement: the CTE locks the row and reads the holder the UPDATE replaces.
_TAKE = (
    "WITH old AS (SELECT id AS old_id, lease_holder AS previous_holder, "  # noqa: S608
    "lease_expires_at AS previous_expiry FROM tokens WHERE id = %(id)s FOR UPDATE) "
    "UPDATE tokens SET lease_holder = %(holder)s, lease_expires_at = %(until)s "
    "FROM old WHERE tokens.id = old.old_id AND (old.previous_holder IS NULL OR "
    "old.previous_holder = %(holder)s OR old.previous_expiry IS NULL OR "
    "old.previous_expiry <= %(now)s) "
    f"RETURNING old.previous_holder, {RECORD_COLUMNS}, secret_ct, secret_nonce, secret_key_id"
)


async def begin(
    database: Database, token_id: str, holder: str, ttl: float, now: float
) -> RefreshStart | None:
    """Lease + entry + refresh token in one statement of one transaction (no wait for the WAL
    flush: a lease needs no durability); decrypt after the commit."""

    params = {"id": token_id, "holder": holder, "until": now + ttl, "now": now}
    row = await database.one(_TAKE, params, durable=False)
    if row is None:
        if await database.read(lambda conn: rows.find_row(conn, token_id, "id")) is None:
            raise EntryGone(token_id)
        return None  # another holder has it
    record = token_record(row)
    previous = row["previous_holder"]
    taken_over = previous is not None and previous != holder
    if row["secret_ct"] is None:
        return RefreshStart(record, None, taken_over)
    plain = unseal(database, row, "secret", token_id, record.owner)
    return RefreshStart(record, plain.decode(), taken_over)


# After the CTE ``upd`` (the refreshed row): its audit event and the trim, in the same statement.
_AUDIT_AFTER_UPDATE = (
    "added AS (INSERT INTO audit (ts, owner, token_id, task_id, action, result, detail) "
    "SELECT %s, %s, %s, %s, %s, %s, %s FROM upd RETURNING id), "
    "trimmed AS (DELETE FROM audit WHERE token_id = %s AND EXISTS (SELECT 1 FROM upd) AND "
    "id <= (SELECT id FROM audit WHERE token_id = %s ORDER BY id DESC OFFSET %s LIMIT 1))"
)


def _sealed(database: Database, done: Refreshed, owner: str) -> tuple[str, tuple[object, ...]]:
    """The SET clause's variable part and its parameters: the rotated refresh token and the
    shared access token, encrypted for (id, owner)."""
    assignments = ""
    params: tuple[object, ...] = ()
    if done.secret is not None:
        key_id, nonce, ct = database.keyring.encrypt(done.secret, refresh_aad(done.token_id, owner))
        assignments = "secret_ct = %s, secret_nonce = %s, secret_key_id = %s, "
        params = (ct, nonce, key_id)
    if done.holder is not None:
        assignments += "lease_holder = NULL, lease_expires_at = NULL, "
    params += (done.now, done.idle_expires_at, done.now)
    if done.access is None:
        return assignments, (*params, None, None, None, None)
    key_id, nonce, ct = database.keyring.encrypt(
        encode_access(done.access), access_aad(done.token_id, owner)
    )
    return assignments, (*params, ct, nonce, key_id, done.access.expires_at)


def _refresh_statement(
    database: Database, done: Refreshed, owner: str, *, with_audit: bool
) -> tuple[str, tuple[object, ...]]:
    """The refresh's UPDATE behind its lease check (and, ``with_audit``, its audit event and
    trim as CTEs of the same statement), with its parameters."""
    token_id, event = done.token_id, done.event
    assignments, params = _sealed(database, done, owner)
    lease = " AND lease_holder = %s" if done.holder is not None else ""
    # Built from constants only.
    statement = (
        f"UPDATE tokens SET {assignments}{_REFRESHED}, access_ct = %s, "  # noqa: S608
        "access_nonce = %s, access_key_id = %s, access_expires_at = %s "
        f"WHERE id = %s AND owner = %s{lease} RETURNING {RECORD_COLUMNS}"
    )
    params = (*params, token_id, owner, *((done.holder,) if done.holder is not None else ()))
    if with_audit and event is not None:
        statement = f"WITH upd AS ({statement}), {_AUDIT_AFTER_UPDATE} SELECT * FROM upd"  # noqa: S608
        params += (event.ts, event.owner, token_id, event.task_id, event.action, event.result)
        params += (event.detail, token_id, token_id, done.retention - 1)
    return statement, params


async def record_refresh(database: Database, done: Refreshed, owner: str) -> TokenRecord:
    """The one durable transaction of a successful refresh: the row, the lease check, the audit
    event and its trim in one statement, sent with BEGIN and COMMIT in one round trip (safe to
    repeat: once it committed, the lease check refuses a second time). ``owner``: the entry's
    (it never changes), for the ciphertexts' AAD."""
    token_id, event = done.token_id, done.event
    inline = event is None or event.token_id == token_id
    statement, params = _refresh_statement(database, done, owner, with_audit=inline)
    if inline:
        updated = await database.one(statement, params)
    else:

        async def work(conn: Conn) -> dict[str, Any] | None:
            row = await (await conn.execute(statement, params)).fetchone()
            if row is not None and event is not None:
                await audit.insert(conn, event, done.retention)
            return row

        updated = await database.run(work)
    if updated is None:
        if await database.read(lambda conn: rows.find_row(conn, token_id, "owner")) is None:
            raise EntryGone(token_id)
        raise VaultError(
            f"the refresh lease of vault entry {token_id} is no longer held by "
            "this worker; the refresh result was not stored"
        )
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


async def read_for_access(
    database: Database, token_id: str, valid_until: float | None
) -> tuple[TokenRecord | None, SharedAccessToken | None]:
    """The entry and its shared access token valid at ``valid_until`` in one SELECT."""

    async def work(conn: Conn) -> dict[str, Any] | None:
        cur = await conn.execute(
            f"SELECT {RECORD_COLUMNS}, access_ct, access_nonce, access_key_id, "  # noqa: S608
            "access_expires_at FROM tokens WHERE id = %s",
            (token_id,),
        )
        return await cur.fetchone()

    row = await database.read(work)
    if row is None:
        return None, None
    record = token_record(row)
    expires = row["access_expires_at"]
    if (
        valid_until is None
        or record.status != "active"
        or row["access_ct"] is None
        or expires is None
        or not expires > valid_until
    ):
        return record, None
    try:
        plain = unseal(database, row, "access", token_id, record.owner)
    except Exception:  # only a cache: a key or a row it cannot read is a miss
        return record, None
    return record, decode_access(plain, float(expires))


__all__ = ["EntryGone", "begin", "read_access", "read_for_access", "record_refresh", "take"]
