"""``jupyter-offline-token copy-vault`` (issue 11): a SQLite vault moved into PostgreSQL by the
command an admin runs, nothing decrypted on the way, the password never printed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from store_helpers import REFRESH, db_path, make_active

from jupyter_offline_token import cli
from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.postgres import PostgresTokenStore


async def _sqlite_vault(tmp_path: Path) -> tuple[Path, str]:
    """A vault as a server leaves it by default: keys in the generated vault.key beside it."""
    path = db_path(tmp_path)
    source = SQLiteTokenStore(path)
    await source.open()
    record = await make_active(source)
    await source.close()
    return path, record.id


async def test_copy_vault_moves_entries_without_decrypting(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    path, token_id = await _sqlite_vault(tmp_path)
    url_file = tmp_path / "db-url"
    url_file.write_text(pg_url + "\n")
    url_file.chmod(0o600)
    monkeypatch.delenv("JUPYTER_OFFLINE_TOKEN_KEYS", raising=False)
    monkeypatch.delenv("JUPYTER_OFFLINE_TOKEN_KEYS_FILE", raising=False)
    decrypted: list[str] = []
    real_decrypt = KeyRing.decrypt

    def spy(self: KeyRing, key_id: str, *args: Any) -> bytes:
        decrypted.append(key_id)
        return real_decrypt(self, key_id, *args)

    monkeypatch.setattr(KeyRing, "decrypt", spy)
    argv = ["copy-vault", "--from", str(path), "--to-file", str(url_file)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert decrypted == []  # byte for byte: no ciphertext was opened on the way
    out, err = capsys.readouterr()
    assert "copied 1 entries" in out and "vault.key" in out
    assert pg_url not in out + err  # the URL holds the password: never printed

    keys = KeyRing.load_file(path.with_name("vault.key"))
    target = PostgresTokenStore(url=pg_url, encryption_keys=[_encoded(keys, path)])
    await target.open()
    try:
        assert await target.read_refresh_token(token_id) == REFRESH
    finally:
        await target.close()
    # A second run copies nothing twice.
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert "copied 0 entries, 0 tasks and 0 audit events" in capsys.readouterr().out


async def test_copy_vault_with_the_wrong_keys_is_refused(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    path, _ = await _sqlite_vault(tmp_path)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_DATABASE_URL", pg_url)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", KeyRing.generate())
    assert await asyncio.to_thread(cli.main, ["copy-vault", "--from", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "encryption_keys" in err and pg_url not in err


async def test_copy_vault_without_a_url_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    path, _ = await _sqlite_vault(tmp_path)
    monkeypatch.delenv("JUPYTER_OFFLINE_TOKEN_DATABASE_URL", raising=False)
    monkeypatch.delenv("JUPYTER_OFFLINE_TOKEN_DATABASE_URL_FILE", raising=False)
    assert await asyncio.to_thread(cli.main, ["copy-vault", "--from", str(path)]) == 2
    assert "--to" in capsys.readouterr().err


def _encoded(keys: KeyRing, path: Path) -> str:
    """The key file's (only) key as configuration spells it."""
    lines = [
        line.strip()
        for line in path.with_name("vault.key").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1 and len(keys.key_ids) == 1
    return lines[0]
