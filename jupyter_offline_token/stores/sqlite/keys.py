"""Which key ring a vault file uses, and the check that it can read every stored ciphertext."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from ...crypto import KeyRing
from ...errors import VaultError
from .sql import marks, transaction

log = logging.getLogger(__name__)

KEY_SETTINGS = (
    "OfflineTokenApp.encryption_keys (or the JUPYTER_OFFLINE_TOKEN_KEYS environment variable)"
)


def load_keyring(conn: sqlite3.Connection, configured: list[str], key_file: Path) -> KeyRing:
    """The configured keys, else the key file (created 0600 when missing and the vault holds no
    ciphertext; VaultError naming ``encryption_keys`` when it is missing but ciphertexts
    exist)."""
    if configured:
        try:
            return KeyRing.from_config(configured)
        except ValueError as exc:
            raise VaultError(f"{exc}; check {KEY_SETTINGS}") from None
    # Under the write lock, so concurrent first starts agree on one key and no other
    # process can store ciphertext between the check and the creation.
    with transaction(conn):
        if key_file.exists():
            return KeyRing.load_file(key_file)
        stored = conn.execute(
            "SELECT COUNT(*) FROM tokens WHERE consent_ct IS NOT NULL OR secret_ct IS NOT NULL"
        ).fetchone()[0]
        if stored:
            raise VaultError(
                f"The vault key file {key_file} is missing but {stored} vault entries hold "
                f"ciphertext: restore the key file, or set {KEY_SETTINGS} to the key(s) "
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


def check_key_ids(conn: sqlite3.Connection, keyring: KeyRing, path: Path) -> None:
    """VaultError naming ``encryption_keys`` when a stored ciphertext uses a key id the ring
    lacks (so a wrong key is found at start, not at the first refresh)."""
    used: set[str] = set()
    for (key_id,) in conn.execute(
        "SELECT consent_key_id FROM tokens WHERE consent_key_id IS NOT NULL "
        "UNION SELECT secret_key_id FROM tokens WHERE secret_key_id IS NOT NULL"
    ):
        used.add(key_id)
    missing = sorted(used - keyring.key_ids)
    if not missing:
        return
    places = marks(missing)
    affected = conn.execute(
        f"SELECT COUNT(*) FROM tokens WHERE consent_key_id IN ({places}) "  # noqa: S608
        f"OR secret_key_id IN ({places})",
        [*missing, *missing],
    ).fetchone()[0]
    raise VaultError(
        f"{affected} vault entries in {path} are encrypted with key id(s) "
        f"{', '.join(missing)} that the key ring (key ids "
        f"{', '.join(sorted(keyring.key_ids))}) lacks: set {KEY_SETTINGS} to the new key "
        "first, followed by the key(s) used before"
    )
