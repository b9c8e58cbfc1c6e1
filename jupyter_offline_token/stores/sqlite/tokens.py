"""SQLiteTokenStore: the TokenStore on one SQLite vault file (see ``base.TokenStore``).

Every public method is a coroutine that runs its SQLite work (and crypto) on the database's
single worker thread, never on the event loop. Timestamps are epoch seconds (float). Several
processes may share one vault file: read-modify-write operations run in ``BEGIN IMMEDIATE``
transactions, so the refresh lease is exclusive across processes too.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ... import defaults
from ...errors import EntryGone, VaultError
from ...models import (
    EXPIRED,
    PENDING,
    AuditEvent,
    ConsentSecrets,
    RefreshStart,
    SharedAccessToken,
    TokenRecord,
)
from ...paging import check_limit
from ..base import TokenStore
from ..shared import checks, sql
from ..shared.entries import EntryMethods
from ..shared.records import Refreshed, Row
from . import audit as audit_rows
from . import consent, leases, rows, shared_access
from .cluster import SQLiteClusterMethods
from .database import Database
from .rotation import SQLiteKeyRotation
from .sql import delete_stale, transaction

T = TypeVar("T")


class SQLiteTokenStore(SQLiteClusterMethods, SQLiteKeyRotation, EntryMethods, TokenStore):
    """The encrypted token store, one SQLite file shared by every process of the same user."""

    order_key = "rowid"
    no_limit = -1
    database: Database

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
        checks.check_settings(audit_retention, max_pending_consents)
        self.database = Database(Path(path), encryption_keys)
        self.path = self.database.path
        self.audit_retention = audit_retention
        self.max_pending_consents = max_pending_consents

    def __repr__(self) -> str:
        return self._describe(f"path={str(self.path)!r}")

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
    async def _insert_pending(
        self, values: tuple[object, ...], payload: bytes, *, owner: str, now: float
    ) -> TokenRecord:
        token_id = str(values[0])
        cap = self.max_pending_consents

        def work(conn: sqlite3.Connection) -> TokenRecord:
            key_id, nonce, ct = self.keyring.encrypt(payload, rows.consent_aad(token_id, owner))
            try:
                with transaction(conn):
                    # Counted under the write lock: concurrent requests cannot pass the cap.
                    consent.check_pending_cap(conn, owner, now, cap)
                    conn.execute(sql.INSERT_PENDING, (*values, ct, nonce, key_id))
            except sqlite3.IntegrityError:
                raise VaultError("a consent with this state already exists") from None
            return rows.existing(conn, token_id)

        return await self.run(work)

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        return await self.run(lambda conn: consent.consume(self.database, conn, token_id))

    async def _activate(
        self, token_id: str, secret: bytes, params: tuple[object, ...]
    ) -> TokenRecord:
        def work(conn: sqlite3.Connection) -> TokenRecord:
            with transaction(conn):
                owner = rows.owner_of(conn, token_id)
                key_id, nonce, ct = self.keyring.encrypt(secret, rows.refresh_aad(token_id, owner))
                conn.execute(sql.ACTIVATE, (ct, nonce, key_id, *params, token_id))
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
                    f"UPDATE tokens SET status = ?, updated_at = ?, {sql.ERASE_CONSENT} "  # noqa: S608
                    "WHERE id = ?",
                    [(EXPIRED, now, token_id) for token_id in ids],
                )
            return ids

        return await self.run(work)

    # --- reading (the rest: shared.entries) ---------------------------------------------------
    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        return await self.run(lambda conn: conn.execute(statement, params).fetchall())

    async def warm_ids(self) -> builtins.list[str]:
        return await self._ids("SELECT id FROM tokens WHERE status = 'active' AND keep_warm = 1")

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
        checks.check_lease_args(holder, ttl)

        def work(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return leases.take(conn, token_id, holder, ttl, now) is not False

        return await self.run(work)

    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> RefreshStart | None:
        checks.check_lease_args(holder, ttl)
        return await self.run(lambda _: leases.begin(self.database, token_id, holder, ttl, now))

    async def release_lease(self, token_id: str, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                rows.owner_of(conn, token_id)
                conn.execute(sql.RELEASE_LEASE, (token_id, holder))

        await self.run(work)

    async def _record_refresh(self, refreshed: Refreshed) -> TokenRecord:
        """Returns after COMMIT (synchronous=FULL): one commit instead of two on the refresh
        path."""
        return await self.run(lambda conn: leases.record_refresh(self.database, conn, refreshed))

    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        statement = f"UPDATE tokens SET {assignments} WHERE id = ?"  # noqa: S608

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if conn.execute(statement, (*params, token_id)).rowcount == 0:
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
            ids = delete_stale(
                conn, "tokens", checks.PURGEABLE_STATUSES, before, limit, also=["audit"]
            )
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
