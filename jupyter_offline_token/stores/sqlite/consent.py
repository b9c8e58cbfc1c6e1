"""The consent half of an entry's life in SQL: pending insert (capped), single-use secrets."""

from __future__ import annotations

import json
import sqlite3

from ...errors import EntryGone, TooManyPendingConsents, VaultError
from ...models import PENDING, ConsentSecrets
from . import rows
from .database import Database
from .sql import transaction


def encode_secrets(secrets: ConsentSecrets) -> bytes:
    return json.dumps(
        {
            "code_verifier": secrets.code_verifier,
            "nonce": secrets.nonce,
            "redirect_uri": secrets.redirect_uri,
        }
    ).encode()


def check_pending_cap(conn: sqlite3.Connection, owner: str, now: float, cap: int | None) -> None:
    """TooManyPendingConsents when ``owner`` has ``cap`` unexpired pending entries (an indexed
    COUNT of at most cap + not yet swept rows, never a list)."""
    if cap is None:
        return
    row = conn.execute(
        "SELECT COUNT(*) AS n, MIN(consent_expires_at) AS first FROM tokens "
        "WHERE owner = ? AND status = ? AND consent_expires_at > ?",
        (owner, PENDING, now),
    ).fetchone()
    if row["n"] >= cap:
        raise TooManyPendingConsents(
            f"{row['n']} consents of this user are still waiting to be granted (at most "
            f"{cap}, OfflineTokenApp.max_pending_consents): grant or delete one, or wait "
            "until one expires",
            retry_after=max(1.0, float(row["first"]) - now),
        )


def consume(database: Database, conn: sqlite3.Connection, token_id: str) -> ConsentSecrets | None:
    """On the worker thread: decrypt and erase the consent secrets in one transaction."""
    with transaction(conn):
        row = conn.execute(
            "SELECT owner, consent_ct, consent_nonce, consent_key_id FROM tokens WHERE id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            raise EntryGone(token_id)
        if row["consent_ct"] is None:
            return None
        plain = database.decrypt(
            row["consent_key_id"],
            row["consent_nonce"],
            row["consent_ct"],
            rows.consent_aad(token_id, row["owner"]),
            what=f"the consent secrets of vault entry {token_id}",
        )
        conn.execute(
            "UPDATE tokens SET consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL "
            "WHERE id = ?",
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
