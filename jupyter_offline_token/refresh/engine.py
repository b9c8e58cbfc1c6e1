"""RefreshEngine: keeps warm tokens warm, keeps idle offline sessions alive, retries faults.

It connects the pure RefreshScheduler (one heap, backoff, wake detection; the one owner of every
token's retry state, which the broker asks before an on-demand attempt) to the broker (which
does the actual refresh), the vault (``_persist`` is the one writer of the refresh state health
shows) and the metrics. A token is *warm* while a running task uses it or while its entry asks
for it (``keep_warm``); only warm tokens are refreshed proactively, so the scheduler's memory
grows with warm tokens, not with the vault.

Several processes may share one store (issue 11). The periodic jobs (expiring consents, the
retention purge, the keep-alive scan, pruning the eviction log) each run in whichever process
wins ``TokenStore.claim_sweep`` for the interval, so each runs once per interval cluster-wide;
gauges and the audit of cached accesses stay per process. The ``EvictionWatcher`` started here
drops this process's cached access tokens of entries another process made unusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from .. import metrics
from ..access_token import DEFAULT_MIN_TTL, AccessToken
from ..broker import TokenBroker
from ..errors import EntryGone
from ..eviction import EvictionWatcher
from ..models import ACTIVE, RETRYING, TokenRecord
from ..settings import OfflineTokenSettings
from ..token_events import TaskHistory
from .policy import BackoffPolicy, RefreshOutcome, ScheduleEntryState
from .scheduler import Clock, RefreshScheduler

log = logging.getLogger("jupyter_offline_token.refresh")

# Retention purge: rows per transaction, transactions per sweep.
PURGE_BATCH = 200
PURGE_MAX_BATCHES = 10
# Eviction log: rows kept this long, pruned at most this often, this many per transaction. A
# cached access token lives far less than a day, so a watcher that lagged longer than that has
# nothing left to drop for the rows it missed.
EVICTION_LOG_RETENTION = 86400.0
EVICTION_PRUNE_INTERVAL = 3600.0
EVICTION_PRUNE_BATCH = 1000

# The cluster-wide periodic jobs (claim_sweep names).
SWEEP_EXPIRE = "expire_pending"
SWEEP_PURGE = "purge"
SWEEP_KEEPALIVE = "keepalive"
SWEEP_EVICTIONS = "prune_evictions"


class RefreshEngine:
    def __init__(
        self,
        broker: TokenBroker,
        settings: OfflineTokenSettings | None = None,
        *,
        backoff: BackoffPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Reads its settings (refresh_margin, keepalive_interval, min_refresh_interval,
        backoff_*, refresh_concurrency, wake_threshold, sweep_interval, history_retention,
        eviction_poll_interval) from ``settings``; the defaults when None. ``backoff``
        overrides the backoff_* ones."""
        settings = settings if settings is not None else OfflineTokenSettings()
        self.broker = broker
        self.vault = broker.vault
        # Expired, failed and revoked entries (and finished tasks, via use_task_history) unchanged
        # for this long are deleted by the sweep; None keeps them forever.
        self.retention = settings.history_retention or None
        self._task_history: TaskHistory | None = None
        self.refresh_margin = settings.refresh_margin
        self.keepalive_interval = settings.keepalive_interval
        self.sweep_interval = settings.sweep_interval
        self.scheduler = RefreshScheduler(
            self._refresh,
            clock=clock,
            backoff=backoff
            or BackoffPolicy(
                base=settings.backoff_base, cap=settings.backoff_max, jitter=settings.backoff_jitter
            ),
            min_refresh_interval=settings.min_refresh_interval,
            max_concurrency=settings.refresh_concurrency,
            wake_threshold=settings.wake_threshold,
            on_change=self._persist,
            log=log,
        )
        self.clock = self.scheduler.clock
        self._task_users: Counter[str] = Counter()  # token id -> running tasks using it
        self._keep_warm: set[str] = set()
        self._cache_hits: Counter[str] = Counter()  # token id -> accesses served from cache
        self._sweeper: asyncio.Task[None] | None = None
        self.evictions = EvictionWatcher(broker, poll_interval=settings.eviction_poll_interval)
        broker.add_listener(self)
        broker.use_gate(self.scheduler)

    def use_task_history(self, history: TaskHistory) -> None:
        """Let the sweep purge ``history``'s finished tasks with the same retention."""
        self._task_history = history

    # --- warmth ----------------------------------------------------------------------------
    def is_warm(self, token_id: str) -> bool:
        return token_id in self._keep_warm or self._task_users[token_id] > 0

    async def set_keep_warm(self, token_id: str, keep_warm: bool) -> None:
        """Persist the entry's keep_warm flag and start or stop proactive refresh."""
        self.scheduler.check_clock()
        await self.vault.set_keep_warm(token_id, keep_warm, now=self.clock.time())
        if keep_warm:
            self._keep_warm.add(token_id)
            self._warm_up(token_id)
        else:
            self._keep_warm.discard(token_id)
            self._cool_down(token_id)

    async def task_warmth(self, token_id: str, warm: bool) -> None:
        """The task service's hook: a token's first running task started, or its last ended."""
        if warm:
            self.task_started(token_id)
        else:
            self.task_ended(token_id)

    def task_started(self, token_id: str) -> None:
        self.scheduler.check_clock()
        self._task_users[token_id] += 1
        self._warm_up(token_id)

    def task_ended(self, token_id: str) -> None:
        self.scheduler.check_clock()
        if self._task_users[token_id] > 0:
            self._task_users[token_id] -= 1
        if self._task_users[token_id] == 0:
            del self._task_users[token_id]
            self._cool_down(token_id)

    def _warm_up(self, token_id: str) -> None:
        """Schedule the next proactive refresh from the cached token's lifetime (or now)."""
        cached = self.broker.cached(token_id)
        now = self.clock.time()
        due = self._next_proactive(cached.expires_at, now) if cached is not None else now
        state = self.scheduler.state(token_id)
        if state is None or state.next_attempt_at is None or state.next_attempt_at > due:
            self.scheduler.schedule(token_id, due, reason="warm")

    def _cool_down(self, token_id: str) -> None:
        state = self.scheduler.state(token_id)
        if not self.is_warm(token_id) and state is not None and state.refresh_state != RETRYING:
            self.scheduler.cancel(token_id)

    def _next_proactive(self, expires_at: float, now: float) -> float:
        """When to refresh a warm token: at ``refresh_margin`` of its lifetime, but early enough
        that the cached token keeps the access-token endpoint's default ``min_ttl`` (so callers
        with defaults are served from the cache), unless the lifetime is too short for that
        without refreshing more often than ``min_refresh_interval``."""
        lifetime = max(0.0, expires_at - now)
        leave = lifetime * (1.0 - self.refresh_margin)
        if leave < DEFAULT_MIN_TTL <= lifetime - self.scheduler.min_refresh_interval:
            leave = DEFAULT_MIN_TTL
        return now + lifetime - leave

    def failing_since(self, token_id: str) -> float | None:
        state = self.scheduler.state(token_id)
        return state.failing_since if state is not None else None

    # --- scheduler callbacks ---------------------------------------------------------------
    async def _refresh(self, token_id: str, reason: str) -> RefreshOutcome:
        if reason == "keepalive" and await self._refreshed_lately(token_id):
            return RefreshOutcome(kind="success")
        outcome = await self.broker.refresh(token_id, reason)
        if outcome.kind != "success":
            return outcome
        cached = self.broker.cached(token_id)
        if not self.is_warm(token_id) or cached is None:
            return RefreshOutcome(kind="success")
        return RefreshOutcome(
            kind="success",
            next_refresh_at=self._next_proactive(cached.expires_at, self.clock.time()),
        )

    async def _refreshed_lately(self, token_id: str) -> bool:
        """A keep-alive refresh is moot once any process refreshed the entry within
        ``keepalive_interval`` (the scan that found it ran in one process, but a scan in the
        next interval may find it again while this one's refresh was still queued)."""
        record = await self.vault.get(token_id)
        if record is None:
            return False  # the refresh reports it gone
        last = record.last_refresh_at or record.created_at
        return last >= self.clock.time() - self.keepalive_interval

    async def _persist(self, state: ScheduleEntryState) -> None:
        refresh_state = "idle" if state.refresh_state == "idle" else state.refresh_state
        if refresh_state == "failed":
            return  # the broker already marked the entry failed with the reason
        with contextlib.suppress(EntryGone):
            await self.vault.update_refresh_state(
                state.token_id,
                refresh_state=refresh_state,
                next_attempt_at=state.next_attempt_at,
                retry_count=state.retry_count,
                last_error=state.last_error if refresh_state == RETRYING else None,
                now=self.clock.time(),
            )
        metrics.refresh_retrying.set(self.scheduler.counts()["retrying"])

    # --- broker events (token_events.TokenEvents) ------------------------------------------
    async def token_activated(self, record: TokenRecord) -> None:
        """A consent asked for keep_warm: warm from the first access token on."""
        if record.keep_warm:
            self._keep_warm.add(record.id)
            self._warm_up(record.id)

    async def token_refreshed(self, record: TokenRecord, token: AccessToken) -> None:
        """Any successful refresh ends a retry run; warm tokens get their next proactive slot."""
        state = self.scheduler.state(record.id)
        if state is not None and state.refresh_state == RETRYING:
            self.scheduler.cancel(record.id)  # schedule() alone would keep the retry count
        if self.is_warm(record.id):
            self.scheduler.schedule(
                record.id, self._next_proactive(token.expires_at, self.clock.time()), reason="warm"
            )
        metrics.refresh_retrying.set(self.scheduler.counts()["retrying"])

    async def token_status_changed(self, record: TokenRecord) -> None:
        if record.status != ACTIVE:
            self.scheduler.cancel(record.id)
            self._keep_warm.discard(record.id)
        await self._update_gauges()

    def token_served_from_cache(self, token_id: str) -> None:
        self._cache_hits[token_id] += 1

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume: warm entries are refreshed at once (bounded concurrency), then periodically."""
        # First, so no access token is cached before the eviction log's starting point is known.
        await self.evictions.start()
        warm = await self.vault.warm_ids()
        for token_id in warm:
            self._keep_warm.add(token_id)
            self._warm_up(token_id)
        await self.scheduler.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="offline-token-sweep")
        log.info("refresh engine started: %d warm token(s) scheduled", len(warm))

    async def stop(self, timeout: float = 5.0) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._sweeper, timeout)
            self._sweeper = None
        await self.scheduler.stop(timeout)
        await self.evictions.stop(timeout)
        await self._flush_cache_hits()
        metrics.refresh_retrying.set(0)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the sweep must never die
                log.warning("offline-token sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(self.sweep_interval)

    async def sweep(self) -> None:
        """Expire stale consents, purge old history, keep idle offline sessions alive and prune
        the eviction log, each only in the process that claims it for its interval; refresh
        gauges and audit (per process)."""
        self.scheduler.check_clock()
        now = self.clock.time()
        scan_every = min(self.keepalive_interval / 4, 3600.0)
        jobs = (
            (SWEEP_EXPIRE, self.sweep_interval, self._expire_pending),
            (SWEEP_PURGE, self.sweep_interval, self.purge),
            (SWEEP_KEEPALIVE, scan_every, self.keepalive_scan),
            (SWEEP_EVICTIONS, EVICTION_PRUNE_INTERVAL, self.prune_evictions),
        )
        for name, interval, job in jobs:
            try:
                if await self.vault.claim_sweep(
                    name, self.broker.holder, interval=interval, now=now
                ):
                    await job(now)
            except Exception as exc:  # one failing job must not stop the others
                log.warning("offline-token sweep %s failed: %s", name, type(exc).__name__)
        await self._update_gauges()
        await self._flush_cache_hits()

    async def _expire_pending(self, now: float) -> None:
        await self.broker.expire_pending()

    async def keepalive_scan(self, now: float) -> int:
        """Schedule each active entry not refreshed for ``keepalive_interval`` (ids only, oldest
        first and bounded: a 100k vault costs one indexed query); how many were scheduled. Each
        is refreshed under the entry's lease, after a re-check (``_refreshed_lately``)."""
        scheduled = 0
        for token_id in await self.vault.stale_ids(now - self.keepalive_interval):
            if self.scheduler.state(token_id) is None:
                self.scheduler.schedule(token_id, now, reason="keepalive")
                scheduled += 1
        return scheduled

    async def prune_evictions(self, now: float) -> int:
        """Drop eviction log rows older than EVICTION_LOG_RETENTION, in bounded batches."""
        pruned = 0
        for _ in range(PURGE_MAX_BATCHES):
            count = await self.vault.prune_evictions(
                now - EVICTION_LOG_RETENTION, limit=EVICTION_PRUNE_BATCH
            )
            pruned += count
            if count < EVICTION_PRUNE_BATCH:
                break
        return pruned

    async def purge(self, now: float) -> int:
        """Delete entries (with their audit) and, through the task history, finished tasks older
        than ``retention``: at most PURGE_MAX_BATCHES transactions of PURGE_BATCH rows each on
        the vault's thread per sweep, so a backlog drains over several sweeps and the event
        loop and the vault's other callers are never held up for long. Returns entries purged."""
        if self.retention is None:
            return 0
        before = now - self.retention
        purged = 0
        for _ in range(PURGE_MAX_BATCHES):
            ids = await self.vault.purge(before, limit=PURGE_BATCH)
            for token_id in ids:
                self.scheduler.cancel(token_id)
                self._keep_warm.discard(token_id)
            purged += len(ids)
            if len(ids) < PURGE_BATCH:
                break
        if purged:
            log.info(
                "purged %d expired, failed or revoked entries older than the retention", purged
            )
        if self._task_history is not None:
            try:
                await self._task_history.purge_finished(before)
            except Exception as exc:  # one failing part must not stop the rest of the sweep
                log.warning("offline-token task purge failed: %s", type(exc).__name__)
        return purged

    async def _update_gauges(self) -> None:
        with contextlib.suppress(Exception):
            metrics.set_token_counts(await self.vault.count_by_status())

    async def _flush_cache_hits(self) -> None:
        """One audit event per token and sweep for accesses served from cache (bounded volume)."""
        hits, self._cache_hits = self._cache_hits, Counter()
        for token_id, count in hits.items():
            record = await self.vault.get(token_id)
            if record is not None:
                await self.broker.audit(
                    record, "access", "cache", f"served {count} time(s) from cache"
                )
