"""Key rotation (issue 14): every ciphertext re-encrypted under the key ring's first key, in
batches of short transactions, while servers keep running.

Both backends run the same plan: a batch selects up to N rows after a cursor (by id) that hold
a ciphertext under another key, locking them (SQLite: the write lock of ``BEGIN IMMEDIATE``;
PostgreSQL: ``FOR UPDATE``), decrypts each such column group and encrypts the plaintext under
the first key with the same AAD, and writes it back with a compare and swap on the old key id
and ciphertext, so a refresh committed meanwhile is never overwritten (that row is skipped and
left for the next run). A ciphertext already under the first key is never selected again, so an
interrupted run can simply be run again: nothing is lost and nothing is encrypted twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...crypto import KeyRing
from ...errors import DecryptionError
from ..aad import access_aad, consent_aad, refresh_aad
from .records import Row
from .sealed import Decrypting, Sealed, unseal

GROUPS: tuple[Sealed, ...] = ("consent", "secret", "access")
_AAD = {"secret": refresh_aad, "consent": consent_aad, "access": access_aad}
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 10_000

ROW_COLUMNS = "id, owner, " + ", ".join(
    f"{name}_ct, {name}_nonce, {name}_key_id" for name in GROUPS
)
# Rows holding a ciphertext under a key id other than the first key's (parameters: the cursor,
# the first key id three times, the batch size), in id order; NULL key ids never match.
SELECT_STALE = (
    f"SELECT {ROW_COLUMNS} FROM tokens WHERE id > ? AND (consent_key_id <> ? "  # noqa: S608
    "OR secret_key_id <> ? OR access_key_id <> ?) ORDER BY id LIMIT ?"
)
# How many stored values each key id encrypts (the report after a run; a CLI's one scan).
KEY_IDS_IN_USE = (
    "SELECT key_id, COUNT(*) AS n FROM ("
    " SELECT consent_key_id AS key_id FROM tokens WHERE consent_key_id IS NOT NULL"
    " UNION ALL SELECT secret_key_id FROM tokens WHERE secret_key_id IS NOT NULL"
    " UNION ALL SELECT access_key_id FROM tokens WHERE access_key_id IS NOT NULL"
    ") used GROUP BY key_id ORDER BY key_id"
)


def swap_sql(name: Sealed) -> str:
    """Compare and swap one column group: new (ct, nonce, key id) where (id, old key id, old
    ct) still match; parameters in that order."""
    return (
        f"UPDATE tokens SET {name}_ct = ?, {name}_nonce = ?, {name}_key_id = ? "  # noqa: S608
        f"WHERE id = ? AND {name}_key_id = ? AND {name}_ct = ?"
    )


# A shared access token that no key of the ring opens is only a stale cache: dropped.
CLEAR_ACCESS = (
    "UPDATE tokens SET access_ct = NULL, access_nonce = NULL, access_key_id = NULL, "
    "access_expires_at = NULL WHERE id = ? AND access_key_id = ? AND access_ct = ?"
)


@dataclass(frozen=True)
class Change:
    """One column group's compare and swap: ``params`` for ``sql``."""

    sql: str
    params: tuple[Any, ...]
    cleared: bool = False


@dataclass(frozen=True)
class BatchPlan:
    last_id: str | None
    rows: int
    changes: list[Change]
    unreadable: int


@dataclass(frozen=True)
class RotationBatch:
    """What one batch did (handed to the progress callback)."""

    number: int
    rows: int
    reencrypted: int
    skipped: int
    cleared: int
    unreadable: int


@dataclass
class RotationReport:
    """The whole run: totals, whether it reached the end, and the key ids still in use."""

    primary_key_id: str
    ring_key_ids: list[str]
    batches: int = 0
    reencrypted: int = 0
    skipped: int = 0
    cleared: int = 0
    unreadable: int = 0
    complete: bool = False
    in_use: dict[str, int] = field(default_factory=dict)

    @property
    def droppable(self) -> list[str]:
        """Old key ids of the ring that no stored value uses any more."""
        return [k for k in self.ring_key_ids[1:] if k not in self.in_use]

    @property
    def old_in_use(self) -> dict[str, int]:
        """Key ids other than the first still holding values (rerun, or keys to keep)."""
        return {k: n for k, n in self.in_use.items() if k != self.primary_key_id}


def plan_batch(database: Decrypting, keyring: KeyRing, rows: Sequence[Row]) -> BatchPlan:
    """Decrypt every stale column group of ``rows`` and encrypt it under the first key (same
    AAD). A refresh token or consent secret no key opens is left as it is (counted)."""
    primary = keyring.primary_key_id
    changes: list[Change] = []
    unreadable = 0
    for row in rows:
        token_id, owner = str(row["id"]), str(row["owner"])
        for name in GROUPS:
            old_key_id, old_ct = row[f"{name}_key_id"], row[f"{name}_ct"]
            if old_key_id is None or old_key_id == primary or old_ct is None:
                continue
            old_ct = bytes(old_ct)
            try:
                plain = unseal(database, row, name, token_id, owner)
            except (DecryptionError, ValueError, TypeError):
                if name == "access":
                    changes.append(Change(CLEAR_ACCESS, (token_id, old_key_id, old_ct), True))
                else:
                    unreadable += 1
                continue
            key_id, nonce, ct = keyring.encrypt(plain, _AAD[name](token_id, owner))
            params = (ct, nonce, key_id, token_id, old_key_id, old_ct)
            changes.append(Change(swap_sql(name), params))
    last_id = str(rows[-1]["id"]) if rows else None
    return BatchPlan(last_id, len(rows), changes, unreadable)


def check_batch_size(batch_size: int, max_batches: int | None) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError("batch_size must be an integer")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ValueError("max_batches must be a positive integer or None")


Progress = Callable[[RotationBatch], Awaitable[None]]
# (cursor, batch size) -> (last id, rows seen, re-encrypted, skipped, cleared, unreadable)
BatchRunner = Callable[[str, int], Awaitable[tuple[str | None, int, int, int, int, int]]]


async def rotate(
    keyring: KeyRing,
    run_batch: BatchRunner,
    in_use: Callable[[], Awaitable[dict[str, int]]],
    *,
    batch_size: int,
    max_batches: int | None,
    progress: Progress | None,
) -> RotationReport:
    """Run batches from the start of the id order until one comes back empty (or
    ``max_batches`` ran), then count the values per key id."""
    check_batch_size(batch_size, max_batches)
    ring = [keyring.primary_key_id, *sorted(keyring.key_ids - {keyring.primary_key_id})]
    report = RotationReport(primary_key_id=keyring.primary_key_id, ring_key_ids=ring)
    cursor = ""
    while max_batches is None or report.batches < max_batches:
        last_id, rows, done, skipped, cleared, unreadable = await run_batch(cursor, batch_size)
        report.batches += 1
        report.reencrypted += done
        report.skipped += skipped
        report.cleared += cleared
        report.unreadable += unreadable
        if progress is not None:
            batch = RotationBatch(report.batches, rows, done, skipped, cleared, unreadable)
            await progress(batch)
        # Only an empty batch is the end: a short one may have lost rows to a concurrent
        # change (PostgreSQL rechecks the WHERE of a row it waited to lock).
        if last_id is None or rows == 0:
            report.complete = True
            break
        cursor = last_id
    report.in_use = await in_use()
    return report
