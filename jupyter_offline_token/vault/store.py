"""SQLite vault: token entries with their encrypted refresh token and consent secrets, plus audit.

Every public method is a coroutine that runs its SQLite work (and crypto) on the vault's own
single worker thread, never on the event loop. Timestamps are epoch seconds (float).

Several processes may share one vault file: read-modify-write operations run in
``BEGIN IMMEDIATE`` transactions, so the refresh lease is exclusive across processes too.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DecryptionError, TooManyPendingConsents, VaultError
from ..models import (
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
    TokenRecord,
)
from ..paging import Cursor, Page, check_limit
from .crypto import KeyRing

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_FILE_NAME = "vault.key"
REFRESH_STATES = (IDLE, SCHEDULED, RETRYING, REFRESH_FAILED)
_KEY_SETTINGS = (
    "OfflineTokenApp.encryption_keys (or the JUPYTER_OFFLINE_TOKEN_KEYS environment variable)"
)

# A migration is an SQL script or a function given the connection; each runs in its own
# transaction together with the bump of ``PRAGMA user_version``. Functions must not commit.
Migration = str | Callable[[sqlite3.Connection], None]

_MIGRATION_1 = """
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    task_id TEXT,
    subject TEXT,
    consent_expires_at REAL,
    return_to TEXT,
    last_refresh_at REAL,
    refresh_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    refresh_state TEXT NOT NULL DEFAULT 'idle',
    next_attempt_at REAL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    idle_expires_at REAL,
    keep_warm INTEGER NOT NULL DEFAULT 0,
    state_hash TEXT UNIQUE,
    consent_ct BLOB,
    consent_nonce BLOB,
    consent_key_id TEXT,
    secret_ct BLOB,
    secret_nonce BLOB,
    secret_key_id TEXT,
    lease_holder TEXT,
    lease_expires_at REAL
);
CREATE INDEX tokens_owner_created ON tokens (owner, created_at);
CREATE INDEX tokens_status ON tokens (status);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    owner TEXT,
    token_id TEXT,
    task_id TEXT,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_token ON audit (token_id, id);
"""

# Tasks (issue 4): long-running work linked to an entry. ``spec`` is JSON (command argv,
# notebook path, parameters); ``runner`` names the server process supervising a running task;
# ``credential_hash`` is the SHA-256 of the task process's scoped credential, set only while the
# task runs. No foreign key: a task outlives its token's entry.
_MIGRATION_2 = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    persistent_token_id TEXT,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    queued_at REAL,
    runner TEXT,
    credential_hash TEXT UNIQUE
);
CREATE INDEX tasks_owner_created ON tasks (owner, created_at);
CREATE INDEX tasks_token ON tasks (persistent_token_id);
CREATE INDEX tasks_status ON tasks (status);
"""

# Listing the whole vault newest-first (admin views, the benchmark) sorted every row without it.
_MIGRATION_3 = "CREATE INDEX IF NOT EXISTS tokens_created ON tokens (created_at)"

# The entries health lists: they need someone to act (or are being retried). Written once: the
# partial index below is used only by queries whose WHERE repeats this exact term.
ATTENTION = "(status = 'failed' OR (status = 'active' AND refresh_state IN ('retrying', 'failed')))"
# Entries the retention purge deletes once unchanged for that long.
PURGEABLE_STATUSES = (EXPIRED, FAILED, REVOKED)

# Issue 9: nothing on a request path or in a sweep may cost what the whole vault costs.
# - token_counts: entries per (owner, status, refresh_state), kept by triggers in the same
#   transaction as every write, so health counts are a handful of rows however big the vault
#   (a GROUP BY over 100k entries of one owner took ~7 ms, 50x its cost at 1k).
# - tokens_attention: a partial index of the entries health lists (failed, retrying,
#   refresh-failed), so its page is a range scan of those alone, newest first.
# - (owner, status, created_at): status-filtered pages and the pending-consent cap's COUNT.
# - (status, updated_at) on tokens and tasks: the retention purge finds old rows by range.
_MIGRATION_4 = """
CREATE INDEX tokens_owner_status_created ON tokens (owner, status, created_at);
CREATE INDEX tokens_attention ON tokens (owner, created_at) WHERE {attention};
CREATE INDEX tokens_status_updated ON tokens (status, updated_at);
CREATE INDEX tasks_owner_status_created ON tasks (owner, status, created_at);
CREATE INDEX tasks_status_updated ON tasks (status, updated_at);
CREATE TABLE token_counts (
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    refresh_state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (owner, status, refresh_state)
) WITHOUT ROWID;
INSERT INTO token_counts (owner, status, refresh_state, n)
    SELECT owner, status, refresh_state, COUNT(*) FROM tokens GROUP BY owner, status, refresh_state;
CREATE TRIGGER tokens_count_insert AFTER INSERT ON tokens BEGIN
    INSERT INTO token_counts (owner, status, refresh_state, n)
        VALUES (NEW.owner, NEW.status, NEW.refresh_state, 1)
        ON CONFLICT (owner, status, refresh_state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tokens_count_delete AFTER DELETE ON tokens BEGIN
    UPDATE token_counts SET n = n - 1
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state;
    DELETE FROM token_counts
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state
        AND n <= 0;
END;
CREATE TRIGGER tokens_count_update AFTER UPDATE OF owner, status, refresh_state ON tokens
WHEN OLD.owner IS NOT NEW.owner OR OLD.status IS NOT NEW.status
    OR OLD.refresh_state IS NOT NEW.refresh_state
BEGIN
    UPDATE token_counts SET n = n - 1
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state;
    DELETE FROM token_counts
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state
        AND n <= 0;
    INSERT INTO token_counts (owner, status, refresh_state, n)
        VALUES (NEW.owner, NEW.status, NEW.refresh_state, 1)
        ON CONFLICT (owner, status, refresh_state) DO UPDATE SET n = n + 1;
END;
""".replace("{attention}", ATTENTION)

MIGRATIONS: list[Migration] = [_MIGRATION_1, _MIGRATION_2, _MIGRATION_3, _MIGRATION_4]
SCHEMA_VERSION = len(MIGRATIONS)

_RECORD_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, task_id, "
    "subject, consent_expires_at, return_to, last_refresh_at, refresh_count, last_error, "
    "refresh_state, next_attempt_at, retry_count, idle_expires_at, keep_warm, "
    "secret_ct IS NOT NULL AS has_secret"
)


def _insert_audit(conn: sqlite3.Connection, event: AuditEvent, retention: int) -> None:
    """Append one audit event and drop that token's events beyond ``retention``."""
    conn.execute(
        "INSERT INTO audit (ts, owner, token_id, task_id, action, result, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.ts,
            event.owner,
            event.token_id,
            event.task_id,
            event.action,
            event.result,
            event.detail,
        ),
    )
    conn.execute(
        "DELETE FROM audit WHERE token_id IS ? AND id NOT IN "
        "(SELECT id FROM audit WHERE token_id IS ? ORDER BY id DESC LIMIT ?)",
        (event.token_id, event.token_id, retention),
    )


def _take_lease(
    conn: sqlite3.Connection, token_id: str, holder: str, ttl: float, now: float
) -> bool:
    """Inside a write transaction: take the refresh lease if it is free, expired or ours."""
    row = conn.execute(
        "SELECT lease_holder, lease_expires_at FROM tokens WHERE id = ?", (token_id,)
    ).fetchone()
    if row is None:
        raise KeyError(token_id)
    current, expires = row["lease_holder"], row["lease_expires_at"]
    if not (current is None or current == holder or expires is None or expires <= now):
        return False
    conn.execute(
        "UPDATE tokens SET lease_holder = ?, lease_expires_at = ? WHERE id = ?",
        (holder, now + ttl, token_id),
    )
    return True


def _refresh_aad(token_id: str, owner: str) -> bytes:
    return f"token:{token_id}:{owner}:refresh".encode()


def _consent_aad(token_id: str, owner: str) -> bytes:
    return f"token:{token_id}:{owner}:consent".encode()


def _record(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        owner=row["owner"],
        issuer=row["issuer"],
        client_id=row["client_id"],
        status=row["status"],
        scopes=row["scopes"].split(),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        label=row["label"],
        task_id=row["task_id"],
        subject=row["subject"],
        consent_expires_at=row["consent_expires_at"],
        return_to=row["return_to"],
        last_refresh_at=row["last_refresh_at"],
        refresh_count=row["refresh_count"],
        last_error=row["last_error"],
        refresh_state=row["refresh_state"],
        next_attempt_at=row["next_attempt_at"],
        retry_count=row["retry_count"],
        idle_expires_at=row["idle_expires_at"],
        keep_warm=bool(row["keep_warm"]),
        has_secret=bool(row["has_secret"]),
    )


def _scopes_text(scopes: builtins.list[str]) -> str:
    for scope in scopes:
        if not isinstance(scope, str) or not scope or scope != "".join(scope.split()):
            raise ValueError("each scope must be a non-empty string without whitespace")
    return " ".join(scopes)


def _split_statements(script: str) -> Iterator[str]:
    """Cut an SQL script into complete statements (``executescript`` would commit early)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError("incomplete SQL statement at the end of a migration script")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (take the write lock first, so read-modify-write is atomic across
    processes) ... ``COMMIT``; ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` when it grants more than that."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(mode)


class Vault:
    """The encrypted token store, one SQLite file shared by every process of the same user."""

    keyring: KeyRing
    path: Path

    def __init__(
        self,
        path: Path,
        *,
        encryption_keys: builtins.list[str] | None = None,
        audit_retention: int = 200,
        max_pending_consents: int | None = None,
    ) -> None:
        """``encryption_keys`` empty/None: use the key file ``<vault dir>/vault.key``.
        ``max_pending_consents``: unexpired pending entries one owner may have (None: no cap)."""
        if isinstance(audit_retention, bool) or not isinstance(audit_retention, int):
            raise ValueError("audit_retention must be an integer")
        if audit_retention < 1:
            raise ValueError("audit_retention must be at least 1")
        if max_pending_consents is not None and (
            isinstance(max_pending_consents, bool)
            or not isinstance(max_pending_consents, int)
            or max_pending_consents < 1
        ):
            raise ValueError("max_pending_consents must be a positive integer or None")
        self.path = Path(path)
        self.audit_retention = audit_retention
        self.max_pending_consents = max_pending_consents
        self._encryption_keys = builtins.list(encryption_keys or [])
        self._conn: sqlite3.Connection | None = None
        self._lease_conn: sqlite3.Connection | None = None  # worker thread only
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-token-vault")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._conn is not None else "new")
        keyring = getattr(self, "keyring", None)
        key_ids = sorted(keyring.key_ids) if keyring is not None else []
        return f"Vault(path={str(self.path)!r}, state={state}, key_ids={key_ids!r})"

    @property
    def key_file(self) -> Path:
        """Where the generated key lives when no key is configured."""
        return self.path.parent / KEY_FILE_NAME

    # --- worker plumbing ----------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the vault's worker thread (for stores that share this
        database, such as the task store). sqlite3 errors become VaultError; ``fn`` must
        manage its own transaction."""
        return await self._run(fn, *args)

    def _decrypt(self, key_id: str, nonce: bytes, ct: bytes, aad: bytes, *, what: str) -> bytes:
        """Decrypt on the worker thread; a failure names the entry, never the data."""
        try:
            return self.keyring.decrypt(key_id, nonce, ct, aad)
        except DecryptionError as exc:
            raise DecryptionError(f"{what} cannot be decrypted: {exc}") from None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the worker thread; sqlite3 errors become VaultError."""
        if self._closed:
            raise VaultError("the vault is closed")
        conn = self._conn
        if conn is None:
            raise VaultError("the vault is not open: call Vault.open() first")
        loop = asyncio.get_running_loop()
        # Jobs queued before close() still run: close() queues the connection's close after them.
        return await loop.run_in_executor(
            self._executor, functools.partial(self._call, conn, fn, *args)
        )

    def _call(self, conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise VaultError(f"vault database error ({self.path}): {exc}") from exc
        finally:
            if conn.in_transaction:  # e.g. a failed COMMIT: never leave the lock held
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the directory (0700) and database (0600), WAL, synchronous=FULL,
        busy_timeout; apply forward migrations up to SCHEMA_VERSION; refuse a newer schema
        (VaultError naming the file and both versions, telling the admin to upgrade the
        package). Build the key ring: configured keys, else the key file (created 0600 when
        missing and the vault holds no ciphertext; VaultError naming ``encryption_keys`` when it
        is missing but ciphertexts exist). VaultError naming
        ``OfflineTokenApp.encryption_keys`` / ``JUPYTER_OFFLINE_TOKEN_KEYS`` when any stored
        ciphertext uses a key id the ring lacks."""
        async with self._open_lock:  # concurrent callers share one connection
            if self._closed:
                raise VaultError("the vault is closed")
            if self._conn is not None:
                return
            loop = asyncio.get_running_loop()
            conn, keyring = await loop.run_in_executor(self._executor, self._open_sync)
            self.keyring = keyring
            self._conn = conn

    def _open_sync(self) -> tuple[sqlite3.Connection, KeyRing]:
        self._prepare_files()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise VaultError(f"cannot open the vault database {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            self._configure(conn)
            self._migrate(conn)
            keyring = self._load_keyring(conn)
            self._check_key_ids(conn, keyring)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    _tighten(side, 0o600)
        except sqlite3.Error as exc:
            conn.close()
            raise VaultError(f"cannot open the vault database {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn, keyring

    def _prepare_files(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _tighten(directory, 0o700)
            try:
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
                fd = os.open(self.path, flags, 0o600)
            except FileExistsError:
                _tighten(self.path, 0o600)
            else:
                try:
                    if hasattr(os, "fchmod"):
                        os.fchmod(fd, 0o600)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise VaultError(
                f"cannot prepare the vault at {self.path} "
                f"({exc.strerror or type(exc).__name__}); check OfflineTokenApp.vault_path"
            ) from exc

    def _configure(self, conn: sqlite3.Connection) -> None:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("The vault %s could not use WAL (journal mode %s)", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")

    def _too_new(self, found: int, known: int) -> VaultError:
        return VaultError(
            f"The offline-token vault {self.path} has schema revision {found} but this "
            f"jupyter-offline-token understands up to {known}: upgrade the package "
            "(pip install -U jupyter-offline-token) or point OfflineTokenApp.vault_path elsewhere"
        )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = builtins.list(MIGRATIONS)
        known = len(migrations)
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > known:
            raise self._too_new(found, known)
        for index in range(found, known):
            with _transaction(conn):
                # Re-read under the write lock: another process may have migrated meanwhile.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current > known:
                    raise self._too_new(current, known)
                if current > index:
                    continue
                migration = migrations[index]
                if isinstance(migration, str):
                    for statement in _split_statements(migration):
                        conn.execute(statement)
                else:
                    migration(conn)
                conn.execute(f"PRAGMA user_version = {index + 1:d}")
            log.info("Vault %s migrated to schema revision %d", self.path, index + 1)

    def _load_keyring(self, conn: sqlite3.Connection) -> KeyRing:
        if self._encryption_keys:
            try:
                return KeyRing.from_config(self._encryption_keys)
            except ValueError as exc:
                raise VaultError(f"{exc}; check {_KEY_SETTINGS}") from None
        key_file = self.key_file
        # Under the write lock, so concurrent first starts agree on one key and no other
        # process can store ciphertext between the check and the creation.
        with _transaction(conn):
            if key_file.exists():
                return KeyRing.load_file(key_file)
            stored = conn.execute(
                "SELECT COUNT(*) FROM tokens WHERE consent_ct IS NOT NULL OR secret_ct IS NOT NULL"
            ).fetchone()[0]
            if stored:
                raise VaultError(
                    f"The vault key file {key_file} is missing but {stored} vault entries hold "
                    f"ciphertext: restore the key file, or set {_KEY_SETTINGS} to the key(s) "
                    "they were encrypted with"
                )
            try:
                keyring = KeyRing.create_file(key_file)
            except OSError as exc:
                raise VaultError(
                    f"cannot create the vault key file {key_file} "
                    f"({exc.strerror or type(exc).__name__})"
                ) from exc
            log.info("Generated a new vault key file %s (mode 0600); back it up", key_file)
            return keyring

    def _check_key_ids(self, conn: sqlite3.Connection, keyring: KeyRing) -> None:
        used: set[str] = set()
        for (key_id,) in conn.execute(
            "SELECT consent_key_id FROM tokens WHERE consent_key_id IS NOT NULL "
            "UNION SELECT secret_key_id FROM tokens WHERE secret_key_id IS NOT NULL"
        ):
            used.add(key_id)
        missing = sorted(used - keyring.key_ids)
        if not missing:
            return
        marks = ", ".join("?" for _ in missing)
        affected = conn.execute(
            f"SELECT COUNT(*) FROM tokens WHERE consent_key_id IN ({marks}) "  # noqa: S608
            f"OR secret_key_id IN ({marks})",
            [*missing, *missing],
        ).fetchone()[0]
        raise VaultError(
            f"{affected} vault entries in {self.path} are encrypted with key id(s) "
            f"{', '.join(missing)} that the key ring (key ids "
            f"{', '.join(sorted(keyring.key_ids))}) lacks: set {_KEY_SETTINGS} to the new key "
            "first, followed by the key(s) used before"
        )

    async def close(self) -> None:
        """Close the connection on its own thread and stop the worker. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        lease_conn, self._lease_conn = self._lease_conn, None
        loop = asyncio.get_running_loop()
        for c in (lease_conn, conn):
            if c is not None:
                await loop.run_in_executor(self._executor, c.close)
        self._executor.shutdown(wait=True)

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
        """Insert a ``pending`` entry with a new UUID4 id; consent secrets encrypted."""
        scope_text = _scopes_text(scopes)
        if not state_hash:
            raise ValueError("state_hash must not be empty")
        token_id = str(uuid.uuid4())
        payload = json.dumps(
            {
                "code_verifier": secrets.code_verifier,
                "nonce": secrets.nonce,
                "redirect_uri": secrets.redirect_uri,
            }
        ).encode()

        def work(conn: sqlite3.Connection) -> TokenRecord:
            key_id, nonce, ct = self.keyring.encrypt(payload, _consent_aad(token_id, owner))
            try:
                with _transaction(conn):
                    # Counted under the write lock: concurrent requests cannot pass the cap.
                    self._check_pending_cap(conn, owner, now)
                    conn.execute(
                        "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, "
                        "created_at, updated_at, label, task_id, consent_expires_at, return_to, "
                        "state_hash, consent_ct, consent_nonce, consent_key_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            token_id,
                            owner,
                            issuer,
                            client_id,
                            PENDING,
                            scope_text,
                            now,
                            now,
                            label,
                            task_id,
                            consent_expires_at,
                            return_to,
                            state_hash,
                            ct,
                            nonce,
                            key_id,
                        ),
                    )
            except sqlite3.IntegrityError:
                raise VaultError("a consent with this state already exists") from None
            return self._get(conn, token_id, required=True)

        return await self._run(work)

    def _check_pending_cap(self, conn: sqlite3.Connection, owner: str, now: float) -> None:
        """TooManyPendingConsents when ``owner`` has ``max_pending_consents`` unexpired pending
        entries (an indexed COUNT of at most cap + not yet swept rows, never a list)."""
        cap = self.max_pending_consents
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

    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        def work(conn: sqlite3.Connection) -> TokenRecord | None:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM tokens WHERE state_hash = ?",  # noqa: S608
                (state_hash,),
            ).fetchone()
            return _record(row) if row is not None else None

        return await self._run(work)

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        """Atomically take the consent secrets (single use): decrypt, erase them from the row
        and return them; None when already consumed. ``state_hash`` stays so a replay is
        recognised as such. DecryptionError when they cannot be decrypted (nothing erased)."""

        def work(conn: sqlite3.Connection) -> ConsentSecrets | None:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT owner, consent_ct, consent_nonce, consent_key_id FROM tokens "
                    "WHERE id = ?",
                    (token_id,),
                ).fetchone()
                if row is None:
                    raise KeyError(token_id)
                if row["consent_ct"] is None:
                    return None
                plain = self._decrypt(
                    row["consent_key_id"],
                    row["consent_nonce"],
                    row["consent_ct"],
                    _consent_aad(token_id, row["owner"]),
                    what=f"the consent secrets of vault entry {token_id}",
                )
                conn.execute(
                    "UPDATE tokens SET consent_ct = NULL, consent_nonce = NULL, "
                    "consent_key_id = NULL WHERE id = ?",
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
                raise VaultError(
                    f"the consent secrets of vault entry {token_id} are malformed"
                ) from None

        return await self._run(work)

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
        """Store the encrypted refresh token and mark the entry ``active`` (any consent secrets
        left are erased; refresh bookkeeping starts afresh)."""
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ValueError("refresh_token must be a non-empty string")
        scope_text = _scopes_text(scopes)
        secret = refresh_token.encode()

        def work(conn: sqlite3.Connection) -> TokenRecord:
            with _transaction(conn):
                owner = self._owner(conn, token_id)
                key_id, nonce, ct = self.keyring.encrypt(secret, _refresh_aad(token_id, owner))
                conn.execute(
                    "UPDATE tokens SET status = 'active', secret_ct = ?, secret_nonce = ?, "
                    "secret_key_id = ?, subject = ?, scopes = ?, idle_expires_at = ?, "
                    "updated_at = ?, refresh_state = 'idle', next_attempt_at = NULL, "
                    "retry_count = 0, last_error = NULL, consent_ct = NULL, consent_nonce = NULL, "
                    "consent_key_id = NULL WHERE id = ?",
                    (ct, nonce, key_id, subject, scope_text, idle_expires_at, now, token_id),
                )
                return self._get(conn, token_id, required=True)

        return await self._run(work)

    async def expire_pending(self, now: float) -> builtins.list[str]:
        """Mark ``pending`` entries at or past ``consent_expires_at`` as ``expired``; erase
        their consent secrets; return their ids."""

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            with _transaction(conn):
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

        return await self._run(work)

    # --- reading ------------------------------------------------------------------------------
    @staticmethod
    def _get(conn: sqlite3.Connection, token_id: str, *, required: bool = False) -> Any:
        row = conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM tokens WHERE id = ?",  # noqa: S608
            (token_id,),
        ).fetchone()
        if row is None:
            if required:
                raise KeyError(token_id)
            return None
        return _record(row)

    @staticmethod
    def _owner(conn: sqlite3.Connection, token_id: str) -> str:
        row = conn.execute("SELECT owner FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise KeyError(token_id)
        return str(row["owner"])

    async def get(self, token_id: str) -> TokenRecord | None:
        record: TokenRecord | None = await self._run(self._get, token_id)
        return record

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[TokenRecord]:
        """Newest first (creation time, then insertion order)."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if offset < 0:
            raise ValueError("offset must not be negative")
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT {_RECORD_COLUMNS} FROM tokens"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]

        def work(conn: sqlite3.Connection) -> builtins.list[TokenRecord]:
            return [_record(row) for row in conn.execute(sql, params)]

        return await self._run(work)

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
        attention: bool = False,
    ) -> Page[TokenRecord]:
        """One page, newest first (creation time, then insertion order), after ``cursor``.

        Keyset pagination over an index: every page costs the same however deep it is.
        ``attention``: only entries health lists (failed, retrying, refresh-failed).
        """
        check_limit(limit)
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if attention:
            where.append(ATTENTION)
        if cursor is not None:
            where.append("(created_at, rowid) < (?, ?)")
            params += [cursor.created_at, cursor.rowid]
        sql = f"SELECT {_RECORD_COLUMNS}, created_at AS _c, rowid AS _r FROM tokens"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(limit + 1)

        def work(conn: sqlite3.Connection) -> Page[TokenRecord]:
            rows = conn.execute(sql, params).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            after = Cursor(rows[-1]["_c"], rows[-1]["_r"]).encode() if more else None
            return Page([_record(row) for row in rows], after)

        return await self._run(work)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Entries per status; every known status is present (0 when none). Read from
        ``token_counts``: a few rows per owner, whatever the number of entries."""

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

        return await self._run(work)

    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        """``{(status, refresh_state): entries}`` of one owner (what health levels derive from),
        from ``token_counts``."""

        def work(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute(
                "SELECT status, refresh_state, n FROM token_counts WHERE owner = ? AND n > 0",
                (owner,),
            )
            return {(row["status"], row["refresh_state"]): row["n"] for row in rows}

        return await self._run(work)

    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """Delete up to ``limit`` expired, failed or revoked entries unchanged since ``before``,
        and their audit events, in one short transaction; return their ids.

        Callers loop in batches: each call holds the write lock only for ``limit`` rows.
        """
        check_limit(limit)
        marks = ", ".join("?" for _ in PURGEABLE_STATUSES)

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            with _transaction(conn):
                ids = [
                    row["id"]
                    for row in conn.execute(
                        f"SELECT id FROM tokens WHERE status IN ({marks}) "  # noqa: S608
                        "AND updated_at < ? LIMIT ?",
                        (*PURGEABLE_STATUSES, before, limit),
                    )
                ]
                conn.executemany("DELETE FROM tokens WHERE id = ?", [(i,) for i in ids])
                conn.executemany("DELETE FROM audit WHERE token_id = ?", [(i,) for i in ids])
            if ids:
                # As in delete(): copy the zeroed cells into the main file (never waits).
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return ids

        return await self._run(work)

    async def read_refresh_token(self, token_id: str) -> str:
        """Decrypt the stored refresh token. DecryptionError on a bad key or tampering;
        KeyError when the entry has none."""

        def work(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT owner, secret_ct, secret_nonce, secret_key_id FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
            if row is None or row["secret_ct"] is None:
                raise KeyError(token_id)
            plain = self._decrypt(
                row["secret_key_id"],
                row["secret_nonce"],
                row["secret_ct"],
                _refresh_aad(token_id, row["owner"]),
                what=f"the refresh token of vault entry {token_id}",
            )
            return plain.decode()

        return await self._run(work)

    # --- refresh bookkeeping -------------------------------------------------------------------
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        """Take the cross-process refresh lease (BEGIN IMMEDIATE): True when it was free,
        expired or already ours (then extended to ``now + ttl``)."""
        if not holder:
            raise ValueError("holder must not be empty")
        if not ttl > 0:
            raise ValueError("ttl must be positive")

        def work(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return _take_lease(conn, token_id, holder, ttl, now)

        return await self._run(work)

    def _lease_connection(self) -> sqlite3.Connection:
        """A second connection, on the worker thread, for lease transactions only.

        A lease needs no durability (after a crash it is moot), so its commit skips the fsync
        that synchronous=FULL costs every other write: in WAL mode synchronous=NORMAL still
        makes it visible to every process at once, and the next FULL commit syncs it anyway.
        """
        if self._lease_conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._lease_conn = conn
        return self._lease_conn

    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> tuple[TokenRecord, str | None] | None:
        """Take the refresh lease and read the entry and its refresh token in one transaction.

        None while another holder's lease is unexpired. The refresh token is None when the
        entry has none. KeyError for an unknown id; DecryptionError (the lease then held: the
        caller marks the entry failed, which releases it) when the ciphertext is bad.
        """
        if not holder:
            raise ValueError("holder must not be empty")
        if not ttl > 0:
            raise ValueError("ttl must be positive")

        def work(_: sqlite3.Connection) -> tuple[TokenRecord, str | None] | None:
            conn = self._lease_connection()
            try:
                with _transaction(conn):
                    if not _take_lease(conn, token_id, holder, ttl, now):
                        return None
                    record: TokenRecord = self._get(conn, token_id, required=True)
                    secret = conn.execute(
                        "SELECT secret_ct, secret_nonce, secret_key_id FROM tokens WHERE id = ?",
                        (token_id,),
                    ).fetchone()
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
            if secret["secret_ct"] is None:
                return record, None
            plain = self._decrypt(
                secret["secret_key_id"],
                secret["secret_nonce"],
                secret["secret_ct"],
                _refresh_aad(token_id, record.owner),
                what=f"the refresh token of vault entry {token_id}",
            )
            return record, plain.decode()

        return await self._run(work)

    async def warm_ids(self) -> builtins.list[str]:
        """Ids of active entries that asked to be kept warm (what a restart resumes)."""

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute(
                "SELECT id FROM tokens WHERE status = 'active' AND keep_warm = 1"
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._run(work)

    async def stale_ids(self, before: float, *, limit: int = 1000) -> builtins.list[str]:
        """Ids of active entries not refreshed since ``before`` (oldest first): keep-alive."""

        def work(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute(
                "SELECT id FROM tokens WHERE status = 'active' "
                "AND COALESCE(last_refresh_at, created_at) < ? "
                "ORDER BY COALESCE(last_refresh_at, created_at) LIMIT ?",
                (before, limit),
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._run(work)

    async def release_lease(self, token_id: str, holder: str) -> None:
        """Give the lease up if ``holder`` has it (a no-op otherwise)."""

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                self._owner(conn, token_id)
                conn.execute(
                    "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL "
                    "WHERE id = ? AND lease_holder = ?",
                    (token_id, holder),
                )

        await self._run(work)

    async def record_refresh(
        self,
        token_id: str,
        *,
        new_refresh_token: str | None,
        idle_expires_at: float | None,
        now: float,
        holder: str | None = None,
        audit: AuditEvent | None = None,
    ) -> TokenRecord:
        """One durable transaction: store the rotated refresh token (if any; else keep the
        old one), last_refresh_at=now, refresh_count+1, last_error=NULL, retry_count=0,
        refresh_state='idle', next_attempt_at=NULL, release ``holder``'s lease, and append
        ``audit`` (one commit instead of two on the refresh path).

        VaultError when ``holder`` is given but no longer holds the lease: a worker that lost
        it must not overwrite a newer refresh token. Returns after COMMIT (synchronous=FULL).
        """
        if new_refresh_token is not None and (
            not isinstance(new_refresh_token, str) or not new_refresh_token
        ):
            raise ValueError("new_refresh_token must be a non-empty string or None")
        secret = new_refresh_token.encode() if new_refresh_token is not None else None

        def work(conn: sqlite3.Connection) -> TokenRecord:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT owner, lease_holder FROM tokens WHERE id = ?", (token_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(token_id)
                if holder is not None and row["lease_holder"] != holder:
                    raise VaultError(
                        f"the refresh lease of vault entry {token_id} is no longer held by "
                        "this worker; the refresh result was not stored"
                    )
                if secret is not None:
                    key_id, nonce, ct = self.keyring.encrypt(
                        secret, _refresh_aad(token_id, row["owner"])
                    )
                    conn.execute(
                        "UPDATE tokens SET secret_ct = ?, secret_nonce = ?, secret_key_id = ? "
                        "WHERE id = ?",
                        (ct, nonce, key_id, token_id),
                    )
                conn.execute(
                    "UPDATE tokens SET last_refresh_at = ?, refresh_count = refresh_count + 1, "
                    "last_error = NULL, retry_count = 0, refresh_state = 'idle', "
                    "next_attempt_at = NULL, idle_expires_at = ?, updated_at = ? WHERE id = ?",
                    (now, idle_expires_at, now, token_id),
                )
                if holder is not None:
                    conn.execute(
                        "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL "
                        "WHERE id = ?",
                        (token_id,),
                    )
                if audit is not None:
                    _insert_audit(conn, audit, self.audit_retention)
                return self._get(conn, token_id, required=True)

        return await self._run(work)

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

    async def mark_failed(self, token_id: str, *, error: str, now: float) -> None:
        """status='failed', refresh_state='failed', last_error=error; the ciphertext is kept
        (an admin may still fix a key), the lease released."""
        await self._update(
            token_id,
            "status = 'failed', refresh_state = 'failed', last_error = ?, "
            "next_attempt_at = NULL, lease_holder = NULL, lease_expires_at = NULL, "
            "updated_at = ?",
            (error, now),
        )

    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        if status not in TOKEN_STATUSES:
            raise ValueError(f"unknown token status {status!r}")
        await self._update(token_id, "status = ?, updated_at = ?", (status, now))

    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        await self._update(token_id, "keep_warm = ?, updated_at = ?", (1 if keep_warm else 0, now))

    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        """``UPDATE tokens SET <assignments>`` for one entry; KeyError when it does not exist."""
        sql = f"UPDATE tokens SET {assignments} WHERE id = ?"  # noqa: S608

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if conn.execute(sql, (*params, token_id)).rowcount == 0:
                    raise KeyError(token_id)

        await self._run(work)

    async def delete(self, token_id: str) -> bool:
        """Delete the entry (and erase its ciphertext); True when it existed."""

        def work(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                existed = conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount
            if existed:
                # secure_delete zeroes the freed cells; checkpointing copies that into the main
                # file and truncates the WAL, so older page images do not linger there either.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return bool(existed)

        return await self._run(work)

    # --- audit --------------------------------------------------------------------------------
    async def add_audit(self, event: AuditEvent) -> None:
        """Append; keep at most ``audit_retention`` newest events per token (events without a
        token form one group of their own)."""
        retention = self.audit_retention

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _insert_audit(conn, event, retention)

        await self._run(work)

    async def list_audit(self, token_id: str, *, limit: int = 100) -> builtins.list[AuditEvent]:
        """Newest first."""
        if limit < 0:
            raise ValueError("limit must not be negative")

        def work(conn: sqlite3.Connection) -> builtins.list[AuditEvent]:
            rows = conn.execute(
                "SELECT id, ts, owner, token_id, task_id, action, result, detail FROM audit "
                "WHERE token_id = ? ORDER BY id DESC LIMIT ?",
                (token_id, limit),
            )
            return [
                AuditEvent(
                    ts=row["ts"],
                    action=row["action"],
                    result=row["result"],
                    token_id=row["token_id"],
                    task_id=row["task_id"],
                    owner=row["owner"],
                    detail=row["detail"],
                    id=row["id"],
                )
                for row in rows
            ]

        return await self._run(work)
