"""Refresh scheduling: one heap of wall-clock due times, bounded concurrency, backoff, wakes.

The scheduler knows nothing about OAuth, the vault or Tornado. When an entry is due it calls
``refresh(token_id, reason)`` (the broker) and reacts to the :class:`RefreshOutcome` it returns:
reschedule, retry with exponential backoff, or stop. Time comes from an injectable :class:`Clock`
so every rule is tested with a fake clock instead of by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import defaults
from ..models import IDLE, REFRESH_FAILED, RETRYING, SCHEDULED
from .attempt import OnChange, call_refresh, notify_change, where
from .clock import Clock, SystemClock, wait_for_tasks
from .heap import DueHeap
from .policy import (
    AttemptPolicy,
    BackoffPolicy,
    RefreshOutcome,
    ScheduleEntryState,
    finite_or_none,
)
from .wake import WakeableSleep

# Clock and SystemClock are re-exported: callers import them from here (and from refresh/).
__all__ = ["ATTEMPT_TASK_PREFIX", "LOOP_TASK_NAME", "Clock", "RefreshScheduler", "SystemClock"]

LOOP_TASK_NAME = "offline-token-refresh-scheduler"
ATTEMPT_TASK_PREFIX = "offline-token-refresh:"
_CANCEL_GRACE = 1.0  # seconds a cancelled refresh gets to unwind at shutdown


@dataclass(eq=False)
class _Entry:
    """A live (scheduled or retrying) token; queued in the heap unless its attempt runs."""

    state: ScheduleEntryState
    reason: str
    due: float | None = None  # pending due time; None while an attempt runs and nothing is asked


class RefreshScheduler:
    """Runs ``refresh(token_id, reason)`` for every token when it is due, from one heap.

    Due times are wall-clock epoch seconds. One background task sleeps until the earliest due
    time (never longer than ``max_sleep``), in steps of ``clock_check_interval`` seconds that
    notice a laptop's wake (:class:`WakeableSleep`): then every past-due entry runs at once;
    ``check_clock()`` does the same check on demand (every access-token request and engine entry
    point calls it). At most ``max_concurrency`` refresh callbacks run at a time (due-time
    order); when a token may next be tried (rate limit, backoff, Retry-After) is decided by its
    :class:`AttemptPolicy`. It is also the :class:`RefreshGate` of on-demand attempts: the one
    owner of every token's retry state. Not thread-safe: call it from the event loop's thread.
    """

    def __init__(
        self,
        refresh: Callable[[str, str], Awaitable[RefreshOutcome]],
        *,
        clock: Clock | None = None,
        backoff: BackoffPolicy | None = None,
        min_refresh_interval: float = defaults.MIN_REFRESH_INTERVAL,
        max_concurrency: int = defaults.REFRESH_CONCURRENCY,
        max_sleep: float = 30.0,
        clock_check_interval: float = 1.0,
        wake_threshold: float = defaults.WAKE_THRESHOLD,
        max_retry_after: float = 3600.0,
        on_change: OnChange | None = None,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        _require_positive("min_refresh_interval", min_refresh_interval)
        _require_positive("max_sleep", max_sleep)
        _require_positive("clock_check_interval", clock_check_interval)
        _require_positive("wake_threshold", wake_threshold)
        _require_positive("max_retry_after", max_retry_after)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ValueError(f"max_concurrency must be an integer, not {max_concurrency!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        self._refresh = refresh
        self.clock: Clock = clock or SystemClock()
        self.max_concurrency = max_concurrency
        self.max_sleep = float(max_sleep)
        self._on_change = on_change
        self.log = log or logging.getLogger(__name__)

        self._entries: dict[str, _Entry] = {}  # scheduled or retrying (including in flight)
        self._failed: dict[str, ScheduleEntryState] = {}  # readable until cancel()/schedule()
        self._due = DueHeap()  # queued entries' due times (not those whose attempt runs)
        self._inflight: dict[str, asyncio.Task[None]] = {}  # token -> running refresh callback
        self._tasks: set[asyncio.Task[None]] = set()  # attempt tasks until fully finished
        self._retrying: set[str] = set()  # tokens whose refresh_state is "retrying"
        # When a token may next be tried (rate limit, backoff, Retry-After): one policy object.
        self.attempts = AttemptPolicy(
            backoff=backoff or BackoffPolicy(),
            min_interval=float(min_refresh_interval),
            max_retry_after=float(max_retry_after),
            wall=self.clock.time,
            monotonic=self.clock.monotonic,
            rng=rng,
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._sleep = WakeableSleep(
            self.clock,
            check_interval=float(clock_check_interval),
            threshold=float(wake_threshold),
            log=self.log,
            task_name=LOOP_TASK_NAME,
        )

    @property
    def min_refresh_interval(self) -> float:
        """At most one attempt per token within this many seconds (the attempt policy's)."""
        return self.attempts.min_interval

    # --- public interface ------------------------------------------------------------------

    def schedule(
        self, token_id: str, due_at: float, *, reason: str = "proactive"
    ) -> ScheduleEntryState:
        """Ask for a refresh of ``token_id`` at wall time ``due_at``; replaces any earlier entry.

        Retry bookkeeping (``retry_count``, ``last_error``) survives a reschedule of a retrying
        token; a ``failed`` token starts afresh. Returns the resulting state (a copy). The caller
        made this change itself, so ``on_change`` is not called for it.
        """
        if not isinstance(token_id, str) or not token_id:
            raise ValueError("token_id must be a non-empty string")
        if isinstance(due_at, bool) or not isinstance(due_at, (int, float)):
            raise ValueError(f"due_at must be epoch seconds, not {type(due_at).__name__}")
        if not math.isfinite(due_at):
            raise ValueError(f"due_at must be a finite number of epoch seconds, not {due_at!r}")
        if not isinstance(reason, str) or not reason:
            raise ValueError("reason must be a non-empty string")
        self._failed.pop(token_id, None)
        entry = self._entries.get(token_id)
        if entry is None:
            entry = _Entry(state=ScheduleEntryState(token_id, SCHEDULED), reason=reason)
            self._entries[token_id] = entry
        entry.reason = reason
        self._push(entry, float(due_at))
        return dataclasses.replace(entry.state)

    def cancel(self, token_id: str) -> None:
        """Forget ``token_id``. An attempt already running finishes, but its outcome is dropped."""
        self._failed.pop(token_id, None)
        self._retrying.discard(token_id)
        if self._entries.pop(token_id, None) is not None and token_id in self._due:
            self._due.discard(token_id)
            self._compact()

    def state(self, token_id: str) -> ScheduleEntryState | None:
        entry = self._entries.get(token_id)
        if entry is not None:
            return dataclasses.replace(entry.state)
        failed = self._failed.get(token_id)
        return dataclasses.replace(failed) if failed is not None else None

    def states(self) -> list[ScheduleEntryState]:
        live = [dataclasses.replace(e.state) for e in self._entries.values()]
        return live + [dataclasses.replace(s) for s in self._failed.values()]

    def __len__(self) -> int:
        """Tokens with a pending or running refresh (``failed`` ones are not counted)."""
        return len(self._entries)

    def counts(self) -> dict[str, int]:
        """Tokens per ``refresh_state`` (scheduled, retrying, failed), in O(1) for gauges."""
        retrying = len(self._retrying)
        return {
            SCHEDULED: len(self._entries) - retrying,
            RETRYING: retrying,
            REFRESH_FAILED: len(self._failed),
        }

    async def report_transient(
        self, token_id: str, error: str | None = None, *, retry_after: float | None = None
    ) -> ScheduleEntryState | None:
        """Count a transient failure seen outside the scheduler (an on-demand refresh) as one
        failed attempt: retry_count, failing_since and backoff as if the scheduler had tried.

        If the scheduler's own attempt is waiting meanwhile (behind the broker's lock), the
        retry moves to the backoff's time and that attempt comes back ``deferred`` (the broker
        asks :meth:`retry_wait`), so one failure is counted once and never retried at once.
        Ignored (returns None) for a ``failed`` token. ``on_change`` is called as for the
        scheduler's own attempts.
        """
        if not isinstance(token_id, str) or not token_id:
            raise ValueError("token_id must be a non-empty string")
        if token_id in self._failed:
            return None
        entry = self._entries.get(token_id)
        if entry is None:
            entry = _Entry(state=ScheduleEntryState(token_id, SCHEDULED), reason="retry")
            self._entries[token_id] = entry
        # The failed request was an attempt: the rate limit counts from it.
        self.attempts.started(token_id)
        self._record_transient(entry, error, retry_after, None)
        self._track(entry.state)
        state = dataclasses.replace(entry.state)
        await notify_change(self._on_change, dataclasses.replace(state), self.log)
        return state

    def retry_wait(self, token_id: str) -> float:
        """Seconds until ``token_id`` may be tried again: while it is retrying, the time of the
        scheduler's next attempt (backoff, rate limit, a real Retry-After); otherwise 0."""
        if token_id not in self._retrying:
            return 0.0
        entry = self._entries.get(token_id)
        if entry is None or entry.due is None:
            return 0.0  # the retry itself is running
        return max(0.0, entry.due - self.clock.time())

    def attempt_started(self, token_id: str) -> None:
        """An on-demand attempt goes to the provider now: the rate limit counts from it."""
        self.attempts.started(token_id)

    def check_clock(self) -> None:
        """Notice a wall-clock jump (a wake) or a passed due time and run due entries at once."""
        jumped = self._sleep.check_jump(len(self._entries))
        until = self._sleep.sleep_until
        if jumped or (until is not None and self.clock.time() >= until):
            self._sleep.wakeup()

    @property
    def in_flight(self) -> int:
        """Refresh callbacks running right now."""
        return len(self._inflight)

    @property
    def heap_size(self) -> int:
        """Items in the heap, live and stale (for tests and diagnostics)."""
        return self._due.size

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self.running:
            return
        self._sleep.reset()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=LOOP_TASK_NAME)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, then wait up to ``timeout`` seconds (on the scheduler's clock) for
        running refresh callbacks: a refresh may be storing a rotated token, so it is not cut
        off at once. Those still running are then cancelled, with a short grace to unwind."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                self.log.error("refresh scheduler loop had died: %s", type(exc).__name__)
        pending = await wait_for_tasks(self.clock, set(self._tasks), timeout)
        if not pending:
            return
        self.log.warning(
            "%d token refresh(es) still running after %.0f s at shutdown: cancelling them",
            len(pending),
            timeout,
        )
        for t in pending:
            t.cancel()
        pending = await wait_for_tasks(self.clock, pending, _CANCEL_GRACE)
        if pending:
            self.log.error("%d token refresh(es) ignored cancellation at shutdown", len(pending))

    async def run_due(self) -> int:
        """Run every entry due now (bounded by ``max_concurrency``) and wait for those attempts
        to finish, outcomes applied. Returns the number of attempts made."""
        self._sleep.check_jump(len(self._entries))
        horizon = self.clock.time()
        attempts = 0
        while True:
            attempts += self._launch_due(horizon)
            if not self._tasks:
                return attempts
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    # --- heap ------------------------------------------------------------------------------

    def _push(self, entry: _Entry, due: float) -> None:
        token_id = entry.state.token_id
        due = max(due, self.attempts.earliest_allowed(token_id))
        entry.due = due
        entry.state.next_attempt_at = due
        if token_id in self._inflight:
            return  # parked: picked up when the running attempt finishes
        self._due.push(token_id, due)
        self._compact()
        until = self._sleep.sleep_until
        if until is not None and due < until:
            self._sleep.wakeup()

    def _compact(self) -> None:
        if self._due.compact_if_sparse():
            self.attempts.prune()

    # --- attempts ----------------------------------------------------------------------------

    def _launch_due(self, horizon: float | None = None) -> int:
        """Start attempts for entries due by ``horizon`` (default: now) while slots are free."""
        now = self.clock.time()
        if horizon is None:
            horizon = now
        started = 0
        while len(self._inflight) < self.max_concurrency:
            top = self._due.peek()
            if top is None or top[0] > horizon:
                break
            self._due.pop()
            due, token_id = top
            entry = self._entries[token_id]
            if self.attempts.earliest_allowed(token_id) > now:
                self._push(entry, due)  # rate limited: deferred, not dropped
                continue
            self._start_attempt(entry)
            started += 1
        return started

    def _start_attempt(self, entry: _Entry) -> None:
        token_id = entry.state.token_id
        self.attempts.prune(tracked=len(self._entries) + len(self._failed))
        self.attempts.started(token_id)
        entry.due = None
        task = asyncio.get_running_loop().create_task(
            self._attempt(entry, entry.reason), name=f"{ATTEMPT_TASK_PREFIX}{token_id}"
        )
        self._inflight[token_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, entry: _Entry, reason: str) -> None:
        token_id = entry.state.token_id
        try:
            outcome = await call_refresh(self._refresh, token_id, reason, self.log)
        except asyncio.CancelledError:
            # Shutdown: keep the entry due so a restarted loop tries again.
            self._inflight.pop(token_id, None)
            if self._entries.get(token_id) is entry:
                self._push(entry, self.clock.time() if entry.due is None else entry.due)
            raise
        self._inflight.pop(token_id, None)
        self._sleep.wakeup()  # a concurrency slot is free
        current = self._entries.get(token_id)
        if current is not entry:
            # Cancelled (maybe re-scheduled) meanwhile: the outcome belongs to nobody.
            if current is not None and current.due is not None and token_id not in self._due:
                self._push(current, current.due)
            return
        await self._apply(entry, outcome)

    async def _apply(self, entry: _Entry, outcome: RefreshOutcome) -> None:
        token_id = entry.state.token_id
        st = entry.state
        requested = entry.due  # a schedule() that arrived while the attempt ran
        if outcome.kind == "deferred":
            # No attempt was made; retry when a reported failure's backoff says (or now).
            self._push(entry, self.clock.time() if requested is None else requested)
            return
        if outcome.kind == "gone":
            del self._entries[token_id]
            self._retrying.discard(token_id)
            self.attempts.forget(token_id)
            self.log.debug("token %s is gone: unscheduled", token_id)
            return
        if outcome.kind == "permanent":
            del self._entries[token_id]
            entry.due = None
            st.refresh_state = REFRESH_FAILED
            st.next_attempt_at = None
            st.last_error = outcome.error or "refresh rejected by the provider"
            self._failed[token_id] = st
            self.log.warning("refresh of token %s failed for good: %s", token_id, st.last_error)
        elif outcome.kind == "success":
            if st.retry_count:
                self.log.info(
                    "refresh of token %s succeeded after %d failed attempts",
                    token_id,
                    st.retry_count,
                )
            st.retry_count = 0
            st.failing_since = None
            st.last_error = None
            proactive = finite_or_none(outcome.next_refresh_at)
            if proactive is None and outcome.next_refresh_at is not None:
                self.log.error("refresh of token %s gave a non-finite next_refresh_at", token_id)
            if proactive is not None and (requested is None or proactive < requested):
                entry.reason = "proactive"
                requested = proactive
            if requested is None:
                del self._entries[token_id]
                st.refresh_state = IDLE
                st.next_attempt_at = None
            else:
                st.refresh_state = SCHEDULED
                self._push(entry, requested)
        else:
            self._record_transient(entry, outcome.error, outcome.retry_after, requested)
        self._track(st)
        await notify_change(self._on_change, dataclasses.replace(st), self.log)

    def _record_transient(
        self, entry: _Entry, error: str | None, retry_after: float | None, requested: float | None
    ) -> None:
        """Count one transient failure and schedule the retry (or the earlier ``requested``)."""
        st = entry.state
        now = self.clock.time()
        st.retry_count += 1
        if st.failing_since is None:
            st.failing_since = now
        st.last_error = error or "transient refresh failure"
        st.refresh_state = RETRYING
        delay = self.attempts.retry_delay(st.retry_count, retry_after)
        if requested is None or now + delay < requested:
            entry.reason = "retry"
            requested = now + delay
        self._push(entry, requested)
        # The first failure of a run and every 10th are worth a warning; the rest is noise.
        level = (
            logging.WARNING if st.retry_count == 1 or st.retry_count % 10 == 0 else logging.DEBUG
        )
        self.log.log(
            level,
            "refresh of token %s failed (attempt %d, transient: %s); next try in %.0f s",
            st.token_id,
            st.retry_count,
            st.last_error,
            (st.next_attempt_at or now) - now,
        )

    def _track(self, state: ScheduleEntryState) -> None:
        if state.refresh_state == RETRYING:
            self._retrying.add(state.token_id)
        else:
            self._retrying.discard(state.token_id)

    # --- the loop ------------------------------------------------------------------------------

    def _sleep_seconds(self) -> float:
        if len(self._inflight) >= self.max_concurrency:
            return self.max_sleep  # woken when a slot frees
        top = self._due.peek()
        if top is None:
            return self.max_sleep
        return min(self.max_sleep, max(0.0, top[0] - self.clock.time()))

    async def _run(self) -> None:
        while True:
            try:
                self._sleep.check_jump(len(self._entries))
                self._launch_due()
                seconds = self._sleep_seconds()
            except Exception as exc:
                # A bug here must not end proactive refresh for every token: log and go on.
                self.log.error(
                    "refresh scheduler iteration failed: %s%s", type(exc).__name__, where(exc)
                )
                seconds = self.max_sleep
            await self._sleep.sleep(seconds)


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
