"""SQL text both backends run, written once with ``?`` placeholders (SQLite's own style);
PostgreSQL converts it with ``pyformat``. Only constants and this package's own column names
are ever formatted into it, never input."""

from __future__ import annotations

from typing import Any

from .records import AUDIT_COLUMNS, RECORD_COLUMNS, TASK_COLUMNS


def pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (shared SQL holds no other ``?`` or ``%``)."""
    if "%" in sql:
        raise ValueError("shared SQL must not contain '%'")
    return sql.replace("?", "%s")


def owner_status_filter(
    owner: str | None, status: str | None, *, prefix: str = ""
) -> tuple[list[str], list[Any]]:
    """The owner/status terms every listing shares (``prefix``: a table alias and a dot)."""
    where: list[str] = []
    params: list[Any] = []
    if owner is not None:
        where.append(f"{prefix}owner = ?")
        params.append(owner)
    if status is not None:
        where.append(f"{prefix}status = ?")
        params.append(status)
    return where, params


def where_clause(where: list[str]) -> str:
    return (" WHERE " + " AND ".join(where)) if where else ""


# The entries health lists: they need someone to act (or are being retried). Written once: the
# tokens_attention partial index (both backends) is used only by queries whose WHERE repeats
# this exact term.
ATTENTION = "(status = 'failed' OR (status = 'active' AND refresh_state IN ('retrying', 'failed')))"

# --- tokens ----------------------------------------------------------------------------------
SELECT_RECORD = f"SELECT {RECORD_COLUMNS} FROM tokens"  # noqa: S608
RECORD_BY_ID = f"{SELECT_RECORD} WHERE id = ?"
RECORD_BY_STATE_HASH = f"{SELECT_RECORD} WHERE state_hash = ?"

INSERT_PENDING = (
    "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, "
    "created_at, updated_at, label, task_id, consent_expires_at, return_to, "
    "state_hash, consent_ct, consent_nonce, consent_key_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Unexpired pending entries of one owner (the pending-consent cap): owner, now.
COUNT_PENDING = (
    "SELECT COUNT(*) AS n, MIN(consent_expires_at) AS first FROM tokens "
    "WHERE owner = ? AND status = 'pending' AND consent_expires_at > ?"
)
CONSENT_COLUMNS = "owner, consent_ct, consent_nonce, consent_key_id"
ERASE_CONSENT = "consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL"
# activate: ct, nonce, key id, subject, scopes, idle_expires_at, now, id.
ACTIVATE = (
    "UPDATE tokens SET status = 'active', secret_ct = ?, secret_nonce = ?, "
    "secret_key_id = ?, subject = ?, scopes = ?, idle_expires_at = ?, "
    "updated_at = ?, refresh_state = 'idle', next_attempt_at = NULL, "
    "retry_count = 0, last_error = NULL, last_error_kind = NULL, "
    "consent_ct = NULL, consent_nonce = NULL, consent_key_id = NULL, "
    "access_ct = NULL, access_nonce = NULL, access_key_id = NULL, "
    "access_expires_at = NULL WHERE id = ?"
)
SECRET_COLUMNS = "owner, secret_ct, secret_nonce, secret_key_id"  # noqa: S105 (names)
RELEASE_LEASE = (
    "UPDATE tokens SET lease_holder = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND lease_holder = ?"
)
# The retry state a successful refresh resets: now, idle_expires_at, now.
REFRESHED = (
    "last_refresh_at = ?, refresh_count = refresh_count + 1, last_error = NULL, "
    "last_error_kind = NULL, retry_count = 0, refresh_state = 'idle', next_attempt_at = NULL, "
    "idle_expires_at = ?, updated_at = ?"
)

COUNT_BY_STATUS = "SELECT status, SUM(n) AS n FROM token_counts"
COUNT_BY_STATE = "SELECT status, refresh_state, n FROM token_counts WHERE owner = ? AND n > 0"
STALE_IDS = (
    "SELECT id FROM tokens WHERE status = 'active' "
    "AND COALESCE(last_refresh_at, created_at) < ? "
    "ORDER BY COALESCE(last_refresh_at, created_at) LIMIT ?"
)

# The assignments of TokenStore's one-statement updates (``entries.EntryUpdates``).
SET_REFRESH_STATE = (
    "refresh_state = ?, next_attempt_at = ?, retry_count = ?, last_error = ?, updated_at = ?"
)
SET_FAILED = (
    "status = 'failed', refresh_state = 'failed', last_error = ?, last_error_kind = ?, "
    "next_attempt_at = NULL, lease_holder = NULL, lease_expires_at = NULL, updated_at = ?"
)
SET_STATUS = "status = ?, updated_at = ?"
SET_KEEP_WARM = "keep_warm = ?, updated_at = ?"

# --- audit -----------------------------------------------------------------------------------
AUDIT_NEWEST = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE token_id = ? ORDER BY id DESC LIMIT ?"  # noqa: S608

# --- evictions and sweeps --------------------------------------------------------------------
EVICTIONS_AFTER = "SELECT seq, token_id FROM evictions WHERE seq > ? ORDER BY seq LIMIT ?"

# --- tasks -----------------------------------------------------------------------------------
INSERT_TASK = (
    "INSERT INTO tasks (id, owner, name, description, kind, status, "
    "persistent_token_id, progress, message, spec, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Tasks a gone server left running or queued: running, pending.
TASK_LEFTOVERS = (
    "SELECT id, runner FROM tasks WHERE status = ? OR (status = ? AND queued_at IS NOT NULL)"
)
# now, now, message.
SET_INTERRUPTED = (
    "status = 'interrupted', credential_hash = NULL, queued_at = NULL, runner = NULL, "
    "completed_at = ?, updated_at = ?, message = ?"
)


def sharing_account(order: str) -> str:
    """The owner's other active entries of one account and client, newest first (``order``
    breaks ties): owner, subject, client id, id, limit."""
    return (
        "SELECT id FROM tokens WHERE owner = ? AND status = 'active' AND subject = ? "  # noqa: S608
        f"AND client_id = ? AND id <> ? ORDER BY created_at DESC, {order} DESC LIMIT ?"
    )


def select_records(order: str) -> str:
    """Records with the order key ``order`` as ``_r`` (keyset pages)."""
    return f"SELECT {RECORD_COLUMNS}, {order} AS _r FROM tokens"  # noqa: S608


def select_tasks(order: str) -> str:
    """Every task read carries the linked entry's status (so offline_token_status is exact)
    and the order key ``order`` as ``_r``."""
    return (
        f"SELECT {TASK_COLUMNS}, t.{order} AS _r, k.status AS token_status "  # noqa: S608
        "FROM tasks t LEFT JOIN tokens k ON k.id = t.persistent_token_id"
    )
