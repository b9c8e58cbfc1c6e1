"""One PostgreSQL vault: its connection pool, its schema, its key ring and its transactions.

psycopg 3 with ``psycopg_pool.AsyncConnectionPool``: an async driver, so no statement blocks the
event loop, and the one driver that is both maintained by PostgreSQL people and typed. Every
connection runs with ``synchronous_commit = on``: a COMMIT returns once it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ...crypto import KeyRing
from ...errors import DecryptionError, VaultError
from . import schema
from .urls import URL_SETTING, redact_url, scrub

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]

KEY_SETTINGS = (
    "OfflineTokenApp.encryption_keys (or the JUPYTER_OFFLINE_TOKEN_KEYS environment variable, "
    "or OfflineTokenApp.encryption_keys_file)"
)
# pg_advisory_xact_lock(namespace, key) namespaces of this package (any fixed number).
LOCK_NAMESPACE = 1785688001
LOCK_MIGRATE = 2
LOCK_PENDING_CAP = 1785688002  # with hashtext(owner) as the second key
_CONNECT_TIMEOUT = 10
_RETRIES = 4  # deadlocks and serialization failures: the transaction is run again


class Database:
    """The pool the PostgreSQL token and task stores share."""

    keyring: KeyRing

    def __init__(self, url: str, encryption_keys: list[str] | None, pool_size: int) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        self._encryption_keys = list(encryption_keys or [])
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._closed = False
        self._open_lock = asyncio.Lock()

    @property
    def state(self) -> str:
        return "closed" if self._closed else ("open" if self._pool is not None else "new")

    def error(self, what: str, exc: BaseException) -> VaultError:
        """A VaultError naming the database (never its password) and the setting."""
        detail = scrub(str(exc).strip() or type(exc).__name__, self.url)
        return VaultError(f"{what} ({self.shown_url}): {detail}; check {URL_SETTING}")

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate, load and check the key ring, then open the pool. Concurrent
        callers share it; a second call is a no-op."""
        async with self._open_lock:
            if self._closed:
                raise VaultError("the vault is closed")
            if self._pool is not None:
                return
            keyring = self._load_keyring()
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=_CONNECT_TIMEOUT,
                    row_factory=dict_row,
                )
            except (psycopg.Error, ValueError) as exc:
                raise self.error("cannot connect to the vault database", exc) from None
            try:
                await self._migrate(conn)
                await self._check_key_ids(conn, keyring)
            except psycopg.Error as exc:
                raise self.error("cannot prepare the vault database", exc) from None
            finally:
                await conn.close()
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                kwargs={"autocommit": True, "row_factory": dict_row},
                configure=_configure,
                # A connection idle for a while is checked (one empty query) at checkout: one
                # the server dropped (a restart, a failover, an idle-connection killer) is
                # replaced instead of failing a request. A busy one is not (a round trip on every
                # call of the refresh path); if it died meanwhile, the first statement fails
                # before anything ran and the call is made again on a fresh connection.
                check=_check_if_idle,
                open=False,
                name="offline-token-vault",
            )
            try:
                await pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
            except Exception as exc:
                await pool.close()
                raise self.error("cannot connect to the vault database", exc) from None
            self.keyring = keyring
            self._pool = pool

    def _load_keyring(self) -> KeyRing:
        if not self._encryption_keys:
            raise VaultError(
                "no encryption key is configured for the PostgreSQL vault "
                f"({self.shown_url}): set {KEY_SETTINGS}; a PostgreSQL vault never generates "
                "a key file (generate a key with `jupyter-offline-token generate-key`)"
            )
        try:
            return KeyRing.from_config(self._encryption_keys)
        except ValueError as exc:
            raise VaultError(f"{exc}; check {KEY_SETTINGS}") from None

    def _too_new(self, found: int, known: int) -> VaultError:
        return VaultError(
            f"The offline-token vault database {self.shown_url} has schema revision {found} but "
            f"this jupyter-offline-token understands up to {known}: upgrade the package "
            f"(pip install -U jupyter-offline-token) or point {URL_SETTING} elsewhere"
        )

    async def _migrate(self, conn: Conn) -> None:
        """Apply the missing revisions in one transaction under an advisory lock (concurrent
        openers wait, then find the work done); refuse a database newer than this package."""
        known = schema.SCHEMA_VERSION
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, LOCK_MIGRATE)
            )
            await conn.execute("CREATE TABLE IF NOT EXISTS jot_schema (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT MAX(version) AS v FROM jot_schema")).fetchone()
            found = int(row["v"]) if row and row["v"] is not None else 0
            if found > known:
                raise self._too_new(found, known)
            for index in range(found, known):
                await conn.execute(schema.MIGRATIONS[index].encode())
                await conn.execute("INSERT INTO jot_schema (version) VALUES (%s)", (index + 1,))
                log.info("Vault %s migrated to schema revision %d", self.shown_url, index + 1)

    async def _check_key_ids(self, conn: Conn, keyring: KeyRing) -> None:
        """VaultError naming ``encryption_keys`` when a stored ciphertext uses a key id the
        ring lacks (a wrong key is found at start, not at the first refresh)."""
        ring = sorted(keyring.key_ids)
        cur = await conn.execute(
            "SELECT key_id, COUNT(*) AS n FROM ("
            " SELECT consent_key_id AS key_id FROM tokens WHERE consent_key_id IS NOT NULL"
            " UNION ALL SELECT secret_key_id FROM tokens WHERE secret_key_id IS NOT NULL"
            ") used WHERE NOT (key_id = ANY(%s)) GROUP BY key_id ORDER BY key_id",
            (ring,),
        )
        missing = await cur.fetchall()
        if not missing:
            return
        affected = sum(int(row["n"]) for row in missing)
        raise VaultError(
            f"{affected} encrypted values in the vault database {self.shown_url} use key id(s) "
            f"{', '.join(row['key_id'] for row in missing)} that the key ring (key ids "
            f"{', '.join(ring)}) lacks: set {KEY_SETTINGS} to the new key first, followed by "
            "the key(s) used before"
        )

    async def close(self) -> None:
        """Close the pool; safe twice."""
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # --- work ---------------------------------------------------------------------------------
    def check_usable(self) -> None:
        """VaultError unless open."""
        self._require_pool()

    def _require_pool(self) -> AsyncConnectionPool[Conn]:
        if self._closed:
            raise VaultError("the vault is closed")
        if self._pool is None:
            raise VaultError("the vault is not open: call open() first")
        return self._pool

    async def run(
        self, fn: Callable[[Conn], Awaitable[T]], *, durable: bool = True, retry: bool = True
    ) -> T:
        """Run ``fn(conn)`` in one transaction on a pooled connection; COMMIT when it returns.
        A deadlock or serialization failure runs it again (``fn`` must be repeatable);
        ``durable=False`` skips the wait for the WAL flush (leases: moot after a crash).
        psycopg errors become VaultError (the password never shown)."""
        pool = self._require_pool()
        attempts = _RETRIES if retry else 1
        attempt = dead = 0
        while True:
            attempt += 1
            try:
                async with pool.connection() as conn:
                    if not await _begin(conn, durable=durable):
                        _forget_use(conn)
                        dead += 1
                        if dead > self._pool_size:
                            raise psycopg.OperationalError("every pooled connection is dead")
                        attempt -= 1
                        continue  # dead before BEGIN ran: nothing happened, another connection
                    try:
                        result = await fn(conn)
                    except BaseException:
                        if not conn.closed:
                            with contextlib.suppress(psycopg.Error):
                                await conn.execute("ROLLBACK")
                        raise
                    await conn.execute("COMMIT")
                    return result
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                if attempt >= attempts:
                    raise self.error("vault database error", exc) from None
            except psycopg.Error as exc:  # psycopg_pool's PoolTimeout and PoolClosed too
                raise self.error("vault database error", exc) from None

    async def one(
        self, statement: str, params: Any, *, durable: bool = True
    ) -> dict[str, Any] | None:
        """One statement in a transaction of its own, sent with its BEGIN and COMMIT in one round
        trip (pipeline mode; the refresh path's statements); its first row, or None. A
        connection found dead is replaced and everything sent again, so ``statement`` must be
        safe to repeat (the lease for its holder; a refresh's record behind its lease check).
        Deadlocks are retried as in ``run``; psycopg errors become VaultError."""
        pool = self._require_pool()
        dead = deadlocks = 0
        while True:
            try:
                async with pool.connection() as conn:
                    try:
                        return await _pipelined(conn, statement, params, durable=durable)
                    except psycopg.OperationalError:
                        if not conn.closed or dead >= self._pool_size:
                            raise
                        dead += 1
                        _forget_use(conn)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                deadlocks += 1
                if deadlocks >= _RETRIES:
                    raise self.error("vault database error", exc) from None
            except psycopg.Error as exc:
                raise self.error("vault database error", exc) from None

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run a read of one statement, ``fn(conn)``, without BEGIN/COMMIT (autocommit: one
        round trip instead of three). psycopg errors become VaultError."""
        pool = self._require_pool()
        try:
            for attempt in (1, 2):
                async with pool.connection() as conn:
                    try:
                        return await fn(conn)
                    except psycopg.OperationalError:
                        # A read is repeatable: a connection that died while pooled is
                        # replaced and the read made once more.
                        if attempt == 2 or not conn.closed:
                            raise
                        _forget_use(conn)
            raise AssertionError("unreachable")
        except psycopg.Error as exc:
            raise self.error("vault database error", exc) from None

    def decrypt(self, key_id: str, nonce: bytes, ct: bytes, aad: bytes, *, what: str) -> bytes:
        """A failure names the entry, never the data."""
        try:
            return self.keyring.decrypt(key_id, bytes(nonce), bytes(ct), aad)
        except DecryptionError as exc:
            raise DecryptionError(f"{what} cannot be decrypted: {exc}") from None


# When each pooled connection last answered (by id: psycopg connections take no attributes).
_LAST_USED: dict[int, float] = {}
IDLE_CHECK_AFTER = 2.0  # seconds a pooled connection may sit unused before it is checked


async def _check_if_idle(conn: Conn) -> None:
    now = asyncio.get_running_loop().time()
    if now - _LAST_USED.get(id(conn), 0.0) > IDLE_CHECK_AFTER:
        await AsyncConnectionPool.check_connection(conn)
    _LAST_USED[id(conn)] = now


def _forget_use(conn: Conn) -> None:
    _LAST_USED.pop(id(conn), None)


async def _begin(conn: Conn, *, durable: bool) -> bool:
    """BEGIN (and, for a lease, no wait for the WAL flush) in one round trip; False when the
    connection turned out dead before anything ran (the caller takes another)."""
    try:
        await conn.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off")
    except psycopg.OperationalError:
        if conn.closed:
            return False
        raise
    return True


async def _pipelined(
    conn: Conn, statement: str, params: Any, *, durable: bool
) -> dict[str, Any] | None:
    async with conn.pipeline():
        await conn.execute("BEGIN")
        if not durable:
            await conn.execute("SET LOCAL synchronous_commit = off")
        cur = await conn.execute(statement, params)
        await conn.execute("COMMIT")
    return await cur.fetchone()


async def _configure(conn: Conn) -> None:
    await conn.execute("SET synchronous_commit = on")
