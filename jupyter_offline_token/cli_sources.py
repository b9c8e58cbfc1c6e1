"""Where the vault commands (``copy-vault``, ``rotate-keys``) find the PostgreSQL URL and the key
ring: a flag naming a file, else the environment the server reads too. Secrets come from files
(checked by ``secret_files``) or the environment, never echoed back."""

from __future__ import annotations

import logging
import os

from .secret_files import keys_from_file, read_secret_file

URL_ENV = "JUPYTER_OFFLINE_TOKEN_DATABASE_URL"
KEYS_ENV = "JUPYTER_OFFLINE_TOKEN_KEYS"


def database_url(flag: str, url_file: str | None, log: logging.Logger) -> str:
    """The URL in ``url_file`` (given as ``flag``), else ``$URL_ENV_FILE``'s file, else
    ``$URL_ENV``; "" where none is set."""
    path = url_file or os.environ.get(f"{URL_ENV}_FILE")
    if path:
        return read_secret_file(flag, path, log).strip()
    return os.environ.get(URL_ENV, "").strip()


def configured_keys(keys_file: str | None, log: logging.Logger) -> tuple[list[str], str] | None:
    """The key ring from ``keys_file`` (--keys-file), else ``$KEYS_ENV`` (';'-separated), else
    ``$KEYS_ENV_FILE``'s file, with where it came from; None where none is set."""
    if keys_file:
        return _from_file("--keys-file", keys_file, log), "--keys-file"
    inline = os.environ.get(KEYS_ENV, "").strip()
    if inline:
        return [key.strip() for key in inline.split(";") if key.strip()], f"${KEYS_ENV}"
    path = os.environ.get(f"{KEYS_ENV}_FILE")
    if path:
        return _from_file(f"${KEYS_ENV}_FILE", path, log), path
    return None


def keys_in_file(path: str, log: logging.Logger) -> list[str]:
    """The key ring in the key file at ``path`` (a vault's own ``vault.key``)."""
    return _from_file("the vault key file", path, log)


def _from_file(what: str, path: str, log: logging.Logger) -> list[str]:
    return keys_from_file(what, path, read_secret_file(what, path, log))
