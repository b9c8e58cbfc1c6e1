"""Token health: one level, a sentence saying what happened, and the action that fixes it.

Pure functions of a token's stored fields and "now", so the REST handlers, the dashboard and the
tests all see the same verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from .errors import CONFIGURATION_ERRORS
from .models import (
    ACTIVE,
    EXPIRED,
    FAILED,
    KIND_CONFIGURATION,
    KIND_DECRYPT,
    KIND_GRANT_REJECTED,
    PENDING,
    REFRESH_FAILED,
    RETRYING,
    REVOKED,
    iso,
)

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
LEVEL_PENDING = "pending"
# Worst first: the order overall_level() uses.
LEVELS = (UNHEALTHY, DEGRADED, LEVEL_PENDING, HEALTHY)

ACTION_NONE = "none"
ACTION_WAIT = "wait"
ACTION_REQUEST_CONSENT = "request_consent"
ACTION_FIX_CONFIGURATION = "fix_configuration"

# The kind of a failure (a token's ``last_error_kind``): what must happen next, decided by
# failure_kind() from the code the broker stores, never from an error's text.

# last_error of an entry whose stored token cannot be decrypted
DECRYPT_FAILED = "cannot decrypt: wrong key or tampered"
# last_error of an entry whose refresh was cut short (process killed) after the provider had
# answered: the stored refresh token was rotated out and must never be sent (issue 11).
REFRESH_INTERRUPTED = "refresh interrupted after the provider answered"

_MAX_ERROR_CHARS = 200


def failure_kind(error_code: str | None) -> str | None:
    """The one decision of a failure's kind, from the code the broker stores as ``last_error``
    (an OAuth error code or DECRYPT_FAILED), never from a sentence. None: no failure, or one
    whose action is the default (request consent again)."""
    if not error_code:
        return None
    if error_code == DECRYPT_FAILED:
        return KIND_DECRYPT
    if error_code in CONFIGURATION_ERRORS:
        return KIND_CONFIGURATION
    return KIND_GRANT_REJECTED


def failure_detail(error: str | None, kind: str | None) -> str:
    """The sentence for a failed token: what happened around ``error`` (the provider's code or
    a short fact, stored as ``last_error``), then the action."""
    if kind == KIND_CONFIGURATION:
        return (
            f"the provider rejected the client ({error or 'invalid_client'}): "
            "fix the client configuration"
        )
    if kind == KIND_DECRYPT:
        return (
            "the stored token cannot be decrypted (wrong key or tampered): check "
            "encryption_keys, or request consent again"
        )
    if error == REFRESH_INTERRUPTED:
        return (
            "a refresh was interrupted after the provider answered (the server stopped before "
            "storing the new refresh token), so the stored one is no longer valid: request "
            "consent again"
        )
    reason = f" ({error})" if error else ""
    return f"refresh token rejected by the provider{reason}: request consent again"


def token_health(
    *,
    status: str,
    refresh_state: str,
    last_error: str | None,
    next_attempt_at: float | None,
    retry_count: int,
    failing_since: float | None,
    now: float,
    last_error_kind: str | None = None,
    last_refresh_at: float | None = None,
) -> dict[str, Any]:
    """The ``health`` object of one token (see the REST contract).

    Never raises for odd stored values: an unknown status is reported as unhealthy, because a
    listing must still render when one row is strange.
    """
    error = _short(last_error)
    if last_error_kind is None:
        last_error_kind = failure_kind(last_error)
    if status == PENDING:
        return _health(LEVEL_PENDING, "waiting for the user to grant consent", ACTION_NONE)
    if status == EXPIRED:
        return _health(UNHEALTHY, "consent was not granted in time", ACTION_REQUEST_CONSENT)
    if status == REVOKED:
        return _health(
            UNHEALTHY, "access was revoked: request consent again", ACTION_REQUEST_CONSENT
        )
    if status == FAILED or (status == ACTIVE and refresh_state == REFRESH_FAILED):
        return _failed_health(error, last_error_kind, retry_count)
    if status != ACTIVE:
        return _health(UNHEALTHY, f"unknown token status {status[:40]!r}", ACTION_NONE)
    if refresh_state == RETRYING:
        return _health(
            DEGRADED,
            _retrying_detail(error, next_attempt_at, retry_count, failing_since, now),
            ACTION_WAIT,
            next_attempt_at=next_attempt_at,
            retry_count=retry_count,
        )
    detail = "ok"
    if _finite(last_refresh_at):
        assert last_refresh_at is not None
        detail = f"ok, last refresh {_ago(now - last_refresh_at)}"
    return _health(HEALTHY, detail, ACTION_NONE, next_attempt_at=next_attempt_at)


def overall_level(levels: Iterable[str]) -> str:
    """The worst level: unhealthy > degraded > pending > healthy; no tokens is healthy."""
    worst = len(LEVELS) - 1
    for level in levels:
        try:
            worst = min(worst, LEVELS.index(level))
        except ValueError:
            raise ValueError(f"unknown health level {level!r}; expected one of {LEVELS}") from None
    return LEVELS[worst]


def level_counts(levels: Iterable[str]) -> dict[str, int]:
    """How many tokens are at each level, every level present (for ``GET .../health``)."""
    counts = dict.fromkeys(reversed(LEVELS), 0)
    for level in levels:
        if level not in counts:
            raise ValueError(f"unknown health level {level!r}; expected one of {LEVELS}")
        counts[level] += 1
    return counts


def _failed_health(error: str | None, kind: str | None, retry_count: int) -> dict[str, Any]:
    action = (
        ACTION_FIX_CONFIGURATION
        if kind in (KIND_CONFIGURATION, KIND_DECRYPT)
        else ACTION_REQUEST_CONSENT
    )
    return _health(UNHEALTHY, failure_detail(error, kind), action, retry_count=retry_count)


def _retrying_detail(
    error: str | None,
    next_attempt_at: float | None,
    retry_count: int,
    failing_since: float | None,
    now: float,
) -> str:
    head = "provider unreachable"
    if _finite(failing_since):
        assert failing_since is not None
        head += f" since {_clock_time(failing_since, now)}"
    if error:
        head += f" ({error})"
    if _finite(next_attempt_at):
        assert next_attempt_at is not None
        wait = next_attempt_at - now
        when = f"next try in {_duration(wait)}" if wait >= 0.5 else "next try now"
    else:
        when = "next try not scheduled"
    failures = "1 failed attempt" if retry_count == 1 else f"{retry_count} failed attempts"
    return f"{head}, {when} (after {failures})"


def _health(
    level: str,
    detail: str,
    action: str,
    *,
    next_attempt_at: float | None = None,
    retry_count: int = 0,
) -> dict[str, Any]:
    return {
        "level": level,
        "detail": detail,
        "action": action,
        "next_attempt_at": iso(next_attempt_at) if _finite(next_attempt_at) else None,
        "retry_count": retry_count,
    }


def _finite(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _short(text: str | None) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _clock_time(ts: float, now: float) -> str:
    """``12:03:07 UTC`` today, with the date when it is a day or more ago."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    fmt = "%H:%M:%S UTC" if now - ts < 86400 else "%Y-%m-%d %H:%M:%S UTC"
    return moment.strftime(fmt)


def _duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def _ago(seconds: float) -> str:
    if seconds < 0.5:
        return "just now"
    return f"{_duration(seconds)} ago"
