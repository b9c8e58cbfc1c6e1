"""``jupyter-offline-token copy-vault``: move an existing SQLite vault into PostgreSQL.

Nothing is decrypted on the way: ciphertexts are copied byte for byte, and the AAD that binds them
to their entry is the same in both backends, so the PostgreSQL vault reads them with the same
keys. The keys are needed only so the target can check, when it reopens, that every copied
ciphertext names a key it has (by key id, without decrypting).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .cli_sources import KEYS_ENV, URL_ENV, configured_keys, database_url, keys_in_file
from .errors import VaultError
from .secret_files import SecretFileError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "copy-vault",
        help="copy a SQLite vault into a PostgreSQL vault without decrypting it",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="the SQLite vault file (default: OfflineTokenApp.vault_path's default, "
        "<jupyter data dir>/offline_token/vault.db)",
    )
    parser.add_argument(
        "--to",
        metavar="URL",
        help="the PostgreSQL URL (postgresql://user@host:port/db); one with a password is "
        f"better passed in --to-file, ${URL_ENV}_FILE or ${URL_ENV} (a command line is "
        "visible to other users)",
    )
    parser.add_argument(
        "--to-file",
        metavar="PATH",
        help=f"a file holding the PostgreSQL URL (default: ${URL_ENV}_FILE, else ${URL_ENV})",
    )
    parser.add_argument(
        "--keys-file",
        metavar="PATH",
        help=f"the vault's key file (default: ${KEYS_ENV}, else ${KEYS_ENV}_FILE, else the "
        "vault.key beside the SQLite file)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"jupyter-offline-token copy-vault: {message}\n")
    return 2


def _database_url(args: argparse.Namespace) -> str:
    if args.to:
        from .stores.postgres.urls import passwords_of

        if passwords_of(args.to):
            _LOG.warning(
                "the URL on the command line holds a password others may see; use --to-file"
            )
        return str(args.to).strip()
    url = database_url("--to-file", args.to_file, _LOG)
    if not url:
        raise SecretFileError(
            f"no PostgreSQL URL: pass --to or --to-file, or set ${URL_ENV}(_FILE)"
        )
    return url


def _keys(args: argparse.Namespace, source: Path) -> tuple[list[str], str]:
    """The key ring's keys and where they came from."""
    configured = configured_keys(args.keys_file, _LOG)
    if configured is not None:
        return configured
    path = str(source.with_name("vault.key"))
    return keys_in_file(path, _LOG), path


async def _copy(source: Path, url: str, keys: list[str]) -> str:
    from .stores.postgres import PostgresTokenStore
    from .stores.postgres.copy_vault import copy_sqlite_vault

    target = PostgresTokenStore(url=url, encryption_keys=keys)
    await target.open()
    try:
        report = await copy_sqlite_vault(source, target)
        shown = target.database.shown_url
    finally:
        await target.close()
    # Reopening checks, by key id only, that the keys can read every copied ciphertext.
    check = PostgresTokenStore(url=url, encryption_keys=keys)
    await check.open()
    await check.close()
    return (
        f"copied {report.tokens} entries, {report.tasks} tasks and {report.audit} audit events "
        f"from {source} to {shown} (entries already there were left as they were)\n"
    )


def run(args: argparse.Namespace) -> int:
    from .settings import OfflineTokenSettings

    source = Path(args.source or OfflineTokenSettings().vault_path).expanduser()
    try:
        url = _database_url(args)
        keys, keys_from = _keys(args, source)
    except SecretFileError as exc:
        return _fail(str(exc))
    try:
        summary = asyncio.run(_copy(source, url, keys))
    except VaultError as exc:
        return _fail(str(exc))
    sys.stdout.write(summary)
    sys.stdout.write(
        f"The PostgreSQL vault needs the same keys ({keys_from}): set "
        "OfflineTokenApp.encryption_keys_file (or $JUPYTER_OFFLINE_TOKEN_KEYS) to them, and "
        "OfflineTokenApp.database_url_file (or $JUPYTER_OFFLINE_TOKEN_DATABASE_URL) to the URL.\n"
    )
    return 0


# Warnings (a file others may read) reach stderr through logging's last-resort handler.
_LOG = logging.getLogger("jupyter_offline_token.copy_vault")
