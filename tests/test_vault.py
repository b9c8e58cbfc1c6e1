"""Vault: files and pragmas, schema revisions, key ring selection, consent, refresh bookkeeping,
cross-connection and cross-process leases, audit retention, and the worker-thread rule."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_offline_token.errors import DecryptionError, VaultError
from jupyter_offline_token.models import (
    ACTIVE,
    EXPIRED,
    FAILED,
    IDLE,
    PENDING,
    RETRYING,
    REVOKED,
    TOKEN_STATUSES,
    AuditEvent,
    ConsentSecrets,
    TokenRecord,
)
from jupyter_offline_token.vault import SCHEMA_VERSION, KeyRing, Vault
from jupyter_offline_token.vault import store as store_module

REFRESH = "rt-PLAINTEXT-refresh-token-6f1d2c"
ROTATED = "rt-PLAINTEXT-rotated-token-9a8b7c"
VERIFIER = "pkce-verifier-PLAINTEXT-4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f"
NONCE = "oidc-nonce-PLAINTEXT-77aa"
SECRETS = ConsentSecrets(
    code_verifier=VERIFIER, nonce=NONCE, redirect_uri="http://localhost/offline-token/callback"
)


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "offline_token" / "vault.db"


def raw_files(db: Path) -> bytes:
    """The database file and its WAL as stored on disk."""
    return b"".join(
        part.read_bytes()
        for part in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if part.exists()
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def vault(tmp_path: Path, jp_asyncio_loop) -> Iterator[Vault]:
    v = Vault(db_path(tmp_path), audit_retention=3)
    jp_asyncio_loop.run_until_complete(v.open())
    yield v
    jp_asyncio_loop.run_until_complete(v.close())


async def make_pending(
    vault: Vault,
    *,
    owner: str = "alice",
    state_hash: str | None = None,
    now: float = 1000.0,
    consent_expires_at: float = 1600.0,
    label: str = "",
) -> TokenRecord:
    return await vault.create_pending(
        owner=owner,
        issuer="https://idp.example/realms/r",
        client_id="jupyter",
        scopes=["openid", "offline_access"],
        state_hash=state_hash or os.urandom(16).hex(),
        secrets=SECRETS,
        consent_expires_at=consent_expires_at,
        label=label,
        task_id="task-1",
        return_to="/lab",
        now=now,
    )


async def make_active(vault: Vault, *, owner: str = "alice", now: float = 1000.0) -> TokenRecord:
    record = await make_pending(vault, owner=owner, now=now)
    assert await vault.consume_consent(record.id) == SECRETS
    return await vault.activate(
        record.id,
        refresh_token=REFRESH,
        subject="sub-123",
        scopes=["openid", "offline_access", "profile"],
        idle_expires_at=now + 3600,
        now=now + 1,
    )


def tamper(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the file behind the vault's back, as an attacker with file access could."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(sql, params)
    finally:
        con.close()


# --- files, pragmas, schema ----------------------------------------------------------------


async def test_open_creates_private_dir_and_db_with_wal_and_full_sync(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    old_umask = os.umask(0)  # a permissive umask must not loosen anything
    try:
        v = Vault(path)
        await v.open()
    finally:
        os.umask(old_umask)
    try:
        assert mode_of(path.parent) == 0o700
        assert mode_of(path) == 0o600
        assert mode_of(v.key_file) == 0o600
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                assert mode_of(side) == 0o600

        def pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
            names = [
                "journal_mode",
                "synchronous",
                "busy_timeout",
                "foreign_keys",
                "secure_delete",
                "user_version",
            ]
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        found = await v._run(pragmas)
        assert found == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "busy_timeout": 10000,
            "foreign_keys": 1,
            "secure_delete": 1,
            "user_version": SCHEMA_VERSION,
        }
        assert SCHEMA_VERSION == len(store_module.MIGRATIONS)
    finally:
        await v.close()


async def test_open_tightens_an_existing_loose_dir_and_db(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o755)
    path.touch()
    path.chmod(0o644)
    v = Vault(path)
    await v.open()
    await v.close()
    assert mode_of(path.parent) == 0o700
    assert mode_of(path) == 0o600


async def test_reopen_is_idempotent_and_close_is_safe_twice(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    first = Vault(path)
    await asyncio.gather(first.open(), first.open())  # concurrent opens share one connection
    conn = first._conn
    await first.open()  # a later open on the same instance is a no-op
    assert first._conn is conn is not None
    record = await make_active(first)
    key_file_before = first.key_file.read_bytes()
    key_ids = first.keyring.key_ids
    await first.close()
    await first.close()

    second = Vault(path)
    await second.open()
    try:
        assert second.keyring.key_ids == key_ids
        assert second.key_file.read_bytes() == key_file_before
        assert await second.get(record.id) == record
        assert await second.read_refresh_token(record.id) == REFRESH
        assert await second._run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == (
            SCHEMA_VERSION
        )
    finally:
        await second.close()


async def test_newer_schema_is_refused_with_an_actionable_message(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    v = Vault(path)
    with pytest.raises(VaultError) as info:
        await v.open()
    await v.close()
    message = str(info.value)
    assert str(path) in message
    assert (
        f"vault.db has schema revision 99 but this jupyter-offline-token understands up to "
        f"{SCHEMA_VERSION}: upgrade the package (pip install -U jupyter-offline-token) or point "
        "OfflineTokenApp.vault_path elsewhere"
    ) in message
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99  # left alone
    con.close()


async def test_appended_migration_runs_once_and_a_failing_one_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = db_path(tmp_path)
    v = Vault(path)
    await v.open()
    record = await make_pending(v)
    await v.close()

    def tables() -> set[str]:
        con = sqlite3.connect(path)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()

    base = list(store_module.MIGRATIONS)
    bad = "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*base, bad])
    v = Vault(path)
    with pytest.raises(VaultError, match="no_such_table"):
        await v.open()
    await v.close()
    assert "half_done" not in tables()

    calls: list[int] = []

    def add_tasks(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra (id TEXT PRIMARY KEY, note TEXT)")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*base, add_tasks])
    for _ in range(2):
        v = Vault(path)
        await v.open()
        assert (
            await v._run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(base) + 1
        )
        assert (await v.get(record.id)) == record
        await v.close()
    assert calls == [1]
    assert "extra" in tables()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    v = Vault(path)
    with pytest.raises(VaultError, match="cannot open the vault database"):
        await v.open()
    await v.close()


async def test_methods_need_an_open_vault(tmp_path: Path) -> None:
    v = Vault(db_path(tmp_path))
    with pytest.raises(VaultError, match="not open"):
        await v.get("x")
    await v.open()
    await v.close()
    with pytest.raises(VaultError, match="closed"):
        await v.get("x")
    with pytest.raises(VaultError, match="closed"):
        await v.open()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="audit_retention"):
        Vault(Path("/nonexistent/vault.db"), audit_retention=0)


# --- key ring selection ----------------------------------------------------------------------


async def test_key_file_generated_on_first_open_and_reused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = Vault(path)
    assert not v.key_file.exists()
    await v.open()
    await v.close()
    assert mode_of(v.key_file) == 0o600
    assert KeyRing.load_file(v.key_file).key_ids == v.keyring.key_ids
    content = v.key_file.read_bytes()

    again = Vault(path)
    await again.open()
    await again.close()
    assert again.keyring.key_ids == v.keyring.key_ids
    assert v.key_file.read_bytes() == content


async def test_configured_keys_are_used_and_no_key_file_is_written(tmp_path: Path) -> None:
    key = KeyRing.generate()
    v = Vault(db_path(tmp_path), encryption_keys=[key])
    await v.open()
    try:
        assert v.keyring.primary_key_id == KeyRing.from_config([key]).primary_key_id
        assert not v.key_file.exists()
    finally:
        await v.close()


async def test_bad_configured_key_names_the_setting_not_the_value(tmp_path: Path) -> None:
    bad = "c2hvcnQta2V5"
    v = Vault(db_path(tmp_path), encryption_keys=[KeyRing.generate(), bad])
    with pytest.raises(VaultError) as info:
        await v.open()
    await v.close()
    assert "encryption key #2" in str(info.value)
    assert "OfflineTokenApp.encryption_keys" in str(info.value)
    assert bad not in str(info.value)


async def test_wrong_configured_key_with_existing_ciphertext_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    old, new = KeyRing.generate(), KeyRing.generate()
    v = Vault(path, encryption_keys=[old])
    await v.open()
    record = await make_active(v)
    await v.close()

    wrong = Vault(path, encryption_keys=[new])
    with pytest.raises(VaultError) as info:
        await wrong.open()
    await wrong.close()
    message = str(info.value)
    assert "OfflineTokenApp.encryption_keys" in message
    assert "JUPYTER_OFFLINE_TOKEN_KEYS" in message
    assert "1 vault entries" in message
    assert KeyRing.from_config([old]).primary_key_id in message
    assert old not in message and new not in message

    # Rotation: the new key first, the old one after it.
    rotated = Vault(path, encryption_keys=[new, old])
    await rotated.open()
    try:
        assert await rotated.read_refresh_token(record.id) == REFRESH
        await rotated.record_refresh(
            record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=2000.0
        )
        assert await rotated.read_refresh_token(record.id) == ROTATED
    finally:
        await rotated.close()
    # The rotated token is under the new key; the consent secrets were erased, so the old key
    # is no longer needed.
    only_new = Vault(path, encryption_keys=[new])
    await only_new.open()
    try:
        assert await only_new.read_refresh_token(record.id) == ROTATED
    finally:
        await only_new.close()


async def test_missing_key_file_with_existing_ciphertext_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = Vault(path)
    await v.open()
    await make_pending(v)
    await v.close()
    v.key_file.unlink()

    again = Vault(path)
    with pytest.raises(VaultError) as info:
        await again.open()
    await again.close()
    assert str(again.key_file) in str(info.value)
    assert "OfflineTokenApp.encryption_keys" in str(info.value)
    assert not again.key_file.exists()  # a fresh key would hide the problem


async def test_loose_key_file_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = Vault(path)
    await v.open()
    await v.close()
    v.key_file.chmod(0o644)
    again = Vault(path)
    with pytest.raises(VaultError, match="chmod 600"):
        await again.open()
    await again.close()


# --- consent -------------------------------------------------------------------------------


async def test_create_pending_find_and_consume_once(vault: Vault) -> None:
    record = await make_pending(vault, state_hash="hash-1", label="training run")
    assert record.status == PENDING
    assert record.owner == "alice" and record.label == "training run"
    assert record.scopes == ["openid", "offline_access"]
    assert record.task_id == "task-1" and record.return_to == "/lab"
    assert record.created_at == record.updated_at == 1000.0
    assert record.consent_expires_at == 1600.0
    assert not record.has_secret
    assert len(record.id) == 36 and record.id.count("-") == 4

    assert await vault.find_by_state_hash("hash-1") == record
    assert await vault.find_by_state_hash("other") is None

    secrets = await vault.consume_consent(record.id)
    assert secrets == SECRETS
    assert await vault.consume_consent(record.id) is None
    # state_hash stays, so the callback recognises a replay
    assert (await vault.find_by_state_hash("hash-1")) is not None

    with pytest.raises(KeyError):
        await vault.consume_consent("no-such-id")
    with pytest.raises(VaultError, match="already exists"):
        await make_pending(vault, state_hash="hash-1")
    with pytest.raises(ValueError, match="scope"):
        await vault.create_pending(
            owner="alice",
            issuer="i",
            client_id="c",
            scopes=["openid profile"],
            state_hash="hash-2",
            secrets=SECRETS,
            consent_expires_at=1.0,
            now=0.0,
        )


async def test_consume_is_single_use_across_connections(vault: Vault, tmp_path: Path) -> None:
    other = Vault(db_path(tmp_path))
    await other.open()
    try:
        for _ in range(5):
            record = await make_pending(vault)
            results = await asyncio.gather(
                vault.consume_consent(record.id), other.consume_consent(record.id)
            )
            assert sorted(r is None for r in results) == [False, True]
    finally:
        await other.close()


async def test_activate_and_read_refresh_token(vault: Vault) -> None:
    pending = await make_pending(vault)
    with pytest.raises(KeyError):
        await vault.read_refresh_token(pending.id)  # none stored yet
    active = await make_active(vault)
    assert active.status == ACTIVE and active.has_secret
    assert active.subject == "sub-123"
    assert active.scopes == ["openid", "offline_access", "profile"]
    assert active.idle_expires_at == 4600.0 and active.updated_at == 1001.0
    assert await vault.read_refresh_token(active.id) == REFRESH
    assert await vault.get(active.id) == active

    with pytest.raises(KeyError):
        await vault.read_refresh_token("no-such-id")
    with pytest.raises(KeyError):
        await vault.activate(
            "no-such-id",
            refresh_token=REFRESH,
            subject=None,
            scopes=[],
            idle_expires_at=None,
            now=1,
        )
    with pytest.raises(ValueError):
        await vault.activate(
            pending.id, refresh_token="", subject=None, scopes=[], idle_expires_at=None, now=1
        )


async def test_activate_erases_unconsumed_consent_secrets(vault: Vault) -> None:
    record = await make_pending(vault)
    await vault.activate(
        record.id,
        refresh_token=REFRESH,
        subject=None,
        scopes=["openid"],
        idle_expires_at=None,
        now=2,
    )
    assert await vault.consume_consent(record.id) is None


async def test_secrets_never_stored_in_plaintext(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = Vault(path)
    await v.open()
    record = await make_active(v, owner="owner-positive-control")
    second = await make_pending(v, owner="owner-positive-control")  # consent secrets at rest
    await v.record_refresh(record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=5.0)
    assert path.with_name(path.name + "-wal").exists()

    def check(blob: bytes) -> None:
        assert b"owner-positive-control" in blob  # proves we read the real data
        for secret in (REFRESH, ROTATED, VERIFIER, NONCE):
            assert secret.encode() not in blob
        assert KeyRing.load_file(v.key_file) is not None
        key_line = v.key_file.read_text().splitlines()[-1]
        assert key_line.encode() not in blob

    check(raw_files(path))  # while open: most pages still in the WAL
    assert await v.consume_consent(second.id) == SECRETS
    await v.close()
    check(raw_files(path))  # after close: checkpointed into the main file


async def test_tampered_ciphertexts_are_detected(vault: Vault) -> None:
    record = await make_active(vault)
    victim = await make_active(vault, owner="bob")
    db = vault.path

    con = sqlite3.connect(db)
    ct = con.execute("SELECT secret_ct FROM tokens WHERE id = ?", (record.id,)).fetchone()[0]
    con.close()
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    tamper(db, "UPDATE tokens SET secret_ct = ? WHERE id = ?", (flipped, record.id))
    with pytest.raises(DecryptionError) as info:
        await vault.read_refresh_token(record.id)
    assert REFRESH not in str(info.value) and REFRESH not in repr(info.value)
    tamper(db, "UPDATE tokens SET secret_ct = ? WHERE id = ?", (ct, record.id))
    assert await vault.read_refresh_token(record.id) == REFRESH

    # Moving alice's ciphertext into bob's row fails: the AAD binds the entry id and owner.
    tamper(
        db,
        "UPDATE tokens SET (secret_ct, secret_nonce, secret_key_id) = "
        "(SELECT secret_ct, secret_nonce, secret_key_id FROM tokens WHERE id = ?) WHERE id = ?",
        (record.id, victim.id),
    )
    with pytest.raises(DecryptionError):
        await vault.read_refresh_token(victim.id)
    # Changing the owner of a row breaks it as well.
    tamper(db, "UPDATE tokens SET owner = 'mallory' WHERE id = ?", (record.id,))
    with pytest.raises(DecryptionError):
        await vault.read_refresh_token(record.id)

    pending = await make_pending(vault)
    tamper(db, "UPDATE tokens SET consent_nonce = zeroblob(12) WHERE id = ?", (pending.id,))
    with pytest.raises(DecryptionError):
        await vault.consume_consent(pending.id)


# --- refresh bookkeeping -------------------------------------------------------------------


async def test_record_refresh_without_rotation_keeps_the_token(vault: Vault) -> None:
    record = await make_active(vault)
    await vault.update_refresh_state(
        record.id,
        refresh_state=RETRYING,
        next_attempt_at=1500.0,
        retry_count=3,
        last_error="timeout",
        now=1400.0,
    )
    after = await vault.record_refresh(
        record.id, new_refresh_token=None, idle_expires_at=9000.0, now=1600.0
    )
    assert await vault.read_refresh_token(record.id) == REFRESH
    assert after.last_refresh_at == 1600.0 and after.updated_at == 1600.0
    assert after.refresh_count == 1
    assert after.last_error is None and after.retry_count == 0
    assert after.refresh_state == IDLE and after.next_attempt_at is None
    assert after.idle_expires_at == 9000.0
    assert await vault.get(record.id) == after


async def test_record_refresh_with_rotation_is_durable_for_other_connections(
    vault: Vault, tmp_path: Path
) -> None:
    record = await make_active(vault)
    after = await vault.record_refresh(
        record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=1700.0
    )
    assert after.refresh_count == 1 and after.has_secret
    other = Vault(db_path(tmp_path))
    await other.open()
    try:
        assert await other.read_refresh_token(record.id) == ROTATED
        second = await other.record_refresh(
            record.id, new_refresh_token=None, idle_expires_at=None, now=1800.0
        )
        assert second.refresh_count == 2
    finally:
        await other.close()
    with pytest.raises(KeyError):
        await vault.record_refresh(
            "no-such-id", new_refresh_token=None, idle_expires_at=None, now=1
        )


async def test_lease_semantics(vault: Vault) -> None:
    record = await make_active(vault)
    tid = record.id
    assert await vault.acquire_lease(tid, "a", ttl=30, now=100.0)
    assert await vault.acquire_lease(tid, "a", ttl=30, now=110.0)  # ours: extended to 140
    assert not await vault.acquire_lease(tid, "b", ttl=30, now=135.0)
    await vault.release_lease(tid, "b")  # not b's: no effect
    assert not await vault.acquire_lease(tid, "b", ttl=30, now=139.0)
    assert await vault.acquire_lease(tid, "b", ttl=30, now=140.0)  # expired: taken over
    assert not await vault.acquire_lease(tid, "a", ttl=30, now=141.0)
    await vault.release_lease(tid, "b")
    assert await vault.acquire_lease(tid, "a", ttl=30, now=142.0)

    await vault.record_refresh(
        tid, new_refresh_token=None, idle_expires_at=None, now=143, holder="a"
    )
    assert await vault.acquire_lease(tid, "b", ttl=30, now=144.0)  # released by record_refresh
    await vault.mark_failed(tid, error="invalid_grant", now=145.0)
    assert await vault.acquire_lease(tid, "c", ttl=30, now=146.0)  # released by mark_failed

    with pytest.raises(KeyError):
        await vault.acquire_lease("no-such-id", "a", ttl=30, now=1.0)
    with pytest.raises(KeyError):
        await vault.release_lease("no-such-id", "a")
    with pytest.raises(ValueError):
        await vault.acquire_lease(tid, "a", ttl=0, now=1.0)


async def test_lease_is_exclusive_across_vault_instances(vault: Vault, tmp_path: Path) -> None:
    other = Vault(db_path(tmp_path))  # a separate connection, as a second process would have
    await other.open()
    try:
        record = await make_active(vault)
        tid = record.id
        assert await vault.acquire_lease(tid, "proc-1", ttl=60, now=1000.0)
        assert not await other.acquire_lease(tid, "proc-2", ttl=60, now=1059.0)

        # proc-1 stalls past its lease; proc-2 takes over and rotates the token.
        assert await other.acquire_lease(tid, "proc-2", ttl=60, now=1061.0)
        await other.record_refresh(
            tid, new_refresh_token=ROTATED, idle_expires_at=None, now=1062.0, holder="proc-2"
        )
        # proc-1 comes back with an older result: refused, the newer token stays.
        with pytest.raises(VaultError, match="no longer held"):
            await vault.record_refresh(
                tid, new_refresh_token=REFRESH, idle_expires_at=None, now=1063.0, holder="proc-1"
            )
        assert await vault.read_refresh_token(tid) == ROTATED
        assert (await vault.get(tid)).refresh_count == 1  # type: ignore[union-attr]
    finally:
        await other.close()


async def test_record_refresh_refused_when_lease_was_never_held(vault: Vault) -> None:
    record = await make_active(vault)
    with pytest.raises(VaultError, match="no longer held"):
        await vault.record_refresh(
            record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=5.0, holder="ghost"
        )
    assert await vault.read_refresh_token(record.id) == REFRESH
    assert (await vault.get(record.id)).refresh_count == 0  # type: ignore[union-attr]


def _race_worker(
    path: str,
    key: str,
    token_id: str,
    holder: str,
    rounds: int,
    barrier: Any,
    inside: Any,
    violations: Any,
    acquired: Any,
) -> None:
    asyncio.run(_race(path, key, token_id, holder, rounds, barrier, inside, violations, acquired))


async def _race(
    path: str,
    key: str,
    token_id: str,
    holder: str,
    rounds: int,
    barrier: Any,
    inside: Any,
    violations: Any,
    acquired: Any,
) -> None:
    vault = Vault(Path(path), encryption_keys=[key])
    await vault.open()
    try:
        barrier.wait()
        while acquired.value < rounds:
            if not await vault.acquire_lease(token_id, holder, ttl=600, now=time.time()):
                await asyncio.sleep(0.001)
                continue
            with inside.get_lock():
                inside.value += 1
                if inside.value != 1:
                    violations.value += 1
            await vault.get(token_id)  # hold it across some real work
            with inside.get_lock():
                inside.value -= 1
            await vault.release_lease(token_id, holder)
            acquired.value += 1
    finally:
        await vault.close()


async def test_lease_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    key = KeyRing.generate()
    v = Vault(path, encryption_keys=[key])
    await v.open()
    record = await make_active(v)
    await v.close()

    ctx = multiprocessing.get_context("spawn")
    rounds = 50
    barrier = ctx.Barrier(2)
    inside = ctx.Value("i", 0)
    violations = ctx.Value("i", 0)
    counts = [ctx.Value("i", 0, lock=False) for _ in range(2)]
    procs = [
        ctx.Process(
            target=_race_worker,
            args=(str(path), key, record.id, f"proc-{n}", rounds, barrier, inside, violations, c),
        )
        for n, c in enumerate(counts)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        await asyncio.to_thread(proc.join, 100)
        assert proc.exitcode == 0
    assert [c.value for c in counts] == [rounds, rounds]
    assert violations.value == 0


async def test_update_refresh_state_and_failure_and_status(vault: Vault) -> None:
    record = await make_active(vault)
    await vault.update_refresh_state(
        record.id,
        refresh_state=RETRYING,
        next_attempt_at=1100.0,
        retry_count=2,
        last_error="provider timeout",
        now=1050.0,
    )
    got = await vault.get(record.id)
    assert got is not None
    assert (got.refresh_state, got.next_attempt_at, got.retry_count, got.last_error) == (
        RETRYING,
        1100.0,
        2,
        "provider timeout",
    )
    await vault.mark_failed(record.id, error="invalid_grant: session gone", now=1200.0)
    got = await vault.get(record.id)
    assert got is not None
    assert got.status == FAILED and got.refresh_state == "failed"
    assert got.last_error == "invalid_grant: session gone" and got.has_secret
    assert await vault.read_refresh_token(record.id) == REFRESH  # kept

    await vault.set_status(record.id, REVOKED, now=1300.0)
    await vault.set_keep_warm(record.id, True, now=1301.0)
    got = await vault.get(record.id)
    assert got is not None and got.status == REVOKED and got.keep_warm and got.updated_at == 1301
    await vault.set_keep_warm(record.id, False, now=1302.0)
    assert not (await vault.get(record.id)).keep_warm  # type: ignore[union-attr]

    with pytest.raises(ValueError):
        await vault.set_status(record.id, "bogus", now=1.0)
    with pytest.raises(ValueError):
        await vault.update_refresh_state(
            record.id,
            refresh_state="x",
            next_attempt_at=None,
            retry_count=0,
            last_error=None,
            now=1,
        )
    for call in (
        vault.set_status("no-such-id", ACTIVE, now=1.0),
        vault.set_keep_warm("no-such-id", True, now=1.0),
        vault.mark_failed("no-such-id", error="e", now=1.0),
        vault.update_refresh_state(
            "no-such-id",
            refresh_state=IDLE,
            next_attempt_at=None,
            retry_count=0,
            last_error=None,
            now=1,
        ),
    ):
        with pytest.raises(KeyError):
            await call


async def test_expire_pending(vault: Vault) -> None:
    late = await make_pending(vault, consent_expires_at=2000.0)
    early = await make_pending(vault, consent_expires_at=1500.0)
    exact = await make_pending(vault, consent_expires_at=1600.0)
    active = await make_active(vault)
    assert active.consent_expires_at == 1600.0

    expired = await vault.expire_pending(1600.0)
    assert sorted(expired) == sorted([early.id, exact.id])
    for tid in expired:
        got = await vault.get(tid)
        assert got is not None and got.status == EXPIRED and got.updated_at == 1600.0
        assert await vault.consume_consent(tid) is None  # secrets erased
    assert (await vault.get(late.id)).status == PENDING  # type: ignore[union-attr]
    assert (await vault.get(active.id)).status == ACTIVE  # type: ignore[union-attr]
    assert await vault.expire_pending(1600.0) == []
    assert await vault.consume_consent(late.id) == SECRETS


async def test_list_order_filters_and_pagination(vault: Vault) -> None:
    a1 = await make_pending(vault, owner="alice", now=100.0)
    b1 = await make_pending(vault, owner="bob", now=200.0)
    a2 = await make_active(vault, owner="alice", now=300.0)
    a3 = await make_pending(vault, owner="alice", now=300.0)  # same time: later insert first

    everything = await vault.list()
    assert [r.id for r in everything] == [a3.id, a2.id, b1.id, a1.id]
    assert [r.id for r in await vault.list(owner="alice")] == [a3.id, a2.id, a1.id]
    assert [r.id for r in await vault.list(owner="alice", status=PENDING)] == [a3.id, a1.id]
    assert [r.id for r in await vault.list(status=ACTIVE)] == [a2.id]
    assert [r.id for r in await vault.list(limit=2)] == [a3.id, a2.id]
    assert [r.id for r in await vault.list(limit=2, offset=2)] == [b1.id, a1.id]
    assert [r.id for r in await vault.list(offset=3)] == [a1.id]
    assert await vault.list(limit=0) == []
    assert await vault.list(owner="nobody") == []
    with pytest.raises(ValueError):
        await vault.list(limit=-1)
    with pytest.raises(ValueError):
        await vault.list(offset=-1)


async def test_count_by_status(vault: Vault) -> None:
    assert await vault.count_by_status() == dict.fromkeys(TOKEN_STATUSES, 0)
    await make_pending(vault, owner="alice")
    await make_pending(vault, owner="bob")
    await make_active(vault, owner="alice")
    assert await vault.count_by_status() == {
        **dict.fromkeys(TOKEN_STATUSES, 0),
        PENDING: 2,
        ACTIVE: 1,
    }
    assert await vault.count_by_status(owner="alice") == {
        **dict.fromkeys(TOKEN_STATUSES, 0),
        PENDING: 1,
        ACTIVE: 1,
    }


async def test_delete_removes_the_row_and_its_ciphertext(vault: Vault) -> None:
    record = await make_active(vault)
    keep = await make_active(vault, owner="bob")
    con = sqlite3.connect(vault.path)
    ct = con.execute("SELECT secret_ct FROM tokens WHERE id = ?", (record.id,)).fetchone()[0]
    con.close()
    assert ct in raw_files(vault.path)

    assert await vault.delete(record.id) is True
    assert await vault.get(record.id) is None
    assert await vault.delete(record.id) is False
    assert ct not in raw_files(vault.path)  # secure_delete + checkpoint: no lingering copy
    assert await vault.read_refresh_token(keep.id) == REFRESH


async def test_audit_append_retention_and_order(vault: Vault) -> None:
    assert vault.audit_retention == 3
    for n in range(5):
        await vault.add_audit(
            AuditEvent(ts=float(n), action="refresh", result="ok", token_id="t1", detail=f"#{n}")
        )
    await vault.add_audit(
        AuditEvent(ts=9.0, action="consent", result="ok", token_id="t2", owner="bob", task_id="k")
    )
    for n in range(5):
        await vault.add_audit(AuditEvent(ts=float(n), action="consent", result="denied"))

    events = await vault.list_audit("t1")
    assert [e.detail for e in events] == ["#4", "#3", "#2"]
    assert all(e.id is not None for e in events)
    assert [e.id for e in events] == sorted((e.id for e in events if e.id), reverse=True)
    assert [e.detail for e in await vault.list_audit("t1", limit=1)] == ["#4"]
    (t2,) = await vault.list_audit("t2")
    assert (t2.owner, t2.task_id, t2.action, t2.ts) == ("bob", "k", "consent", 9.0)

    def untokened(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM audit WHERE token_id IS NULL").fetchone()[0])

    assert await vault._run(untokened) == 3


# --- threads and reprs ---------------------------------------------------------------------


async def test_sqlite_and_crypto_never_run_on_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int, str]] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        seen.append(("connect", threading.get_ident(), threading.current_thread().name))
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(
            lambda _sql: seen.append(
                ("sql", threading.get_ident(), threading.current_thread().name)
            )
        )
        return conn

    real_encrypt, real_decrypt = KeyRing.encrypt, KeyRing.decrypt

    def encrypt(self: KeyRing, *args: Any) -> Any:
        seen.append(("encrypt", threading.get_ident(), threading.current_thread().name))
        return real_encrypt(self, *args)

    def decrypt(self: KeyRing, *args: Any) -> Any:
        seen.append(("decrypt", threading.get_ident(), threading.current_thread().name))
        return real_decrypt(self, *args)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(KeyRing, "encrypt", encrypt)
    monkeypatch.setattr(KeyRing, "decrypt", decrypt)

    v = Vault(db_path(tmp_path))
    await v.open()
    record = await make_active(v)
    await v.find_by_state_hash("x")
    await v.read_refresh_token(record.id)
    assert await v.acquire_lease(record.id, "h", ttl=5, now=1.0)
    await v.record_refresh(record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=2.0)
    await v.update_refresh_state(
        record.id, refresh_state=IDLE, next_attempt_at=None, retry_count=0, last_error=None, now=3
    )
    await v.list()
    await v.count_by_status()
    await v.expire_pending(10_000.0)
    await v.add_audit(AuditEvent(ts=1.0, action="access", result="ok", token_id=record.id))
    await v.list_audit(record.id)
    await v.delete(record.id)
    await v.close()

    kinds = {kind for kind, _, _ in seen}
    assert kinds == {"connect", "sql", "encrypt", "decrypt"}
    assert all(ident != loop_thread for _, ident, _ in seen)
    assert {name.split("_")[0] for _, _, name in seen} == {"offline-token-vault"}


async def test_reprs_hold_no_secret(vault: Vault) -> None:
    record = await make_active(vault)
    key_line = vault.key_file.read_text().splitlines()[-1]
    text = repr(vault) + str(vault) + repr(vault.keyring) + repr(record)
    text += repr(await vault.get(record.id)) + repr(SECRETS)
    assert vault.keyring.primary_key_id in repr(vault)
    for secret in (REFRESH, VERIFIER, key_line):
        assert secret not in text


# --- the refresh path's combined operations ----------------------------------------------------


async def test_begin_refresh_takes_the_lease_and_reads_the_token(vault: Vault) -> None:
    record = await make_active(vault)
    got = await vault.begin_refresh(record.id, "worker-a", 30, now=2000.0)
    assert got is not None
    read, token = got
    assert read.id == record.id and token == REFRESH
    # Another holder waits while the lease is fresh, takes it once it expired.
    assert await vault.begin_refresh(record.id, "worker-b", 30, now=2010.0) is None
    assert await vault.begin_refresh(record.id, "worker-b", 30, now=2031.0) is not None
    with pytest.raises(KeyError):
        await vault.begin_refresh("no-such-id", "worker-a", 30, now=2000.0)


async def test_begin_refresh_with_tampered_ciphertext(vault: Vault) -> None:
    record = await make_active(vault)
    tamper(vault.path, "UPDATE tokens SET secret_nonce = zeroblob(12) WHERE id = ?", (record.id,))
    with pytest.raises(DecryptionError):
        await vault.begin_refresh(record.id, "worker-a", 30, now=2000.0)


async def test_record_refresh_writes_its_audit_event_in_the_same_commit(vault: Vault) -> None:
    record = await make_active(vault)
    assert await vault.begin_refresh(record.id, "w", 30, now=2000.0) is not None
    event = AuditEvent(ts=2001.0, action="refresh", result="ok", token_id=record.id, detail="x")
    await vault.record_refresh(
        record.id, new_refresh_token=None, idle_expires_at=None, now=2001.0, holder="w", audit=event
    )
    (latest, *_) = await vault.list_audit(record.id)
    assert (latest.action, latest.result, latest.detail) == ("refresh", "ok", "x")


async def test_warm_and_stale_ids_select_without_loading_records(vault: Vault) -> None:
    old = await make_active(vault, now=1000.0)
    fresh = await make_active(vault, now=5000.0)
    await vault.set_keep_warm(fresh.id, True, now=5001.0)
    assert await vault.warm_ids() == [fresh.id]
    assert await vault.stale_ids(before=3000.0) == [old.id]
    assert await vault.stale_ids(before=9000.0, limit=1) == [old.id]  # oldest first
    await vault.mark_failed(old.id, error="gone", now=6000.0)
    assert await vault.stale_ids(before=9000.0) == [fresh.id]
