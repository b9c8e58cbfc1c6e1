"""The store interfaces: what the broker, the refresh engine and the task service need.

A backend is one ``TokenStore`` and one ``TaskStore`` subclass; ``tests/stores/`` runs the same
contract suite against every backend. Both are ABCs and traitlets ``LoggingConfigurable``s, so
the app can offer them as ``Type(klass=TokenStore, config=True)`` settings.

Guarantees every implementation gives (the docstrings below refine them per operation):

- Async and non-blocking: no method blocks the event loop (SQLite runs on a worker thread).
- Owner scoping: an entry belongs to one owner for life. Lookups by id return the owner in the
  record and the caller (the broker) checks it; every listing and count takes ``owner`` and
  never returns another owner's rows. Ciphertexts are bound to (id, owner, key id), so a row
  copied to another id or owner does not decrypt.
- "Entry gone": an operation on an id that does not exist raises ``EntryGone`` (still also a
  KeyError during the issue 10 transition), never returns a half result.
- Secrets (refresh token, consent secrets) are stored encrypted and never appear in a record,
  repr, log line or error message.
"""

from __future__ import annotations

import builtins
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from traitlets.config import LoggingConfigurable
from traitlets.traitlets import MetaHasTraits

from ..crypto import KeyRing
from ..models import (
    FAILURE_KINDS,
    AuditEvent,
    ConsentSecrets,
    RefreshStart,
    SharedAccessToken,
    TokenRecord,
)
from ..paging import Cursor, Page
from ..tasks.models import TaskRecord

if TYPE_CHECKING:
    from .shared.rotation import Progress, RotationReport

# last_error_kind values (TokenRecord.last_error_kind); None = unknown.
ERROR_KINDS = FAILURE_KINDS


class _Meta(ABCMeta, MetaHasTraits):
    """ABC + traitlets: abstract methods are enforced and traits still configure."""


class TokenStore(LoggingConfigurable, metaclass=_Meta):
    """Vault entries (offline tokens) with their encrypted secrets, refresh state and audit.

    One store may be shared by several processes: every read-modify-write below is atomic
    across them, and the refresh lease is exclusive across them.
    """

    # --- lifecycle ----------------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Make the store usable (create or migrate its schema, load the key ring).
        Concurrent and repeated calls are safe; VaultError when it cannot open (wrong key,
        newer schema) with a message that names the setting to fix."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; safe twice. Methods then raise VaultError."""

    @property
    @abstractmethod
    def keyring(self) -> KeyRing:
        """The key ring the store encrypts with, once open (the first key encrypts). Also keys
        MACs that whoever reads the database alone must not forge (``KeyRing.derived_key``)."""

    # --- consent ------------------------------------------------------------------------------
    @abstractmethod
    async def create_pending(
        self,
        *,
        owner: str,
        issuer: str,
        client_id: str,
        scopes: builtins.list[str],
        state_hash: str,
        secrets: ConsentSecrets,
        consent_expires_at: float,
        label: str = "",
        task_id: str | None = None,
        return_to: str | None = None,
        now: float,
    ) -> TokenRecord:
        """Insert a ``pending`` entry with a new UUID4 id and its consent secrets encrypted.

        Pending-consent cap: TooManyPendingConsents (with ``retry_after`` = when the oldest
        expires) when ``owner`` already has the configured number of unexpired pending
        entries, counted atomically with the insert (concurrent requests cannot pass it).
        VaultError when ``state_hash`` is already used."""

    @abstractmethod
    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        """The entry created with this (hashed) OAuth state, or None."""

    @abstractmethod
    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        """Single use: atomically (across processes) decrypt, erase and return the consent
        secrets; None once consumed. The state hash stays, so a replay is recognised.
        DecryptionError (nothing erased) when they cannot be decrypted; EntryGone."""

    @abstractmethod
    async def activate(
        self,
        token_id: str,
        *,
        refresh_token: str,
        subject: str | None,
        scopes: builtins.list[str],
        idle_expires_at: float | None,
        now: float,
    ) -> TokenRecord:
        """Store the encrypted refresh token and mark the entry ``active`` in one commit;
        leftover consent secrets are erased, refresh bookkeeping restarts. EntryGone."""

    @abstractmethod
    async def expire_pending(self, now: float) -> builtins.list[str]:
        """Mark pending entries at or past ``consent_expires_at`` ``expired`` (consent secrets
        erased); return their ids."""

    # --- reading ------------------------------------------------------------------------------
    @abstractmethod
    async def get(self, token_id: str) -> TokenRecord | None:
        """The entry's metadata (never a secret), or None."""

    @abstractmethod
    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[TokenRecord]:
        """Newest first (creation time, then insertion order); ``owner`` None = every owner
        (admin and sweep use only)."""

    @abstractmethod
    async def sharing_account(
        self, token_id: str, *, owner: str, subject: str, client_id: str, limit: int = 100
    ) -> builtins.list[str]:
        """Ids of the owner's other ACTIVE entries for the same provider account (``subject``)
        and client, at most ``limit``, filtered by the store (no entry is read into memory)."""

    @abstractmethod
    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
        attention: bool = False,
    ) -> Page[TokenRecord]:
        """Keyset paging: one page, newest first, after ``cursor``; a deep page costs what the
        first does, and entries added between two reads never shift later pages.
        ``attention``: only failed, retrying and refresh-failed entries. ValueError for a
        limit outside 1..MAX_PAGE_SIZE."""

    @abstractmethod
    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Entries per status, every status present (0 when none). Costs what the number of
        statuses costs, never what the vault's size does."""

    @abstractmethod
    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        """``{(status, refresh_state): entries}`` of one owner, as cheap as count_by_status."""

    @abstractmethod
    async def warm_ids(self) -> builtins.list[str]:
        """Ids of active entries that asked to be kept warm (what a restart resumes)."""

    @abstractmethod
    async def stale_ids(self, before: float, *, limit: int = 1000) -> builtins.list[str]:
        """Ids of active entries not refreshed since ``before``, oldest first, at most
        ``limit`` (keep-alive sweeps never load the whole vault)."""

    @abstractmethod
    async def read_refresh_token(self, token_id: str) -> str:
        """Decrypt the stored refresh token. DecryptionError on a bad key or tampering;
        EntryGone when the entry does not exist or holds none."""

    # --- the refresh path ----------------------------------------------------------------------
    @abstractmethod
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        """Take the refresh lease: True when it was free, expired or already ``holder``'s
        (then extended to ``now + ttl``). Exclusive across processes. EntryGone."""

    @abstractmethod
    async def begin_refresh(
        self, token_id: str, holder: str, ttl: float, now: float
    ) -> RefreshStart | None:
        """Single flight: take the lease and read the entry and its refresh token atomically.

        None while another holder's unexpired lease stands (across processes: one grant per
        token at a time, cluster-wide). ``refresh_token`` is None when the entry has none;
        ``taken_over`` is True when the lease was another holder's and had expired unreleased.
        EntryGone; DecryptionError with the lease held (the caller marks the entry failed,
        which releases it)."""

    @abstractmethod
    async def release_lease(self, token_id: str, holder: str) -> None:
        """Give the lease up if ``holder`` has it (else a no-op). EntryGone."""

    @abstractmethod
    async def record_refresh(
        self,
        token_id: str,
        *,
        new_refresh_token: str | None,
        idle_expires_at: float | None,
        now: float,
        holder: str | None = None,
        audit: AuditEvent | None = None,
        access: SharedAccessToken | None = None,
    ) -> TokenRecord:
        """Durable rotation: one commit stores the rotated refresh token (None: keep the old)
        and ``access``, the grant's access token, encrypted for the other processes (None:
        clear the shared one),
        resets the retry state (idle, no error, count 0), bumps refresh_count, releases
        ``holder``'s lease and appends ``audit``. Returns only once that commit is durable, so
        the new access token may be handed out. VaultError (nothing stored) when ``holder``
        no longer holds the lease; EntryGone when the entry was deleted meanwhile."""

    @abstractmethod
    async def update_refresh_state(
        self,
        token_id: str,
        *,
        refresh_state: str,
        next_attempt_at: float | None,
        retry_count: int,
        last_error: str | None,
        now: float,
    ) -> None:
        """Persist the retry policy's verdict (ValueError for an unknown state). EntryGone."""

    @abstractmethod
    async def mark_failed(
        self, token_id: str, *, error: str, now: float, kind: str | None = None
    ) -> None:
        """status and refresh_state ``failed``, ``last_error`` = error, ``last_error_kind`` =
        ``kind`` (one of ERROR_KINDS, None = unknown; ValueError otherwise); the ciphertext is
        kept (an admin may still fix a key), the lease released. EntryGone."""

    @abstractmethod
    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        """Set the status (ValueError for an unknown one). EntryGone."""

    @abstractmethod
    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        """Whether the engine keeps this entry's access token fresh. EntryGone."""

    @abstractmethod
    async def delete(self, token_id: str) -> bool:
        """Delete the entry and erase its ciphertext from the storage; True when it existed."""

    @abstractmethod
    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """Bounded purge: delete at most ``limit`` expired, failed or revoked entries unchanged
        since ``before`` with their audit events, in one short transaction; return their ids.
        Callers loop in batches, so no write lock is held for the whole backlog."""

    # --- shared access tokens (issue 11: one grant per expiry across processes) ----------------
    @abstractmethod
    async def read_access_token(
        self, token_id: str, *, valid_until: float
    ) -> SharedAccessToken | None:
        """The access token stored by the last refresh (in any process), decrypted, when it is
        still valid at wall time ``valid_until``; None otherwise, when the entry is not active,
        or when it cannot be decrypted (it is only a cache: never an error). Cleared by
        ``activate`` and whenever the entry leaves ``active`` or is deleted."""

    async def get_for_access(
        self, token_id: str, *, valid_until: float | None
    ) -> tuple[TokenRecord | None, SharedAccessToken | None]:
        """``get`` and, when ``valid_until`` is given, ``read_access_token``: what a cache miss
        needs, in one read where the backend can (one round trip to a database server)."""
        record = await self.get(token_id)
        if record is None or valid_until is None:
            return record, None
        return record, await self.read_access_token(token_id, valid_until=valid_until)

    # --- cluster coordination (issue 11: several processes share one store) -------------------
    @abstractmethod
    async def evictions_after(
        self, cursor: int | None, *, limit: int = 1000
    ) -> tuple[int, builtins.list[str]]:
        """The eviction log every process tails to drop cached access tokens: ids of entries
        that left ``active`` or were deleted after ``cursor``, oldest first, at most ``limit``
        (1 to 1000), with the cursor to pass next. ``cursor`` None: ``(the current end, [])``.
        A rotation or a refresh logs nothing; an id may appear more than once (one row per
        change)."""

    @property
    def evictions_notified(self) -> bool:
        """True while ``wait_for_evictions`` returns at once on every eviction (PostgreSQL's
        LISTEN connection is up): a reader may then wait longer between safety polls."""
        return False

    @abstractmethod
    async def wait_for_evictions(self, timeout: float) -> None:
        """Return when new evictions may have been logged, or after ``timeout`` seconds. A
        polling backend sleeps ``timeout`` (on the event loop); a backend with notifications
        returns early. Never raises for a quiet log; the caller reads ``evictions_after``."""

    @abstractmethod
    async def prune_evictions(self, before: float, *, limit: int) -> int:
        """Delete at most ``limit`` (1 to 1000) eviction log rows logged before wall time
        ``before``, oldest first; how many."""

    @abstractmethod
    async def claim_sweep(self, name: str, holder: str, *, interval: float, now: float) -> bool:
        """Cluster-wide periodic job ``name``: True for exactly one caller per ``interval``
        (the first whose ``now`` is at or past the previous claim's ``now + interval``),
        atomically across processes. ValueError for an empty name or holder or interval <= 0."""

    # --- audit ---------------------------------------------------------------------------------
    @abstractmethod
    async def add_audit(self, event: AuditEvent) -> None:
        """Append; keep at most the configured retention of newest events per token."""

    @abstractmethod
    async def list_audit(self, token_id: str, *, limit: int = 100) -> builtins.list[AuditEvent]:
        """One token's events, newest first."""

    # --- key rotation (issue 14) ---------------------------------------------------------------
    async def rotate_keys(
        self,
        *,
        batch_size: int = 100,
        max_batches: int | None = None,
        progress: Progress | None = None,
    ) -> RotationReport:
        """Re-encrypt every ciphertext (refresh token, consent secrets, shared access token)
        whose key id is not the ring's first under the first key, ``batch_size`` rows per short
        transaction, safe while servers run: each row is re-read and written back under its
        lock with a compare and swap on its key id and ciphertext, so a refresh committed
        meanwhile is kept (the row is skipped and left for a rerun). Stopped after
        ``max_batches`` or interrupted, a rerun completes it: nothing lost, nothing encrypted
        twice. A shared access token no key opens is dropped (a cache); a refresh token or
        consent secret no key opens is left and counted. ``progress`` is awaited after each
        batch. The report counts the values per key id still in use afterwards.
        ValueError for a bad batch size; VaultError when not open."""
        raise NotImplementedError(f"{type(self).__name__} cannot rotate keys")


class TaskStore(LoggingConfigurable, metaclass=_Meta):
    """Task rows. Every read carries the linked entry's status (``token_status``)."""

    async def open(self) -> None:
        """Make the store usable; a no-op where the task store lives in the token store's
        database (SQLite)."""

    async def close(self) -> None:
        """Release what ``open`` took; safe twice."""

    @abstractmethod
    async def create(self, record: TaskRecord) -> TaskRecord:
        """Insert the task; returns it as stored."""

    @abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """The task, or None. The caller checks its owner."""

    @abstractmethod
    async def list(
        self, *, owner: str | None = None, status: str | None = None
    ) -> builtins.list[TaskRecord]:
        """Newest first (creation time, then insertion order)."""

    @abstractmethod
    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
    ) -> Page[TaskRecord]:
        """Keyset paging, newest first, after ``cursor`` (as TokenStore.list_page)."""

    @abstractmethod
    async def update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: object
    ) -> TaskRecord | None:
        """Set ``changes`` (and ``updated_at`` when given) atomically. With ``expect``, only
        when the current status is one of those; None otherwise or when the task is gone, so
        a racing transition never overwrites another. ValueError for an immutable column."""

    @abstractmethod
    async def delete(self, task_id: str) -> bool:
        """True when the task existed."""

    @abstractmethod
    async def purge(self, before: float, *, limit: int) -> builtins.list[str]:
        """Bounded purge: at most ``limit`` finished tasks unchanged since ``before``, in one
        short transaction; return their ids."""

    @abstractmethod
    async def find_running_by_credential(self, credential_hash: str) -> TaskRecord | None:
        """The running task whose scoped credential hashes to ``credential_hash``."""

    @abstractmethod
    async def for_tokens(
        self, token_ids: builtins.list[str], *, owner: str | None = None
    ) -> builtins.list[TaskRecord]:
        """Tasks linked to any of ``token_ids`` (of ``owner`` when given), oldest first."""

    @abstractmethod
    async def interrupt_leftovers(
        self, now: float, message: str, *, still_supervised: Callable[[str | None], bool]
    ) -> builtins.list[str]:
        """Tasks left running (or queued) by a server that is gone become ``interrupted`` with
        their credentials dead, atomically; ``still_supervised(runner)`` is True for a live
        runner (another server sharing the store). Returns their ids."""
