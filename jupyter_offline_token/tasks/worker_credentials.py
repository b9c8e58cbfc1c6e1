"""Worker credentials: a narrower credential a running task hands to the processes it spreads to
(Dask workers, jobs on other machines).

A worker credential is ``jotw1.<run hash>.<key id>.<MAC>``: the run hash is what the task store
already holds for the running task (``credential_hash``: the SHA-256 of the task process's
secret, or of a random secret nobody keeps for a ``kernel`` task), and the MAC is an HMAC-SHA256
of it under a key derived from the vault's key ring (``KeyRing.derived_key``), which the database
never holds. So it needs no new column, works on every backend and in every broker process that
shares the store and its keys, cannot be forged by whoever reads the database, and dies with the
run: the store forgets the hash when the task ends, is cancelled or is interrupted, and a new run
gets a new hash. It cannot be revoked alone (every worker of a run shares it); cancel the task to
revoke it. Rotating the keys keeps it valid while the old key stays in the ring.

What it may do (see ``handlers/base.py``): fetch access tokens of its task's token, read its
task and report ``progress``/``message``; not mint more, end, cancel, link or delete anything.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ..crypto import KeyRing

WORKER_PREFIX = "jotw1."
PURPOSE = "worker-credential"
_SHAPE = re.compile(r"([0-9a-f]{64})\.([0-9a-f]{16})\.([0-9a-f]{64})")


def _mac(key: bytes, run_hash: str) -> str:
    return hmac.new(key, run_hash.encode("ascii"), hashlib.sha256).hexdigest()


def worker_secret(run_hash: str, keyring: KeyRing) -> str:
    """The worker credential of the run whose stored credential hash is ``run_hash``."""
    key = keyring.derived_key(PURPOSE)
    assert key is not None  # the primary key is always in the ring
    return f"{WORKER_PREFIX}{run_hash}.{keyring.primary_key_id}.{_mac(key, run_hash)}"


def worker_run_hash(secret: str, keyring: KeyRing | None) -> str | None:
    """The run hash a genuine worker credential names; None when ``secret`` is not one (or its
    MAC does not check out under a key of the ring)."""
    if not secret.startswith(WORKER_PREFIX) or keyring is None:
        return None
    shape = _SHAPE.fullmatch(secret[len(WORKER_PREFIX) :])
    if shape is None:
        return None
    run_hash, key_id, mac = shape.groups()
    key = keyring.derived_key(PURPOSE, key_id)
    if key is None or not hmac.compare_digest(_mac(key, run_hash), mac):
        return None
    return run_hash


def is_worker_shaped(secret: str) -> bool:
    """Looks like a worker credential (then it is never hashed as a task secret)."""
    return secret.startswith(WORKER_PREFIX)
