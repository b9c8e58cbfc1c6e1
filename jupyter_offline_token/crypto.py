"""AES-256-GCM key ring: the first key encrypts, every key decrypts (rotation by prepending)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import DecryptionError, VaultError

KEY_BYTES = 32
NONCE_BYTES = 12
_B64_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_KEY_FILE_HEADER = (
    "# jupyter-offline-token vault key (AES-256-GCM), one base64url key a line.\n"
    "# Keep it secret (mode 0600) and back it up: without it the stored refresh tokens\n"
    "# cannot be decrypted. To rotate, put a new key on the first line and keep the old below,\n"
    "# restart the server, run `jupyter-offline-token rotate-keys`, then drop the old key.\n"
)


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _decode_key(encoded: object) -> bytes | None:
    """base64url (padding optional) or standard base64 of exactly 32 bytes; None otherwise."""
    if not isinstance(encoded, str):
        return None
    text = encoded.strip().replace("+", "-").replace("/", "_").rstrip("=")
    if not _B64_CHARS.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


class KeyRing:
    """Keys for AES-256-GCM: the first encrypts, all decrypt.

    A key's id is a short fingerprint (first 16 hex chars of SHA-256 over the raw key), so key
    ids can be stored beside ciphertexts and checked at start without revealing anything.
    ``repr`` shows key ids only.
    """

    __slots__ = ("_ciphers", "_derived", "_order", "_raw")

    def __init__(self, keys: list[bytes]) -> None:
        """``keys``: raw 32-byte keys; at least one. ValueError otherwise."""
        if not keys:
            raise ValueError("a key ring needs at least one encryption key")
        self._ciphers: dict[str, AESGCM] = {}
        self._raw: dict[str, bytes] = {}
        self._derived: dict[tuple[str, str], bytes] = {}
        self._order: list[str] = []
        for position, raw in enumerate(keys, start=1):
            if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
                raise ValueError(f"encryption key #{position} is not a raw 32-byte key")
            key_id = _key_id(raw)
            if key_id in self._ciphers:
                continue  # the same key listed twice: keep the first position
            self._ciphers[key_id] = AESGCM(raw)
            self._raw[key_id] = raw
            self._order.append(key_id)

    @classmethod
    def from_config(cls, encoded: list[str]) -> KeyRing:
        """Keys as base64url strings (padding optional) of exactly 32 bytes. ValueError with a
        message naming the bad entry's position (never its value) otherwise."""
        if not encoded:
            raise ValueError("no encryption key given")
        keys: list[bytes] = []
        for position, text in enumerate(encoded, start=1):
            raw = _decode_key(text)
            if raw is None:
                raise ValueError(
                    f"encryption key #{position} is not a base64url-encoded 32-byte key"
                )
            keys.append(raw)
        return cls(keys)

    @classmethod
    def load_file(cls, path: Path) -> KeyRing:
        """Read a key file (one base64url key a line, blank lines and ``#`` comments skipped).

        VaultError when the file is readable or writable by group or others, or holds no valid
        key; FileNotFoundError when it does not exist.
        """
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise VaultError(
                    f"the vault key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}"
                )
            data = fh.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise VaultError(f"the vault key file {path} is not UTF-8 text") from None
        keys: list[bytes] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            raw = _decode_key(line)
            if raw is None:
                raise VaultError(
                    f"the vault key file {path}: line {lineno} is not a base64url-encoded "
                    "32-byte key"
                )
            keys.append(raw)
        if not keys:
            raise VaultError(f"the vault key file {path} holds no key")
        return cls(keys)

    @classmethod
    def create_file(cls, path: Path) -> KeyRing:
        """Generate one random key and write it to ``path`` created with mode 0600 (O_EXCL).

        FileExistsError when ``path`` exists: an existing key is never overwritten.
        """
        encoded = cls.generate()
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # the umask cannot loosen it, but be explicit
            payload = (_KEY_FILE_HEADER + encoded + "\n").encode("ascii")
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return cls.from_config([encoded])

    @staticmethod
    def generate() -> str:
        """A new random key, base64url encoded (for docs and the CLI)."""
        return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).rstrip(b"=").decode("ascii")

    @property
    def primary_key_id(self) -> str:
        """The id of the key that encrypts."""
        return self._order[0]

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._order)

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes, bytes]:
        """Return ``(key_id, nonce, ciphertext)``; random 96-bit nonce; the key id is also
        appended to the associated data so a ciphertext cannot be moved between keys."""
        key_id = self._order[0]
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[key_id].encrypt(nonce, plaintext, _bind(aad, key_id))
        return key_id, nonce, ciphertext

    def decrypt(self, key_id: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Raise ``DecryptionError`` (errors.py) on an unknown key id or failed tag."""
        cipher = self._ciphers.get(key_id) if isinstance(key_id, str) else None
        if cipher is None:
            shown = key_id if isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) else "?"
            raise DecryptionError(f"no key with id {shown} in the key ring")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise DecryptionError("ciphertext failed authentication (malformed nonce)")
        try:
            return cipher.decrypt(nonce, bytes(ciphertext), _bind(aad, key_id))
        except (InvalidTag, ValueError, TypeError):
            raise DecryptionError(
                "ciphertext failed authentication (wrong key or tampered data)"
            ) from None

    def derived_key(self, purpose: str, key_id: str | None = None) -> bytes | None:
        """A 32-byte key for ``purpose`` derived (HKDF-SHA256) from the ring's key ``key_id``
        (the primary when None); None for a key id not in the ring. For MACs that whoever can
        read the database alone must not be able to forge (the keys are never stored there)."""
        key_id = self._order[0] if key_id is None else key_id
        raw = self._raw.get(key_id) if isinstance(key_id, str) else None
        if raw is None:
            return None
        cached = self._derived.get((key_id, purpose))
        if cached is None:
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=KEY_BYTES,
                salt=None,
                info=b"jupyter-offline-token:" + purpose.encode(),
            )
            cached = self._derived[(key_id, purpose)] = hkdf.derive(raw)
        return cached

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self._order!r})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a KeyRing holds secret keys and cannot be pickled")


def _bind(aad: bytes, key_id: str) -> bytes:
    # The key id has a fixed length, so appending it after a separator is unambiguous.
    return bytes(aad) + b"\x1fkey:" + key_id.encode("ascii")
