"""PostgresTokenStore: the TokenStore on a PostgreSQL database (see ``base.TokenStore``).

Every public method is a coroutine on psycopg's async driver (never blocking the event loop).
Timestamps are epoch seconds (double precision). Any number of processes may share the
database: read-modify-writes lock their row (``FOR UPDATE``), purges skip rows another process
holds (``SKIP LOCKED``), and every commit is durable before the method returns.
"""

from __future__ import annotations

import builtins
import math
import uuid
from typing import Any

from ... import defaults
from ...crypto import KeyRing
from ...errors import EntryGone
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
from ..aad import consent_aad, refresh_aad
from ..base import ERROR_KINDS, TokenStore
from . import audit as audit_rows
from . import consent, leases, rows
from .coordination import ClusterCoordination
from .database import Conn, Database
from .listener import EvictionListener
from .schema import ATTENTION

REFRESH_STATES = (IDLE, SCHEDULED, RETRYING, REFRESH_FAILED)
PURGEABLE_STATUSES = [EXPIRED, FAILED, REVOKED]
DEFAULT_POOL_SIZE = 10


class PostgresTokenStore(ClusterCoordination, TokenStore):
    """The encrypted token store in one PostgreSQL database, shared by any number of
    processes (JupyterHub service replicas, several servers of one user)."""

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
        rows.check_settings(audit_retention, max_pending_consents, pool_size)
        self.database = Database(url, encryption_keys, pool_size)
        self.audit_retention = audit_retention
        self.max_pending_consents = max_pending_consents
        self._listener = EvictionListener(url, self.database.shown_url)
        self._owners = leases.Owners()  # for the refresh's AAD without a read

    def __repr__(self) -> str:
        keyring = getattr(self.database, "keyring", None)
        key_ids = sorted(keyring.key_ids) if keyring is not None else []
        return (
            f"{type(self).__name__}(url={self.database.shown_url!r}, "
            f"state={self.database.state}, key_ids={key_ids!r})"
        )

    @property
    def keyring(self) -> KeyRing:
        return self.database.keyring

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate under an advisory lock (a newer schema is refused), load the
        configured key ring and check the stored key ids, open the pool."""
        await self.database.open()

    async def close(self) -> None:
        await self._listener.close()
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
        key_id, nonce, ct = self.keyring_or_closed().encrypt(
            consent.encode_secrets(secrets), consent_aad(token_id, owner)
        )
        values: tuple[object, ...] = (token_id, owner, issuer, client_id, PENDING, scope_text)
        values += (now, now, label)
        values += (task_id, consent_expires_at, return_to, state_hash, ct, nonce, key_id)
        cap = self.max_pending_consents
        return await self.database.run(
            lambda conn: consent.insert_pending(conn, values, owner=owner, now=now, cap=cap)
        )

    def keyring_or_closed(self) -> KeyRing:
        """The key ring, or the VaultError a closed/unopened store raises."""
        self.database.check_usable()
        return self.database.keyring

    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        async def work(conn: Conn) -> TokenRecord | None:
            cur = await conn.execute(
                f"SELECT {rows.RECORD_COLUMNS} FROM tokens WHERE state_hash = %s",  # noqa: S608
                (state_hash,),
            )
            row = await cur.fetchone()
            return rows.record(row) if row is not None else None

        return await self.database.read(work)

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        return await self.database.run(lambda conn: consent.consume(self.database, conn, token_id))

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

        async def work(conn: Conn) -> TokenRecord:
            owner = (await rows.locked(conn, token_id, "owner"))["owner"]
            key_id, nonce, ct = self.keyring.encrypt(secret, refresh_aad(token_id, owner))
            await conn.execute(
                "UPDATE tokens SET status = 'active', secret_ct = %s, secret_nonce = %s, "
                "secret_key_id = %s, subject = %s, scopes = %s, idle_expires_at = %s, "
                "updated_at = %s, refresh_state = 'idle', next_attempt_at = NULL, "
                "retry_count = 0, last_error = NULL, last_error_kind = NULL, "
                "consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL, "
                "access_ct = NULL, access_nonce = NULL, access_key_id = NULL, "
                "access_expires_at = NULL WHERE id = %s",
                (ct, nonce, key_id, subject, scope_text, idle_expires_at, now, token_id),
            )
            return await rows.existing(conn, token_id)

        return await self.database.run(work)

    async def expire_pending(self, now: float) -> builtins.list[str]:
        async def work(conn: Conn) -> builtins.list[str]:
            return await rows.ids(
                conn,
                "WITH due AS (SELECT id FROM tokens WHERE status = %s AND consent_expires_at "
                "<= %s FOR UPDATE SKIP LOCKED) UPDATE tokens t SET status = %s, updated_at = %s, "
                "consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL FROM due "
                "WHERE t.id = due.id RETURNING t.id",
                (PENDING, now, EXPIRED, now),
            )

        return await self.database.run(work)

    # --- reading ------------------------------------------------------------------------------
    async def get(self, token_id: str) -> TokenRecord | None:
        return await self.database.read(lambda conn: rows.find(conn, token_id))

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
        sql += " ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s"
        params += [limit, offset]

        async def work(conn: Conn) -> builtins.list[TokenRecord]:
            cur = await conn.execute(sql, params)
            return [rows.record(row) for row in await cur.fetchall()]

        return await self.database.read(work)

    async def sharing_account(
        self, token_id: str, *, owner: str, subject: str, client_id: str, limit: int = 100
    ) -> builtins.list[str]:
        check_limit(limit)

        async def work(conn: Conn) -> builtins.list[str]:
            return await rows.ids(
                conn,
                "SELECT id FROM tokens WHERE owner = %s AND status = 'active' AND subject = %s "
                "AND client_id = %s AND id <> %s ORDER BY created_at DESC, seq DESC LIMIT %s",
                (owner, subject, client_id, token_id, limit),
            )

        return await self.database.read(work)

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
            where.append("(created_at, seq) < (%s, %s)")
            params += [cursor.created_at, cursor.rowid]
        sql = f"SELECT {rows.RECORD_COLUMNS}, seq AS _r FROM tokens"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, seq DESC LIMIT %s"
        params.append(limit + 1)

        async def work(conn: Conn) -> Page[TokenRecord]:
            found = await (await conn.execute(sql, params)).fetchall()
            more = len(found) > limit
            found = found[:limit]
            after = Cursor(found[-1]["created_at"], found[-1]["_r"]).encode() if more else None
            return Page([rows.record(row) for row in found], after)

        return await self.database.read(work)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Read from ``token_counts`` (kept by triggers): a few rows per owner."""
        sql = "SELECT status, SUM(n) AS n FROM token_counts"
        params: tuple[str, ...] = ()
        if owner is not None:
            sql += " WHERE owner = %s"
            params = (owner,)

        async def work(conn: Conn) -> dict[str, int]:
            counts = dict.fromkeys(TOKEN_STATUSES, 0)
            for row in await (await conn.execute(sql + " GROUP BY status", params)).fetchall():
                counts[row["status"]] = int(row["n"])
            return counts

        return await self.database.read(work)

    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        async def work(conn: Conn) -> dict[tuple[str, str], int]:
            cur = await conn.execute(
                "SELECT status, refresh_state, n FROM token_counts WHERE owner = %s AND n > 0",
                (owner,),
            )
            return {(r["status"], r["refresh_state"]): int(r["n"]) for r in await cur.fetchall()}

        return await self.database.read(work)

    async def warm_ids(self) -> builtins.list[str]:
        async def work(conn: Conn) -> builtins.list[str]:
            sql = "SELECT id FROM tokens WHERE status = 'active' AND keep_warm"
            return await rows.ids(conn, sql, ())

        return await self.database.read(work)

    async def stale_ids(self, before: float, *, limit: int = 1000) -> builtins.list[str]:
        async def work(conn: Conn) -> builtins.list[str]:
            return await rows.ids(
                conn,
                "SELECT id FROM tokens WHERE status = 'active' "
                "AND COALESCE(last_refresh_at, created_at) < %s "
                "ORDER BY COALESCE(last_refresh_at, created_at) LIMIT %s",
                (before, limit),
            )

        return await self.database.read(work)

    async def read_refresh_token(self, token_id: str) -> str:
        async def work(conn: Conn) -> dict[str, Any] | None:
            cur = await conn.execute(
                "SELECT owner, secret_ct, secret_nonce, secret_key_id FROM tokens WHERE id = %s",
                (token_id,),
            )
            return await cur.fetchone()

        row = await self.database.read(work)
        if row is None or row["secret_ct"] is None:
            raise EntryGone(token_id, "refresh token of vault entry")
        plain = self.database.decrypt(
            row["secret_key_id"],
            row["secret_nonce"],
            row["secret_ct"],
            refresh_aad(token_id, row["owner"]),
            what=f"the refresh token of vault entry {token_id}",
        )
        return plain.decode()

    # --- the refresh path ----------------------------------------------------------------------
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        leases.check_lease_args(holder, ttl)

        async def work(conn: Conn) -> bool:
            taken, _ = await leases.take(conn, token_id, holder, ttl, now)
            return taken is not False

        return await self.database.run(work, durable=False)

    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> RefreshStart | None:
        leases.check_lease_args(holder, ttl)
        started = await leases.begin(self.database, token_id, holder, ttl, now)
        if started is not None:
            self._owners.remember(token_id, started.record.owner)
        return started

    async def release_lease(self, token_id: str, holder: str) -> None:
        async def work(conn: Conn) -> None:
            await rows.locked(conn, token_id, "id")
            await conn.execute(
                "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL "
                "WHERE id = %s AND lease_holder = %s",
                (token_id, holder),
            )

        await self.database.run(work, durable=False)

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
        """Returns after a durable COMMIT (synchronous_commit = on): the rotated refresh token
        is safe before the access token of that answer leaves the process."""
        if new_refresh_token is not None and (
            not isinstance(new_refresh_token, str) or not new_refresh_token
        ):
            raise ValueError("new_refresh_token must be a non-empty string or None")
        if access is not None and not math.isfinite(access.expires_at):
            raise ValueError("access.expires_at must be a finite time")
        secret = new_refresh_token.encode() if new_refresh_token is not None else None
        retention = self.audit_retention
        owner = await self._owners.of(self.database, token_id)

        async def work(conn: Conn) -> TokenRecord:
            return await leases.record_refresh(
                self.database,
                conn,
                token_id,
                owner=owner,
                secret=secret,
                access=access,
                idle_expires_at=idle_expires_at,
                now=now,
                holder=holder,
                event=audit,
                retention=retention,
            )

        return await self.database.run(work)

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
            "refresh_state = %s, next_attempt_at = %s, retry_count = %s, last_error = %s, "
            "updated_at = %s",
            (refresh_state, next_attempt_at, retry_count, last_error, now),
        )

    async def mark_failed(
        self, token_id: str, *, error: str, now: float, kind: str | None = None
    ) -> None:
        if kind is not None and kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        await self._update(
            token_id,
            "status = 'failed', refresh_state = 'failed', last_error = %s, last_error_kind = %s, "
            "next_attempt_at = NULL, lease_holder = NULL, lease_expires_at = NULL, "
            "updated_at = %s",
            (error, kind, now),
        )

    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        if status not in TOKEN_STATUSES:
            raise ValueError(f"unknown token status {status!r}")
        await self._update(token_id, "status = %s, updated_at = %s", (status, now))

    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        await self._update(token_id, "keep_warm = %s, updated_at = %s", (bool(keep_warm), now))

    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        """``UPDATE tokens SET <assignments>`` for one entry; EntryGone when it does not exist."""
        sql = f"UPDATE tokens SET {assignments} WHERE id = %s"  # noqa: S608

        async def work(conn: Conn) -> None:
            if (await conn.execute(sql, (*params, token_id))).rowcount == 0:
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
                (PURGEABLE_STATUSES, before, limit),
            )
            if ids:
                await conn.execute("DELETE FROM audit WHERE token_id = ANY(%s)", (ids,))
            return ids

        return await self.database.run(work)

    # --- audit --------------------------------------------------------------------------------
    async def add_audit(self, event: AuditEvent) -> None:
        retention = self.audit_retention
        await self.database.run(lambda conn: audit_rows.insert(conn, event, retention))

    async def list_audit(self, token_id: str, *, limit: int = 100) -> builtins.list[AuditEvent]:
        if limit < 0:
            raise ValueError("limit must not be negative")
        return await self.database.read(lambda conn: audit_rows.newest(conn, token_id, limit))
