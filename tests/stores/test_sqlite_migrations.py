"""SQLite schema revisions: forward migrations, the refuse-newer rule, and vaults written by
older revisions opening unchanged. Moved from tests/test_vault.py and tests/test_scale.py."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from store_helpers import REFRESH, db_path, fill, make_pending

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.stores.sqlite import SCHEMA_VERSION, SQLiteTokenStore, schema
from jupyter_offline_token.stores.sqlite.rows import refresh_aad
from jupyter_offline_token.stores.sqlite.sql import split_statements

KEY = KeyRing.generate()


async def test_newer_schema_is_refused_with_an_actionable_message(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    v = SQLiteTokenStore(path)
    with pytest.raises(VaultError) as info:
        await v.open()
    await v.close()
    message = str(info.value)
    assert str(path) in message
    assert (
        f"vault.db has schema revision 99 but this jupyter-offline-token understands up to "
        f"{SCHEMA_VERSION}: upgrade the package (pip install -U jupyter-offline-token) or point "
        "OfflineTokenApp.vault_path elsewhere"
    ) in message
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99  # left alone
    con.close()


async def test_appended_migration_runs_once_and_a_failing_one_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = db_path(tmp_path)
    v = SQLiteTokenStore(path)
    await v.open()
    record = await make_pending(v)
    await v.close()

    def tables() -> set[str]:
        con = sqlite3.connect(path)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()

    base = list(schema.MIGRATIONS)
    bad = "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(schema, "MIGRATIONS", [*base, bad])
    v = SQLiteTokenStore(path)
    with pytest.raises(VaultError, match="no_such_table"):
        await v.open()
    await v.close()
    assert "half_done" not in tables()

    calls: list[int] = []

    def add_tasks(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra (id TEXT PRIMARY KEY, note TEXT)")

    monkeypatch.setattr(schema, "MIGRATIONS", [*base, add_tasks])
    for _ in range(2):
        v = SQLiteTokenStore(path)
        await v.open()
        assert (
            await v.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(base) + 1
        )
        assert (await v.get(record.id)) == record
        await v.close()
    assert calls == [1]
    assert "extra" in tables()


async def test_migration_4_counts_what_an_older_vault_holds(tmp_path: Path) -> None:
    """A vault at revision 3 with entries gets correct counts when migrated."""
    path = tmp_path / "old.db"
    vault = SQLiteTokenStore(path, encryption_keys=[KEY])
    saved = schema.MIGRATIONS
    schema.MIGRATIONS = saved[:3]
    try:
        await vault.open()
        await fill(vault, "a", 12)
        await fill(vault, "a", 3, status="failed")
        await vault.close()
    finally:
        schema.MIGRATIONS = saved
    vault = SQLiteTokenStore(path, encryption_keys=[KEY])
    await vault.open()
    try:
        assert await vault.count_by_state("a") == {("active", "idle"): 12, ("failed", "idle"): 3}
    finally:
        await vault.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def write_revision_4_vault(path: Path, key: str) -> tuple[str, str]:
    """A vault file as the release before issue 10 left it: revision 4, one active entry with
    its ciphertext, one failed entry. Returns (active id, failed id)."""
    path.parent.mkdir(parents=True, mode=0o700)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for script in schema.MIGRATIONS[:4]:
            assert isinstance(script, str)
            for statement in split_statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        ring = KeyRing.from_config([key])
        ids = (str(uuid.uuid4()), str(uuid.uuid4()))
        for token_id, status, error in zip(
            ids, ("active", "failed"), (None, "invalid_grant"), strict=True
        ):
            key_id, nonce, ct = ring.encrypt(REFRESH.encode(), refresh_aad(token_id, "alice"))
            conn.execute(
                "INSERT INTO tokens (id, owner, issuer, client_id, status, refresh_state, "
                "scopes, created_at, updated_at, last_error, secret_ct, secret_nonce, "
                "secret_key_id) VALUES (?, 'alice', 'http://idp.test', 'jupyter', ?, ?, "
                "'openid offline_access', 1.0, 2.0, ?, ?, ?, ?)",
                (token_id, status, "idle" if error is None else "failed", error, ct, nonce, key_id),
            )
    finally:
        conn.close()
    return ids


async def test_revision_5_adds_the_error_kind_to_a_revision_4_vault(tmp_path: Path) -> None:
    """A vault written before issue 10 opens unchanged: entries, ciphertexts and failures are
    kept, and the new last_error_kind column reads as unknown (NULL)."""
    path = db_path(tmp_path)
    assert schema.MIGRATIONS[4] == "ALTER TABLE tokens ADD COLUMN last_error_kind TEXT"
    active_id, failed_id = write_revision_4_vault(path, KEY)

    store = SQLiteTokenStore(path, encryption_keys=[KEY])
    await store.open()
    try:
        active = await store.get(active_id)
        assert active is not None and (active.status, active.owner) == ("active", "alice")
        assert active.scopes == ["openid", "offline_access"] and active.has_secret
        assert active.last_error_kind is None
        assert await store.read_refresh_token(active_id) == REFRESH
        failed = await store.get(failed_id)
        assert failed is not None and failed.last_error == "invalid_grant"
        assert failed.status == "failed" and failed.last_error_kind is None
        await store.mark_failed(active_id, error="invalid_client", now=5.0, kind="configuration")
        now_failed = await store.get(active_id)
        assert now_failed is not None and now_failed.last_error_kind == "configuration"
        assert (await store.count_by_status())["failed"] == 2
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
