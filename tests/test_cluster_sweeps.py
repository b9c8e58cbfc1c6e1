"""Several processes on one vault split the periodic work: each sweep job runs once per interval
cluster-wide (issue 11). Two engines, each with its own broker and its own store instance on one
SQLite file (as two servers have), on one fake clock; the claims are the real store's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from fake_clock import FakeClock, run_async
from server_fixtures import TEST_KEY

from jupyter_offline_token.broker import TokenBroker
from jupyter_offline_token.models import ConsentSecrets
from jupyter_offline_token.refresh.engine import RefreshEngine
from jupyter_offline_token.refresh.policy import BackoffPolicy
from jupyter_offline_token.settings import OfflineTokenSettings
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.sqlite.sql import transaction

SETTINGS = {"sweep_interval": 60.0, "keepalive_interval": 400.0, "history_retention": 3600.0}


async def engines_on(clock: FakeClock, tmp_path: Any, count: int = 2) -> list[RefreshEngine]:
    engines = []
    for _ in range(count):
        vault = SQLiteTokenStore(tmp_path / "vault.db", encryption_keys=[TEST_KEY])
        await vault.open()
        broker = TokenBroker(vault, None, None, clock=clock.time)
        settings = OfflineTokenSettings(**SETTINGS)
        engines.append(RefreshEngine(broker, settings, clock=clock, backoff=BackoffPolicy()))
    return engines


def count_calls(
    engine: RefreshEngine, name: str, runs: Counter[tuple[str, int]], index: int
) -> None:
    """Pass-through counter on one job of ``engine`` (the job still runs)."""
    job: Callable[[float], Awaitable[Any]] = getattr(engine, name)

    async def counted(now: float) -> Any:
        runs[(name, index)] += 1
        return await job(now)

    setattr(engine, name, counted)


async def close(engines: list[RefreshEngine]) -> None:
    for engine in engines:
        await engine.vault.close()


@run_async
async def test_each_sweep_job_runs_once_per_interval_across_two_engines(tmp_path):
    clock = FakeClock()
    engines = await engines_on(clock, tmp_path)
    runs: Counter[tuple[str, int]] = Counter()
    jobs = ("_expire_pending", "purge", "keepalive_scan", "prune_evictions")
    for index, engine in enumerate(engines):
        for name in jobs:
            count_calls(engine, name, runs, index)
    try:
        # 600 s in 20 s steps; both engines sweep at every step, the second one first at odd
        # steps so either may win a claim.
        for step in range(30):
            order = engines if step % 2 == 0 else engines[::-1]
            for engine in order:
                await engine.sweep()
            await clock.advance(20.0)
    finally:
        await close(engines)

    def total(name: str) -> int:
        return runs[(name, 0)] + runs[(name, 1)]

    assert total("_expire_pending") == 10  # every 60 s over 600 s: 0, 60, ..., 540
    assert total("purge") == 10
    assert total("keepalive_scan") == 6  # keepalive_interval / 4 = 100 s: 0, 100, ..., 500
    assert total("prune_evictions") == 1  # hourly
    assert runs[("_expire_pending", 0)] and runs[("_expire_pending", 1)]  # shared, not pinned


@run_async
async def test_a_stale_entry_is_scheduled_for_keepalive_in_one_engine_only(tmp_path):
    clock = FakeClock()
    engines = await engines_on(clock, tmp_path)
    vault = engines[0].vault
    try:
        record = await _active_entry(vault, now=clock.time() - 1000.0)  # idle > 400 s
        for engine in engines:
            await engine.sweep()
        scheduled = [engine.scheduler.state(record) is not None for engine in engines]
        assert scheduled == [True, False]
        # The next scan interval: the other engine scans, but the entry was refreshed
        # meanwhile (the lease makes that one grant): its keep-alive attempt makes none.
        await _set_last_refresh(vault, record, clock.time())
        await clock.advance(100.0)
        outcome = await engines[1]._refresh(record, "keepalive")
        assert outcome.kind == "success"  # no provider configured: a grant would be refused
        await _set_last_refresh(vault, record, clock.time() - 1000.0)
        outcome = await engines[1]._refresh(record, "keepalive")
        assert outcome.kind == "permanent"  # still stale: it really tries (and has no provider)
    finally:
        await close(engines)


async def _active_entry(vault: SQLiteTokenStore, *, now: float) -> str:
    record = await vault.create_pending(
        owner="alice",
        issuer="https://idp.example/realms/r",
        client_id="jupyter",
        scopes=["openid", "offline_access"],
        state_hash="state-hash-1",
        secrets=ConsentSecrets(code_verifier="v", nonce="n", redirect_uri="http://localhost/cb"),
        consent_expires_at=now + 600,
        now=now,
    )
    await vault.activate(
        record.id, refresh_token="rt", subject="sub", scopes=[], idle_expires_at=None, now=now
    )
    await _set_last_refresh(vault, record.id, now)
    return record.id


async def _set_last_refresh(vault: SQLiteTokenStore, token_id: str, when: float) -> None:
    def work(conn: Any) -> None:
        with transaction(conn):
            conn.execute(
                "UPDATE tokens SET last_refresh_at = ?, created_at = ? WHERE id = ?",
                (when, when, token_id),
            )

    await vault.run(work)
