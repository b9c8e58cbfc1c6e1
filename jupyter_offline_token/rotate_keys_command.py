"""``jupyter-offline-token rotate-keys``: re-encrypt the vault under the key ring's first key.

Rotating a key: put a new key (``jupyter-offline-token generate-key``) first in the key ring
and keep the old ones below it, restart the servers (or let them pick the ring up), run this
command, then drop the key ids it reports as no longer used. It runs while servers keep
serving: short batches, each row re-written under its lock with a compare and swap, so a refresh
committed meanwhile is never overwritten; interrupted, it is simply run again. Keys are never
printed, only their ids (fingerprints).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .cli_sources import KEYS_ENV, URL_ENV, configured_keys, database_url
from .errors import VaultError
from .secret_files import SecretFileError
from .stores.shared.rotation import DEFAULT_BATCH_SIZE, RotationBatch, RotationReport

_PROG = "jupyter-offline-token rotate-keys"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "rotate-keys",
        help="re-encrypt every vault entry under the first key; report old key ids to drop",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--vault",
        metavar="PATH",
        help="the SQLite vault file (default: OfflineTokenApp.vault_path's default, "
        "<jupyter data dir>/offline_token/vault.db)",
    )
    parser.add_argument(
        "--database-url-file",
        metavar="PATH",
        help="a file holding the PostgreSQL vault's URL (default: $"
        f"{URL_ENV}_FILE, else ${URL_ENV}; neither set: the SQLite vault)",
    )
    parser.add_argument(
        "--keys-file",
        metavar="PATH",
        help=f"the key ring, NEW KEY FIRST, old keys below (default: ${KEYS_ENV}, "
        f"';'-separated, else ${KEYS_ENV}_FILE, else the vault.key beside the SQLite vault)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"entries per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        metavar="N",
        help="stop after N batches (run the command again to go on)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"{_PROG}: {message}\n")
    return 2


def _keys(args: argparse.Namespace, vault: Path | None) -> list[str] | None:
    """The configured key ring; None: the SQLite vault's own vault.key."""
    configured = configured_keys(args.keys_file, _LOG)
    if configured is not None:
        return configured[0]
    if vault is None:
        raise SecretFileError(f"no key ring: pass --keys-file or set ${KEYS_ENV}(_FILE)")
    if not vault.with_name("vault.key").is_file():
        raise SecretFileError(
            f"no key ring: {vault.with_name('vault.key')} does not exist; pass --keys-file"
        )
    return None


async def _progress(batch: RotationBatch) -> None:
    sys.stdout.write(
        f"batch {batch.number}: {batch.rows} entries, {batch.reencrypted} values re-encrypted, "
        f"{batch.skipped} skipped (changed meanwhile), {batch.cleared} stale cached access "
        f"tokens dropped, {batch.unreadable} unreadable\n"
    )
    sys.stdout.flush()


async def _rotate(
    args: argparse.Namespace, url: str, vault: Path, keys: list[str] | None
) -> RotationReport:
    from .stores import SQLiteTokenStore, TokenStore

    store: TokenStore
    if url:
        from .stores.postgres import PostgresTokenStore

        store = PostgresTokenStore(url=url, encryption_keys=keys, pool_size=1)
    else:
        store = SQLiteTokenStore(vault, encryption_keys=keys)
    await store.open()
    try:
        ring = store.keyring
        if len(ring.key_ids) == 1:
            sys.stdout.write(
                f"The key ring has one key ({ring.primary_key_id}): put the new key first "
                "and keep the old one(s) below it to rotate.\n"
            )
        sys.stdout.write(f"Re-encrypting under key id {ring.primary_key_id} ...\n")
        report = await store.rotate_keys(
            batch_size=args.batch_size, max_batches=args.max_batches, progress=_progress
        )
    finally:
        await store.close()
    return report


def summary(report: RotationReport) -> str:
    """What the admin does next, by key id only."""
    lines = [
        f"{report.reencrypted} values re-encrypted in {report.batches} batches, "
        f"{report.skipped} skipped (changed meanwhile), {report.cleared} stale cached access "
        f"tokens dropped, {report.unreadable} unreadable (left as they were)."
    ]
    if not report.complete:
        lines.append("Stopped before the end (--max-batches): run the command again.")
    for key_id, count in sorted(report.in_use.items()):
        first = " (the first key)" if key_id == report.primary_key_id else ""
        lines.append(f"key id {key_id}{first}: {count} values")
    if report.droppable:
        lines.append(
            "No longer used, can be dropped from the configuration: " + ", ".join(report.droppable)
        )
    if report.old_in_use:
        lines.append(
            "Still in use, keep them: "
            + ", ".join(sorted(report.old_in_use))
            + " (run again once every server uses the new key first)"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from .settings import OfflineTokenSettings

    try:
        url = database_url("--database-url-file", args.database_url_file, _LOG)
        vault = Path(args.vault or OfflineTokenSettings().vault_path).expanduser()
        if not url and not vault.is_file():
            return _fail(f"no SQLite vault at {vault} (pass --vault, or a PostgreSQL URL)")
        keys = _keys(args, None if url else vault)
    except SecretFileError as exc:
        return _fail(str(exc))
    try:
        report = asyncio.run(_rotate(args, url, vault, keys))
    except (VaultError, ValueError) as exc:
        return _fail(str(exc))
    sys.stdout.write(summary(report))
    # 1: values remain under an old key (stopped early, changed meanwhile, unreadable).
    return 0 if report.complete and not report.old_in_use else 1


# Warnings (a file others may read) reach stderr through logging's last-resort handler.
_LOG = logging.getLogger("jupyter_offline_token.rotate_keys")
