"""The TokenStore's cluster contract (issue 11), for every backend: the eviction log that every
process tails to drop cached access tokens, and the sweep claims that run each periodic job once
per interval cluster-wide. Parametrised over ``store_helpers.BACKENDS``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from store_helpers import BACKENDS, ROTATED, make_active, make_pending

from jupyter_offline_token.models import EXPIRED, REVOKED
from jupyter_offline_token.stores import TokenStore


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def vault(backend: Any, jp_asyncio_loop: Any) -> Any:
    store = backend.token_store()
    jp_asyncio_loop.run_until_complete(store.open())
    yield store
    jp_asyncio_loop.run_until_complete(store.close())


@pytest.fixture
def second(backend: Any, jp_asyncio_loop: Any) -> Any:
    """Another store instance on the same vault: another process's view of it."""
    store = backend.token_store()
    jp_asyncio_loop.run_until_complete(store.open())
    yield store
    jp_asyncio_loop.run_until_complete(store.close())


async def drain(vault: TokenStore, cursor: int, *, limit: int = 1000) -> tuple[int, list[str]]:
    """Everything logged after ``cursor``, page by page."""
    ids: list[str] = []
    while True:
        cursor, page = await vault.evictions_after(cursor, limit=limit)
        ids += page
        if len(page) < limit:
            return cursor, ids


# --- the eviction log -------------------------------------------------------------------------
async def test_cursor_none_is_the_end_of_the_log(vault: TokenStore) -> None:
    start, ids = await vault.evictions_after(None)
    assert ids == []
    assert await vault.evictions_after(start) == (start, [])
    record = await make_active(vault)
    await vault.delete(record.id)
    end, ids = await vault.evictions_after(None)
    assert ids == [] and end != start
    assert await vault.evictions_after(end) == (end, [])  # the delete is before the end
    assert await vault.evictions_after(start) == (end, [record.id])


async def test_delete_revoke_fail_expire_each_appear_once_in_order(vault: TokenStore) -> None:
    deleted, revoked, failed, expired = [await make_active(vault) for _ in range(4)]
    cursor, _ = await vault.evictions_after(None)
    await vault.delete(deleted.id)
    await vault.set_status(revoked.id, REVOKED, now=2000.0)
    await vault.mark_failed(failed.id, error="invalid_grant", now=2001.0)
    await vault.set_status(expired.id, EXPIRED, now=2002.0)
    cursor, ids = await vault.evictions_after(cursor)
    assert ids == [deleted.id, revoked.id, failed.id, expired.id]
    assert await vault.evictions_after(cursor) == (cursor, [])


async def test_the_log_is_read_in_pages_bounded_by_limit(vault: TokenStore) -> None:
    records = [await make_active(vault) for _ in range(5)]
    cursor, _ = await vault.evictions_after(None)
    for record in records:
        await vault.delete(record.id)
    first_cursor, first = await vault.evictions_after(cursor, limit=2)
    assert first == [records[0].id, records[1].id]
    _, rest = await drain(vault, first_cursor, limit=2)
    assert rest == [r.id for r in records[2:]]
    with pytest.raises(ValueError):
        await vault.evictions_after(cursor, limit=0)


async def test_refresh_rotation_and_bookkeeping_log_nothing(vault: TokenStore) -> None:
    record = await make_active(vault)
    cursor, _ = await vault.evictions_after(None)
    started = await vault.begin_refresh(record.id, "holder-a", 30.0, 2000.0)
    assert started is not None
    await vault.record_refresh(
        record.id, new_refresh_token=ROTATED, idle_expires_at=None, now=2001.0, holder="holder-a"
    )
    await vault.update_refresh_state(
        record.id,
        refresh_state="retrying",
        next_attempt_at=2100.0,
        retry_count=1,
        last_error="timeout",
        now=2002.0,
    )
    await vault.set_keep_warm(record.id, True, now=2003.0)
    assert await vault.acquire_lease(record.id, "holder-b", 30.0, 3000.0)
    await vault.release_lease(record.id, "holder-b")
    assert await vault.evictions_after(cursor) == (cursor, [])


async def test_a_consent_that_never_became_active_logs_only_its_deletion(
    vault: TokenStore,
) -> None:
    """Nothing of a pending entry is cached anywhere: its expiry logs nothing."""
    pending = await make_pending(vault, consent_expires_at=1500.0)
    other = await make_pending(vault, consent_expires_at=9000.0)
    cursor, _ = await vault.evictions_after(None)
    assert await vault.expire_pending(1600.0) == [pending.id]
    assert await vault.evictions_after(cursor) == (cursor, [])
    await vault.delete(other.id)
    assert (await vault.evictions_after(cursor))[1] == [other.id]


async def test_another_store_on_the_vault_sees_the_evictions(
    vault: TokenStore, second: TokenStore
) -> None:
    record = await make_active(vault)
    cursor, _ = await second.evictions_after(None)
    await vault.mark_failed(record.id, error="invalid_grant", now=2000.0)
    await second.wait_for_evictions(0.01)  # a quiet wait returns; a notified one returns early
    assert (await second.evictions_after(cursor))[1] == [record.id]


async def test_prune_by_age_leaves_cursors_working(vault: TokenStore) -> None:
    records = [await make_active(vault) for _ in range(3)]
    for record in records:
        await vault.delete(record.id)
    end, _ = await vault.evictions_after(None)
    # The log's times are wall times the store takes itself.
    assert await vault.prune_evictions(time.time() - 3600, limit=100) == 0
    assert await vault.prune_evictions(time.time() + 60, limit=2) == 2
    assert await vault.prune_evictions(time.time() + 60, limit=100) == 1
    assert await vault.prune_evictions(time.time() + 60, limit=100) == 0
    # After a prune, a cursor taken before it and one taken after both see what comes next.
    fresh, ids = await vault.evictions_after(None)
    assert ids == []
    late = await make_active(vault)
    await vault.delete(late.id)
    assert (await vault.evictions_after(end))[1] == [late.id]
    assert (await vault.evictions_after(fresh))[1] == [late.id]


# --- sweep claims ---------------------------------------------------------------------------
async def test_one_claim_per_interval(vault: TokenStore) -> None:
    assert await vault.claim_sweep("purge", "a", interval=60.0, now=1000.0)
    assert not await vault.claim_sweep("purge", "b", interval=60.0, now=1000.0)
    assert not await vault.claim_sweep("purge", "a", interval=60.0, now=1059.0)  # holder too
    assert await vault.claim_sweep("keepalive", "b", interval=60.0, now=1000.0)  # by name
    assert await vault.claim_sweep("purge", "b", interval=60.0, now=1060.0)  # the next one
    assert not await vault.claim_sweep("purge", "a", interval=60.0, now=1100.0)
    assert await vault.claim_sweep("purge", "a", interval=60.0, now=1500.0)


@pytest.mark.parametrize(
    ("name", "holder", "interval"), [("", "a", 1.0), ("x", "", 1.0), ("x", "a", 0.0)]
)
async def test_claim_arguments_are_checked(
    vault: TokenStore, name: str, holder: str, interval: float
) -> None:
    with pytest.raises(ValueError):
        await vault.claim_sweep(name, holder, interval=interval, now=1000.0)


async def test_concurrent_claims_from_two_stores_have_one_winner(
    vault: TokenStore, second: TokenStore
) -> None:
    for round_ in range(10):
        now = 1000.0 + round_ * 60.0
        claims = []
        for _ in range(3):
            claims += [
                vault.claim_sweep("expire", "a", interval=60.0, now=now),
                second.claim_sweep("expire", "b", interval=60.0, now=now),
            ]
        won = await asyncio.gather(*claims)
        assert won.count(True) == 1, (round_, won)
