"""Secrets read from files (client_secret_file, encryption_keys_file, database_url_file), and the
key format check.

Every error names the setting (``where``) and the file, never the file's contents.
"""

from __future__ import annotations

import base64
import binascii
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Settings an admin may give through the environment (read by the @default methods below).
ENVIRONMENT = {
    "issuer": "JUPYTER_OFFLINE_TOKEN_ISSUER",
    "client_id": "JUPYTER_OFFLINE_TOKEN_CLIENT_ID",
    "client_secret": "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET",
    "client_secret_file": "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE",
    "redirect_uri": "JUPYTER_OFFLINE_TOKEN_REDIRECT_URI",
    "encryption_keys": "JUPYTER_OFFLINE_TOKEN_KEYS",
    "encryption_keys_file": "JUPYTER_OFFLINE_TOKEN_KEYS_FILE",
    "database_url": "JUPYTER_OFFLINE_TOKEN_DATABASE_URL",
    "database_url_file": "JUPYTER_OFFLINE_TOKEN_DATABASE_URL_FILE",
}
# Settings whose value is a secret: never echoed, and a warning when set inline in the config.
SECRET_SETTINGS = {"client_secret": "client_secret_file", "encryption_keys": "encryption_keys_file"}
# Settings whose value may hold a secret (a database URL's password): never echoed either.
NEVER_ECHOED = {*SECRET_SETTINGS, *SECRET_SETTINGS.values(), "database_url"}


def described(setting: str) -> str:
    """``OfflineTokenApp.<setting>`` plus its environment variable, for messages."""
    env = ENVIRONMENT.get(setting)
    return f"OfflineTokenApp.{setting} (or ${env})" if env else f"OfflineTokenApp.{setting}"


def resolve_secrets(
    get: Callable[[str], Any], errors: dict[str, str], log: logging.Logger
) -> tuple[str, list[str]]:
    """The client secret and the keys, from their inline or file settings (``get`` reads a
    setting). A problem is recorded in ``errors`` under the setting's name, never raised."""
    secret, keys = "", []
    for name, file_setting in SECRET_SETTINGS.items():
        if name in errors or file_setting in errors:
            continue
        path, inline = get(file_setting), get(name)
        value: Any = inline
        if path and inline:
            errors[file_setting] = (
                f"{described(file_setting)} and {described(name)} are both set: keep only one"
            )
            continue
        if path:
            try:
                text = read_secret_file(described(file_setting), path, log)
                if name == "client_secret":
                    value = text.strip()
                else:
                    value = keys_from_file(described(file_setting), path, text)
            except SecretFileError as exc:
                errors[file_setting] = str(exc)
                continue
        if name == "client_secret":
            secret = str(value)
        else:
            keys = list(value)
    return secret, keys


def warn_inline_secrets(section: Any, log: logging.Logger) -> None:
    """A secret in the config (a file or the command line) is readable by whoever reads
    the file or the process list, and traitlets logs a changed config at debug level
    ("Config changed: ..."): say so, and what to use instead. Never the value."""
    if not isinstance(section, dict):
        return
    for name, file_setting in SECRET_SETTINGS.items():
        if section.get(name):
            log.warning(
                "OfflineTokenApp.%s is set inline in the Jupyter config (a config file or "
                "the command line): it sits in clear there and in any log that prints the "
                "config (traitlets does at debug level). Use OfflineTokenApp.%s or $%s (a "
                "file readable by this user only), or $%s.",
                name,
                file_setting,
                ENVIRONMENT[file_setting],
                ENVIRONMENT[name],
            )


def resolve_database_url(
    get: Callable[[str], Any],
    check: Callable[[str], str],
    errors: dict[str, str],
    log: logging.Logger,
) -> str:
    """The database URL from ``database_url`` or ``database_url_file`` (checked by ``check``,
    which raises ValueError naming the setting); "" when neither is set. A problem is recorded
    in ``errors`` under the setting's name, never raised, never with the URL in it."""
    if "database_url" in errors or "database_url_file" in errors:
        return ""
    path, inline = get("database_url_file"), get("database_url")
    if path and inline:
        errors["database_url_file"] = (
            f"{described('database_url_file')} and {described('database_url')} are both set: "
            "keep only one"
        )
        return ""
    if not path:
        return str(inline)
    where = described("database_url_file")
    try:
        text = read_secret_file(where, path, log).strip()
        return check(text)
    except SecretFileError as exc:
        errors["database_url_file"] = str(exc)
    except ValueError as exc:
        errors["database_url_file"] = f"{where}: the file {path}: {exc}"
    return ""


def warn_inline_database_url(section: Any, log: logging.Logger) -> None:
    """A database URL with a password set inline in the config: the same warning as an inline
    client secret (without the URL)."""
    if not isinstance(section, dict):
        return
    url = section.get("database_url")
    if not isinstance(url, str) or not _has_password(url):
        return
    log.warning(
        "OfflineTokenApp.database_url is set inline in the Jupyter config (a config file or the "
        "command line) with a password: it sits in clear there and in any log that prints the "
        "config (traitlets does at debug level). Use OfflineTokenApp.database_url_file or $%s "
        "(a file readable by this user only), or $%s, or a password file (~/.pgpass).",
        ENVIRONMENT["database_url_file"],
        ENVIRONMENT["database_url"],
    )


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.password) or "password=" in parts.query
    except ValueError:
        return True  # cannot tell: warn


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
