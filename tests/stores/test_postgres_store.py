"""PostgreSQL-specific checks of the vault (issue 11): schema revisions, opening, keys, what is
stored in the clear, and that neither errors nor reprs show the database password. The shared
behaviour is in the contract suites (``BACKENDS['postgres']``)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pg_fixture import PostgresCluster
from store_helpers import PG_KEY, REFRESH, ROTATED, SECRETS, make_active, make_pending

from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.models import FAILED, REVOKED, AuditEvent, SharedAccessToken
from jupyter_offline_token.stores.postgres import (
    SCHEMA_VERSION,
    PostgresTokenStore,
    redact_url,
)

ACCESS = "at-PLAINTEXT-access-token-c0ffee"


def store(url: str, **settings: Any) -> PostgresTokenStore:
    settings.setdefault("encryption_keys", [PG_KEY])
    return PostgresTokenStore(url=url, **settings)


@pytest.fixture
def vault(pg_url: str, jp_asyncio_loop: Any) -> Iterator[PostgresTokenStore]:
    opened = store(pg_url)
    jp_asyncio_loop.run_until_complete(opened.open())
    yield opened
    jp_asyncio_loop.run_until_complete(opened.close())


def shared(expires_at: float = 5000.0) -> SharedAccessToken:
    return SharedAccessToken(
        access_token=ACCESS, token_type="Bearer", expires_at=expires_at, scope="openid"
    )


# --- schema -------------------------------------------------------------------------------------


async def test_open_migrates_once_and_concurrent_opens_agree(
    pg_url: str, pg_cluster: PostgresCluster
) -> None:
    stores = [store(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))  # six "processes" start at once
    try:
        versions = pg_cluster.execute(pg_url, "SELECT version FROM jot_schema ORDER BY version")
        assert versions == [(n,) for n in range(1, SCHEMA_VERSION + 1)]
        record = await make_active(stores[0])
        assert await stores[5].read_refresh_token(record.id) == REFRESH
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_schema_is_refused_with_the_setting_to_fix(
    pg_url: str, pg_cluster: PostgresCluster
) -> None:
    first = store(pg_url)
    await first.open()
    await first.close()
    pg_cluster.execute(
        pg_url, "INSERT INTO jot_schema (version) VALUES (%s)", (SCHEMA_VERSION + 5,)
    )
    newer = store(pg_url)
    with pytest.raises(VaultError) as refused:
        await newer.open()
    message = str(refused.value)
    assert f"schema revision {SCHEMA_VERSION + 5}" in message
    assert "OfflineTokenApp.database_url" in message and "upgrade" in message
    assert pg_cluster.password not in message
    await newer.close()


# --- keys ---------------------------------------------------------------------------------------


async def test_no_configured_key_is_refused_naming_the_setting(pg_url: str) -> None:
    keyless = PostgresTokenStore(url=pg_url)
    with pytest.raises(VaultError, match=r"OfflineTokenApp\.encryption_keys"):
        await keyless.open()
    await keyless.close()


async def test_a_key_ring_missing_a_stored_key_id_is_refused_at_open(
    pg_url: str, vault: PostgresTokenStore
) -> None:
    await make_active(vault)
    other = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8"  # bytes 32..63
    wrong = store(pg_url, encryption_keys=[other])
    with pytest.raises(VaultError, match=r"lacks.*OfflineTokenApp\.encryption_keys"):
        await wrong.open()
    await wrong.close()
    rotated = store(pg_url, encryption_keys=[other, PG_KEY])  # new key first, old kept
    await rotated.open()
    await rotated.close()


# --- nothing in the clear -----------------------------------------------------------------------


async def test_no_secret_is_stored_in_the_clear(
    pg_url: str, pg_cluster: PostgresCluster, vault: PostgresTokenStore
) -> None:
    pending = await make_pending(vault)  # consent secrets stored
    active = await make_active(vault)
    await vault.record_refresh(
        active.id, new_refresh_token=ROTATED, idle_expires_at=None, now=2000.0, access=shared()
    )
    dump = "\n".join(
        str(row)
        for table in ("tokens", "audit", "evictions", "sweeps", "token_counts", "tasks")
        for row in pg_cluster.execute(pg_url, f"SELECT t::text FROM {table} t")  # noqa: S608
    )
    assert pending.id in dump and active.id in dump  # the dump did read the rows
    for secret in (REFRESH, ROTATED, ACCESS, SECRETS.code_verifier, SECRETS.nonce):
        assert secret not in dump
        assert secret.encode().hex() not in dump  # nor as bytea's hex text
    assert await vault.read_refresh_token(active.id) == ROTATED


async def test_the_password_is_never_shown(
    pg_cluster: PostgresCluster, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = pg_cluster.password
    opened = store(pg_url)
    await opened.open()
    assert password not in repr(opened)
    await opened.close()
    assert (
        redact_url(pg_url)
        == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/" + (pg_url.rsplit("/", 1)[1])
    )
    wrong_password = pg_url.replace(password, password + "x")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = pg_url.replace(f":{pg_cluster.port}/", f":{closed_port}/")
    for url in (wrong_password, unreachable):
        bad = store(url)
        with pytest.raises(VaultError) as refused:
            await bad.open()
        message = str(refused.value)
        assert "OfflineTokenApp.database_url" in message
        assert password not in message and password not in repr(bad)
        assert "postgres@127.0.0.1" in message
        await bad.close()
    in_query = f"postgresql://postgres@127.0.0.1:{closed_port}/x?password={password}"
    bad = store(in_query)
    with pytest.raises(VaultError) as refused:
        await bad.open()
    assert password not in str(refused.value) and password not in repr(bad)
    await bad.close()
    assert caplog.records and all(password not in r.getMessage() for r in caplog.records)


# --- the shared access token --------------------------------------------------------------------


async def test_the_access_token_is_shared_until_it_expires_or_the_entry_leaves_active(
    pg_url: str, pg_cluster: PostgresCluster, vault: PostgresTokenStore
) -> None:
    other = store(pg_url)  # a second process
    await other.open()
    try:
        record = await make_active(vault)
        assert await other.read_access_token(record.id, valid_until=0.0) is None
        await vault.record_refresh(
            record.id, new_refresh_token=None, idle_expires_at=None, now=2000.0, access=shared()
        )
        got = await other.read_access_token(record.id, valid_until=4999.0)
        assert got == shared() and ACCESS not in repr(got)
        assert await other.read_access_token(record.id, valid_until=5000.0) is None  # expired
        # A refresh without an access token clears the shared one.
        await vault.record_refresh(
            record.id, new_refresh_token=None, idle_expires_at=None, now=2001.0
        )
        assert await other.read_access_token(record.id, valid_until=0.0) is None
        # Leaving active clears it in the same commit (the trigger).
        await vault.record_refresh(
            record.id, new_refresh_token=None, idle_expires_at=None, now=2002.0, access=shared()
        )
        await vault.mark_failed(record.id, error="invalid_grant", now=2003.0)
        assert await other.read_access_token(record.id, valid_until=0.0) is None
        assert pg_cluster.execute(
            pg_url, "SELECT access_ct FROM tokens WHERE id = %s", (record.id,)
        ) == [(None,)]
        # A ciphertext moved to another entry does not decrypt: a miss, never an error.
        victim = await make_active(vault)
        await vault.record_refresh(
            victim.id, new_refresh_token=None, idle_expires_at=None, now=2004.0, access=shared()
        )
        thief = await make_active(vault, owner="mallory")
        pg_cluster.execute(
            pg_url,
            "UPDATE tokens SET (access_ct, access_nonce, access_key_id, access_expires_at) = "
            "(SELECT access_ct, access_nonce, access_key_id, access_expires_at FROM tokens "
            "WHERE id = %s) WHERE id = %s",
            (victim.id, thief.id),
        )
        assert await other.read_access_token(thief.id, valid_until=0.0) is None
        assert await other.read_access_token(victim.id, valid_until=0.0) == shared()
    finally:
        await other.close()


async def test_evictions_log_leaving_active_and_deleting_an_active_entry(
    vault: PostgresTokenStore,
) -> None:
    end, none = await vault.evictions_after(None)
    assert none == []
    revoked = await make_active(vault)
    deleted = await make_active(vault)
    pending = await make_pending(vault)
    await vault.set_status(revoked.id, REVOKED, now=2000.0)
    await vault.delete(deleted.id)
    await vault.delete(pending.id)  # deleted: logged, as every delete
    await vault.set_status(revoked.id, FAILED, now=2001.0)  # not active before: not logged
    cursor, ids = await vault.evictions_after(end)
    assert ids == [revoked.id, deleted.id, pending.id]
    assert await vault.evictions_after(cursor) == (cursor, [])
    first, only = await vault.evictions_after(end, limit=1)
    assert only == [revoked.id] and first < cursor
    assert await vault.prune_evictions(float("inf"), limit=1) == 1
    assert (await vault.evictions_after(end))[1] == [deleted.id, pending.id]
    # The retention purge of long-inactive entries logs nothing (they were logged on leaving).
    assert await vault.purge(float("inf"), limit=10) == [revoked.id]
    assert (await vault.evictions_after(cursor))[1] == []


async def test_audit_retention_keeps_the_newest_per_token_and_for_tokenless_events(
    pg_url: str, pg_cluster: PostgresCluster
) -> None:
    vault = store(pg_url, audit_retention=3)
    await vault.open()
    try:
        for n in range(5):
            await vault.add_audit(AuditEvent(ts=float(n), action="consent", result="denied"))
            await vault.add_audit(
                AuditEvent(ts=float(n), action="refresh", result="ok", token_id="t1", detail=f"{n}")
            )
        kept = pg_cluster.execute(pg_url, "SELECT ts FROM audit WHERE token_id IS NULL ORDER BY id")
        assert kept == [(2.0,), (3.0,), (4.0,)]
        assert [e.detail for e in await vault.list_audit("t1")] == ["4", "3", "2"]
    finally:
        await vault.close()
    single = store(pg_url, audit_retention=1)
    await single.open()
    try:
        await single.add_audit(AuditEvent(ts=9.0, action="refresh", result="ok", token_id="t1"))
        assert [e.ts for e in await single.list_audit("t1")] == [9.0]
    finally:
        await single.close()
