"""RefreshScheduler rules, driven by a fake clock: nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from fake_clock import FakeClock, run_async

from jupyter_offline_token.refresh.policy import (
    AttemptPolicy,
    BackoffPolicy,
    RefreshOutcome,
    ScheduleEntryState,
)
from jupyter_offline_token.refresh.scheduler import (
    ATTEMPT_TASK_PREFIX,
    LOOP_TASK_NAME,
    RefreshScheduler,
    SystemClock,
)

T0 = 1_700_000_000.0
NO_JITTER = BackoffPolicy(jitter=0.0)


class Provider:
    """A scripted refresh callback that records every call with the fake time it happened."""

    def __init__(self, clock: FakeClock, script: Callable[[str, int], RefreshOutcome]) -> None:
        self.clock = clock
        self.script = script
        self.calls: list[tuple[str, str, float, float]] = []  # token, reason, wall, mono

    async def __call__(self, token_id: str, reason: str) -> RefreshOutcome:
        self.calls.append((token_id, reason, self.clock.time(), self.clock.monotonic()))
        return self.script(token_id, len(self.calls))

    def monos(self, token_id: str = "t1") -> list[float]:  # noqa: S107
        return [mono for tok, _, _, mono in self.calls if tok == token_id]


def ok(next_refresh_at: float | None = None) -> RefreshOutcome:
    return RefreshOutcome("success", next_refresh_at=next_refresh_at)


def transient(error: str = "connection refused", retry_after: float | None = None):
    return RefreshOutcome("transient", error=error, retry_after=retry_after)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=T0, monotonic=1_000.0)


class SchedulerFactory:
    """Builds schedulers on the fake clock and remembers them so each test stops them all."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.made: list[RefreshScheduler] = []

    def __call__(
        self, refresh: Callable[[str, str], Awaitable[RefreshOutcome]], **kw
    ) -> RefreshScheduler:
        kw.setdefault("backoff", NO_JITTER)
        sched = RefreshScheduler(refresh, clock=self.clock, **kw)
        self.made.append(sched)
        return sched

    async def stop_all(self) -> None:
        for sched in self.made:
            stopping = asyncio.ensure_future(sched.stop(timeout=1))
            await self.clock.advance(2)  # timeout + the grace for cancelled refreshes
            assert stopping.done(), "stop() did not finish within its bound"
            await stopping


@pytest.fixture
def make_scheduler(clock: FakeClock) -> SchedulerFactory:
    return SchedulerFactory(clock)


def scheduler_test(test):
    """An async test on its own loop that always stops the schedulers it made."""

    @functools.wraps(test)
    async def body(*args, **kwargs):
        try:
            await test(*args, **kwargs)
        finally:
            factory = kwargs.get("make_scheduler")
            if factory is not None:
                await factory.stop_all()

    return run_async(body)


def our_tasks() -> list[asyncio.Task]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith((LOOP_TASK_NAME, ATTEMPT_TASK_PREFIX)) and not t.done()
    ]


# --- the fake clock itself ----------------------------------------------------------------------


@scheduler_test
async def test_fake_clock_wakes_sleepers_in_order_at_their_deadline(clock: FakeClock):
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.ensure_future(sleeper("b", 20)), asyncio.ensure_future(sleeper("a", 5))]
    await clock.advance(4)
    assert woke == []
    await clock.advance(20)
    assert woke == [("a", 1_005.0), ("b", 1_020.0)]
    assert clock.monotonic() == 1_024.0 and clock.time() == T0 + 24
    clock.jump_wall(3600)
    assert clock.time() == T0 + 24 + 3600 and clock.monotonic() == 1_024.0
    await asyncio.gather(*tasks)


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_sequence_without_jitter():
    policy = BackoffPolicy(jitter=0.0)
    assert [policy.delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert policy.delay(10_000) == 300  # no float overflow after months of failures


def test_backoff_jitter_stays_within_ten_percent():
    policy = BackoffPolicy()  # jitter 0.1
    rng = random.Random(1234)
    expected = [10, 20, 40, 80, 160, 300, 300]
    seen_spread = set()
    for _ in range(200):
        for n, nominal in enumerate(expected, start=1):
            d = policy.delay(n, rng)
            assert nominal * 0.9 <= d <= nominal * 1.1
            assert d <= 300 * 1.1
            seen_spread.add(round(d / nominal, 3))
    assert len(seen_spread) > 10  # jitter really varies


@pytest.mark.parametrize(
    "kwargs", [{"base": 0}, {"base": -1}, {"cap": 5}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_backoff_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_backoff_rejects_retry_count_zero():
    with pytest.raises(ValueError, match="retry_count"):
        BackoffPolicy().delay(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_refresh_interval": 0},
        {"max_concurrency": 0},
        {"max_concurrency": 1.5},
        {"max_sleep": float("nan")},
        {"wake_threshold": -1},
    ],
)
def test_scheduler_rejects_bad_settings(kwargs):
    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        return ok()

    with pytest.raises(ValueError):
        RefreshScheduler(refresh, **kwargs)


@scheduler_test
async def test_schedule_rejects_bad_input(make_scheduler, clock):
    sched = make_scheduler(Provider(clock, lambda t, n: ok()))
    for token_id, due in [("", T0), ("t1", float("nan")), ("t1", float("inf")), ("t1", "soon")]:
        with pytest.raises(ValueError):
            sched.schedule(token_id, due)  # type: ignore[arg-type]
    assert len(sched) == 0


def test_outcome_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        RefreshOutcome("maybe")  # type: ignore[arg-type]


# --- retries ------------------------------------------------------------------------------------


@scheduler_test
async def test_transient_failures_back_off_forever_until_success_then_reset(make_scheduler, clock):
    # Fails 9 times (past the 7 attempts the cap needs), then succeeds with a proactive time.
    provider = Provider(
        clock, lambda t, n: transient("HTTP 503") if n <= 9 else ok(clock.time() + 240)
    )
    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(provider, on_change=changes.append)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    assert len(provider.calls) == 1
    st = sched.state("t1")
    assert st is not None and st.refresh_state == "retrying"
    assert st.retry_count == 1 and st.last_error == "HTTP 503"
    assert st.failing_since == T0 and st.next_attempt_at == T0 + 10

    await clock.advance(10 + 20 + 40 + 80 + 160 + 300 + 300 + 300 + 300)
    monos = provider.monos()
    gaps = [b - a for a, b in itertools.pairwise(monos)]
    assert gaps == [10, 20, 40, 80, 160, 300, 300, 300, 300]
    assert [c.retry_count for c in changes] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert all(c.failing_since == T0 for c in changes[:-1])

    st = sched.state("t1")
    assert st is not None
    assert (st.refresh_state, st.retry_count, st.last_error, st.failing_since) == (
        "scheduled",
        0,
        None,
        None,
    )
    assert st.next_attempt_at == clock.time() + 240


@scheduler_test
async def test_retry_after_is_honoured(make_scheduler, clock):
    provider = Provider(
        clock,
        lambda t, n: transient("HTTP 429", retry_after=120) if n == 1 else ok(),
    )
    sched = make_scheduler(provider)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    assert sched.state("t1").next_attempt_at == T0 + 120
    await clock.advance(119)
    assert len(provider.calls) == 1  # backoff alone would have retried at 10 s
    await clock.advance(1)
    assert len(provider.calls) == 2
    assert provider.calls[1][1] == "retry"
    assert provider.calls[1][3] == 1_000.0 + 120


@scheduler_test
async def test_absurd_retry_after_is_capped(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: transient("HTTP 429", retry_after=10**9))
    sched = make_scheduler(provider, max_retry_after=600)
    sched.schedule("t1", T0)
    await sched.run_due()
    assert sched.state("t1").next_attempt_at == T0 + 600


@scheduler_test
async def test_retry_delay_never_below_min_refresh_interval(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: transient())
    sched = make_scheduler(provider, backoff=BackoffPolicy(base=1, cap=2, jitter=0))
    sched.schedule("t1", T0)
    await sched.run_due()
    assert sched.state("t1").next_attempt_at == T0 + 10


@scheduler_test
async def test_permanent_failure_stops_retries_and_shows_failed(make_scheduler, clock):
    provider = Provider(
        clock,
        lambda t, n: transient() if n == 1 else RefreshOutcome("permanent", error="invalid_grant"),
    )
    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(provider, on_change=changes.append)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.advance(10)
    assert len(provider.calls) == 2
    st = sched.state("t1")
    assert st is not None
    assert (st.refresh_state, st.last_error, st.next_attempt_at) == (
        "failed",
        "invalid_grant",
        None,
    )
    assert len(sched) == 0 and st in sched.states()
    assert [c.refresh_state for c in changes] == ["retrying", "failed"]
    await clock.advance(3600)
    assert len(provider.calls) == 2
    sched.cancel("t1")
    assert sched.state("t1") is None and sched.states() == []


@scheduler_test
async def test_gone_removes_the_entry_silently(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: RefreshOutcome("gone"))
    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(provider, on_change=changes.append)
    sched.schedule("t1", T0)
    assert await sched.run_due() == 1
    assert sched.state("t1") is None and len(sched) == 0 and changes == []


# --- scheduling ---------------------------------------------------------------------------------


@scheduler_test
async def test_proactive_rescheduling_after_success(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok(clock.time() + 240))
    sched = make_scheduler(provider)
    sched.schedule("t1", T0 + 100)
    await sched.start()
    await clock.advance(99)
    assert provider.calls == []
    await clock.advance(1 + 240 + 240)
    assert [(reason, wall) for _, reason, wall, _ in provider.calls] == [
        ("proactive", T0 + 100),
        ("proactive", T0 + 340),
        ("proactive", T0 + 580),
    ]
    assert sched.state("t1").refresh_state == "scheduled"


@scheduler_test
async def test_success_without_next_time_unschedules_and_reports_idle(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok(None))
    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(provider, on_change=changes.append)
    sched.schedule("t1", T0, reason="startup")
    assert await sched.run_due() == 1
    assert provider.calls[0][1] == "startup"
    assert sched.state("t1") is None and len(sched) == 0
    assert [(c.refresh_state, c.next_attempt_at) for c in changes] == [("idle", None)]


@scheduler_test
async def test_schedule_replaces_the_earlier_entry(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider)
    sched.schedule("t1", T0 + 50)
    sched.schedule("t1", T0 + 200)
    await sched.start()
    await clock.advance(300)
    assert [wall for _, _, wall, _ in provider.calls] == [T0 + 200]


@scheduler_test
async def test_earlier_schedule_wakes_the_sleeping_loop(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, max_sleep=30, clock_check_interval=30)
    sched.schedule("far", T0 + 3600)
    await sched.start()
    await clock.settle()
    assert clock.next_deadline() == 1_000.0 + 30  # sleeping, bounded by max_sleep
    sched.schedule("t1", T0 + 5)
    await clock.advance(5)
    assert [(tok, wall) for tok, _, wall, _ in provider.calls] == [("t1", T0 + 5)]
    assert clock.pending_sleeps == 1  # no busy loop: one sleep, nothing spinning


@scheduler_test
async def test_rate_limit_one_attempt_per_token_per_interval(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, min_refresh_interval=10)
    sched.schedule("t1", T0)
    assert await sched.run_due() == 1
    await clock.advance(3)
    st = sched.schedule("t1", clock.time())  # asked again 3 s later
    assert st.next_attempt_at == T0 + 10  # deferred to last attempt + interval
    assert await sched.run_due() == 0
    await sched.start()
    await clock.advance(6.5)
    assert len(provider.calls) == 1
    await clock.advance(0.5)
    assert [mono for _, _, _, mono in provider.calls] == [1_000.0, 1_010.0]


@scheduler_test
async def test_rate_limit_holds_for_success_with_a_past_next_time(make_scheduler, clock):
    # A broker bug returning "refresh again immediately" must not hammer the provider.
    provider = Provider(clock, lambda t, n: ok(clock.time() - 5))
    sched = make_scheduler(provider, min_refresh_interval=10)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.advance(35)
    assert provider.monos() == [1_000.0, 1_010.0, 1_020.0, 1_030.0]


@scheduler_test
async def test_a_wall_clock_jump_does_not_bypass_the_rate_limit(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, min_refresh_interval=10)
    sched.schedule("t1", T0)
    assert await sched.run_due() == 1
    sched.schedule("t1", clock.time())  # deferred to T0 + 10 (wall)
    clock.jump_wall(3600)  # wall time says "long overdue", monotonic says 0 s passed
    assert await sched.run_due() == 0
    assert sched.state("t1").next_attempt_at == T0 + 3600 + 10
    await clock.advance(10)
    assert await sched.run_due() == 1


@scheduler_test
async def test_other_tokens_are_not_rate_limited_by_each_other(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider)
    sched.schedule("a", T0)
    sched.schedule("b", T0)
    assert await sched.run_due() == 2


@scheduler_test
async def test_cancel_prevents_the_attempt(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider)
    sched.schedule("t1", T0 + 10)
    sched.schedule("t2", T0 + 10)
    await sched.start()
    sched.cancel("t1")
    sched.cancel("unknown")  # harmless
    assert sched.state("t1") is None and len(sched) == 1
    await clock.advance(60)
    assert [tok for tok, *_ in provider.calls] == ["t2"]


@scheduler_test
async def test_cancel_during_an_attempt_drops_its_outcome(make_scheduler, clock):
    release = asyncio.Event()

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        await release.wait()
        return transient()

    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(refresh, on_change=changes.append)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    assert sched.in_flight == 1
    sched.cancel("t1")
    release.set()
    await clock.settle()
    assert sched.state("t1") is None and changes == [] and sched.in_flight == 0
    await clock.advance(100)
    assert sched.state("t1") is None


@scheduler_test
async def test_schedule_during_an_attempt_is_kept_and_never_runs_twice_at_once(
    make_scheduler, clock
):
    release = asyncio.Event()
    running = Counter[str]()
    max_running = Counter[str]()
    reasons: list[str] = []

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        reasons.append(reason)
        running[token_id] += 1
        max_running[token_id] = max(max_running[token_id], running[token_id])
        await release.wait()
        running[token_id] -= 1
        return ok(None)

    sched = make_scheduler(refresh)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    await clock.advance(20)  # the attempt hangs; a new request arrives meanwhile
    sched.schedule("t1", clock.time(), reason="keep-warm")
    await clock.advance(20)
    assert max_running["t1"] == 1
    assert reasons == ["proactive"]
    release.set()
    await clock.settle()
    # the request made during the attempt survived it and ran right after, never alongside
    assert reasons == ["proactive", "keep-warm"]
    assert max_running["t1"] == 1 and sched.state("t1") is None


# --- wake, concurrency, structure ---------------------------------------------------------------


@scheduler_test
async def test_wall_clock_jump_runs_overdue_entries_on_the_next_check(
    make_scheduler, clock, caplog
):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, max_sleep=30, wake_threshold=60, clock_check_interval=30)
    sched.schedule("t1", T0 + 3600)
    await sched.start()
    await clock.advance(10)
    caplog.set_level(logging.INFO, logger="jupyter_offline_token.refresh")
    clock.jump_wall(7200)  # laptop slept 2 h: monotonic time did not move
    await clock.advance(20)  # the loop's next check (clock_check_interval), not an hour
    assert [wall for _, _, wall, _ in provider.calls] == [T0 + 7230]
    assert clock.monotonic() == 1_030.0
    jumps = [r.getMessage() for r in caplog.records if "clock jumped" in r.getMessage()]
    assert jumps == ["clock jumped by +7200 s (suspend/resume?): re-evaluating 1 schedules"]


@scheduler_test
async def test_wall_clock_jump_is_seen_within_a_second_by_default(make_scheduler, clock, caplog):
    """asyncio sleeps stop in suspend: the 30 s sleep is cut in cheap 1 s clock checks."""
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider)  # max_sleep 30, clock_check_interval 1
    sched.schedule("t1", T0 + 3600)
    await sched.start()
    await clock.advance(10.5)
    caplog.set_level(logging.INFO, logger="jupyter_offline_token.refresh")
    clock.jump_wall(7200)
    await clock.advance(0.5)  # the next clock check, not the end of the 30 s sleep
    assert [wall for _, _, wall, _ in provider.calls] == [T0 + 7211]
    assert any("clock jumped by +7200 s" in r.getMessage() for r in caplog.records)
    assert clock.pending_sleeps == 1  # still one sleep at a time


@scheduler_test
async def test_check_clock_runs_overdue_entries_at_once(make_scheduler, clock, caplog):
    """Entry points (an access-token request, the engine's hooks) call check_clock()."""
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, clock_check_interval=30)
    sched.schedule("t1", T0 + 3600)
    await sched.start()
    await clock.advance(10)
    clock.jump_wall(7200)
    caplog.set_level(logging.INFO, logger="jupyter_offline_token.refresh")
    sched.check_clock()
    await clock.settle()  # no time passes
    assert [wall for _, _, wall, _ in provider.calls] == [T0 + 7210]
    jumps = [r.getMessage() for r in caplog.records if "clock jumped" in r.getMessage()]
    assert len(jumps) == 1  # the loop does not log the same jump again


@scheduler_test
async def test_no_jump_logged_for_normal_time(make_scheduler, clock, caplog):
    caplog.set_level(logging.INFO, logger="jupyter_offline_token.refresh")
    sched = make_scheduler(Provider(clock, lambda t, n: ok()))
    sched.schedule("t1", T0 + 3600)
    await sched.start()
    await clock.advance(7200)
    assert not [r for r in caplog.records if "clock jumped" in r.getMessage()]


@scheduler_test
async def test_bounded_concurrency_with_ten_thousand_due_entries(make_scheduler, clock):
    in_flight = 0
    peak = 0
    calls = Counter[str]()

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        calls[token_id] += 1
        await asyncio.sleep(0)  # yield so other attempts could overlap
        await asyncio.sleep(0)
        in_flight -= 1
        return ok(None)

    sched = make_scheduler(refresh, max_concurrency=4)
    ids = [f"tok-{i}" for i in range(10_000)]
    for i, token_id in enumerate(ids):
        sched.schedule(token_id, T0 - 10_000 + i)  # all overdue at startup
    await sched.start()
    await clock.settle()
    assert peak == 4
    assert len(calls) == 10_000 and set(calls.values()) == {1}
    assert len(sched) == 0 and sched.heap_size == 0


@scheduler_test
async def test_due_order_is_kept_when_slots_are_scarce(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, max_concurrency=1)
    for i in (3, 1, 2, 0):
        sched.schedule(f"t{i}", T0 - 10 + i)
    assert await sched.run_due() == 4
    assert [tok for tok, *_ in provider.calls] == ["t0", "t1", "t2", "t3"]


@scheduler_test
async def test_one_heap_and_one_loop_task_for_all_tokens(make_scheduler, clock):
    sched = make_scheduler(Provider(clock, lambda t, n: ok()))
    for i in range(1_000):
        sched.schedule(f"t{i}", T0 + 3600 + i)
    await sched.start()
    await clock.settle()
    names = [t.get_name() for t in our_tasks()]
    assert names.count(LOOP_TASK_NAME) == 1
    assert not [n for n in names if n.startswith(ATTEMPT_TASK_PREFIX)]
    assert clock.pending_sleeps == 1
    assert sched.heap_size == 1_000


@scheduler_test
async def test_stale_heap_items_are_compacted(make_scheduler, clock):
    sched = make_scheduler(Provider(clock, lambda t, n: ok()))
    sched.schedule("other", T0 + 10)
    for i in range(1_000):
        sched.schedule("t1", T0 + 100 + i)
    assert len(sched) == 2
    assert sched.heap_size <= 3 * len(sched)
    sched.cancel("t1")
    sched.cancel("other")
    assert sched.heap_size <= 1


@scheduler_test
async def test_raising_callback_does_not_kill_the_loop(make_scheduler, clock, caplog):
    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        if token_id == "bad":
            raise RuntimeError("boom: refresh_token=secret-value")
        return ok()

    caplog.set_level(logging.DEBUG, logger="jupyter_offline_token.refresh")
    sched = make_scheduler(refresh)
    sched.schedule("bad", T0)
    await sched.start()
    await clock.settle()
    assert sched.running
    st = sched.state("bad")
    assert st is not None and st.refresh_state == "retrying"
    assert st.last_error == "internal error (RuntimeError)"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in text and "secret-value" not in text
    assert not any(r.exc_info for r in caplog.records)
    sched.schedule("good", clock.time() + 5)
    await clock.advance(10)
    assert sched.state("good") is None  # ran and finished
    assert sched.state("bad").retry_count == 2


@scheduler_test
async def test_non_outcome_result_counts_as_transient(make_scheduler, clock):
    async def refresh(token_id: str, reason: str):
        return "yes"

    sched = make_scheduler(refresh)
    sched.schedule("t1", T0)
    await sched.run_due()
    assert sched.state("t1").refresh_state == "retrying"


@scheduler_test
async def test_on_change_is_awaited_and_its_errors_are_ignored(make_scheduler, clock, caplog):
    seen: list[tuple[str, int]] = []

    async def on_change(state: ScheduleEntryState) -> None:
        await asyncio.sleep(0)
        seen.append((state.refresh_state, state.retry_count))
        if len(seen) == 1:
            raise OSError("disk full")

    provider = Provider(clock, lambda t, n: transient() if n <= 2 else ok(clock.time() + 100))
    sched = make_scheduler(provider, on_change=on_change)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.advance(10 + 20)
    assert seen == [("retrying", 1), ("retrying", 2), ("scheduled", 0)]
    assert sched.running
    assert any(
        "on_change" in r.getMessage() and "OSError" in r.getMessage() for r in caplog.records
    )


@scheduler_test
async def test_on_change_gets_a_copy(make_scheduler, clock):
    seen: list[ScheduleEntryState] = []
    sched = make_scheduler(Provider(clock, lambda t, n: transient()), on_change=seen.append)
    sched.schedule("t1", T0)
    await sched.run_due()
    seen[0].retry_count = 99
    assert sched.state("t1").retry_count == 1


# --- start / stop ------------------------------------------------------------------------------


@scheduler_test
async def test_stop_waits_for_running_refreshes_to_finish(make_scheduler, clock):
    release = asyncio.Event()
    changes: list[ScheduleEntryState] = []

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        await release.wait()
        return ok(clock.time() + 100)

    sched = make_scheduler(refresh, on_change=changes.append)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    stopping = asyncio.ensure_future(sched.stop(timeout=5))
    await clock.settle()
    assert not stopping.done()  # the refresh (maybe mid-rotation) is not cut off
    release.set()
    await clock.settle()
    assert stopping.done()
    await stopping
    assert [c.refresh_state for c in changes] == ["scheduled"]
    assert our_tasks() == [] and not sched.running


@scheduler_test
async def test_stop_is_bounded_and_leaves_no_pending_task(make_scheduler, clock):
    cancelled = asyncio.Event()

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        try:
            await asyncio.Event().wait()  # a provider that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    sched = make_scheduler(refresh)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    before = set(asyncio.all_tasks())
    stopping = asyncio.ensure_future(sched.stop(timeout=5))
    await clock.advance(4)
    assert not stopping.done()
    await clock.advance(1)
    assert cancelled.is_set()
    assert stopping.done()
    await stopping
    assert our_tasks() == []
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - {asyncio.current_task()}
    assert leftover <= before - {t for t in before if t.get_name().startswith(LOOP_TASK_NAME)}
    assert clock.pending_sleeps == 0
    # the interrupted entry stays scheduled (rate limit kept), so a restarted loop tries again
    st = sched.state("t1")
    assert st is not None and st.next_attempt_at == T0 + 10


@scheduler_test
async def test_stop_gives_up_on_a_refresh_that_ignores_cancellation(make_scheduler, clock, caplog):
    done = asyncio.Event()

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        while not done.is_set():
            try:
                await done.wait()
            except asyncio.CancelledError:
                continue  # a badly behaved callback
        return ok()

    sched = make_scheduler(refresh)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    stopping = asyncio.ensure_future(sched.stop(timeout=5))
    await clock.advance(5)
    assert not stopping.done()  # cancelled, now in its grace period
    await clock.advance(1)
    assert stopping.done()
    await stopping
    assert "ignored cancellation" in caplog.text
    assert sched.in_flight == 1  # left behind, still running
    done.set()
    await clock.settle()
    assert sched.in_flight == 0


@scheduler_test
async def test_start_is_idempotent_and_restartable(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider)
    await sched.start()
    await sched.start()
    await clock.settle()
    assert [t.get_name() for t in our_tasks()].count(LOOP_TASK_NAME) == 1
    await sched.stop()
    assert not sched.running
    sched.schedule("t1", T0 + 5)
    await sched.start()
    await clock.advance(5)
    assert len(provider.calls) == 1


@run_async
async def test_system_clock_reads_the_real_clocks():
    clock = SystemClock()
    before = time.time()
    await clock.sleep(0)
    assert before <= clock.time() <= time.time()
    assert clock.monotonic() <= time.monotonic()


@scheduler_test
async def test_counts_follow_every_state_change(make_scheduler, clock):
    script = {"a": transient(), "b": RefreshOutcome("permanent", error="invalid_grant")}
    provider = Provider(clock, lambda t, n: script.get(t, ok(clock.time() + 100)))
    sched = make_scheduler(provider)
    for token_id in ("a", "b", "c"):
        sched.schedule(token_id, T0)
    assert sched.counts() == {"scheduled": 3, "retrying": 0, "failed": 0}
    await sched.run_due()
    assert sched.counts() == {"scheduled": 1, "retrying": 1, "failed": 1}
    script["a"] = ok(None)
    await clock.advance(10)
    await sched.run_due()
    assert sched.counts() == {"scheduled": 1, "retrying": 0, "failed": 1}
    sched.cancel("b")
    sched.cancel("c")
    assert sched.counts() == {"scheduled": 0, "retrying": 0, "failed": 0}


@scheduler_test
async def test_report_transient_counts_an_on_demand_failure(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok(None))
    changes: list[ScheduleEntryState] = []
    sched = make_scheduler(provider, on_change=changes.append)
    st = await sched.report_transient("t1", "HTTP 503", retry_after=30)
    assert st is not None
    assert (st.refresh_state, st.retry_count, st.failing_since) == ("retrying", 1, T0)
    assert st.next_attempt_at == T0 + 30 and changes == [st]
    st = await sched.report_transient("t1", "HTTP 503")
    assert st.retry_count == 2 and st.next_attempt_at == T0 + 20  # backoff continues
    assert sched.counts()["retrying"] == 1
    await clock.advance(20)
    assert await sched.run_due() == 1
    assert provider.calls[0][1] == "retry"
    assert sched.state("t1") is None and changes[-1].refresh_state == "idle"
    assert sched.counts() == {"scheduled": 0, "retrying": 0, "failed": 0}


@scheduler_test
async def test_report_transient_while_an_attempt_waits_defers_it(make_scheduler, clock):
    """An on-demand failure while the scheduler's attempt waits (behind the broker's lock): the
    failure is counted once, and the waiting attempt comes back deferred to the backoff's time
    (the broker asks retry_wait), instead of trying the failing provider again at once."""
    release = asyncio.Event()
    calls: list[float] = []

    async def refresh(token_id: str, reason: str) -> RefreshOutcome:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            await release.wait()
            if sched.retry_wait(token_id) > 0:  # what the broker does under its lock
                return RefreshOutcome("deferred")
        return ok(None)

    sched = make_scheduler(refresh)
    sched.schedule("t1", T0)
    await sched.start()
    await clock.settle()
    st = await sched.report_transient("t1", "HTTP 503")
    assert st is not None and st.retry_count == 1 and st.next_attempt_at == T0 + 10
    assert sched.retry_wait("t1") == 10
    release.set()
    await clock.settle()
    st = sched.state("t1")
    assert (st.refresh_state, st.retry_count, st.next_attempt_at) == ("retrying", 1, T0 + 10)
    await clock.advance(10)
    assert calls == [1_000.0, 1_010.0]
    assert sched.state("t1") is None and sched.retry_wait("t1") == 0
    with pytest.raises(ValueError):
        await sched.report_transient("")


@scheduler_test
async def test_retry_wait_is_the_time_of_the_next_background_attempt(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: transient() if n == 1 else ok())
    sched = make_scheduler(
        provider, backoff=BackoffPolicy(base=2, cap=4, jitter=0), min_refresh_interval=1
    )
    assert sched.retry_wait("t1") == 0  # never failed: try now
    sched.schedule("t1", T0)
    await sched.run_due()
    assert sched.state("t1").next_attempt_at == T0 + 2  # the policy's 2 s, not 10
    assert sched.retry_wait("t1") == 2
    await clock.advance(1.5)
    assert sched.retry_wait("t1") == 0.5
    await clock.advance(0.5)
    assert await sched.run_due() == 1
    assert sched.retry_wait("t1") == 0


@scheduler_test
async def test_an_on_demand_attempt_counts_for_the_rate_limit(make_scheduler, clock):
    provider = Provider(clock, lambda t, n: ok())
    sched = make_scheduler(provider, min_refresh_interval=10)
    sched.attempt_started("t1")  # the broker went to the provider for a caller
    sched.schedule("t1", T0 + 2)
    assert sched.state("t1").next_attempt_at == T0 + 10
    await clock.advance(2)
    assert await sched.run_due() == 0
    await clock.advance(8)
    assert await sched.run_due() == 1


def test_attempt_policy_alone_decides_when_a_token_may_next_be_tried(clock):
    """Rate limit on the monotonic clock (a wall jump does not lift it), backoff never under
    it, a provider's Retry-After lengthens it up to the cap; a forgotten token is free."""
    policy = AttemptPolicy(
        backoff=NO_JITTER,
        min_interval=10.0,
        max_retry_after=600.0,
        wall=clock.time,
        monotonic=clock.monotonic,
    )
    assert policy.earliest_allowed("t1") == -math.inf
    policy.started("t1")
    assert policy.earliest_allowed("t1") == T0 + 10.0
    clock.jump_wall(3600)  # a wake: the wall clock moved, the monotonic one did not
    assert policy.earliest_allowed("t1") == T0 + 3600 + 10.0
    policy.forget("t1")
    assert policy.earliest_allowed("t1") == -math.inf
    assert [policy.retry_delay(n, None) for n in (1, 2, 6, 7)] == [10.0, 20.0, 300.0, 300.0]
    assert policy.retry_delay(1, 7.0) == 10.0  # never under the rate limit
    assert policy.retry_delay(1, 45.0) == 45.0
    assert policy.retry_delay(1, 86400.0) == 600.0  # capped
    assert policy.retry_delay(1, math.nan) == 10.0
