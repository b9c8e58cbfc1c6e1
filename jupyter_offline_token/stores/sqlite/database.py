"""One SQLite vault file: its connection, its worker thread, its schema and its key ring.

Every statement runs on one worker thread per process, never on the event loop. The file is WAL
with synchronous=FULL (a commit is durable when it returns); several processes may share it,
read-modify-write work runs in ``BEGIN IMMEDIATE`` transactions (see ``sql.transaction``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ...crypto import KeyRing
from ...errors import DecryptionError, VaultError
from . import keys, schema
from .sql import split_statements, transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_FILE_NAME = "vault.key"


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` when it grants more than that."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(mode)


class Database:
    """The vault file the SQLite token and task stores share (one connection, one thread)."""

    keyring: KeyRing

    def __init__(self, path: Path, encryption_keys: list[str] | None = None) -> None:
        """``encryption_keys`` empty/None: use the key file ``<vault dir>/vault.key``."""
        self.path = Path(path)
        self._encryption_keys = list(encryption_keys or [])
        self._conn: sqlite3.Connection | None = None
        self._lease_conn: sqlite3.Connection | None = None  # worker thread only
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-token-vault")

    @property
    def state(self) -> str:
        return "closed" if self._closed else ("open" if self._conn is not None else "new")

    @property
    def key_file(self) -> Path:
        """Where the generated key lives when no key is configured."""
        return self.path.parent / KEY_FILE_NAME

    # --- the worker thread --------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the worker thread; sqlite3 errors become VaultError.
        ``fn`` manages its own transaction."""
        if self._closed:
            raise VaultError("the vault is closed")
        conn = self._conn
        if conn is None:
            raise VaultError("the vault is not open: call open() first")
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

    def decrypt(self, key_id: str, nonce: bytes, ct: bytes, aad: bytes, *, what: str) -> bytes:
        """Decrypt on the worker thread; a failure names the entry, never the data."""
        try:
            return self.keyring.decrypt(key_id, nonce, ct, aad)
        except DecryptionError as exc:
            raise DecryptionError(f"{what} cannot be decrypted: {exc}") from None

    def lease_connection(self) -> sqlite3.Connection:
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

    # --- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the directory (0700) and file (0600), migrate, load and check the key ring.
        Concurrent callers share one connection; a second call is a no-op."""
        async with self._open_lock:
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
            keyring = keys.load_keyring(conn, self._encryption_keys, self.key_file)
            keys.check_key_ids(conn, keyring, self.path)
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
        """Apply the migrations this file lacks, each in its own transaction with its
        ``user_version`` bump; refuse a file newer than this package."""
        migrations = list(schema.MIGRATIONS)
        known = len(migrations)
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > known:
            raise self._too_new(found, known)
        for index in range(found, known):
            with transaction(conn):
                # Re-read under the write lock: another process may have migrated meanwhile.
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current > known:
                    raise self._too_new(current, known)
                if current > index:
                    continue
                migration = migrations[index]
                if isinstance(migration, str):
                    for statement in split_statements(migration):
                        conn.execute(statement)
                else:
                    migration(conn)
                conn.execute(f"PRAGMA user_version = {index + 1:d}")
            log.info("Vault %s migrated to schema revision %d", self.path, index + 1)

    async def close(self) -> None:
        """Close the connections on their own thread and stop the worker. Safe to call twice."""
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
