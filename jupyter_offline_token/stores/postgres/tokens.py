"""PostgresTokenStore: the TokenStore on a PostgreSQL database (see ``base.TokenStore``).

Every public method is a coroutine on psycopg's async driver (never blocking the event loop).
Timestamps are epoch seconds (double precision). Any number of processes may share the
database: read-modify-writes lock their row (``FOR UPDATE``), purges skip rows another process
holds (``SKIP LOCKED``), and every commit is durable before the method returns.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from ... import defaults
from ...crypto import KeyRing
from ...errors import EntryGone
from ...models import (
    EXPIRED,
    PENDING,
    AuditEvent,
    ConsentSecrets,
    RefreshStart,
    TokenRecord,
)
from ...paging import check_limit
from ..aad import consent_aad, refresh_aad
from ..base import TokenStore
from ..shared import checks, sql
from ..shared.entries import EntryMethods
from ..shared.records import Refreshed, Row
from ..shared.sealed import unseal
from . import audit as audit_rows
from . import consent, leases, rows
from .coordination import ClusterCoordination
from .database import Conn, Database
from .listener import EvictionListener
from .rotation import PostgresKeyRotation

DEFAULT_POOL_SIZE = 10
_ACTIVATE = sql.pyformat(sql.ACTIVATE)
_RELEASE_LEASE = sql.pyformat(sql.RELEASE_LEASE)


class PostgresTokenStore(ClusterCoordination, PostgresKeyRotation, EntryMethods, TokenStore):
    """The encrypted token store in one PostgreSQL database, shared by any number of
    processes (JupyterHub service replicas, several servers of one user)."""

    order_key = "seq"
    no_limit = None
    database: Database

    def __init__(
        self,
        *,
        url: str,
        encryption_keys: builtins.list[str] | None = None,
        audit_retention: int = defaults.AUDIT_RETENTION,
        max_pending_consents: int | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        path: object = None,
        **kwargs: Any,
    ) -> None:
        """``url``: ``postgresql://user:password@host:port/db`` (the password is never shown).
        ``encryption_keys``: required (no key file is generated next to a database).
        ``path`` is accepted and ignored, so the app may build either backend alike.
        Other keyword arguments (``config``, ``parent``, ``log``) go to LoggingConfigurable."""
        super().__init__(**kwargs)
        checks.check_settings(audit_retention, max_pending_consents)
        checks.check_pool_size(pool_size)
        self.database = Database(url, encryption_keys, pool_size)
        self.audit_retention = audit_retention
        self.max_pending_consents = max_pending_consents
        self._listener = EvictionListener(url, self.database.shown_url)
        self._owners = leases.Owners()  # the refresh's AAD without reading the row first

    def __repr__(self) -> str:
        return self._describe(f"url={self.database.shown_url!r}")

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate under an advisory lock (a newer schema is refused), load the
        configured key ring and check the stored key ids, open the pool."""
        await self.database.open()

    async def close(self) -> None:
        await self._listener.close()
        await self.database.close()

    # --- consent ------------------------------------------------------------------------------
    async def _insert_pending(
        self, values: tuple[object, ...], payload: bytes, *, owner: str, now: float
    ) -> TokenRecord:
        aad = consent_aad(str(values[0]), owner)
        key_id, nonce, ct = self.keyring_or_closed().encrypt(payload, aad)
        values += (ct, nonce, key_id)
        cap = self.max_pending_consents
        return await self.database.run(
            lambda conn: consent.insert_pending(conn, values, owner=owner, now=now, cap=cap)
        )

    def keyring_or_closed(self) -> KeyRing:
        """The key ring, or the VaultError a closed/unopened store raises."""
        self.database.check_usable()
        return self.database.keyring

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        return await self.database.run(lambda conn: consent.consume(self.database, conn, token_id))

    async def _activate(
        self, token_id: str, secret: bytes, params: tuple[object, ...]
    ) -> TokenRecord:
        async def work(conn: Conn) -> TokenRecord:
            owner = (await rows.locked(conn, token_id, "owner"))["owner"]
            key_id, nonce, ct = self.keyring.encrypt(secret, refresh_aad(token_id, owner))
            await conn.execute(_ACTIVATE, (ct, nonce, key_id, *params, token_id))
            return await rows.existing(conn, token_id)

        return await self.database.run(work)

    async def expire_pending(self, now: float) -> builtins.list[str]:
        async def work(conn: Conn) -> builtins.list[str]:
            return await rows.ids(
                conn,
                "WITH due AS (SELECT id FROM tokens WHERE status = %s AND consent_expires_at "  # noqa: S608
                "<= %s FOR UPDATE SKIP LOCKED) UPDATE tokens t SET status = %s, updated_at = %s, "
                f"{sql.ERASE_CONSENT} FROM due "
                "WHERE t.id = due.id RETURNING t.id",
                (PENDING, now, EXPIRED, now),
            )

        return await self.database.run(work)

    # --- reading (the rest: shared.entries) ---------------------------------------------------
    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        async def work(conn: Conn) -> builtins.list[Row]:
            return [*await (await conn.execute(sql.pyformat(statement), params)).fetchall()]

        return await self.database.read(work)

    async def warm_ids(self) -> builtins.list[str]:
        return await self._ids("SELECT id FROM tokens WHERE status = 'active' AND keep_warm")

    async def read_refresh_token(self, token_id: str) -> str:
        async def work(conn: Conn) -> dict[str, Any] | None:
            cur = await conn.execute(
                f"SELECT {sql.SECRET_COLUMNS} FROM tokens WHERE id = %s",  # noqa: S608
                (token_id,),
            )
            return await cur.fetchone()

        row = await self.database.read(work)
        if row is None or row["secret_ct"] is None:
            raise EntryGone(token_id, "refresh token of vault entry")
        return unseal(self.database, row, "secret", token_id, row["owner"]).decode()

    # --- the refresh path ----------------------------------------------------------------------
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        checks.check_lease_args(holder, ttl)

        async def work(conn: Conn) -> bool:
            taken, _ = await leases.take(conn, token_id, holder, ttl, now)
            return taken is not False

        return await self.database.run(work, durable=False)

    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> RefreshStart | None:
        checks.check_lease_args(holder, ttl)
        started = await leases.begin(self.database, token_id, holder, ttl, now)
        if started is not None:
            self._owners.remember(token_id, started.record.owner)
        return started

    async def release_lease(self, token_id: str, holder: str) -> None:
        async def work(conn: Conn) -> None:
            await rows.locked(conn, token_id, "id")
            await conn.execute(_RELEASE_LEASE, (token_id, holder))

        await self.database.run(work, durable=False)

    async def _record_refresh(self, refreshed: Refreshed) -> TokenRecord:
        """Durable: synchronous_commit = on."""
        access = refreshed.access
        if access is not None and not math.isfinite(access.expires_at):
            raise ValueError("access.expires_at must be a finite time")
        owner = await self._owners.of(self.database, refreshed.token_id)
        return await leases.record_refresh(self.database, refreshed, owner)

    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        statement = sql.pyformat(f"UPDATE tokens SET {assignments} WHERE id = ?")  # noqa: S608

        async def work(conn: Conn) -> None:
            if (await conn.execute(statement, (*params, token_id))).rowcount == 0:
                raise EntryGone(token_id)

        await self.database.run(work)

    async def delete(self, token_id: str) -> bool:
        """The row and its ciphertexts are gone for every reader at COMMIT; PostgreSQL's
        VACUUM reclaims the dead tuple later (as autovacuum does)."""

        async def work(conn: Conn) -> bool:
            cur = await conn.execute("DELETE FROM tokens WHERE id = %s", (token_id,))
            return cur.rowcount > 0

        return await self.database.run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """Rows another process is purging (locked) are skipped, never waited for."""
        check_limit(limit)

        async def work(conn: Conn) -> builtins.list[str]:
            await conn.execute("SET LOCAL jot.purge = 'on'")  # see schema: nothing to log
            ids = await rows.ids(
                conn,
                "WITH doomed AS (SELECT id FROM tokens WHERE status = ANY(%s) AND updated_at < %s "
                "ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                "DELETE FROM tokens t USING doomed WHERE t.id = doomed.id RETURNING t.id",
                (list(checks.PURGEABLE_STATUSES), before, limit),
            )
            if ids:
                await conn.execute("DELETE FROM audit WHERE token_id = ANY(%s)", (ids,))
            return ids

        return await self.database.run(work)

    # --- audit --------------------------------------------------------------------------------
    async def add_audit(self, event: AuditEvent) -> None:
        retention = self.audit_retention
        await self.database.run(lambda conn: audit_rows.insert(conn, event, retention))
