"""When a token may next be tried: the backoff and attempt policy, the outcome of one attempt,
and the RefreshGate through which on-demand attempts ask the one owner of retry state.

Pure values and protocols: no asyncio, no vault, no OAuth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from .. import defaults

OutcomeKind = Literal["success", "transient", "permanent", "gone", "deferred"]
_OUTCOME_KINDS = ("success", "transient", "permanent", "gone", "deferred")

# Jitter only spreads retries over time; it protects nothing, so a non-crypto generator is right.
_JITTER_RNG = random.Random()  # noqa: S311


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh attempt returned to the scheduler.

    ``next_refresh_at`` (success): wall time of the next proactive refresh, ``None`` = do not
    reschedule. ``retry_after`` (transient): the provider's hint in seconds (429 Retry-After).
    ``error``: safe text (never a secret) for health and ``last_error``. ``deferred``: no attempt
    was made (a failure reported meanwhile moved the retry later); nothing is counted.
    """

    kind: OutcomeKind
    next_refresh_at: float | None = None
    retry_after: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _OUTCOME_KINDS:
            raise ValueError(
                f"RefreshOutcome.kind must be one of {_OUTCOME_KINDS}, not {self.kind!r}"
            )


class RefreshGate(Protocol):
    """The one owner of a token's retry state, asked by the broker before an on-demand attempt.

    Background attempts are the scheduler's own; an on-demand attempt (an access-token request
    that finds no usable cached token) asks ``retry_wait`` first, tells ``attempt_started`` when
    it goes to the provider, and reports a transient failure with ``report_transient``. So at most
    one attempt per ``min_refresh_interval`` holds for both kinds together while the provider
    fails, and the answer to a refused caller is the true time of the next attempt.
    """

    def retry_wait(self, token_id: str) -> float:
        """Seconds until the token may be tried again (0: now)."""
        ...

    def attempt_started(self, token_id: str) -> None: ...

    async def report_transient(
        self, token_id: str, error: str | None = None, *, retry_after: float | None = None
    ) -> ScheduleEntryState | None: ...

    def check_clock(self) -> None:
        """Cheap: notice a wall-clock jump (a laptop's wake) and re-evaluate schedules at once."""
        ...


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff: ``base * 2**(n-1)`` seconds for the n-th retry, capped, with jitter.

    With the defaults: 10, 20, 40, 80, 160, 300, 300, ... seconds, each scaled by a random factor
    in ``[1 - jitter, 1 + jitter]`` and never above ``cap * (1 + jitter)``.
    """

    base: float = defaults.BACKOFF_BASE
    cap: float = defaults.BACKOFF_MAX
    jitter: float = defaults.BACKOFF_JITTER

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(
                f"backoff base must be a positive number of seconds, not {self.base!r}"
            )
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError(f"backoff cap must be a number of seconds >= base, not {self.cap!r}")
        if not (0 <= self.jitter < 1):
            raise ValueError(f"backoff jitter must be a fraction in [0, 1), not {self.jitter!r}")

    def delay(self, retry_count: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_count`` (1 = the first retry)."""
        if retry_count < 1:
            raise ValueError(f"retry_count starts at 1, got {retry_count!r}")
        # The exponent is bounded so a token failing for months cannot overflow a float.
        raw = min(self.cap, self.base * 2.0 ** min(retry_count - 1, 62))
        if self.jitter:
            raw *= 1.0 + (rng or _JITTER_RNG).uniform(-self.jitter, self.jitter)
        return max(0.0, min(raw, self.cap * (1.0 + self.jitter)))


@dataclass
class ScheduleEntryState:
    """What health and the REST API show for one scheduled token.

    ``refresh_state`` is ``scheduled``, ``retrying`` or ``failed``; ``idle`` only appears in the
    ``on_change`` notification sent when a successful refresh leaves nothing to schedule.
    ``failing_since`` is the wall time of the first transient failure of the current run.
    """

    token_id: str
    refresh_state: str
    next_attempt_at: float | None = None
    retry_count: int = 0
    last_error: str | None = None
    failing_since: float | None = None


class AttemptPolicy:
    """When a token may next be tried, for background and on-demand attempts alike: at most one
    attempt per ``min_interval`` seconds (on the monotonic clock, which a suspend does not
    advance), and after the n-th transient failure in a row the backoff's delay, or the
    provider's Retry-After (capped at ``max_retry_after``) when that is longer.

    The scheduler (the RefreshGate) holds one and asks it; nothing else keeps attempt times.
    """

    def __init__(
        self,
        *,
        backoff: BackoffPolicy,
        min_interval: float,
        max_retry_after: float,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.backoff = backoff
        self.min_interval = min_interval
        self.max_retry_after = max_retry_after
        self._wall = wall
        self._monotonic = monotonic
        self._rng = rng
        self._last_attempt: dict[str, float] = {}  # token -> monotonic start of its last attempt

    def started(self, token_id: str) -> None:
        """An attempt (or a failure seen outside the scheduler) happens now."""
        self._last_attempt[token_id] = self._monotonic()

    def forget(self, token_id: str) -> None:
        self._last_attempt.pop(token_id, None)

    def earliest_allowed(self, token_id: str) -> float:
        """Wall time before which ``token_id`` may not be attempted (the rate limit)."""
        last = self._last_attempt.get(token_id)
        if last is None:
            return -math.inf
        remaining = last + self.min_interval - self._monotonic()
        return self._wall() + remaining if remaining > 0 else -math.inf

    def retry_delay(self, retry_count: int, retry_after: float | None) -> float:
        """Seconds before retry number ``retry_count``: backoff, never under the rate limit,
        longer if the provider asked (Retry-After, capped)."""
        delay = max(self.backoff.delay(retry_count, self._rng), self.min_interval)
        hint = finite_or_none(retry_after)
        if hint is not None and hint > 0:
            delay = max(delay, min(hint, self.max_retry_after))
        return delay

    def prune(self, *, tracked: int | None = None) -> None:
        """Drop attempt times older than the rate limit; with ``tracked`` (the tokens the caller
        still follows), only once the map has grown well past it."""
        if tracked is not None and len(self._last_attempt) <= 2 * tracked + 64:
            return
        horizon = self._monotonic() - self.min_interval
        self._last_attempt = {t: m for t, m in self._last_attempt.items() if m > horizon}


def finite_or_none(value: float | None) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
