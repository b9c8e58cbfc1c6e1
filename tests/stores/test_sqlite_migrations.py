"""SQLite schema revisions: forward migrations, the refuse-newer rule, and vaults written by
older revisions opening unchanged. Moved from tests/test_vault.py and tests/test_scale.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from store_helpers import db_path, fill, make_pending

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.stores.sqlite import SCHEMA_VERSION, SQLiteTokenStore, schema

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
