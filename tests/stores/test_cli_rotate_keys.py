"""``jupyter-offline-token rotate-keys`` (issue 14): the command an admin runs re-encrypts the
vault under the new key, says which old key ids can be dropped, and never prints a key or the
database password."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from store_helpers import REFRESH, db_path, make_active

from jupyter_offline_token import cli
from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.aad import refresh_aad
from jupyter_offline_token.stores.postgres import PostgresTokenStore

NEW = base64.urlsafe_b64encode(bytes(range(64, 96))).rstrip(b"=").decode()
NEW_ID = KeyRing.from_config([NEW]).primary_key_id
OLD = base64.urlsafe_b64encode(bytes(range(96, 128))).rstrip(b"=").decode()
OLD_ID = KeyRing.from_config([OLD]).primary_key_id


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for suffix in ("KEYS", "KEYS_FILE", "DATABASE_URL", "DATABASE_URL_FILE"):
        monkeypatch.delenv(f"JUPYTER_OFFLINE_TOKEN_{suffix}", raising=False)


def _secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


async def _main(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


def _key_of(key_file: Path) -> str:
    return next(
        line.strip()
        for line in key_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


async def _sqlite_vault(tmp_path: Path, entries: int = 1) -> tuple[Path, list[str], str]:
    """A vault as a server leaves it by default: its key in the generated vault.key."""
    path = db_path(tmp_path)
    store = SQLiteTokenStore(path)
    await store.open()
    ids = [(await make_active(store)).id for _ in range(entries)]
    await store.close()
    return path, ids, _key_of(path.with_name("vault.key"))


async def test_rotate_keys_on_sqlite_reports_the_droppable_key(tmp_path: Path, capsys: Any) -> None:
    path, ids, old = await _sqlite_vault(tmp_path)
    old_id = KeyRing.from_config([old]).primary_key_id
    keys_file = _secret_file(tmp_path / "keys", f"{NEW}\n{old}\n")
    assert await _main("rotate-keys", "--vault", str(path), "--keys-file", str(keys_file)) == 0
    out, err = capsys.readouterr()
    assert f"Re-encrypting under key id {NEW_ID}" in out
    assert "batch 1: 1 entries, 1 values re-encrypted" in out
    assert f"can be dropped from the configuration: {old_id}" in out
    assert f"key id {NEW_ID} (the first key): 1 values" in out
    for key in (NEW, old):
        assert key not in out + err
    store = SQLiteTokenStore(path, encryption_keys=[NEW])  # the old key dropped
    await store.open()
    try:
        assert await store.read_refresh_token(ids[0]) == REFRESH
    finally:
        await store.close()


async def test_an_interrupted_run_is_finished_by_the_next(tmp_path: Path, capsys: Any) -> None:
    """The default key ring: the vault.key beside the vault, edited to hold the new key first."""
    path, ids, old = await _sqlite_vault(tmp_path, entries=3)
    _secret_file(path.with_name("vault.key"), f"# rotated\n{NEW}\n{old}\n")
    argv = ("rotate-keys", "--vault", str(path), "--batch-size", "1")
    assert await _main(*argv, "--max-batches", "1") == 1
    out, _ = capsys.readouterr()
    assert "Stopped before the end" in out and "Still in use, keep them" in out
    assert "can be dropped" not in out
    assert await _main(*argv) == 0
    out, _ = capsys.readouterr()
    assert "2 values re-encrypted in 3 batches" in out and "can be dropped" in out
    store = SQLiteTokenStore(path, encryption_keys=[NEW])
    await store.open()
    try:
        for token_id in ids:
            assert await store.read_refresh_token(token_id) == REFRESH
    finally:
        await store.close()


async def test_rotate_keys_on_postgres(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    store = PostgresTokenStore(url=pg_url, encryption_keys=[OLD])
    await store.open()
    token_id = (await make_active(store)).id
    await store.close()
    url_file = _secret_file(tmp_path / "db-url", pg_url + "\n")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", f"{NEW};{OLD}")
    assert await _main("rotate-keys", "--database-url-file", str(url_file)) == 0
    out, err = capsys.readouterr()
    assert f"can be dropped from the configuration: {OLD_ID}" in out
    for secret in (NEW, OLD, pg_url):
        assert secret not in out + err
    store = PostgresTokenStore(url=pg_url, encryption_keys=[NEW])
    await store.open()
    try:
        assert await store.read_refresh_token(token_id) == REFRESH
    finally:
        await store.close()


async def test_bad_input_is_a_clear_error(tmp_path: Path, pg_url: str, capsys: Any) -> None:
    missing = tmp_path / "nowhere" / "vault.db"
    assert await _main("rotate-keys", "--vault", str(missing)) == 2
    assert f"no SQLite vault at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()  # nothing created
    path, _ids, old = await _sqlite_vault(tmp_path)
    bad = _secret_file(tmp_path / "keys", f"{NEW}\nnot-a-key\n")
    assert await _main("rotate-keys", "--vault", str(path), "--keys-file", str(bad)) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and NEW not in err
    # Keys that cannot read the vault: refused at open, by key id only.
    wrong = _secret_file(tmp_path / "wrong", f"{NEW}\n")
    assert await _main("rotate-keys", "--vault", str(path), "--keys-file", str(wrong)) == 2
    err = capsys.readouterr().err
    assert "lacks" in err and NEW not in err and old not in err
    url_file = _secret_file(tmp_path / "db-url", pg_url)
    assert await _main("rotate-keys", "--database-url-file", str(url_file)) == 2
    assert "no key ring" in capsys.readouterr().err
    assert await _main("rotate-keys", "--vault", str(path), "--batch-size", "0") == 2
    assert "batch_size" in capsys.readouterr().err


def _insert_entries(path: Path, key: str, count: int) -> None:
    """``count`` active entries with a refresh token under ``key``, straight into the table."""
    ring = KeyRing.from_config([key])
    rows = []
    for n in range(count):
        token_id = str(uuid.uuid4())
        key_id, nonce, ct = ring.encrypt(REFRESH.encode(), refresh_aad(token_id, "alice"))
        rows.append((token_id, 1.0 + n, ct, nonce, key_id))
    con = sqlite3.connect(path)
    try:
        con.executemany(
            "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, created_at, "
            "updated_at, secret_ct, secret_nonce, secret_key_id) "
            "VALUES (?, 'alice', 'http://idp.test', 'jupyter', 'active', 'openid', ?, 1.0, "
            "?, ?, ?)",
            rows,
        )
        con.commit()
    finally:
        con.close()


def _count_by_key(path: Path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        query = "SELECT secret_key_id, COUNT(*) FROM tokens GROUP BY secret_key_id"
        return {key_id: n for key_id, n in con.execute(query)}
    finally:
        con.close()


def _kill_after_progress(argv: list[str], lines: int) -> None:
    """Run the command in its own process, read ``lines`` progress lines, then stop reading
    (its next writes fill the pipe and block it, so it cannot finish) and SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-m", "jupyter_offline_token.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert child.stdout is not None
        seen = 0
        while seen < lines:
            line = child.stdout.readline()
            assert line, "the command ended before it was killed"
            seen += line.startswith(b"batch ")
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def test_a_killed_run_loses_nothing_and_the_next_completes(
    tmp_path: Path, capsys: Any
) -> None:
    path = db_path(tmp_path)
    store = SQLiteTokenStore(path, encryption_keys=[OLD])
    await store.open()
    await store.close()
    # ~120 bytes of progress a batch: 1500 batches of one entry overflow a 64 KiB pipe.
    await asyncio.to_thread(_insert_entries, path, OLD, 1500)
    keys_file = _secret_file(tmp_path / "keys", f"{NEW}\n{OLD}\n")
    argv = ["rotate-keys", "--vault", str(path), "--keys-file", str(keys_file)]
    await asyncio.to_thread(_kill_after_progress, [*argv, "--batch-size", "1"], 5)
    midway = _count_by_key(path)
    assert midway[NEW_ID] >= 5 and midway[OLD_ID] > 0
    assert sum(midway.values()) == 1500
    assert await _main(*argv) == 0
    assert f"{midway[OLD_ID]} values re-encrypted" in capsys.readouterr().out
    assert _count_by_key(path) == {NEW_ID: 1500}
    store = SQLiteTokenStore(path, encryption_keys=[NEW])
    await store.open()
    try:
        page = await store.list(owner="alice")
        assert len(page) == 1500
        for record in page:
            assert await store.read_refresh_token(record.id) == REFRESH
    finally:
        await store.close()
