"""Argument checks every backend makes before touching its database (ValueError, nothing
changed)."""

from __future__ import annotations

from typing import Any

from ...errors import TooManyPendingConsents
from ...models import (
    EXPIRED,
    FAILED,
    IDLE,
    REFRESH_FAILED,
    RETRYING,
    REVOKED,
    SCHEDULED,
    TOKEN_STATUSES,
)
from ..base import ERROR_KINDS

REFRESH_STATES = (IDLE, SCHEDULED, RETRYING, REFRESH_FAILED)
# Entries the retention purge deletes once unchanged for that long.
PURGEABLE_STATUSES = (EXPIRED, FAILED, REVOKED)
# Columns a task update may set (spec and identity never change after creation).
TASK_MUTABLE = frozenset(
    {
        "status",
        "persistent_token_id",
        "progress",
        "message",
        "result",
        "error",
        "started_at",
        "completed_at",
        "queued_at",
        "credential_hash",
        "runner",
    }
)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_settings(audit_retention: int, max_pending_consents: int | None) -> None:
    if isinstance(audit_retention, bool) or not isinstance(audit_retention, int):
        raise ValueError("audit_retention must be an integer")
    if audit_retention < 1:
        raise ValueError("audit_retention must be at least 1")
    if max_pending_consents is not None and not _positive_int(max_pending_consents):
        raise ValueError("max_pending_consents must be a positive integer or None")


def check_pool_size(pool_size: int) -> None:
    if not _positive_int(pool_size):
        raise ValueError("pool_size must be a positive integer")


def scopes_text(scopes: list[str]) -> str:
    """The space-separated column value; ValueError for an empty or whitespace scope."""
    for scope in scopes:
        if not isinstance(scope, str) or not scope or scope != "".join(scope.split()):
            raise ValueError("each scope must be a non-empty string without whitespace")
    return " ".join(scopes)


def check_state_hash(state_hash: str) -> None:
    if not state_hash:
        raise ValueError("state_hash must not be empty")


def refresh_secret(refresh_token: str) -> bytes:
    """The plaintext of a refresh token to store (``activate``)."""
    if not isinstance(refresh_token, str) or not refresh_token:
        raise ValueError("refresh_token must be a non-empty string")
    return refresh_token.encode()


def rotated_secret(new_refresh_token: str | None) -> bytes | None:
    """The plaintext of a rotated refresh token (``record_refresh``; None: keep the old)."""
    if new_refresh_token is None:
        return None
    if not isinstance(new_refresh_token, str) or not new_refresh_token:
        raise ValueError("new_refresh_token must be a non-empty string or None")
    return new_refresh_token.encode()


def check_listing(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    if offset < 0:
        raise ValueError("offset must not be negative")


def check_audit_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError("limit must not be negative")


def check_lease_args(holder: str, ttl: float) -> None:
    if not holder:
        raise ValueError("holder must not be empty")
    if not ttl > 0:
        raise ValueError("ttl must be positive")


def check_sweep_args(name: str, holder: str, interval: float) -> None:
    if not name:
        raise ValueError("name must not be empty")
    if not holder:
        raise ValueError("holder must not be empty")
    if not interval > 0:
        raise ValueError("interval must be positive")


def check_refresh_state(refresh_state: str) -> None:
    if refresh_state not in REFRESH_STATES:
        raise ValueError(f"unknown refresh state {refresh_state!r}")


def check_error_kind(kind: str | None) -> None:
    if kind is not None and kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}")


def check_status(status: str) -> None:
    if status not in TOKEN_STATUSES:
        raise ValueError(f"unknown token status {status!r}")


def task_changes(changes: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """The columns (sorted) and values of a task update; ValueError for an immutable one."""
    unknown = set(changes) - TASK_MUTABLE - {"updated_at"}
    if unknown:
        raise ValueError(f"cannot update task column(s) {sorted(unknown)}")
    columns = sorted(changes)
    return columns, [changes[name] for name in columns]


def check_pending_count(row: Any, cap: int, now: float) -> None:
    """TooManyPendingConsents when the ``sql.COUNT_PENDING`` row reaches ``cap``, with
    ``retry_after`` = when the oldest expires."""
    if row["n"] >= cap:
        raise TooManyPendingConsents(
            f"{row['n']} consents of this user are still waiting to be granted (at most "
            f"{cap}, OfflineTokenApp.max_pending_consents): grant or delete one, or wait "
            "until one expires",
            retry_after=max(1.0, float(row["first"]) - now),
        )
