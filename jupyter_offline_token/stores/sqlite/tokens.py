"""SQLiteTokenStore: the TokenStore on one SQLite vault file (see ``base.TokenStore``).

Every public method is a coroutine that runs its SQLite work (and crypto) on the database's
single worker thread, never on the event loop. Timestamps are epoch seconds (float). Several
processes may share one vault file: read-modify-write operations run in ``BEGIN IMMEDIATE``
transactions, so the refresh lease is exclusive across processes too.
"""

from __future__ import annotations

import builtins
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ... import defaults
from ...crypto import KeyRing
from ...errors import EntryGone, VaultError
from ...models import (
    EXPIRED,
    FAILED,
    IDLE,
    PENDING,
    REFRESH_FAILED,
    RETRYING,
    REVOKED,
    SCHEDULED,
    TOKEN_STATUSES,
    AuditEvent,
    ConsentSecrets,
    RefreshStart,
    SharedAccessToken,
    TokenRecord,
)
from ...paging import Cursor, Page, check_limit
from ..base import ERROR_KINDS, TokenStore
from . import audit as audit_rows
from . import consent, leases, rows, shared_access
from .cluster import SQLiteClusterMethods
from .database import Database
from .schema import ATTENTION
from .sql import delete_stale, transaction

T = TypeVar("T")

REFRESH_STATES = (IDLE, SCHEDULED, RETRYING, REFRESH_FAILED)
# Entries the retention purge deletes once unchanged for that long.
PURGEABLE_STATUSES = (EXPIRED, FAILED, REVOKED)


class SQLiteTokenStore(SQLiteClusterMethods, TokenStore):
    """The encrypted token store, one SQLite file shared by every process of the same user."""

    def __init__(
        self,
        path: Path,
        *,
        encryption_keys: builtins.list[str] | None = None,
        audit_retention: int = defaults.AUDIT_RETENTION,
        max_pending_consents: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``encryption_keys`` empty/None: use the key file ``<vault dir>/vault.key``.
        ``max_pending_consents``: unexpired pending entries one owner may have (None: no cap).
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        rows.check_settings(audit_retention, max_pending_consents)
        self.database = Database(Path(path), encryption_keys)
        self.path = self.database.path
        self.audit_retention = audit_retention
        self.max_pending_consents = max_pending_consents

    def __repr__(self) -> str:
        keyring = getattr(self.database, "keyring", None)
        key_ids = sorted(keyring.key_ids) if keyring is not None else []
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, state={self.database.state}, "
            f"key_ids={key_ids!r})"
        )

    @property
    def keyring(self) -> KeyRing:
        return self.database.keyring

    @property
    def key_file(self) -> Path:
        """Where the generated key lives when no key is configured."""
        return self.database.key_file

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the worker thread (the SQLite task store and tests share
        this database). sqlite3 errors become VaultError; ``fn`` manages its transaction."""
        return await self.database.run(fn, *args)

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Directory 0700 and file 0600, WAL, forward migrations (a newer schema is refused),
        then the key ring: configured keys, else the key file (see ``database`` and ``keys``
        for the VaultErrors, each naming the setting to fix)."""
        await self.database.open()

    async def close(self) -> None:
        await self.database.close()

    # --- consent ------------------------------------------------------------------------------
    async def create_pending(
        self,
        *,
        owner: str,
        issuer: str,
        client_id: str,
        scopes: builtins.list[str],
        state_hash: str,
        secrets: ConsentSecrets,
        consent_expires_at: float,
        label: str = "",
        task_id: str | None = None,
        return_to: str | None = None,
        now: float,
    ) -> TokenRecord:
        scope_text = rows.scopes_text(scopes)
        if not state_hash:
            raise ValueError("state_hash must not be empty")
        token_id = str(uuid.uuid4())
        payload = consent.encode_secrets(secrets)
        values: tuple[Any, ...] = (token_id, owner, issuer, client_id, PENDING, scope_text)
        values += (now, now, label, task_id, consent_expires_at, return_to, state_hash)
        cap = self.max_pending_consents

        def work(conn: sqlite3.Connection) -> TokenRecord:
            key_id, nonce, ct = self.keyring.encrypt(payload, rows.consent_aad(token_id, owner))
            try:
                with transaction(conn):
                    # Counted under the write lock: concurrent requests cannot pass the cap.
                    consent.check_pending_cap(conn, owner, now, cap)
                    conn.execute(
                        "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, "
                        "created_at, updated_at, label, task_id, consent_expires_at, return_to, "
                        "state_hash, consent_ct, consent_nonce, consent_key_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, ct, nonce, key_id),
                    )
            except sqlite3.IntegrityError:
                raise VaultError("a consent with this state already exists") from None
            return rows.existing(conn, token_id)

        return await self.run(work)

    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        def work(conn: sqlite3.Connection) -> TokenRecord | None:
            row = conn.execute(
                f"SELECT {rows.RECORD_COLUMNS} FROM tokens WHERE state_hash = ?",  # noqa: S608
                (state_hash,),
            ).fetchone()
            return rows.record(row) if row is not None else None

        return await self.run(work)

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        return await self.run(lambda conn: consent.consume(self.database, conn, token_id))

    async def activate(
        self,
        token_id: str,
        *,
        refresh_token: str,
        subject: str | None,
        scopes: builtins.list[str],
        idle_expires_at: float | None,
        now: float,
    ) -> TokenRecord:
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ValueError("refresh_token must be a non-empty string")
        scope_text = rows.scopes_text(scopes)
        secret = refresh_token.encode()

        def work(conn: sqlite3.Connection) -> TokenRecord:
            with transaction(conn):
                owner = rows.owner_of(conn, token_id)
                key_id, nonce, ct = self.keyring.encrypt(secret, rows.refresh_aad(token_id, owner))
                conn.execute(
                    "UPDATE tokens SET status = 'active', secret_ct = ?, secret_nonce = ?, "
                    "secret_key_id = ?, subject = ?, scopes = ?, idle_expires_at = ?, "
                    "updated_at = ?, refresh_state = 'idle', next_attempt_at = NULL, "
                    "retry_count = 0, last_error = NULL, last_error_kind = NULL, "
                    "consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL, "
                    "access_ct = NULL, access_nonce = NULL, access_key_id = NULL, "
                    "access_expires_at = NULL WHERE id = ?",
                    (ct, nonce, key_id, subject, scope_text, idle_expires_at, now, token_id),
                )
                return rows.existing(conn, token_id)

        return await self.run(work)

    async def expire_pending(self, now: float) -> builtins.list[str]:
        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            with transaction(conn):
                ids = [
                    row["id"]
                    for row in conn.execute(
                        "SELECT id FROM tokens WHERE status = ? AND consent_expires_at <= ? "
                        "ORDER BY created_at",
                        (PENDING, now),
                    )
                ]
                conn.executemany(
                    "UPDATE tokens SET status = ?, updated_at = ?, consent_ct = NULL, "
                    "consent_nonce = NULL, consent_key_id = NULL WHERE id = ?",
                    [(EXPIRED, now, token_id) for token_id in ids],
                )
            return ids

        return await self.run(work)

    # --- reading ------------------------------------------------------------------------------
    async def get(self, token_id: str) -> TokenRecord | None:
        return await self.run(rows.find, token_id)

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[TokenRecord]:
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if offset < 0:
            raise ValueError("offset must not be negative")
        where, params = rows.owner_status_filter(owner, status)
        sql = f"SELECT {rows.RECORD_COLUMNS} FROM tokens"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]

        def work(conn: sqlite3.Connection) -> builtins.list[TokenRecord]:
            return [rows.record(row) for row in conn.execute(sql, params)]

        return await self.run(work)

    async def sharing_account(
        self, token_id: str, *, owner: str, subject: str, client_id: str, limit: int = 100
    ) -> builtins.list[str]:
        check_limit(limit)
        return await self.run(rows.sharing_account, token_id, owner, subject, client_id, limit)

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
        attention: bool = False,
    ) -> Page[TokenRecord]:
        check_limit(limit)
        where, params = rows.owner_status_filter(owner, status)
        if attention:
            where.append(ATTENTION)  # the exact term of the tokens_attention partial index
        if cursor is not None:
            where.append("(created_at, rowid) < (?, ?)")
            params += [cursor.created_at, cursor.rowid]
        sql = f"SELECT {rows.RECORD_COLUMNS}, created_at AS _c, rowid AS _r FROM tokens"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(limit + 1)

        def work(conn: sqlite3.Connection) -> Page[TokenRecord]:
            found = conn.execute(sql, params).fetchall()
            more = len(found) > limit
            found = found[:limit]
            after = Cursor(found[-1]["_c"], found[-1]["_r"]).encode() if more else None
            return Page([rows.record(row) for row in found], after)

        return await self.run(work)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Read from ``token_counts`` (kept by triggers): a few rows per owner."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            sql = "SELECT status, SUM(n) AS n FROM token_counts"
            params: tuple[str, ...] = ()
            if owner is not None:
                sql += " WHERE owner = ?"
                params = (owner,)
            counts = dict.fromkeys(TOKEN_STATUSES, 0)
            for row in conn.execute(sql + " GROUP BY status", params):
                counts[row["status"]] = row["n"]
            return counts

        return await self.run(work)

    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        def work(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            found = conn.execute(
                "SELECT status, refresh_state, n FROM token_counts WHERE owner = ? AND n > 0",
                (owner,),
            )
            return {(row["status"], row["refresh_state"]): row["n"] for row in found}

        return await self.run(work)

    async def warm_ids(self) -> builtins.list[str]:
        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            found = conn.execute(
                "SELECT id FROM tokens WHERE status = 'active' AND keep_warm = 1"
            ).fetchall()
            return [row["id"] for row in found]

        return await self.run(work)

    async def stale_ids(self, before: float, *, limit: int = 1000) -> builtins.list[str]:
        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            found = conn.execute(
                "SELECT id FROM tokens WHERE status = 'active' "
                "AND COALESCE(last_refresh_at, created_at) < ? "
                "ORDER BY COALESCE(last_refresh_at, created_at) LIMIT ?",
                (before, limit),
            ).fetchall()
            return [row["id"] for row in found]

        return await self.run(work)

    async def read_refresh_token(self, token_id: str) -> str:
        return await self.run(lambda conn: leases.read_refresh_token(self.database, conn, token_id))

    async def read_access_token(
        self, token_id: str, *, valid_until: float
    ) -> SharedAccessToken | None:
        return await self.run(
            lambda conn: shared_access.read(self.database, conn, token_id, valid_until)
        )

    # --- the refresh path ----------------------------------------------------------------------
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        leases.check_lease_args(holder, ttl)

        def work(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return leases.take(conn, token_id, holder, ttl, now) is not False

        return await self.run(work)

    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> RefreshStart | None:
        leases.check_lease_args(holder, ttl)
        return await self.run(lambda _: leases.begin(self.database, token_id, holder, ttl, now))

    async def release_lease(self, token_id: str, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                rows.owner_of(conn, token_id)
                conn.execute(
                    "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL "
                    "WHERE id = ? AND lease_holder = ?",
                    (token_id, holder),
                )

        await self.run(work)

    async def record_refresh(
        self,
        token_id: str,
        *,
        new_refresh_token: str | None,
        idle_expires_at: float | None,
        now: float,
        holder: str | None = None,
        audit: AuditEvent | None = None,
        access: SharedAccessToken | None = None,
    ) -> TokenRecord:
        """Returns after COMMIT (synchronous=FULL): one commit instead of two on the refresh
        path, the rotated token durable before the access token leaves the process."""
        if new_refresh_token is not None and (
            not isinstance(new_refresh_token, str) or not new_refresh_token
        ):
            raise ValueError("new_refresh_token must be a non-empty string or None")
        secret = new_refresh_token.encode() if new_refresh_token is not None else None
        retention = self.audit_retention

        def work(conn: sqlite3.Connection) -> TokenRecord:
            return leases.record_refresh(
                self.database,
                conn,
                token_id,
                secret=secret,
                idle_expires_at=idle_expires_at,
                now=now,
                holder=holder,
                event=audit,
                retention=retention,
                access=access,
            )

        return await self.run(work)

    async def update_refresh_state(
        self,
        token_id: str,
        *,
        refresh_state: str,
        next_attempt_at: float | None,
        retry_count: int,
        last_error: str | None,
        now: float,
    ) -> None:
        if refresh_state not in REFRESH_STATES:
            raise ValueError(f"unknown refresh state {refresh_state!r}")
        await self._update(
            token_id,
            "refresh_state = ?, next_attempt_at = ?, retry_count = ?, last_error = ?, "
            "updated_at = ?",
            (refresh_state, next_attempt_at, retry_count, last_error, now),
        )

    async def mark_failed(
        self, token_id: str, *, error: str, now: float, kind: str | None = None
    ) -> None:
        if kind is not None and kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        await self._update(
            token_id,
            "status = 'failed', refresh_state = 'failed', last_error = ?, last_error_kind = ?, "
            "next_attempt_at = NULL, lease_holder = NULL, lease_expires_at = NULL, "
            "updated_at = ?",
            (error, kind, now),
        )

    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        if status not in TOKEN_STATUSES:
            raise ValueError(f"unknown token status {status!r}")
        await self._update(token_id, "status = ?, updated_at = ?", (status, now))

    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        await self._update(token_id, "keep_warm = ?, updated_at = ?", (1 if keep_warm else 0, now))

    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        """``UPDATE tokens SET <assignments>`` for one entry; EntryGone when it does not exist."""
        sql = f"UPDATE tokens SET {assignments} WHERE id = ?"  # noqa: S608

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if conn.execute(sql, (*params, token_id)).rowcount == 0:
                    raise EntryGone(token_id)

        await self.run(work)

    async def delete(self, token_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                existed = conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount
            if existed:
                # secure_delete zeroes the freed cells; checkpointing copies that into the main
                # file and truncates the WAL, so older page images do not linger there either.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return bool(existed)

        return await self.run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        check_limit(limit)

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            ids = delete_stale(conn, "tokens", PURGEABLE_STATUSES, before, limit, also=["audit"])
            if ids:
                # As in delete(): copy the zeroed cells into the main file (never waits).
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return ids

        return await self.run(work)

    # --- audit --------------------------------------------------------------------------------
    async def add_audit(self, event: AuditEvent) -> None:
        retention = self.audit_retention

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                audit_rows.insert(conn, event, retention)

        await self.run(work)

    async def list_audit(self, token_id: str, *, limit: int = 100) -> builtins.list[AuditEvent]:
        if limit < 0:
            raise ValueError("limit must not be negative")
        return await self.run(audit_rows.newest, token_id, limit)
