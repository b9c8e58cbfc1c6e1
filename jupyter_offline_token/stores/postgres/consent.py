"""The consent half of an entry's life in SQL: pending insert (capped), single-use secrets."""

from __future__ import annotations

import json

from ...errors import EntryGone, TooManyPendingConsents, VaultError
from ...models import PENDING, ConsentSecrets, TokenRecord
from ..aad import consent_aad
from .database import LOCK_PENDING_CAP, Conn, Database
from .rows import existing, locked


def encode_secrets(secrets: ConsentSecrets) -> bytes:
    """The plaintext SQLite stores too (a copied vault decrypts unchanged)."""
    return json.dumps(
        {
            "code_verifier": secrets.code_verifier,
            "nonce": secrets.nonce,
            "redirect_uri": secrets.redirect_uri,
        }
    ).encode()


async def check_pending_cap(conn: Conn, owner: str, now: float, cap: int | None) -> None:
    """Inside the insert's transaction: TooManyPendingConsents when ``owner`` has ``cap``
    unexpired pending entries. A per-owner advisory lock, held to COMMIT, makes the count and
    the insert one step across processes (row locks cannot: the competing rows do not exist
    yet)."""
    if cap is None:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_PENDING_CAP, owner))
    cur = await conn.execute(
        "SELECT COUNT(*) AS n, MIN(consent_expires_at) AS first FROM tokens "
        "WHERE owner = %s AND status = %s AND consent_expires_at > %s",
        (owner, PENDING, now),
    )
    row = await cur.fetchone()
    assert row is not None
    if row["n"] >= cap:
        raise TooManyPendingConsents(
            f"{row['n']} consents of this user are still waiting to be granted (at most "
            f"{cap}, OfflineTokenApp.max_pending_consents): grant or delete one, or wait "
            "until one expires",
            retry_after=max(1.0, float(row["first"]) - now),
        )


async def insert_pending(
    conn: Conn, values: tuple[object, ...], *, owner: str, now: float, cap: int | None
) -> TokenRecord:
    """Inside a transaction: the cap check and the insert of a pending entry (``values`` in
    the column order below; the first is its id)."""
    await check_pending_cap(conn, owner, now, cap)
    cur = await conn.execute(
        "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, "
        "created_at, updated_at, label, task_id, consent_expires_at, return_to, "
        "state_hash, consent_ct, consent_nonce, consent_key_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (state_hash) DO NOTHING",
        values,
    )
    if cur.rowcount == 0:
        raise VaultError("a consent with this state already exists")
    return await existing(conn, str(values[0]))


async def consume(database: Database, conn: Conn, token_id: str) -> ConsentSecrets | None:
    """Inside a transaction: decrypt and erase the consent secrets (the row locked, so one
    caller in the cluster gets them)."""
    row = await locked(conn, token_id, "owner, consent_ct, consent_nonce, consent_key_id")
    if row["consent_ct"] is None:
        return None
    plain = database.decrypt(
        row["consent_key_id"],
        row["consent_nonce"],
        row["consent_ct"],
        consent_aad(token_id, row["owner"]),
        what=f"the consent secrets of vault entry {token_id}",
    )
    await conn.execute(
        "UPDATE tokens SET consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL "
        "WHERE id = %s",
        (token_id,),
    )
    try:
        data = json.loads(plain)
        return ConsentSecrets(
            code_verifier=str(data["code_verifier"]),
            nonce=str(data["nonce"]),
            redirect_uri=str(data["redirect_uri"]),
        )
    except (ValueError, KeyError, TypeError):
        raise VaultError(f"the consent secrets of vault entry {token_id} are malformed") from None


__all__ = ["EntryGone", "check_pending_cap", "consume", "encode_secrets"]
