"""The SQLite schema: forward migrations, one per ``PRAGMA user_version`` revision.

Revisions are append-only: an existing vault file is migrated forward on open, and a file with a
newer revision than ``SCHEMA_VERSION`` is refused (see ``database.py``). The tasks table's DDL
lives beside its queries in ``tasks.py``; this module only orders the scripts.
"""

from __future__ import annotations

from ..shared.sql import ATTENTION
from .sql import Migration
from .tasks import TASKS_INDEXES_4, TASKS_TABLE

_MIGRATION_1 = """
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    task_id TEXT,
    subject TEXT,
    consent_expires_at REAL,
    return_to TEXT,
    last_refresh_at REAL,
    refresh_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    refresh_state TEXT NOT NULL DEFAULT 'idle',
    next_attempt_at REAL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    idle_expires_at REAL,
    keep_warm INTEGER NOT NULL DEFAULT 0,
    state_hash TEXT UNIQUE,
    consent_ct BLOB,
    consent_nonce BLOB,
    consent_key_id TEXT,
    secret_ct BLOB,
    secret_nonce BLOB,
    secret_key_id TEXT,
    lease_holder TEXT,
    lease_expires_at REAL
);
CREATE INDEX tokens_owner_created ON tokens (owner, created_at);
CREATE INDEX tokens_status ON tokens (status);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    owner TEXT,
    token_id TEXT,
    task_id TEXT,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_token ON audit (token_id, id);
"""

# Listing the whole vault newest-first (admin views, the benchmark) sorted every row without it.
_MIGRATION_3 = "CREATE INDEX IF NOT EXISTS tokens_created ON tokens (created_at)"

# ATTENTION: the entries health lists (the partial index below is used only by queries whose
# WHERE repeats this exact term).

# Issue 9: nothing on a request path or in a sweep may cost what the whole vault costs.
# - token_counts: entries per (owner, status, refresh_state), kept by triggers in the same
#   transaction as every write, so health counts are a handful of rows however big the vault
#   (a GROUP BY over 100k entries of one owner took ~7 ms, 50x its cost at 1k).
# - tokens_attention: a partial index of the entries health lists (failed, retrying,
#   refresh-failed), so its page is a range scan of those alone, newest first.
# - (owner, status, created_at): status-filtered pages and the pending-consent cap's COUNT.
# - (status, updated_at) on tokens (and tasks, TASKS_INDEXES_4): the retention purge finds old
#   rows by range.
_MIGRATION_4_TOKENS = """
CREATE INDEX tokens_owner_status_created ON tokens (owner, status, created_at);
CREATE INDEX tokens_attention ON tokens (owner, created_at) WHERE {attention};
CREATE INDEX tokens_status_updated ON tokens (status, updated_at);
CREATE TABLE token_counts (
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    refresh_state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (owner, status, refresh_state)
) WITHOUT ROWID;
INSERT INTO token_counts (owner, status, refresh_state, n)
    SELECT owner, status, refresh_state, COUNT(*) FROM tokens GROUP BY owner, status, refresh_state;
CREATE TRIGGER tokens_count_insert AFTER INSERT ON tokens BEGIN
    INSERT INTO token_counts (owner, status, refresh_state, n)
        VALUES (NEW.owner, NEW.status, NEW.refresh_state, 1)
        ON CONFLICT (owner, status, refresh_state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tokens_count_delete AFTER DELETE ON tokens BEGIN
    UPDATE token_counts SET n = n - 1
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state;
    DELETE FROM token_counts
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state
        AND n <= 0;
END;
CREATE TRIGGER tokens_count_update AFTER UPDATE OF owner, status, refresh_state ON tokens
WHEN OLD.owner IS NOT NEW.owner OR OLD.status IS NOT NEW.status
    OR OLD.refresh_state IS NOT NEW.refresh_state
BEGIN
    UPDATE token_counts SET n = n - 1
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state;
    DELETE FROM token_counts
        WHERE owner = OLD.owner AND status = OLD.status AND refresh_state = OLD.refresh_state
        AND n <= 0;
    INSERT INTO token_counts (owner, status, refresh_state, n)
        VALUES (NEW.owner, NEW.status, NEW.refresh_state, 1)
        ON CONFLICT (owner, status, refresh_state) DO UPDATE SET n = n + 1;
END;
""".replace("{attention}", ATTENTION)

# Issue 10: what kind of failure a failed entry had (configuration, decrypt, grant_rejected,
# consent; NULL = unknown), so nobody has to read it out of last_error's text.
_MIGRATION_5 = "ALTER TABLE tokens ADD COLUMN last_error_kind TEXT"

# Issue 11: several processes share one store.
# - access_*: the latest access token, encrypted like the refresh token (AAD binds id, owner, key
#   id and the column), so a second process serves it instead of making its own grant.
# - evictions: an append-only log of entries that left ``active`` or were deleted; every process
#   tails it (by seq) to drop its cached access tokens at once. Kept by triggers in the same
#   transaction as the change, so no code path can forget it; pruned by age in the sweep.
# - sweeps: one row per cluster-wide periodic job; a claim is valid for one interval, so each due
#   item is handled once across processes.
_MIGRATION_6 = """
ALTER TABLE tokens ADD COLUMN access_ct BLOB;
ALTER TABLE tokens ADD COLUMN access_nonce BLOB;
ALTER TABLE tokens ADD COLUMN access_key_id TEXT;
ALTER TABLE tokens ADD COLUMN access_expires_at REAL;
CREATE TABLE evictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX evictions_ts ON evictions (ts);
CREATE TRIGGER tokens_evict_delete AFTER DELETE ON tokens BEGIN
    INSERT INTO evictions (token_id, ts)
        VALUES (OLD.id, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER tokens_evict_status AFTER UPDATE OF status ON tokens
WHEN OLD.status = 'active' AND NEW.status IS NOT 'active'
BEGIN
    INSERT INTO evictions (token_id, ts)
        VALUES (OLD.id, (julianday('now') - 2440587.5) * 86400.0);
    UPDATE tokens SET access_ct = NULL, access_nonce = NULL, access_key_id = NULL,
        access_expires_at = NULL WHERE id = NEW.id;
END;
CREATE TABLE sweeps (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    next_at REAL NOT NULL
) WITHOUT ROWID;
"""

MIGRATIONS: list[Migration] = [
    _MIGRATION_1,
    TASKS_TABLE,
    _MIGRATION_3,
    _MIGRATION_4_TOKENS + TASKS_INDEXES_4,
    _MIGRATION_5,
    _MIGRATION_6,
]
SCHEMA_VERSION = len(MIGRATIONS)
