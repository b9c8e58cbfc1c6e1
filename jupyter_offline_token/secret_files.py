"""Secrets read from files (client_secret_file, encryption_keys_file), and the key format check.

Every error names the setting (``where``) and the file, never the file's contents.
"""

from __future__ import annotations

import base64
import binascii
import logging
import stat
from pathlib import Path


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the setting and the file."""


def read_secret_file(where: str, raw_path: str, log: logging.Logger) -> str:
    """The file's text. SecretFileError when missing, unreadable, not UTF-8 or empty; a warning
    (without the value) when other users may read it."""
    path = Path(raw_path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"{where}: the file {path} does not exist") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{where}: the file {path} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SecretFileError(f"{where}: cannot read the file {path} ({reason})") from None
    if not text.strip():
        raise SecretFileError(f"{where}: the file {path} is empty")
    if mode & 0o077:
        log.warning(
            "%s: the file %s is readable by other users (mode %03o); "
            "restrict it to the server's user: chmod 600 %s",
            where,
            path,
            mode,
            path,
        )
    return text


def keys_from_file(where: str, path: str, text: str) -> list[str]:
    """The keys of a keys file: one per line, blank lines and ``#`` comments ignored.
    SecretFileError naming the line (never the key) when one is malformed, or when none."""
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not is_32_byte_key(key):
            raise SecretFileError(
                f"{where}: line {number} of {path} is not a base64url-encoded 32-byte key; "
                "generate one with `jupyter-offline-token generate-key`"
            )
        keys.append(key)
    if not keys:
        raise SecretFileError(f"{where}: the file {path} has no key")
    return keys


def is_32_byte_key(key: str) -> bool:
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            if len(decode(key + "=" * (-len(key) % 4))) == 32:
                return True
        except (binascii.Error, ValueError):
            continue
    return False
