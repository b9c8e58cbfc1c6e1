"""The TokenStore contract: what the broker and the refresh engine rely on, for every backend.

Parametrised over ``store_helpers.BACKENDS`` (as jupyter_server_fileid's manager tests are):
a second backend runs this whole file by adding one Backend class and one entry there.
Moved from tests/test_vault.py (issue 10); backend-specific checks (files, SQL, keys,
migrations) live in test_sqlite_*.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from store_helpers import (
    ACCESS,
    BACKENDS,
    REFRESH,
    ROTATED,
    SECRETS,
    make_active,
    make_pending,
)

from jupyter_offline_token.errors import (
    EntryGone,
    ErrorKind,
    NotFound,
    TooManyPendingConsents,
    VaultError,
)
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
    SharedAccessToken,
)
from jupyter_offline_token.paging import Cursor
from jupyter_offline_token.stores import ERROR_KINDS, TokenStore


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def vault(backend: Any, jp_asyncio_loop: Any) -> Iterator[TokenStore]:
    store = backend.token_store(audit_retention=3)
    jp_asyncio_loop.run_until_complete(store.open())
    yield store
    jp_asyncio_loop.run_until_complete(store.close())


async def test_methods_need_an_open_store(backend: Any) -> None:
    v = backend.token_store()
    with pytest.raises(VaultError, match="not open"):
        await v.get("x")
    await v.open()
    await v.close()
    with pytest.raises(VaultError, match="closed"):
        await v.get("x")
    with pytest.raises(VaultError, match="closed"):
        await v.open()


async def test_create_pending_find_and_consume_once(vault: TokenStore) -> None:
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

    with pytest.raises(EntryGone):
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


async def test_consume_is_single_use_across_connections(vault: TokenStore, backend: Any) -> None:
    other = backend.token_store()
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


async def test_activate_and_read_refresh_token(vault: TokenStore) -> None:
    pending = await make_pending(vault)
    with pytest.raises(EntryGone):
        await vault.read_refresh_token(pending.id)  # none stored yet
    active = await make_active(vault)
    assert active.status == ACTIVE and active.has_secret
    assert active.subject == "sub-123"
    assert active.scopes == ["openid", "offline_access", "profile"]
    assert active.idle_expires_at == 4600.0 and active.updated_at == 1001.0
    assert await vault.read_refresh_token(active.id) == REFRESH
    assert await vault.get(active.id) == active

    with pytest.raises(EntryGone):
        await vault.read_refresh_token("no-such-id")
    with pytest.raises(EntryGone):
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


async def test_activate_erases_unconsumed_consent_secrets(vault: TokenStore) -> None:
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


async def test_record_refresh_without_rotation_keeps_the_token(vault: TokenStore) -> None:
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
    vault: TokenStore, backend: Any
) -> None:
    record = await make_active(vault)
    after = await vault.record_refresh(
        record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=1700.0
    )
    assert after.refresh_count == 1 and after.has_secret
    other = backend.token_store()
    await other.open()
    try:
        assert await other.read_refresh_token(record.id) == ROTATED
        second = await other.record_refresh(
            record.id, new_refresh_token=None, idle_expires_at=None, now=1800.0
        )
        assert second.refresh_count == 2
    finally:
        await other.close()
    with pytest.raises(EntryGone):
        await vault.record_refresh(
            "no-such-id", new_refresh_token=None, idle_expires_at=None, now=1
        )


async def test_lease_semantics(vault: TokenStore) -> None:
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

    with pytest.raises(EntryGone):
        await vault.acquire_lease("no-such-id", "a", ttl=30, now=1.0)
    with pytest.raises(EntryGone):
        await vault.release_lease("no-such-id", "a")
    with pytest.raises(ValueError):
        await vault.acquire_lease(tid, "a", ttl=0, now=1.0)


async def test_lease_is_exclusive_across_vault_instances(vault: TokenStore, backend: Any) -> None:
    other = backend.token_store()  # a separate connection, as a second process would have
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


async def test_record_refresh_refused_when_lease_was_never_held(vault: TokenStore) -> None:
    record = await make_active(vault)
    with pytest.raises(VaultError, match="no longer held"):
        await vault.record_refresh(
            record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=5.0, holder="ghost"
        )
    assert await vault.read_refresh_token(record.id) == REFRESH
    assert (await vault.get(record.id)).refresh_count == 0  # type: ignore[union-attr]


async def test_update_refresh_state_and_failure_and_status(vault: TokenStore) -> None:
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
        with pytest.raises(EntryGone):
            await call


async def test_expire_pending(vault: TokenStore) -> None:
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


async def test_list_order_filters_and_pagination(vault: TokenStore) -> None:
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


async def test_count_by_status(vault: TokenStore) -> None:
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


async def test_audit_append_retention_and_order(vault: TokenStore) -> None:
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
    # Events without a token form one group of their own: see test_sqlite_database.py.


async def test_begin_refresh_takes_the_lease_and_reads_the_token(vault: TokenStore) -> None:
    record = await make_active(vault)
    got = await vault.begin_refresh(record.id, "worker-a", 30, now=2000.0)
    assert got is not None
    assert got.record.id == record.id and got.refresh_token == REFRESH
    assert not got.taken_over and REFRESH not in repr(got)
    # Another holder waits while the lease is fresh, takes it once it expired (taken over).
    assert await vault.begin_refresh(record.id, "worker-b", 30, now=2010.0) is None
    late = await vault.begin_refresh(record.id, "worker-b", 30, now=2031.0)
    assert late is not None and late.taken_over
    # A released lease is free again: not a take-over.
    await vault.release_lease(record.id, "worker-b")
    again = await vault.begin_refresh(record.id, "worker-a", 30, now=2032.0)
    assert again is not None and not again.taken_over
    with pytest.raises(EntryGone):
        await vault.begin_refresh("no-such-id", "worker-a", 30, now=2000.0)


async def test_record_refresh_writes_its_audit_event_in_the_same_commit(vault: TokenStore) -> None:
    record = await make_active(vault)
    assert await vault.begin_refresh(record.id, "w", 30, now=2000.0) is not None
    event = AuditEvent(ts=2001.0, action="refresh", result="ok", token_id=record.id, detail="x")
    await vault.record_refresh(
        record.id, new_refresh_token=None, idle_expires_at=None, now=2001.0, holder="w", audit=event
    )
    (latest, *_) = await vault.list_audit(record.id)
    assert (latest.action, latest.result, latest.detail) == ("refresh", "ok", "x")


async def test_warm_and_stale_ids_select_without_loading_records(vault: TokenStore) -> None:
    old = await make_active(vault, now=1000.0)
    fresh = await make_active(vault, now=5000.0)
    await vault.set_keep_warm(fresh.id, True, now=5001.0)
    assert await vault.warm_ids() == [fresh.id]
    assert await vault.stale_ids(before=3000.0) == [old.id]
    assert await vault.stale_ids(before=9000.0, limit=1) == [old.id]  # oldest first
    await vault.mark_failed(old.id, error="gone", now=6000.0)
    assert await vault.stale_ids(before=9000.0) == [fresh.id]


# --- added with the interface (issue 10) ---------------------------------------------------------


async def test_entry_gone_is_named_and_a_not_found(vault: TokenStore) -> None:
    with pytest.raises(EntryGone) as info:
        await vault.set_keep_warm("no-such-id", True, now=1.0)
    # Not a bare KeyError (issue 10 item 6): a NotFound, so one that reaches a handler is a 404.
    assert not isinstance(info.value, KeyError) and isinstance(info.value, NotFound)
    assert info.value.entry_id == "no-such-id"
    assert str(info.value) == "no vault entry 'no-such-id'"
    with pytest.raises(EntryGone):
        await vault.begin_refresh("no-such-id", "w", 30, now=1.0)
    with pytest.raises(EntryGone):
        await vault.record_refresh(
            "no-such-id", new_refresh_token=None, idle_expires_at=None, now=1
        )


async def test_mark_failed_stores_the_error_kind(vault: TokenStore) -> None:
    unknown = await make_active(vault)
    await vault.mark_failed(unknown.id, error="invalid_grant", now=2000.0)
    got = await vault.get(unknown.id)
    assert got is not None and got.last_error_kind is None  # kind is optional: unknown
    for kind in ERROR_KINDS:
        record = await make_active(vault)
        await vault.mark_failed(record.id, error="x", now=2000.0, kind=kind)
        got = await vault.get(record.id)
        assert got is not None and (got.status, got.last_error_kind) == (FAILED, kind)
    with pytest.raises(ValueError, match="error kind"):
        await vault.mark_failed(record.id, error="x", now=2001.0, kind="bogus")
    # A new consent for the same entry starts clean; so does a successful refresh.
    again = await vault.activate(
        record.id, refresh_token=REFRESH, subject=None, scopes=[], idle_expires_at=None, now=3000
    )
    assert (again.last_error, again.last_error_kind) == (None, None)


async def test_pages_are_keyset_newest_first_and_owner_scoped(vault: TokenStore) -> None:
    mine = [await make_pending(vault, owner="alice", now=float(n)) for n in range(5)]
    await make_pending(vault, owner="bob", now=2.5)
    first = await vault.list_page(owner="alice", limit=2)
    assert [r.id for r in first.items] == [mine[4].id, mine[3].id]
    assert first.next_cursor is not None
    newer = await make_pending(vault, owner="alice", now=100.0)  # must not shift later pages
    second = await vault.list_page(owner="alice", limit=2, cursor=Cursor.decode(first.next_cursor))
    assert [r.id for r in second.items] == [mine[2].id, mine[1].id]
    assert second.next_cursor is not None
    last = await vault.list_page(owner="alice", limit=2, cursor=Cursor.decode(second.next_cursor))
    assert [r.id for r in last.items] == [mine[0].id] and last.next_cursor is None
    pending = await vault.list_page(owner="alice", status=PENDING, limit=10)
    assert len(pending.items) == 6 and pending.items[0].id == newer.id
    assert all(r.owner == "alice" for r in pending.items)
    with pytest.raises(ValueError):
        await vault.list_page(limit=0)


async def test_attention_pages_and_state_counts(vault: TokenStore) -> None:
    healthy = await make_active(vault)
    retrying = await make_active(vault)
    failed = await make_active(vault)
    await vault.update_refresh_state(
        retrying.id,
        refresh_state=RETRYING,
        next_attempt_at=2000.0,
        retry_count=1,
        last_error="timeout",
        now=1500.0,
    )
    await vault.mark_failed(failed.id, error="invalid_grant", now=1600.0)
    page = await vault.list_page(owner="alice", limit=10, attention=True)
    assert {r.id for r in page.items} == {retrying.id, failed.id}
    assert healthy.id not in {r.id for r in page.items}
    assert await vault.count_by_state("alice") == {
        (ACTIVE, IDLE): 1,
        (ACTIVE, RETRYING): 1,
        (FAILED, "failed"): 1,
    }
    assert await vault.count_by_state("bob") == {}


async def test_purge_is_bounded_and_keeps_what_is_live(vault: TokenStore) -> None:
    live = await make_active(vault)
    old = [await make_active(vault) for _ in range(5)]
    for record in old:
        await vault.set_status(record.id, REVOKED, now=10.0)
        await vault.add_audit(AuditEvent(ts=10.0, action="revoke", result="ok", token_id=record.id))
    recent = await make_active(vault)
    await vault.set_status(recent.id, REVOKED, now=5000.0)
    first = await vault.purge(100.0, limit=3)
    assert len(first) == 3
    rest = await vault.purge(100.0, limit=3)
    assert sorted(first + rest) == sorted(r.id for r in old)
    assert await vault.purge(100.0, limit=3) == []
    for record in old:
        assert await vault.list_audit(record.id) == []
    assert await vault.get(live.id) is not None and await vault.get(recent.id) is not None
    with pytest.raises(ValueError):
        await vault.purge(100.0, limit=0)


async def test_pending_cap_counts_only_unexpired_entries_of_the_owner(backend: Any) -> None:
    """Moved from tests/test_scale.py."""
    vault = backend.token_store(max_pending_consents=2)
    await vault.open()
    now = 1_000_000.0

    async def create(owner: str, at: float) -> None:
        await vault.create_pending(
            owner=owner,
            issuer="http://idp.test",
            client_id="jupyter",
            scopes=["openid"],
            state_hash=uuid.uuid4().hex,
            secrets=ConsentSecrets(code_verifier="v", nonce="n", redirect_uri="http://x/cb"),
            consent_expires_at=at + 600,
            now=at,
        )

    try:
        await create("a", now)
        await create("a", now + 10)
        with pytest.raises(TooManyPendingConsents) as refused:
            await create("a", now + 20)
        assert refused.value.kind is ErrorKind.RATE_LIMITED and refused.value.retry_after == 580
        await create("b", now + 20)  # another owner has a cap of its own
        await create("a", now + 601)  # the first one expired (even before a sweep marks it)
        counts = await vault.count_by_status("a")
        assert counts["pending"] == 3
    finally:
        await vault.close()


async def test_sharing_account_finds_only_the_owners_other_active_entries_of_that_account(
    vault: TokenStore,
) -> None:
    async def active(owner: str, subject: str, client_id: str = "jupyter") -> str:
        record = await vault.create_pending(
            owner=owner,
            issuer="http://idp.test",
            client_id=client_id,
            scopes=["openid", "offline_access"],
            state_hash=uuid.uuid4().hex,
            secrets=ConsentSecrets(code_verifier="v", nonce="n", redirect_uri="http://x/cb"),
            consent_expires_at=2000.0,
            now=1000.0,
        )
        await vault.activate(
            record.id,
            refresh_token="rt",
            subject=subject,
            scopes=["openid"],
            idle_expires_at=None,
            now=1001.0,
        )
        return record.id

    first = await active("alice", "sub-a")
    second = await active("alice", "sub-a")
    third = await active("alice", "sub-a")
    await active("alice", "sub-b")  # another account
    await active("alice", "sub-a", client_id="other")  # another client
    await active("bob", "sub-a")  # another owner
    await vault.mark_failed(third, error="invalid_grant", now=1002.0)  # no longer active
    found = await vault.sharing_account(first, owner="alice", subject="sub-a", client_id="jupyter")
    assert found == [second]
    assert await vault.sharing_account(
        first, owner="alice", subject="sub-a", client_id="jupyter", limit=1
    ) == [second]


# --- the shared access token (issue 11: one grant per expiry across processes) ----------------
def _shared(expires_at: float = 5000.0, token: str = ACCESS) -> SharedAccessToken:
    return SharedAccessToken(
        access_token=token, token_type="Bearer", expires_at=expires_at, scope="openid profile"
    )


async def _refreshed(vault: TokenStore, access: SharedAccessToken | None) -> str:
    record = await make_active(vault)
    assert await vault.begin_refresh(record.id, "p1", 30.0, 1100.0) is not None
    await vault.record_refresh(
        record.id,
        new_refresh_token=ROTATED,
        idle_expires_at=None,
        now=1100.0,
        holder="p1",
        access=access,
    )
    return record.id


async def test_shared_access_token_round_trip_for_another_store(
    vault: TokenStore, backend: Any
) -> None:
    token_id = await _refreshed(vault, _shared())
    other = backend.token_store()
    await other.open()
    try:
        assert await other.read_access_token(token_id, valid_until=1200.0) == _shared()
    finally:
        await other.close()
    assert await vault.read_refresh_token(token_id) == ROTATED  # the same commit
    # The next refresh replaces it; one without an access token clears it.
    await vault.record_refresh(
        token_id,
        new_refresh_token=None,
        idle_expires_at=None,
        now=1300.0,
        access=_shared(6000.0, "at-second"),
    )
    assert await vault.read_access_token(token_id, valid_until=1300.0) == _shared(
        6000.0, "at-second"
    )
    await vault.record_refresh(token_id, new_refresh_token=None, idle_expires_at=None, now=1400)
    assert await vault.read_access_token(token_id, valid_until=1400.0) is None
    assert await vault.read_access_token(str(uuid.uuid4()), valid_until=0.0) is None
    assert "PLAINTEXT" not in repr(_shared())


async def test_shared_access_token_must_outlive_valid_until(vault: TokenStore) -> None:
    token_id = await _refreshed(vault, _shared(expires_at=5000.0))
    assert await vault.read_access_token(token_id, valid_until=4999.0) is not None
    assert await vault.read_access_token(token_id, valid_until=5000.0) is None
    assert await vault.read_access_token(token_id, valid_until=6000.0) is None


@pytest.mark.parametrize("how", ["revoke", "fail", "delete", "expire", "reactivate"])
async def test_shared_access_token_cleared_when_the_entry_changes(
    vault: TokenStore, how: str
) -> None:
    token_id = await _refreshed(vault, _shared())
    other_id = await _refreshed(vault, _shared(token="at-other-entry"))
    if how == "revoke":
        await vault.set_status(token_id, REVOKED, now=1500.0)
    elif how == "fail":
        await vault.mark_failed(token_id, error="invalid_grant", now=1500.0)
    elif how == "delete":
        assert await vault.delete(token_id)
    elif how == "expire":
        await vault.set_status(token_id, EXPIRED, now=1500.0)
    else:
        await vault.activate(
            token_id,
            refresh_token=REFRESH,
            subject="sub-123",
            scopes=["openid"],
            idle_expires_at=None,
            now=1500.0,
        )
        assert (await vault.get(token_id)).status == ACTIVE  # type: ignore[union-attr]
    assert await vault.read_access_token(token_id, valid_until=1500.0) is None
    # Only that entry's: the other keeps its own.
    kept = await vault.read_access_token(other_id, valid_until=1500.0)
    assert kept is not None and kept.access_token == "at-other-entry"


async def test_shared_access_token_is_bound_to_its_entry(vault: TokenStore, backend: Any) -> None:
    """A ciphertext moved to another entry (same owner, same key) does not decrypt there: None,
    never an error and never the other entry's token."""
    source = await _refreshed(vault, _shared(token="at-source"))
    target = await _refreshed(vault, _shared(token="at-target"))
    backend.copy_columns(source, target, ["access_ct", "access_nonce", "access_key_id"])
    assert await vault.read_access_token(target, valid_until=1200.0) is None
    found = await vault.read_access_token(source, valid_until=1200.0)
    assert found is not None and found.access_token == "at-source"


async def test_get_for_access_reads_the_entry_and_its_shared_token(vault: TokenStore) -> None:
    """The cache miss's one read: the entry, and its shared access token only when asked for,
    active and valid at ``valid_until`` (as ``get`` plus ``read_access_token``)."""
    token_id = await _refreshed(vault, _shared(expires_at=5000.0))
    record, shared = await vault.get_for_access(token_id, valid_until=1200.0)
    assert record is not None and record.id == token_id
    assert shared is not None and shared.access_token == ACCESS and shared.expires_at == 5000.0
    assert (await vault.get_for_access(token_id, valid_until=None))[1] is None
    assert (await vault.get_for_access(token_id, valid_until=5000.0))[1] is None  # expired then
    await vault.set_status(token_id, "revoked", now=1300.0)
    record, shared = await vault.get_for_access(token_id, valid_until=1200.0)
    assert record is not None and record.status == "revoked" and shared is None
    assert await vault.get_for_access(str(uuid.uuid4()), valid_until=1200.0) == (None, None)
