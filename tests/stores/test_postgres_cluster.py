"""Several processes on one PostgreSQL vault (issue 11): each store instance here has its own
pool and connections, as a separate server process would. What must hold across them: one lease
holder, the pending-consent cap, one claim per sweep interval, purges that neither repeat nor
wait for each other, and evictions that wake every listener at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pg_fixture import PostgresCluster
from store_helpers import PG_KEY, make_active

from jupyter_offline_token.errors import TooManyPendingConsents
from jupyter_offline_token.models import REVOKED, ConsentSecrets
from jupyter_offline_token.stores.postgres import PostgresTokenStore

# Generous: only reached when something hangs (a blocked purge, a lost notification).
DEADLINE = 30.0
NEVER = 3600.0  # a wait that ends on its own only after the test's timeout


@pytest.fixture
def pair(pg_url: str, jp_asyncio_loop: Any) -> Iterator[tuple[PostgresTokenStore, ...]]:
    """Two stores on one database: two processes."""
    stores = tuple(PostgresTokenStore(url=pg_url, encryption_keys=[PG_KEY]) for _ in range(2))
    for s in stores:
        jp_asyncio_loop.run_until_complete(s.open())
    yield stores
    for s in stores:
        jp_asyncio_loop.run_until_complete(s.close())


async def test_the_lease_has_one_holder_among_concurrent_processes(
    pair: tuple[PostgresTokenStore, ...],
) -> None:
    record = await make_active(pair[0])
    starts = await asyncio.gather(
        *(pair[n % 2].begin_refresh(record.id, f"holder-{n}", 30, now=2000.0) for n in range(20))
    )
    winners = [s for s in starts if s is not None]
    assert len(winners) == 1 and not winners[0].taken_over
    # The holder dies without releasing; after the ttl exactly one other takes it over.
    later = await asyncio.gather(
        *(pair[n % 2].begin_refresh(record.id, f"late-{n}", 30, now=2031.0) for n in range(10))
    )
    taken = [s for s in later if s is not None]
    assert len(taken) == 1 and taken[0].taken_over


async def test_the_pending_cap_holds_under_concurrent_requests(pg_url: str) -> None:
    stores = [
        PostgresTokenStore(url=pg_url, encryption_keys=[PG_KEY], max_pending_consents=3)
        for _ in range(2)
    ]
    await asyncio.gather(*(s.open() for s in stores))
    secrets = ConsentSecrets(code_verifier="v", nonce="n", redirect_uri="http://x/cb")

    async def request(n: int) -> bool:
        try:
            await stores[n % 2].create_pending(
                owner="alice",
                issuer="http://idp.test",
                client_id="jupyter",
                scopes=["openid"],
                state_hash=uuid.uuid4().hex,
                secrets=secrets,
                consent_expires_at=5000.0,
                now=1000.0,
            )
        except TooManyPendingConsents:
            return False
        return True

    try:
        results = await asyncio.gather(*(request(n) for n in range(16)))
        assert sum(results) == 3
        assert (await stores[0].count_by_status("alice"))["pending"] == 3
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_sweep_is_claimed_once_per_interval_across_processes(
    pair: tuple[PostgresTokenStore, ...],
) -> None:
    async def round_at(now: float) -> list[bool]:
        return await asyncio.gather(
            *(
                pair[n % 2].claim_sweep("expiry", f"proc-{n}", interval=60.0, now=now)
                for n in range(10)
            )
        )

    assert sum(await round_at(1000.0)) == 1
    assert sum(await round_at(1059.9)) == 0  # within the interval of that claim
    assert sum(await round_at(1060.0)) == 1
    assert await pair[0].claim_sweep("retention", "proc-0", interval=60.0, now=1060.0)  # its own


async def test_concurrent_purges_never_delete_twice(pair: tuple[PostgresTokenStore, ...]) -> None:
    doomed = [await make_active(pair[0]) for _ in range(12)]
    for record in doomed:
        await pair[0].set_status(record.id, REVOKED, now=10.0)
    batches = await asyncio.gather(
        *(pair[n % 2].purge(100.0, limit=2) for n in range(10))  # 20 places for 12 rows
    )
    purged = [token_id for batch in batches for token_id in batch]
    assert len(purged) == len(set(purged))
    rest = await pair[1].purge(100.0, limit=100)
    assert sorted(purged + rest) == sorted(r.id for r in doomed)


async def test_a_purge_skips_rows_another_process_holds_instead_of_waiting(
    pg_url: str, pair: tuple[PostgresTokenStore, ...]
) -> None:
    held, free = await make_active(pair[0]), await make_active(pair[0])
    for record in (held, free):
        await pair[0].set_status(record.id, REVOKED, now=10.0)
    async with await psycopg.AsyncConnection.connect(pg_url) as other:
        # Another process is mid-purge: it has the first row locked and has not committed.
        await other.execute("SELECT id FROM tokens WHERE id = %s FOR UPDATE", (held.id,))
        purged = await asyncio.wait_for(pair[1].purge(100.0, limit=10), DEADLINE)
        assert purged == [free.id]
        await other.rollback()
    assert await pair[1].purge(100.0, limit=10) == [held.id]


async def test_an_eviction_wakes_the_other_process_at_once(
    pair: tuple[PostgresTokenStore, ...],
) -> None:
    listener, writer = pair
    record = await make_active(writer)
    cursor, _ = await listener.evictions_after(None)
    await listener.wait_for_evictions(0.01)  # starts listening
    waiting = asyncio.create_task(listener.wait_for_evictions(NEVER))
    await asyncio.sleep(0)
    await writer.set_status(record.id, REVOKED, now=2000.0)
    await asyncio.wait_for(waiting, DEADLINE)  # woken by the notification, not the timeout
    assert (await listener.evictions_after(cursor))[1] == [record.id]


async def test_a_lost_listen_connection_wakes_waiters_and_falls_back_to_polling(
    pair: tuple[PostgresTokenStore, ...], pg_url: str, pg_cluster: PostgresCluster
) -> None:
    listener, writer = pair
    await listener.wait_for_evictions(0.01)
    waiting = asyncio.create_task(listener.wait_for_evictions(NEVER))
    await asyncio.sleep(0)
    pg_cluster.execute(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
    )
    # Woken (a notification may have been missed: re-read the log), well before NEVER.
    await asyncio.wait_for(waiting, DEADLINE)
    # Meanwhile waiting still works: it listens again or polls, and never raises.
    record = await make_active(writer)
    cursor, _ = await listener.evictions_after(None)
    await writer.delete(record.id)
    await listener.wait_for_evictions(0.05)
    assert (await listener.evictions_after(cursor))[1] == [record.id]


async def _waiting_on_a_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def test_evictions_are_read_in_commit_order_never_skipped(
    pg_url: str, pair: tuple[PostgresTokenStore, ...]
) -> None:
    """A slow transaction that evicts first must not be overtaken: the reader's cursor would
    pass its row before it commits, and that eviction would be lost."""
    reader, writer = pair
    # Two owners: no count row (token_counts) is shared, only the eviction log.
    slow, fast = await make_active(writer, owner="alice"), await make_active(writer, owner="bob")
    cursor, _ = await reader.evictions_after(None)
    async with await psycopg.AsyncConnection.connect(pg_url) as other:
        await other.execute("UPDATE tokens SET status = 'revoked' WHERE id = %s", (slow.id,))
        # ``fast`` revokes while ``slow`` has not committed: it waits for it, so it cannot
        # commit a larger seq first.
        revoking = asyncio.create_task(writer.set_status(fast.id, REVOKED, now=2000.0))
        # Until it has either committed (the defect) or is waiting on a lock.
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while not revoking.done() and not await _waiting_on_a_lock(other):
            assert asyncio.get_running_loop().time() < deadline, "neither done nor waiting"
            await asyncio.sleep(0.02)
        assert await reader.evictions_after(cursor) == (cursor, [])
        await other.commit()
    await asyncio.wait_for(revoking, DEADLINE)
    assert (await reader.evictions_after(cursor))[1] == [slow.id, fast.id]


async def test_connections_the_server_dropped_are_replaced(
    pg_url: str, pg_cluster: PostgresCluster, pair: tuple[PostgresTokenStore, ...]
) -> None:
    vault = pair[0]
    record = await make_active(vault)
    pg_cluster.execute(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    for _ in range(3):  # every pooled connection is dead: each is replaced, no call fails
        assert (await vault.get(record.id)) is not None
    assert (await make_active(pair[1])).status == "active"


async def test_concurrent_waiters_share_one_listen_connection(
    pg_url: str, pg_cluster: PostgresCluster, pair: tuple[PostgresTokenStore, ...]
) -> None:
    listener, writer = pair
    record = await make_active(writer)
    waiting = [asyncio.create_task(listener.wait_for_evictions(NEVER)) for _ in range(5)]
    deadline = asyncio.get_running_loop().time() + DEADLINE
    # Until all five wait on the listening connection, however slow the machine.
    while _listening(pg_cluster, pg_url) < 1 or len(listener._listener._waiters) < 5:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await writer.delete(record.id)
    await asyncio.wait_for(asyncio.gather(*waiting), DEADLINE)  # every waiter woken at once
    assert _listening(pg_cluster, pg_url) == 1


def _listening(pg_cluster: PostgresCluster, pg_url: str) -> int:
    (row,) = pg_cluster.execute(
        pg_url,
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN %'",
    )
    return int(row[0])


async def test_a_deadlocked_transaction_is_run_again(pair: tuple[PostgresTokenStore, ...]) -> None:
    """Two transactions locking two rows in opposite order: PostgreSQL aborts one; the store
    runs it again, so both callers succeed."""
    first, second = await make_active(pair[0]), await make_active(pair[0])
    holding: set[str] = set()
    both_hold_one = asyncio.Event()  # asyncio.Barrier needs Python 3.11
    attempts: list[str] = []

    def locking(one: str, other: str, name: str) -> Any:
        async def work(conn: Any) -> None:
            attempts.append(name)
            await conn.execute("SELECT id FROM tokens WHERE id = %s FOR UPDATE", (one,))
            if attempts.count(name) == 1:
                holding.add(name)
                if len(holding) == 2:
                    both_hold_one.set()
                await asyncio.wait_for(both_hold_one.wait(), DEADLINE)
            await conn.execute("SELECT id FROM tokens WHERE id = %s FOR UPDATE", (other,))

        return work

    await asyncio.wait_for(
        asyncio.gather(
            pair[0].database.run(locking(first.id, second.id, "a")),
            pair[1].database.run(locking(second.id, first.id, "b")),
        ),
        DEADLINE,
    )
    # Both finished; at least one was aborted and ran again (a retry may meet the other
    # transaction's lock once more and be aborted again, within the store's retries).
    assert {"a", "b"} <= set(attempts) and len(attempts) >= 3, attempts
