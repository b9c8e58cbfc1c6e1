"""The PostgreSQL schema: forward migrations, one per revision in ``jot_schema``.

The same tables and columns as the SQLite vault (``stores/sqlite/schema.py``, whose revision
history this one does not replay: it starts at SQLite's revision 6), with PostgreSQL types:
``bytea`` ciphertexts, ``double precision`` epoch seconds, and a ``seq`` identity column that
orders rows inserted at the same time (SQLite's rowid). Revisions are append-only; ``open()``
applies the missing ones under an advisory lock and refuses a database with a newer revision.
"""

from __future__ import annotations

# The entries health lists (the same term as SQLite's, for the same partial index).
from ..shared.sql import ATTENTION

# Notification channel of the eviction log (see the trigger below and ``listener.py``).
EVICTION_CHANNEL = "jupyter_offline_token_evictions"

_TABLES = """
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    owner TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    task_id TEXT,
    subject TEXT,
    consent_expires_at DOUBLE PRECISION,
    return_to TEXT,
    last_refresh_at DOUBLE PRECISION,
    refresh_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_kind TEXT,
    refresh_state TEXT NOT NULL DEFAULT 'idle',
    next_attempt_at DOUBLE PRECISION,
    retry_count INTEGER NOT NULL DEFAULT 0,
    idle_expires_at DOUBLE PRECISION,
    keep_warm BOOLEAN NOT NULL DEFAULT FALSE,
    state_hash TEXT UNIQUE,
    consent_ct BYTEA,
    consent_nonce BYTEA,
    consent_key_id TEXT,
    secret_ct BYTEA,
    secret_nonce BYTEA,
    secret_key_id TEXT,
    lease_holder TEXT,
    lease_expires_at DOUBLE PRECISION,
    access_ct BYTEA,
    access_nonce BYTEA,
    access_key_id TEXT,
    access_expires_at DOUBLE PRECISION
);
CREATE INDEX tokens_owner_created ON tokens (owner, created_at, seq);
CREATE INDEX tokens_created ON tokens (created_at, seq);
CREATE INDEX tokens_owner_status_created ON tokens (owner, status, created_at, seq);
CREATE INDEX tokens_attention ON tokens (owner, created_at, seq) WHERE {attention};
CREATE INDEX tokens_status_updated ON tokens (status, updated_at);
CREATE INDEX tokens_active_refreshed ON tokens ((COALESCE(last_refresh_at, created_at)))
    WHERE status = 'active';
CREATE INDEX tokens_warm ON tokens (id) WHERE status = 'active' AND keep_warm;
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    owner TEXT,
    token_id TEXT,
    task_id TEXT,
    action TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_token ON audit (token_id, id);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    persistent_token_id TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION,
    queued_at DOUBLE PRECISION,
    runner TEXT,
    credential_hash TEXT UNIQUE
);
CREATE INDEX tasks_owner_created ON tasks (owner, created_at, seq);
CREATE INDEX tasks_created ON tasks (created_at, seq);
CREATE INDEX tasks_token ON tasks (persistent_token_id);
CREATE INDEX tasks_owner_status_created ON tasks (owner, status, created_at, seq);
CREATE INDEX tasks_status_updated ON tasks (status, updated_at);
CREATE TABLE evictions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX evictions_ts ON evictions (ts);
CREATE TABLE sweeps (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    next_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE token_counts (
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    refresh_state TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (owner, status, refresh_state)
);
""".replace("{attention}", ATTENTION)

# token_counts: entries per (owner, status, refresh_state), kept in the same transaction as
# every write, so health counts cost a handful of rows however big the vault. Zero rows stay
# (no delete/insert races); a moved entry locks its two count rows in one fixed order, so two
# writers moving entries in opposite directions cannot deadlock on them.
_COUNT_TRIGGERS = """
CREATE FUNCTION jot_count_add(o TEXT, s TEXT, r TEXT, d INTEGER) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO token_counts (owner, status, refresh_state, n) VALUES (o, s, r, d)
    ON CONFLICT (owner, status, refresh_state) DO UPDATE SET n = token_counts.n + d
$$;
CREATE FUNCTION jot_token_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM jot_count_add(NEW.owner, NEW.status, NEW.refresh_state, 1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM jot_count_add(OLD.owner, OLD.status, OLD.refresh_state, -1);
    ELSIF (OLD.owner, OLD.status, OLD.refresh_state) < (NEW.owner, NEW.status, NEW.refresh_state)
    THEN
        PERFORM jot_count_add(OLD.owner, OLD.status, OLD.refresh_state, -1);
        PERFORM jot_count_add(NEW.owner, NEW.status, NEW.refresh_state, 1);
    ELSE
        PERFORM jot_count_add(NEW.owner, NEW.status, NEW.refresh_state, 1);
        PERFORM jot_count_add(OLD.owner, OLD.status, OLD.refresh_state, -1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tokens_count_insert_delete AFTER INSERT OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION jot_token_counts();
CREATE TRIGGER tokens_count_update AFTER UPDATE OF owner, status, refresh_state ON tokens
    FOR EACH ROW WHEN (OLD.owner IS DISTINCT FROM NEW.owner OR OLD.status IS DISTINCT FROM
        NEW.status OR OLD.refresh_state IS DISTINCT FROM NEW.refresh_state)
    EXECUTE FUNCTION jot_token_counts();
"""

# The eviction log (see SQLite's revision 6): an entry that leaves 'active' or is deleted is
# logged (leaving active also clears its shared access token), and every listening process is
# notified at commit. Eviction writers take one transaction-scoped advisory lock before drawing
# a seq, so seqs commit in order: a process tailing ``seq > cursor`` can never skip a row that
# commits later with a smaller seq. The retention purge (expired, failed, revoked entries: each
# was logged when it left active, if it ever was) sets ``jot.purge`` and logs nothing, so
# purges in several processes never wait for each other on that lock.
_EVICTION_TRIGGERS = """
CREATE FUNCTION jot_log_eviction(token TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1785688001, 1);
    INSERT INTO evictions (token_id, ts)
        VALUES (token, extract(epoch FROM clock_timestamp()));
    PERFORM pg_notify('{channel}', '');
END
$$;
CREATE FUNCTION jot_evict_on_leave() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jot_log_eviction(OLD.id);
    NEW.access_ct := NULL;
    NEW.access_nonce := NULL;
    NEW.access_key_id := NULL;
    NEW.access_expires_at := NULL;
    RETURN NEW;
END
$$;
CREATE FUNCTION jot_evict_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('jot.purge', true) = 'on' AND OLD.status <> 'active' THEN
        RETURN NULL;
    END IF;
    PERFORM jot_log_eviction(OLD.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER tokens_evict_status BEFORE UPDATE OF status ON tokens
    FOR EACH ROW WHEN (OLD.status = 'active' AND NEW.status IS DISTINCT FROM 'active')
    EXECUTE FUNCTION jot_evict_on_leave();
CREATE TRIGGER tokens_evict_delete AFTER DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION jot_evict_on_delete();
""".replace("{channel}", EVICTION_CHANNEL)

# Revision 1 is everything SQLite had at its revision 6.
MIGRATIONS: list[str] = [_TABLES + _COUNT_TRIGGERS + _EVICTION_TRIGGERS]
SCHEMA_VERSION = len(MIGRATIONS)
