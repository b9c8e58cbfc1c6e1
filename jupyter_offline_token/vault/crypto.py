"""AES-256-GCM key ring. INTERFACE STUB: to be implemented."""

from __future__ import annotations

from pathlib import Path


class KeyRing:
    """Keys for AES-256-GCM: the first encrypts, all decrypt.

    A key's id is a short fingerprint (first 16 hex chars of SHA-256 over the raw key), so key
    ids can be stored beside ciphertexts and checked at start without revealing anything.
    ``repr`` shows key ids only.
    """

    def __init__(self, keys: list[bytes]) -> None:
        """``keys``: raw 32-byte keys; at least one. ValueError otherwise."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, encoded: list[str]) -> KeyRing:
        """Keys as base64url strings (padding optional) of exactly 32 bytes. ValueError with a
        message naming the bad entry's position (never its value) otherwise."""
        raise NotImplementedError

    @classmethod
    def load_file(cls, path: Path) -> KeyRing:
        """Read a key file (one base64url key a line, blank lines and ``#`` comments skipped)."""
        raise NotImplementedError

    @classmethod
    def create_file(cls, path: Path) -> KeyRing:
        """Generate one random key and write it to ``path`` created with mode 0600 (O_EXCL)."""
        raise NotImplementedError

    @staticmethod
    def generate() -> str:
        """A new random key, base64url encoded (for docs and the CLI)."""
        raise NotImplementedError

    @property
    def primary_key_id(self) -> str:
        raise NotImplementedError

    @property
    def key_ids(self) -> frozenset[str]:
        raise NotImplementedError

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes, bytes]:
        """Return ``(key_id, nonce, ciphertext)``; random 96-bit nonce; the key id is also
        appended to the associated data so a ciphertext cannot be moved between keys."""
        raise NotImplementedError

    def decrypt(self, key_id: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Raise ``DecryptionError`` (errors.py) on an unknown key id or failed tag."""
        raise NotImplementedError
