"""Worker credentials: a narrower credential a running task hands to the processes it spreads to
(Dask workers, jobs on other machines).

A worker credential is ``jotw1.<run hash>``, the run hash being what the task store already
holds for the running task (``credential_hash``: the SHA-256 of the task process's secret, or of
a random secret nobody keeps for a ``kernel`` task). So it needs no new column, works on every
backend and in every broker process sharing the store, and dies with the run: the store forgets
the hash when the task ends, is cancelled or is interrupted, and a new run gets a new hash. It
cannot be revoked alone (every worker of a run shares it); cancel the task to revoke it.

What it may do (see ``handlers/base.py``): fetch access tokens of its task's token, read its
task and report ``progress``/``message``; not mint more, end, cancel, link or delete anything.
Whoever can read the store's ``credential_hash`` can act as a worker of a running task, as with
any credential derived from stored state; it cannot act as the task process itself.
"""

from __future__ import annotations

import re

WORKER_PREFIX = "jotw1."
_HASH = re.compile(r"[0-9a-f]{64}")


def worker_secret(run_hash: str) -> str:
    """The worker credential of the run whose stored credential hash is ``run_hash``."""
    return WORKER_PREFIX + run_hash


def worker_run_hash(secret: str) -> str | None:
    """The run hash a worker credential names, or None when ``secret`` is not one."""
    if not secret.startswith(WORKER_PREFIX):
        return None
    run_hash = secret[len(WORKER_PREFIX) :]
    return run_hash if _HASH.fullmatch(run_hash) else None
