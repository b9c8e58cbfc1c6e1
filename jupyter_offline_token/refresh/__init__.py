"""Refresh: when a token may next be tried (``policy``), when each token is due (``scheduler``),
and the engine that connects the scheduler to the broker, the store and the metrics
(``engine``; import it from ``refresh.engine``: it depends on the broker, which depends on
this package's policy)."""

from .policy import BackoffPolicy, OutcomeKind, RefreshGate, RefreshOutcome, ScheduleEntryState
from .scheduler import Clock, RefreshScheduler, SystemClock

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
