"""Issue 11: the PostgreSQL vault against the SQLite vault, same run, same code paths.

``pg_cached``: the cached ``POST api/offline-token/tokens/{id}/access-token`` route on two real
``jupyter server`` processes, one on a SQLite vault, one on a PostgreSQL vault (a throwaway
durable cluster: fsync, full_page_writes and synchronous_commit on), both up during the whole
run. Load as in ``access_cached`` (2 client processes x 8 keep-alive workers); rounds alternate
the two servers, order swapped every round. A cache hit touches no database, so the target is
PostgreSQL req/s >= 0.9x SQLite's; the server CPU per request is printed (and checked) too, since
on 2 cores the httpx clients saturate first.

``pg_refresh``: the broker's whole refresh path (``broker.get_access_token(min_ttl=10**6)``:
lease, decrypt, grant, encrypt the rotated token, durable commit, audit) in-process on a SQLite
store and on a PostgreSQL store, one entry each at the same dev provider, alternated call by call
(order swapped every pair). Target: PostgreSQL p50 <= 1.2x SQLite's.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from jupyter_offline_token.broker import TokenBroker
from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.postgres import PostgresTokenStore

from .access_cached import Tally, _measure
from .harness import (
    DevProvider,
    JupyterServer,
    PostgresCluster,
    Settings,
    check,
    database_args,
    durable_cluster,
    grant_via_server,
    percentile,
    show_latency,
)
from .refresh_path import OWNER, broker_on, consent_through_broker

CACHED_TARGET = 0.9
REFRESH_TARGET = 1.2
BACKENDS = ("sqlite", "postgresql")


async def run_cached(settings: Settings) -> None:
    procs, concurrency = 2, 8
    rounds = settings.pick(2, 6)
    duration = settings.pick(2.0, 8.0)
    print(
        f"  load: {procs} client processes x {concurrency} keep-alive workers, {rounds} rounds x "
        f"{duration:g} s per backend, alternating; servers on a SQLite vault and on a "
        "PostgreSQL vault (fsync on), both running throughout"
    )
    provider = DevProvider(access_token_ttl=3600)
    await asyncio.to_thread(provider.start)
    cluster = await durable_cluster()
    servers: dict[str, JupyterServer] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-cached-") as tmp:
            work, key = Path(tmp), KeyRing.generate()
            servers["sqlite"] = JupyterServer(
                work / "sqlite", vault_path=work / "vault.db", encryption_key=key, provider=provider
            )
            database_url = cluster.create_database()
            servers["postgresql"] = JupyterServer(
                work / "postgresql",
                vault_path=None,
                encryption_key=key,
                provider=provider,
                args=database_args(database_url),
            )
            try:
                for server in servers.values():
                    server.start()
                await asyncio.gather(*(s.wait_healthy(120.0) for s in servers.values()))
                urls = {}
                for name, server in servers.items():
                    token_id = await grant_via_server(server, provider, f"bench cached {name}")
                    urls[name] = f"{server.url}api/offline-token/tokens/{token_id}/access-token"
                with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
                    before = await asyncio.to_thread(_transactions, cluster, database_url)
                    tallies = await _cached_rounds(
                        pool, procs, servers, urls, concurrency, rounds, duration
                    )
                    await asyncio.sleep(1.5)  # PostgreSQL flushes its statistics every second
                    xacts = await asyncio.to_thread(_transactions, cluster, database_url) - before
                grants = (await asyncio.to_thread(provider.stats))["refresh_token_grants"]
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(provider.stop)
    print(
        f"  transactions in the PostgreSQL database during the rounds (pg_stat_database, "
        f"sweeps included): {xacts} for {tallies['postgresql'].requests} cached requests"
    )
    _report_cached(tallies, grants, procs)


def _transactions(cluster: PostgresCluster, url: str) -> int:
    (row,) = cluster.execute(
        url,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()",
    )
    return int(row[0])


async def _cached_rounds(
    pool: ProcessPoolExecutor,
    procs: int,
    servers: dict[str, JupyterServer],
    urls: dict[str, str],
    concurrency: int,
    rounds: int,
    duration: float,
) -> dict[str, Tally]:
    for name, url in urls.items():
        async with httpx.AsyncClient(headers=servers[name].headers, timeout=30.0) as client:
            first = await client.post(url, json={})
        if first.status_code != 200:
            raise RuntimeError(f"access-token request on {name} failed: {first.status_code}")
        # Warm up the route and the worker processes; not counted.
        await _measure(
            pool, procs, servers[name], url, Tally(), concurrency=concurrency, duration=0.5
        )
    tallies = {name: Tally() for name in BACKENDS}
    for index in range(rounds):
        order = list(BACKENDS) if index % 2 == 0 else list(reversed(BACKENDS))
        for name in order:
            await _measure(
                pool,
                procs,
                servers[name],
                urls[name],
                tallies[name],
                concurrency=concurrency,
                duration=duration,
            )
    return tallies


def _report_cached(tallies: dict[str, Tally], grants: int, procs: int) -> None:
    for name, tally in tallies.items():
        print(
            f"  cached access token, {name:<10} {tally.rate:7.0f} req/s  "
            f"p50={percentile(tally.latencies, 50) * 1000:6.2f} ms  "
            f"p99={percentile(tally.latencies, 99) * 1000:6.2f} ms  errors={tally.errors}  "
            f"per round: {' '.join(f'{r:.0f}' for r in tally.rates)}"
        )
        print(
            f"  {'':<32} CPU: clients {tally.client_cpu / tally.elapsed:4.0%} of a core "
            f"(all {procs}), server {tally.server_cpu / tally.elapsed:4.0%} of a core, "
            f"server CPU per request {tally.server_cpu_per_request * 1e6:5.0f} us"
        )
    print(f"  refresh grants at the provider: {grants} (expected 0: every request a cache hit)")
    sqlite, pg = tallies["sqlite"], tallies["postgresql"]
    pairs = [s / p for s, p in zip(sqlite.round_cpu, pg.round_cpu, strict=True)]
    print(
        f"  capacity ratio (SQLite / PostgreSQL server CPU per request) per round pair: "
        f"{' '.join(f'{p:.2f}' for p in pairs)} (median {statistics.median(pairs):.2f})"
    )
    rates = [p / s for s, p in zip(sqlite.rates, pg.rates, strict=True)]
    print(
        f"  req/s ratio (PostgreSQL / SQLite) per round pair: "
        f"{' '.join(f'{r:.2f}' for r in rates)} (median {statistics.median(rates):.2f})"
    )
    errors = float(sqlite.errors + pg.errors)
    check("failed requests (both backends)", errors, 0, at_most=True)
    check(
        "PostgreSQL req/s / SQLite req/s (cached)",
        pg.rate / sqlite.rate,
        CACHED_TARGET,
        at_most=False,
    )
    check(
        "capacity ratio (SQLite / PostgreSQL server CPU per request)",
        sqlite.server_cpu_per_request / pg.server_cpu_per_request,
        CACHED_TARGET,
        at_most=False,
    )


async def run_refresh(settings: Settings) -> None:
    pairs = settings.pick(40, 400)
    print(
        f"  {pairs} interleaved pairs (SQLite broker refresh, PostgreSQL broker refresh) after 5 "
        "warm-up pairs; PostgreSQL fsync and synchronous_commit on, SQLite synchronous=FULL"
    )
    provider = DevProvider(access_token_ttl=300)
    await asyncio.to_thread(provider.start)
    cluster = await durable_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-refresh-") as tmp:
            key = KeyRing.generate()
            brokers = {
                "sqlite": broker_on(
                    provider, SQLiteTokenStore(Path(tmp) / "vault.db", encryption_keys=[key])
                ),
                "postgresql": broker_on(
                    provider,
                    PostgresTokenStore(url=cluster.create_database(), encryption_keys=[key]),
                ),
            }
            try:
                ids = {}
                for name, broker in brokers.items():
                    await broker.vault.open()
                    ids[name] = await consent_through_broker(broker, provider)
                times = await _interleave(brokers, ids, pairs)
                counts = {n: (await b.vault.get(ids[n])) for n, b in brokers.items()}
            finally:
                for broker in brokers.values():
                    await broker.aclose()
                    await broker.vault.close()
    finally:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(provider.stop)
    for name, found in counts.items():
        assert found is not None
        print(f"  {name} entry after the run: {found.status}, {found.refresh_count} refreshes")
    figures = {name: show_latency(f"broker refresh path, {name}", times[name]) for name in BACKENDS}
    pg, lite = figures["postgresql"], figures["sqlite"]
    mean = statistics.fmean(times["postgresql"]) / statistics.fmean(times["sqlite"])
    print(
        f"  PostgreSQL / SQLite: p99 {pg['p99_ms'] / lite['p99_ms']:.2f}x, mean {mean:.2f}x; "
        f"difference at p50 {pg['p50_ms'] - lite['p50_ms']:+.2f} ms"
    )
    check(
        "refresh path p50, PostgreSQL / SQLite",
        pg["p50_ms"] / lite["p50_ms"],
        REFRESH_TARGET,
        at_most=True,
    )


async def _interleave(
    brokers: dict[str, TokenBroker], ids: dict[str, str], pairs: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in BACKENDS}

    async def refresh(name: str) -> float:
        started = time.perf_counter()
        await brokers[name].get_access_token(OWNER, ids[name], min_ttl=10**6)
        return time.perf_counter() - started

    for index in range(5 + pairs):
        order = BACKENDS if index % 2 == 0 else tuple(reversed(BACKENDS))
        for name in order:
            took = await refresh(name)
            if index >= 5:
                times[name].append(took)
    return times
