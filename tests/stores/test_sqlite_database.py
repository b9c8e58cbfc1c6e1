"""SQLiteTokenStore specifics: files and pragmas, ciphertexts at rest, the worker thread, the
lease across OS processes, the token_counts triggers. Moved from tests/test_vault.py and
tests/test_scale.py (issue 10); what every backend must do is in test_token_store_contract.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import (
    ACCESS,
    NONCE,
    REFRESH,
    ROTATED,
    SECRETS,
    VERIFIER,
    db_path,
    fill,
    make_active,
    make_pending,
    mode_of,
    raw_files,
    tamper,
)

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import DecryptionError, VaultError
from jupyter_offline_token.models import IDLE, AuditEvent, SharedAccessToken
from jupyter_offline_token.stores.sqlite import SCHEMA_VERSION, SQLiteTokenStore, schema


@pytest.fixture
def vault(tmp_path: Path, jp_asyncio_loop: Any) -> Iterator[SQLiteTokenStore]:
    v = SQLiteTokenStore(db_path(tmp_path), audit_retention=3)
    jp_asyncio_loop.run_until_complete(v.open())
    yield v
    jp_asyncio_loop.run_until_complete(v.close())


async def test_open_creates_private_dir_and_db_with_wal_and_full_sync(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    old_umask = os.umask(0)  # a permissive umask must not loosen anything
    try:
        v = SQLiteTokenStore(path)
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

        found = await v.run(pragmas)
        assert found == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "busy_timeout": 10000,
            "foreign_keys": 1,
            "secure_delete": 1,
            "user_version": SCHEMA_VERSION,
        }
        assert SCHEMA_VERSION == len(schema.MIGRATIONS)
    finally:
        await v.close()


async def test_open_tightens_an_existing_loose_dir_and_db(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o755)
    path.touch()
    path.chmod(0o644)
    v = SQLiteTokenStore(path)
    await v.open()
    await v.close()
    assert mode_of(path.parent) == 0o700
    assert mode_of(path) == 0o600


async def test_reopen_is_idempotent_and_close_is_safe_twice(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    first = SQLiteTokenStore(path)
    await asyncio.gather(first.open(), first.open())  # concurrent opens share one connection
    conn = first.database._conn
    await first.open()  # a later open on the same instance is a no-op
    assert first.database._conn is conn is not None
    record = await make_active(first)
    key_file_before = first.key_file.read_bytes()
    key_ids = first.keyring.key_ids
    await first.close()
    await first.close()

    second = SQLiteTokenStore(path)
    await second.open()
    try:
        assert second.keyring.key_ids == key_ids
        assert second.key_file.read_bytes() == key_file_before
        assert await second.get(record.id) == record
        assert await second.read_refresh_token(record.id) == REFRESH
        assert await second.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == (
            SCHEMA_VERSION
        )
    finally:
        await second.close()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    v = SQLiteTokenStore(path)
    with pytest.raises(VaultError, match="cannot open the vault database"):
        await v.open()
    await v.close()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="audit_retention"):
        SQLiteTokenStore(Path("/nonexistent/vault.db"), audit_retention=0)


async def test_secrets_never_stored_in_plaintext(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    v = SQLiteTokenStore(path)
    await v.open()
    record = await make_active(v, owner="owner-positive-control")
    second = await make_pending(v, owner="owner-positive-control")  # consent secrets at rest
    shared = SharedAccessToken(ACCESS, "Bearer", 9e9, "openid")
    await v.record_refresh(
        record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=5.0, access=shared
    )
    assert await v.read_access_token(record.id, valid_until=6.0) == shared
    assert path.with_name(path.name + "-wal").exists()

    def check(blob: bytes) -> None:
        assert b"owner-positive-control" in blob  # proves we read the real data
        for secret in (REFRESH, ROTATED, VERIFIER, NONCE, ACCESS):
            assert secret.encode() not in blob
        assert KeyRing.load_file(v.key_file) is not None
        key_line = v.key_file.read_text().splitlines()[-1]
        assert key_line.encode() not in blob

    check(raw_files(path))  # while open: most pages still in the WAL
    assert await v.consume_consent(second.id) == SECRETS
    await v.close()
    check(raw_files(path))  # after close: checkpointed into the main file


async def test_tampered_ciphertexts_are_detected(vault: SQLiteTokenStore) -> None:
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


async def test_delete_removes_the_row_and_its_ciphertext(vault: SQLiteTokenStore) -> None:
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
    vault = SQLiteTokenStore(Path(path), encryption_keys=[key])
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
    v = SQLiteTokenStore(path, encryption_keys=[key])
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

    v = SQLiteTokenStore(db_path(tmp_path))
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


async def test_reprs_hold_no_secret(vault: SQLiteTokenStore) -> None:
    record = await make_active(vault)
    key_line = vault.key_file.read_text().splitlines()[-1]
    text = repr(vault) + str(vault) + repr(vault.keyring) + repr(record)
    text += repr(await vault.get(record.id)) + repr(SECRETS)
    assert vault.keyring.primary_key_id in repr(vault)
    for secret in (REFRESH, VERIFIER, key_line):
        assert secret not in text


async def test_begin_refresh_with_tampered_ciphertext(vault: SQLiteTokenStore) -> None:
    record = await make_active(vault)
    tamper(vault.path, "UPDATE tokens SET secret_nonce = zeroblob(12) WHERE id = ?", (record.id,))
    with pytest.raises(DecryptionError):
        await vault.begin_refresh(record.id, "worker-a", 30, now=2000.0)


async def test_audit_events_without_a_token_form_one_group(vault: SQLiteTokenStore) -> None:
    for n in range(5):
        await vault.add_audit(AuditEvent(ts=float(n), action="consent", result="denied"))

    def untokened(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM audit WHERE token_id IS NULL").fetchone()[0])

    assert await vault.run(untokened) == 3


KEY = KeyRing.generate()


async def test_counts_follow_every_write(tmp_path: Path) -> None:
    """token_counts is kept by triggers: after inserts, status and refresh-state changes and
    deletes it equals a GROUP BY over the entries."""
    vault = SQLiteTokenStore(tmp_path / "v.db", encryption_keys=[KEY])
    await vault.open()
    try:
        ids = await fill(vault, "a", 20) + await fill(vault, "b", 5, status="pending")
        now = time.time()
        await vault.set_status(ids[0], "revoked", now=now)
        await vault.mark_failed(ids[1], error="invalid_grant", now=now)
        await vault.update_refresh_state(
            ids[2],
            refresh_state="retrying",
            next_attempt_at=now,
            retry_count=1,
            last_error="x",
            now=now,
        )
        await vault.delete(ids[3])
        await vault.delete(ids[21])
        await vault.expire_pending(now + 3600)

        def truth(conn: Any) -> dict[tuple[str, str, str], int]:
            rows = conn.execute(
                "SELECT owner, status, refresh_state, COUNT(*) FROM tokens GROUP BY 1, 2, 3"
            )
            return {(r[0], r[1], r[2]): r[3] for r in rows}

        expected = await vault.run(truth)
        assert {
            (owner, *key): n
            for owner in ("a", "b")
            for key, n in (await vault.count_by_state(owner)).items()
        } == expected
        assert (await vault.count_by_status())["expired"] == 4
    finally:
        await vault.close()
