"""Benchmark 5 (issue 13): Dask workers calling a protected resource with a worker credential.

4 worker processes (a ``distributed.LocalCluster``) x 1,000 small tasks per round, each calling
the dev provider's userinfo endpoint (which accepts live access tokens only) with
``credential.auth``, for at least 3 access-token lifetimes. Rounds alternate with the baseline:
the same 4,000 calls with a static token (a plain ``Authorization`` header, obtained once from a
second provider whose tokens outlive the run). The worker credential is installed once per worker
by ``OfflineTokenPlugin``; the live calls use ``current_task().token.auth``.

Targets: 0 rejected tokens (userinfo answered 200 at once, no 401 and no retry; the provider's
own count of userinfo calls equals the calls made); broker requests (counted by the server, in
``offline_token_access_token_requests_total``) <= 4 per token lifetime, i.e. per access token
the provider minted during the run (one per worker), also printed per ``ttl`` seconds; and
throughput >= 0.9x the static-token rounds'.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.kernel import OfflineTokenClient, Task
from jupyter_offline_token.kernel.dask import OfflineTokenPlugin, worker_broker_fetches

from .harness import (
    DevProvider,
    JupyterServer,
    Settings,
    check,
    grant_via_server,
    own_refresh_token,
)

WORKERS = 4
TASKS_PER_WORKER = 1000
MIN_TTL = 1  # a worker uses its cached token while it has this much left
TARGET_THROUGHPUT = 0.9

_http: httpx.Client | None = None


def _client() -> httpx.Client:
    """One keep-alive client per worker process, for both jobs alike."""
    global _http
    if _http is None:
        _http = httpx.Client(timeout=30.0)
    return _http


def live_call(url: str, _: Any) -> tuple[int, int]:
    """On a worker: one call with the task's token (the plugin installed the credential);
    (status, retries)."""
    from jupyter_offline_token.kernel import current_task

    task = current_task()
    assert task is not None and task.token is not None
    response = _client().get(url, auth=task.token.auth)
    return response.status_code, len(response.history)


def static_call(url: str, header: str) -> tuple[int, int]:
    response = _client().get(url, headers={"Authorization": header})
    return response.status_code, len(response.history)


async def served_access_tokens(server: JupyterServer) -> float:
    async with httpx.AsyncClient(timeout=30.0, headers=server.headers) as client:
        text = (await client.get(f"{server.url}metrics")).text
    pattern = r'^offline_token_access_token_requests_total\{source="[a-z]+"\} ([0-9.e+-]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


async def static_header(provider: DevProvider) -> str:
    """A bearer header from the long-lived provider, got once (the baseline's "static" token)."""
    refresh_token = await own_refresh_token(provider)
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            provider.endpoint("token"),
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=(provider.client_id, provider.client_secret),
        )
    response.raise_for_status()
    return f"Bearer {response.json()['access_token']}"


async def running_task_credential(server: JupyterServer, provider: DevProvider) -> Any:
    token_id = await grant_via_server(server, provider, "dask bench")
    async with httpx.AsyncClient(timeout=30.0, headers=server.headers) as client:
        task = (
            await client.post(
                f"{server.url}api/offline-token/tasks",
                json={"name": "dask bench", "persistent_token_id": token_id},
            )
        ).json()
        response = await client.post(f"{server.url}api/offline-token/tasks/{task['id']}/execute")
        response.raise_for_status()

    def mint() -> Any:
        with OfflineTokenClient(server.url, token=server.token) as kernel:
            return Task(task["id"], client=kernel).worker_credential(min_ttl=MIN_TTL)

    return await asyncio.to_thread(mint)


def one_round(
    client: Any, function: Any, url: str, arg: Any, per_worker: int
) -> tuple[float, list[Any]]:
    """``WORKERS x per_worker`` calls spread over the workers; (seconds, results)."""
    n = WORKERS * per_worker
    started = time.perf_counter()
    results = client.gather(client.map(function, [url] * n, [arg] * n, pure=False))
    return time.perf_counter() - started, results


async def run(settings: Settings) -> None:
    import cloudpickle
    import distributed

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ttl = settings.pick(5, 10)
    per_worker = settings.pick(250, TASKS_PER_WORKER)
    print(f"  {WORKERS} workers x {per_worker} tasks per round, access tokens live {ttl} s")
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        live, lasting = DevProvider(access_token_ttl=ttl), DevProvider(access_token_ttl=3600)
        server = JupyterServer(
            Path(tmp), vault_path=Path(tmp) / "vault.db", encryption_key=KeyRing.generate(),
            provider=live,
        )  # fmt: skip
        cluster = client = None
        try:
            live.start()
            lasting.start()
            server.start()
            await server.wait_healthy()
            credential = await running_task_credential(server, live)
            header = await static_header(lasting)
            cluster = await asyncio.to_thread(
                distributed.LocalCluster, n_workers=WORKERS, threads_per_worker=4,
                processes=True, dashboard_address=None,
            )  # fmt: skip
            client = await asyncio.to_thread(distributed.Client, cluster)
            await asyncio.to_thread(client.register_plugin, OfflineTokenPlugin(credential))
            await measure(client, credential, header, live, lasting, server, ttl, settings)
        finally:
            if client is not None:
                await asyncio.to_thread(client.close)
            if cluster is not None:
                await asyncio.to_thread(cluster.close)
            server.stop()
            live.stop()
            lasting.stop()


async def measure(
    client: Any,
    credential: Any,
    header: str,
    live: DevProvider,
    lasting: DevProvider,
    server: JupyterServer,
    ttl: int,
    settings: Settings,
) -> None:
    live_url, static_url = live.endpoint("userinfo"), lasting.endpoint("userinfo")
    per_worker = settings.pick(250, TASKS_PER_WORKER)
    await asyncio.to_thread(one_round, client, static_call, static_url, header, 100)  # warm-up
    live.reset_stats()
    times: dict[str, list[float]] = {"live": [], "static": []}
    results: dict[str, list[tuple[int, int]]] = {"live": [], "static": []}
    minted = served = 0.0  # during live rounds only (the server keeps the token warm between)
    # At least 3 lifetimes of live rounds and 3 rounds of each; the order alternates per pair.
    while sum(times["live"]) < 3 * ttl or len(times["live"]) < 3:
        pair = [("static", static_call, static_url, header), ("live", live_call, live_url, None)]
        for name, function, url, arg in pair[:: 1 if len(times["live"]) % 2 == 0 else -1]:
            grants = live.stats()["refresh_token_grants"]
            before = await served_access_tokens(server)
            seconds, answers = await asyncio.to_thread(
                one_round, client, function, url, arg, per_worker
            )
            times[name].append(seconds)
            results[name].extend(answers)
            if name == "live":
                minted += live.stats()["refresh_token_grants"] - grants
                served += await served_access_tokens(server) - before
    fetches = await asyncio.to_thread(client.run, worker_broker_fetches, credential)
    userinfo_calls = live.stats()["userinfo_calls"]
    report(times, results, userinfo_calls, minted, served, fetches, ttl, per_worker)


def report(
    times: dict[str, list[float]],
    results: dict[str, list[tuple[int, int]]],
    userinfo_calls: int,
    minted: float,
    served: float,
    fetches: dict[str, int],
    ttl: int,
    per_worker: int,
) -> None:
    per_round = WORKERS * per_worker
    live_results, static_results = results["live"], results["static"]
    rejected = sum(1 for status, retries in live_results if status != 200 or retries)
    elapsed = sum(times["live"])
    lifetimes = elapsed / ttl
    live_rate = statistics.median(per_round / t for t in times["live"])
    static_rate = statistics.median(per_round / t for t in times["static"])
    print(
        f"  rounds: {len(times['live'])} live ({elapsed:.1f} s = {lifetimes:.1f} lifetimes), "
        f"{len(times['static'])} static; calls {len(live_results)} live, "
        f"{len(static_results)} static"
    )
    print(
        f"  live: {live_rate:.0f} calls/s (median round), static: {static_rate:.0f} calls/s; "
        f"during live rounds the provider minted {minted:.0f} tokens"
    )
    print(
        f"  broker requests (server-counted) during live rounds: {served:.0f} = "
        f"{served / max(1.0, minted):.2f} per minted token, {served / lifetimes:.2f} per {ttl} s; "
        f"per worker (worker-counted): {sorted(fetches.values())}"
    )
    static_rejected = sum(1 for status, _ in static_results if status != 200)
    check("rejected live tokens", rejected, 0, at_most=True)
    check("static calls not answered 200 (sanity)", static_rejected, 0, at_most=True)
    extra_calls = userinfo_calls - len(live_results)
    check("userinfo calls at the provider beyond the live calls", extra_calls, 0, at_most=True)
    check("broker requests per minted token", served / max(1.0, minted), WORKERS, at_most=True)
    check(f"broker requests per {ttl} s (a lifetime)", served / lifetimes, WORKERS, at_most=True)
    check("throughput live / static", live_rate / static_rate, TARGET_THROUGHPUT, at_most=False)
