"""Benchmark 5 (issue 11): 2 and 4 ``jupyter server`` processes sharing one vault, 1,000
concurrent callers spread over them on an expired token.

Target: exactly one refresh grant at the provider per expiry (``DevProvider.stats()``), however
many processes share the vault (before issue 11: one per process). Each round waits until the
last access token is too old for the callers (the dev provider's tokens live ACCESS_TTL s,
callers ask for the default min_ttl of 30 s), then fires the burst from 4 load processes, each
aimed at one server (round robin). As in ``single_flight``, every burst is framed by the same
burst at ``/bench/constant`` on the same servers (same run), so its latency has a baseline.

The vault's backend is a parameter (``Backend``): SQLite, one file; PostgreSQL, one database of a
throwaway durable cluster (fsync and synchronous_commit on), its ``database_url`` on every
server's command line. ``shared_vault`` runs both, ``pg_shared_vault`` PostgreSQL alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jupyter_offline_token.crypto import KeyRing

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
from .single_flight import CALLERS, burst_process

LOAD_PROCESSES = 4
SERVER_COUNTS = (2, 4)
# Callers need 30 s left: a token serves them for 45 s, then it is "expired". The window is wide
# because a 1,000-caller burst on this shared 2-core machine can take 15 s (measured): callers
# still arriving after it would rightly start the next expiry's grant.
ACCESS_TTL = 75
DEFAULT_MIN_TTL = 30
GAP = 6.0  # seconds between the constant, target and constant bursts of one round


@dataclass(frozen=True)
class Backend:
    """Where the shared vault lives: ``server_args(workdir)`` are the servers' settings for it."""

    name: str
    server_args: Callable[[Path], tuple[str, ...]]


SQLITE = Backend("sqlite", lambda work: (f"--OfflineTokenApp.vault_path={work / 'vault.db'}",))
BACKENDS = ("sqlite", "postgresql")


def postgres_backend(cluster: PostgresCluster) -> Backend:
    """A fresh database of ``cluster`` for each configuration."""
    return Backend("postgresql", lambda work: database_args(cluster.create_database()))


@dataclass
class Round:
    grants: int
    errors: int
    distinct_tokens: int
    latencies: list[float]
    constant_latencies: list[float]


async def _round(
    pool: ProcessPoolExecutor, servers: list[JupyterServer], token_id: str, provider: DevProvider
) -> Round:
    loop = asyncio.get_running_loop()
    baseline_at = time.time() + 3.0
    target_at, after_at = baseline_at + GAP, baseline_at + 2 * GAP
    before = await asyncio.to_thread(provider.stats)
    futures = [
        loop.run_in_executor(
            pool,
            burst_process,
            servers[index % len(servers)].url,
            servers[index % len(servers)].headers,
            token_id,
            CALLERS // LOAD_PROCESSES,
            baseline_at,
            target_at,
            after_at,
        )
        for index in range(LOAD_PROCESSES)
    ]
    results = await asyncio.gather(*futures)
    after = await asyncio.to_thread(provider.stats)
    target = [item for result in results for item in result[1]]
    return Round(
        grants=after["refresh_token_grants"] - before["refresh_token_grants"],
        errors=sum(1 for _, status, _ in target if status != 200)
        + after["refresh_token_grant_errors"]
        - before["refresh_token_grant_errors"],
        distinct_tokens=len({token for _, status, token in target if status == 200}),
        latencies=[latency for latency, _, _ in target],
        constant_latencies=[lat for result in results for lat in (*result[0], *result[2])],
    )


async def _configuration(
    pool: ProcessPoolExecutor, provider: DevProvider, backend: Backend, count: int, rounds: int
) -> list[Round]:
    with tempfile.TemporaryDirectory(prefix=f"bench-shared-{backend.name}-") as tmp:
        work = Path(tmp)
        key = KeyRing.generate()
        args = backend.server_args(work)
        servers = [
            JupyterServer(
                work / f"s{index}",
                vault_path=None,  # the backend's args say where the vault is
                encryption_key=key,
                provider=provider,
                args=args,
            )
            for index in range(count)
        ]
        try:
            for server in servers:
                server.start()
            await asyncio.gather(*(server.wait_healthy(120.0) for server in servers))
            token_id = await grant_via_server(servers[0], provider, "bench shared vault")
            usable_until = time.time() + ACCESS_TTL - DEFAULT_MIN_TTL  # the consent's token
            found = []
            for _ in range(rounds):
                # The target burst fires 3 s + GAP after the round starts.
                await asyncio.sleep(max(0.0, usable_until + 0.5 - time.time() - 3.0 - GAP))
                found.append(await _round(pool, servers, token_id, provider))
                # The round's grant is done by now, so its token serves callers until at most:
                usable_until = time.time() + ACCESS_TTL - DEFAULT_MIN_TTL
        finally:
            for server in servers:
                server.stop()
    return found


async def run(settings: Settings, backend_names: tuple[str, ...] = BACKENDS) -> None:
    async with contextlib.AsyncExitStack() as stack:
        backends = []
        for name in backend_names:
            if name == "sqlite":
                backends.append(SQLITE)
            else:
                cluster = await durable_cluster()
                stack.callback(cluster.stop)
                backends.append(postgres_backend(cluster))
        await _run(settings, backends)


async def run_postgres(settings: Settings) -> None:
    """PostgreSQL alone (``pg_shared_vault``)."""
    await run(settings, ("postgresql",))


async def _run(settings: Settings, backends: list[Backend]) -> None:
    rounds = settings.pick(1, 2)
    print(
        f"  {CALLERS} concurrent callers from {LOAD_PROCESSES} load processes, spread over "
        f"{' and '.join(map(str, SERVER_COUNTS))} servers sharing one vault "
        f"({', '.join(b.name for b in backends)}); {rounds} expiry(ies) "
        f"each; dev provider access tokens live {ACCESS_TTL} s, callers need {DEFAULT_MIN_TTL} s"
    )
    provider = DevProvider(access_token_ttl=ACCESS_TTL)
    await asyncio.to_thread(provider.start)
    pool = ProcessPoolExecutor(LOAD_PROCESSES, mp_context=mp.get_context("spawn"))
    try:
        await asyncio.gather(
            *(asyncio.wrap_future(pool.submit(time.time)) for _ in range(LOAD_PROCESSES))
        )
        for backend in backends:
            for count in SERVER_COUNTS:
                found = await _configuration(pool, provider, backend, count, rounds)
                _report(backend, count, found)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(provider.stop)


def _report(backend: Backend, count: int, found: list[Round]) -> None:
    label = f"{backend.name}, {count} servers"
    grants = [r.grants for r in found]
    print(
        f"  {label}: grants per expiry {grants}, errors {[r.errors for r in found]}, "
        f"distinct access tokens per burst {[r.distinct_tokens for r in found]}"
    )
    latencies = [lat for r in found for lat in r.latencies]
    constant = [lat for r in found for lat in r.constant_latencies]
    burst = show_latency(f"{label}: {CALLERS} callers at access-token (expired)", latencies)
    base = show_latency(f"{label}: {CALLERS} callers at /bench/constant", constant)
    print(
        f"  (context) {label}: burst p99 / constant burst p99 "
        f"{burst['p99_ms'] / base['p99_ms']:.2f}x, p50 "
        f"{percentile(latencies, 50) / percentile(constant, 50):.2f}x"
    )
    check(f"{label}: refresh grants per expiry (worst)", float(max(grants)), 1, at_most=True)
    check(f"{label}: refresh grants per expiry (fewest)", float(min(grants)), 1, at_most=False)
    check(f"{label}: failed calls", float(sum(r.errors for r in found)), 0, at_most=True)
    distinct = float(max(r.distinct_tokens for r in found))
    check(f"{label}: distinct access tokens per burst (worst)", distinct, 1, at_most=True)
