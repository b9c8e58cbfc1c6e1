"""The refresh path in SQL: the cross-process lease and the durable record of a refresh.

The lease (``lease_holder``, ``lease_expires_at`` on the entry's row) is read and written with
the row locked (``SELECT ... FOR UPDATE``), so at most one holder in the cluster has it: one
grant per token at a time. Never start a second grant with the same refresh token: a replay
revokes the whole grant at most providers.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import EntryGone, VaultError
from ...models import AuditEvent, RefreshStart, SharedAccessToken, TokenRecord
from ..aad import access_aad, refresh_aad
from . import audit, rows
from .database import Conn, Database


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


def check_lease_args(holder: str, ttl: float) -> None:
    if not holder:
        raise ValueError("holder must not be empty")
    if not ttl > 0:
        raise ValueError("ttl must be positive")


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
    """Lease + entry + refresh token in one statement of one transaction (no wait for the WAL
    flush: a lease needs no durability); decrypt after the commit. The row is locked by the
    CTE, so the holder it read is the one the UPDATE replaces."""

    columns = f"{rows.RECORD_COLUMNS}, secret_ct, secret_nonce, secret_key_id"

    async def work(conn: Conn) -> dict[str, Any] | None:
        cur = await conn.execute(
            "WITH old AS (SELECT id AS old_id, lease_holder AS previous_holder, "  # noqa: S608
            "lease_expires_at AS previous_expiry FROM tokens WHERE id = %(id)s FOR UPDATE) "
            "UPDATE tokens SET lease_holder = %(holder)s, lease_expires_at = %(until)s "
            "FROM old WHERE tokens.id = old.old_id AND (old.previous_holder IS NULL OR "
            "old.previous_holder = %(holder)s OR old.previous_expiry IS NULL OR "
            f"old.previous_expiry <= %(now)s) RETURNING old.previous_holder, {columns}",
            {"id": token_id, "holder": holder, "until": now + ttl, "now": now},
        )
        row = await cur.fetchone()
        if row is None:
            await rows.locked(conn, token_id, "id")  # EntryGone, else another holder has it
        return row

    row = await database.run(work, durable=False)
    if row is None:
        return None
    record = rows.record(row)
    previous = row["previous_holder"]
    taken_over = previous is not None and previous != holder
    if row["secret_ct"] is None:
        return RefreshStart(record, None, taken_over)
    plain = database.decrypt(
        str(row["secret_key_id"]),
        row["secret_nonce"],
        row["secret_ct"],
        refresh_aad(token_id, record.owner),
        what=f"the refresh token of vault entry {token_id}",
    )
    return RefreshStart(record, plain.decode(), taken_over)


def encode_access(access: SharedAccessToken) -> bytes:
    """The shared access token's plaintext (``expires_at`` lives in its own column, so an
    expired one is skipped without decrypting)."""
    return json.dumps(
        {
            "access_token": access.access_token,
            "token_type": access.token_type,
            "expires_at": access.expires_at,
            "scope": access.scope,
        }
    ).encode()


def decode_access(plain: bytes) -> SharedAccessToken | None:
    try:
        data = json.loads(plain)
        scope = data.get("scope")
        return SharedAccessToken(
            access_token=str(data["access_token"]),
            token_type=str(data["token_type"]),
            expires_at=float(data["expires_at"]),
            scope=None if scope is None else str(scope),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def record_refresh(
    database: Database,
    conn: Conn,
    token_id: str,
    *,
    owner: str,
    secret: bytes | None,
    access: SharedAccessToken | None,
    idle_expires_at: float | None,
    now: float,
    holder: str | None,
    event: AuditEvent | None,
    retention: int,
) -> TokenRecord:
    """Inside the one durable transaction of a successful refresh, in one statement (the refresh
    path's round trips): the row, the lease check, its audit event and the audit trim.
    ``owner`` is the entry's owner (it never changes), for the ciphertexts' AAD."""
    params: dict[str, Any] = {
        "id": token_id,
        "owner": owner,
        "holder": holder,
        "now": now,
        "idle": idle_expires_at,
        "ct": None,
        "nonce": None,
        "key_id": None,
        "a_ct": None,
        "a_nonce": None,
        "a_key_id": None,
        "a_expires": None,
    }
    assignments = ""
    if secret is not None:
        key_id, nonce, ct = database.keyring.encrypt(secret, refresh_aad(token_id, owner))
        assignments = "secret_ct = %(ct)s, secret_nonce = %(nonce)s, secret_key_id = %(key_id)s, "
        params.update(ct=ct, nonce=nonce, key_id=key_id)
    if holder is not None:
        assignments += "lease_holder = NULL, lease_expires_at = NULL, "
    if access is not None:
        key_id, nonce, ct = database.keyring.encrypt(
            encode_access(access), access_aad(token_id, owner)
        )
        params.update(a_ct=ct, a_nonce=nonce, a_key_id=key_id, a_expires=access.expires_at)
    lease_check = " AND lease_holder = %(holder)s" if holder is not None else ""
    # ``assignments`` and ``lease_check`` are built above from constants only.
    update = (
        f"UPDATE tokens SET {assignments}last_refresh_at = %(now)s, "  # noqa: S608
        "refresh_count = refresh_count + 1, last_error = NULL, last_error_kind = NULL, "
        "retry_count = 0, refresh_state = 'idle', next_attempt_at = NULL, "
        "idle_expires_at = %(idle)s, updated_at = %(now)s, access_ct = %(a_ct)s, "
        "access_nonce = %(a_nonce)s, access_key_id = %(a_key_id)s, "
        f"access_expires_at = %(a_expires)s WHERE id = %(id)s AND owner = %(owner)s{lease_check} "
        f"RETURNING {rows.RECORD_COLUMNS}"
    )
    inline_audit = event is not None and event.token_id == token_id
    if inline_audit:
        assert event is not None
        params.update(audit.params(event, retention))
        sql = f"WITH upd AS ({update}), {audit.AFTER_UPDATE_CTES} SELECT * FROM upd"  # noqa: S608
    else:
        sql = update
    cur = await conn.execute(sql, params)
    updated = await cur.fetchone()
    if updated is None:
        row = await rows.find_row(conn, token_id, "owner, lease_holder")
        if row is None:
            raise EntryGone(token_id)
        raise VaultError(
            f"the refresh lease of vault entry {token_id} is no longer held by "
            "this worker; the refresh result was not stored"
        )
    if event is not None and not inline_audit:
        await audit.insert(conn, event, retention)
    return rows.record(updated)


async def read_access(
    database: Database, token_id: str, valid_until: float
) -> SharedAccessToken | None:
    """The shared access token when active and valid at ``valid_until``; None otherwise."""

    async def work(conn: Conn) -> dict[str, object] | None:
        cur = await conn.execute(
            "SELECT owner, access_ct, access_nonce, access_key_id FROM tokens "
            "WHERE id = %s AND status = 'active' AND access_ct IS NOT NULL "
            "AND access_expires_at > %s",
            (token_id, valid_until),
        )
        return await cur.fetchone()

    row = await database.read(work)
    if row is None:
        return None
    try:
        plain = database.keyring.decrypt(
            str(row["access_key_id"]),
            bytes(row["access_nonce"]),  # type: ignore[call-overload]
            bytes(row["access_ct"]),  # type: ignore[call-overload]
            access_aad(token_id, str(row["owner"])),
        )
    except Exception:  # only a cache: a key or a row it cannot read is a miss
        return None
    return decode_access(plain)


__all__ = ["EntryGone", "begin", "check_lease_args", "read_access", "record_refresh", "take"]
