"""Refresh: when a token may next be tried (``policy``), when each token is due (``scheduler``,
with its due-time heap in ``heap``, its clocks in ``clock``, its wake detection in ``wake`` and
its guarded callbacks in ``attempt``), and the engine that connects the scheduler to the broker,
the store and the metrics (``engine``; import it from ``refresh.engine``: it depends on the
broker, which depends on this package's policy)."""

from .clock import Clock, SystemClock
from .policy import BackoffPolicy, OutcomeKind, RefreshGate, RefreshOutcome, ScheduleEntryState
from .scheduler import RefreshScheduler

__all__ = [
    "BackoffPolicy",
    "Clock",
    "OutcomeKind",
    "RefreshGate",
    "RefreshOutcome",
    "RefreshScheduler",
    "ScheduleEntryState",
    "SystemClock",
]
