"""Which key ring an SQLite vault uses, and the checks at open. Moved from tests/test_vault.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import REFRESH, ROTATED, db_path, make_active, make_pending, mode_of

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.stores.sqlite import SQLiteTokenStore


async def test_key_file_generated_on_first_open_and_reused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = SQLiteTokenStore(path)
    assert not v.key_file.exists()
    await v.open()
    await v.close()
    assert mode_of(v.key_file) == 0o600
    assert KeyRing.load_file(v.key_file).key_ids == v.keyring.key_ids
    content = v.key_file.read_bytes()

    again = SQLiteTokenStore(path)
    await again.open()
    await again.close()
    assert again.keyring.key_ids == v.keyring.key_ids
    assert v.key_file.read_bytes() == content


async def test_configured_keys_are_used_and_no_key_file_is_written(tmp_path: Path) -> None:
    key = KeyRing.generate()
    v = SQLiteTokenStore(db_path(tmp_path), encryption_keys=[key])
    await v.open()
    try:
        assert v.keyring.primary_key_id == KeyRing.from_config([key]).primary_key_id
        assert not v.key_file.exists()
    finally:
        await v.close()


async def test_bad_configured_key_names_the_setting_not_the_value(tmp_path: Path) -> None:
    bad = "c2hvcnQta2V5"
    v = SQLiteTokenStore(db_path(tmp_path), encryption_keys=[KeyRing.generate(), bad])
    with pytest.raises(VaultError) as info:
        await v.open()
    await v.close()
    assert "encryption key #2" in str(info.value)
    assert "OfflineTokenApp.encryption_keys" in str(info.value)
    assert bad not in str(info.value)


async def test_wrong_configured_key_with_existing_ciphertext_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    old, new = KeyRing.generate(), KeyRing.generate()
    v = SQLiteTokenStore(path, encryption_keys=[old])
    await v.open()
    record = await make_active(v)
    await v.close()

    wrong = SQLiteTokenStore(path, encryption_keys=[new])
    with pytest.raises(VaultError) as info:
        await wrong.open()
    await wrong.close()
    message = str(info.value)
    assert "OfflineTokenApp.encryption_keys" in message
    assert "JUPYTER_OFFLINE_TOKEN_KEYS" in message
    assert "1 vault entries" in message
    assert KeyRing.from_config([old]).primary_key_id in message
    assert old not in message and new not in message

    # Rotation: the new key first, the old one after it.
    rotated = SQLiteTokenStore(path, encryption_keys=[new, old])
    await rotated.open()
    try:
        assert await rotated.read_refresh_token(record.id) == REFRESH
        await rotated.record_refresh(
            record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=2000.0
        )
        assert await rotated.read_refresh_token(record.id) == ROTATED
    finally:
        await rotated.close()
    # The rotated token is under the new key; the consent secrets were erased, so the old key
    # is no longer needed.
    only_new = SQLiteTokenStore(path, encryption_keys=[new])
    await only_new.open()
    try:
        assert await only_new.read_refresh_token(record.id) == ROTATED
    finally:
        await only_new.close()


async def test_missing_key_file_with_existing_ciphertext_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = SQLiteTokenStore(path)
    await v.open()
    await make_pending(v)
    await v.close()
    v.key_file.unlink()

    again = SQLiteTokenStore(path)
    with pytest.raises(VaultError) as info:
        await again.open()
    await again.close()
    assert str(again.key_file) in str(info.value)
    assert "OfflineTokenApp.encryption_keys" in str(info.value)
    assert not again.key_file.exists()  # a fresh key would hide the problem


async def test_loose_key_file_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = SQLiteTokenStore(path)
    await v.open()
    await v.close()
    v.key_file.chmod(0o644)
    again = SQLiteTokenStore(path)
    with pytest.raises(VaultError, match="chmod 600"):
        await again.open()
    await again.close()
