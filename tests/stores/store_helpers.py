"""Shared by the store tests: sample secrets, entry builders, and one Backend per store
implementation (the contract suites are parametrised over ``BACKENDS``)."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pg_fixture

from jupyter_offline_token.models import ConsentSecrets, TokenRecord
from jupyter_offline_token.stores import (
    SQLiteTaskStore,
    SQLiteTokenStore,
    TaskStore,
    TokenStore,
)
from jupyter_offline_token.stores.sqlite.sql import transaction

REFRESH = "rt-PLAINTEXT-refresh-token-6f1d2c"
ROTATED = "rt-PLAINTEXT-rotated-token-9a8b7c"
ACCESS = "at-PLAINTEXT-access-token-3c4d5e"
VERIFIER = "pkce-verifier-PLAINTEXT-4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f"
NONCE = "oidc-nonce-PLAINTEXT-77aa"
SECRETS = ConsentSecrets(
    code_verifier=VERIFIER, nonce=NONCE, redirect_uri="http://localhost/offline-token/callback"
)


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "offline_token" / "vault.db"


def raw_files(db: Path) -> bytes:
    """The database file and its WAL as stored on disk."""
    return b"".join(
        part.read_bytes()
        for part in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if part.exists()
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tamper(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the file behind the vault's back, as an attacker with file access could."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(sql, params)
    finally:
        con.close()


async def make_pending(
    vault: TokenStore,
    *,
    owner: str = "alice",
    state_hash: str | None = None,
    now: float = 1000.0,
    consent_expires_at: float = 1600.0,
    label: str = "",
) -> TokenRecord:
    return await vault.create_pending(
        owner=owner,
        issuer="https://idp.example/realms/r",
        client_id="jupyter",
        scopes=["openid", "offline_access"],
        state_hash=state_hash or os.urandom(16).hex(),
        secrets=SECRETS,
        consent_expires_at=consent_expires_at,
        label=label,
        task_id="task-1",
        return_to="/lab",
        now=now,
    )


async def make_active(
    vault: TokenStore, *, owner: str = "alice", now: float = 1000.0
) -> TokenRecord:
    record = await make_pending(vault, owner=owner, now=now)
    assert await vault.consume_consent(record.id) == SECRETS
    return await vault.activate(
        record.id,
        refresh_token=REFRESH,
        subject="sub-123",
        scopes=["openid", "offline_access", "profile"],
        idle_expires_at=now + 3600,
        now=now + 1,
    )


async def fill(
    vault: SQLiteTokenStore,
    owner: str,
    count: int,
    *,
    status: str = "active",
    refresh_state: str = "idle",
) -> list[str]:
    """Insert ``count`` entries straight into the table, oldest first (its triggers still
    run); returns their ids."""
    base = time.time()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = [
        (
            token_id,
            owner,
            status,
            refresh_state,
            base + n * 0.001,
            base + n * 0.001,
            base + 600 if status == "pending" else None,
        )
        for n, token_id in enumerate(ids)
    ]

    def insert(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            conn.executemany(
                "INSERT INTO tokens (id, owner, issuer, client_id, status, refresh_state, scopes, "
                "created_at, updated_at, consent_expires_at) "
                "VALUES (?, ?, 'http://idp.test', 'jupyter', ?, ?, 'openid', ?, ?, ?)",
                rows,
            )

    await vault.run(insert)
    return ids


class SQLiteBackend:
    """SQLite stores on one vault file per test; every store made here shares that file, as
    the processes of one user share it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = db_path(tmp_path)

    def token_store(self, **settings: Any) -> TokenStore:
        return SQLiteTokenStore(self.path, **settings)

    def task_store(self, token_store: TokenStore) -> TaskStore:
        assert isinstance(token_store, SQLiteTokenStore)
        return SQLiteTaskStore(token_store)

    def copy_columns(self, source_id: str, target_id: str, columns: list[str]) -> None:
        """Copy raw stored values from one entry's row to another's, behind the store's back
        (an attacker with write access to the storage moving a ciphertext)."""
        assignments = ", ".join(
            f"{column} = (SELECT {column} FROM tokens WHERE id = ?)"  # noqa: S608
            for column in columns
        )
        tamper(
            self.path,
            f"UPDATE tokens SET {assignments} WHERE id = ?",  # noqa: S608
            (*[source_id] * len(columns), target_id),
        )


PG_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"  # bytes 0..31, base64url; tests only


class PostgresBackend:
    """PostgreSQL stores on one fresh database per test (on the session's real server, see
    ``pg_fixture``); every store made here has its own pool, as separate processes would.
    A PostgreSQL vault needs a configured key: ``PG_KEY`` unless the test gives its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = pg_fixture.cluster().create_database()

    def token_store(self, **settings: Any) -> TokenStore:
        from jupyter_offline_token.stores.postgres import PostgresTokenStore

        settings.setdefault("encryption_keys", [PG_KEY])
        return PostgresTokenStore(url=self.url, **settings)

    def task_store(self, token_store: TokenStore) -> TaskStore:
        from jupyter_offline_token.stores.postgres import PostgresTaskStore

        return PostgresTaskStore(token_store)

    def copy_columns(self, source_id: str, target_id: str, columns: list[str]) -> None:
        """As SQLiteBackend.copy_columns: raw values moved behind the store's back."""
        import psycopg

        assignments = ", ".join(
            f"{column} = (SELECT {column} FROM tokens WHERE id = %s)"  # noqa: S608
            for column in columns
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                f"UPDATE tokens SET {assignments} WHERE id = %s",  # noqa: S608
                (*[source_id] * len(columns), target_id),
            )


# A further backend is one class like SQLiteBackend plus one entry here.
BACKENDS = {"sqlite": SQLiteBackend, "postgres": PostgresBackend}
