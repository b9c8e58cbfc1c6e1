"""The scheduler's calls into other code, made safe: a refresh callback or an ``on_change``
hook that raises (or returns the wrong type) is logged by location and never stops scheduling."""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable

from .policy import RefreshOutcome, ScheduleEntryState

Refresh = Callable[[str, str], Awaitable[RefreshOutcome]]
OnChange = Callable[[ScheduleEntryState], "Awaitable[None] | None"]


async def call_refresh(
    refresh: Refresh, token_id: str, reason: str, log: logging.Logger
) -> RefreshOutcome:
    """``refresh(token_id, reason)``; an exception or a wrong result is a transient outcome."""
    try:
        outcome = await refresh(token_id, reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning(
            "refresh of token %s raised %s%s; treating it as a transient failure",
            token_id,
            type(exc).__name__,
            where(exc),
        )
        return RefreshOutcome("transient", error=f"internal error ({type(exc).__name__})")
    if not isinstance(outcome, RefreshOutcome):
        log.error(
            "refresh of token %s returned %s, not a RefreshOutcome; treating it as transient",
            token_id,
            type(outcome).__name__,
        )
        return RefreshOutcome("transient", error="internal error (invalid refresh result)")
    return outcome


async def notify_change(
    on_change: OnChange | None, state: ScheduleEntryState, log: logging.Logger
) -> None:
    """Call ``on_change(state)`` (sync or async); an exception is logged and ignored."""
    if on_change is None:
        return
    try:
        result = on_change(state)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning(
            "on_change for token %s raised %s%s; ignored",
            state.token_id,
            type(exc).__name__,
            where(exc),
        )


def where(exc: BaseException) -> str:
    """`` at file.py:12 in func`` for the innermost frame: enough to find a bug, no message text
    (an exception's message may quote data the log must not hold)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
