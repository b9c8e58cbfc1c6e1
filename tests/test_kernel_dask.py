"""Dask workers get fresh tokens through a worker credential (issue 13), with real parts only: a
``distributed.LocalCluster`` of worker processes, the dev provider issuing 4 s access tokens, its
userinfo endpoint as the protected resource, and the extension's server on loopback.

What is asserted: every call from every worker carried a token the provider accepted (userinfo
counted at the provider equals the calls made: no 401 and no retry); each worker fetched at most
one access token per token the provider minted (per-worker counts that add up to the server's
own count); the task's end makes the workers' next fetch raise ``TaskEnded``; nothing secret is
in the workers' environment or in the pickled plugin and auth."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from dev_provider import DevProvider
from server_fixtures import TEST_KEY, grant, metric

from jupyter_offline_token.kernel import OfflineTokenClient, Task, TaskEnded
from jupyter_offline_token.kernel.dask import OfflineTokenPlugin, worker_broker_fetches
from jupyter_offline_token.kernel.workers import WorkerCredential

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.timeout(180)
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/

TTL = 4  # seconds an access token lives at the provider
MIN_TTL = 1.5  # workers use a cached token while it has this much left (slack for a loaded machine)


@pytest.fixture(scope="module")
def dask_idp() -> Iterator[DevProvider]:
    provider = DevProvider(access_token_ttl=TTL)
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture
def provider_for_test(dask_idp):
    return dask_idp


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """Two worker processes of one thread pool each, shared by the module's tests."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=4, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def call_userinfo(url: str, credential: WorkerCredential) -> tuple[str, str, int, int]:
    """On a worker: one protected call with the task's token; (worker pid, token digest, status,
    number of retries httpx made)."""
    import httpx

    from jupyter_offline_token.kernel import current_task

    task = current_task()
    assert task is not None and task.token is not None
    response = httpx.get(url, auth=task.token.auth, timeout=30)
    used = response.request.headers["Authorization"].encode()
    task.progress(50, message="working")
    digest = hashlib.sha256(used).hexdigest()[:16]
    return str(os.getpid()), digest, response.status_code, len(response.history)


def fetch_with_auth(url: str, auth: Any) -> int:
    import httpx

    return httpx.get(url, auth=auth, timeout=30).status_code


def try_fetch(credential: WorkerCredential) -> str:
    """On a worker after the task ended: the error a broker call raises, by type name."""
    from jupyter_offline_token.kernel import current_task

    task = current_task()
    assert task is not None and task.token is not None
    try:
        task.token.access_token(min_ttl=3600)  # never cached: always asks the broker
    except TaskEnded as exc:
        return f"TaskEnded: {exc}"
    except Exception as exc:  # the test shows what else came
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def worker_environ() -> bytes:
    return Path(f"/proc/{os.getpid()}/environ").read_bytes()


async def start_kernel_task(api, offline_app, jp_serverapp, idp) -> tuple[str, str, Any]:
    """A running kernel task with a granted token, and its worker credential (asked for by the
    owner through the kernel package, as a notebook does)."""
    token_id = await grant(api, idp)
    status, task = await api.post("tasks", body={"name": "dask", "persistent_token_id": token_id})
    assert status == 201, task
    status, body = await api.post("tasks", task["id"], "execute")
    assert status == 202, body
    url = offline_app.services.tasks.server_url

    def mint() -> WorkerCredential:
        with OfflineTokenClient(url, token=jp_serverapp.identity_provider.token) as kernel:
            return Task(task["id"], client=kernel).worker_credential(min_ttl=MIN_TTL)

    return token_id, task["id"], await asyncio.to_thread(mint)


async def served_access_tokens(api) -> float:
    return sum(
        [
            await metric(api, "offline_token_access_token_requests_total", source=s)
            for s in ("cache", "refresh")
        ]
    )


async def test_workers_get_fresh_tokens_one_broker_call_per_lifetime_until_cancelled(
    api, tasks, dask_idp, offline_app, jp_serverapp, dask_client
):
    _, task_id, credential = await start_kernel_task(api, offline_app, jp_serverapp, dask_idp)
    assert credential.secret not in repr(credential)
    plugin = OfflineTokenPlugin(credential)
    await asyncio.to_thread(dask_client.register_plugin, plugin)
    userinfo = dask_idp.endpoint("userinfo")

    dask_idp.reset_stats()
    served_before = await served_access_tokens(api)
    results: list[tuple[str, str, int, int]] = []
    # Batches of calls for 3 access-token lifetimes (the provider mints new tokens meanwhile).
    loop = asyncio.get_running_loop()
    started, deadline = loop.time(), loop.time() + 90
    while loop.time() - started < 3 * TTL or dask_idp.stats()["refresh_token_grants"] < 3:
        assert loop.time() < deadline, dask_idp.stats()
        results += await asyncio.to_thread(
            lambda: dask_client.gather(
                dask_client.map(call_userinfo, [userinfo] * 40, [credential] * 40, pure=False)
            )
        )
    stats = dask_idp.stats()
    served = await served_access_tokens(api) - served_before

    assert {status for _, _, status, _ in results} == {200}
    assert all(retries == 0 for *_, retries in results), "a token was rejected, then retried"
    assert stats["userinfo_calls"] == len(results)  # the provider saw each call once: no 401
    pids = {pid for pid, *_ in results}
    assert len(pids) == 2, "both workers took part"
    fetches = await asyncio.to_thread(dask_client.run, worker_broker_fetches, credential)
    assert sum(fetches.values()) == served, (fetches, served)  # what the server counted
    for count in fetches.values():
        # one broker call per token the provider minted (+1: the token live at the start)
        assert 1 <= count <= stats["refresh_token_grants"] + 1, (fetches, stats)
    tokens_per_worker = {pid: {d for p, d, *_ in results if p == pid} for pid in pids}
    assert all(len(t) >= 3 for t in tokens_per_worker.values()), "tokens expired meanwhile"

    # Progress from the workers arrives (coalesced: the last report goes within a second).
    while True:
        status, state = await api.get("tasks", task_id)
        assert state["status"] == "running"
        if state["progress"] == 50 and state["message"] == "working":
            break
        assert loop.time() < deadline, state
        await asyncio.sleep(0.2)

    status, _ = await api.post("tasks", task_id, "cancel")
    assert status == 200
    errors = await asyncio.to_thread(
        lambda: dask_client.gather(
            [dask_client.submit(try_fetch, credential, pure=False, workers=[w]) for w in fetches]
        )
    )
    assert all(e.startswith("TaskEnded: ") and "ended" in e for e in errors), errors
    await asyncio.to_thread(dask_client.unregister_worker_plugin, plugin.name)


async def test_no_secret_reaches_workers_or_the_pickles(
    api, tasks, dask_idp, offline_app, jp_serverapp, dask_client
):
    token_id, task_id, credential = await start_kernel_task(
        api, offline_app, jp_serverapp, dask_idp
    )
    plugin = OfflineTokenPlugin(credential)
    await asyncio.to_thread(dask_client.register_plugin, plugin)
    statuses = await asyncio.to_thread(
        lambda: dask_client.gather(
            dask_client.map(
                fetch_with_auth, [dask_idp.endpoint("userinfo")] * 4, [credential.auth] * 4
            )
        )
    )
    assert statuses == [200] * 4
    refresh_token = await offline_app.services.vault.read_refresh_token(token_id)
    secrets = {
        "refresh token": refresh_token.encode(),
        "client secret": dask_idp.client_secret.encode(),
        "server token": jp_serverapp.identity_provider.token.encode(),
        "vault key": TEST_KEY.encode(),
    }
    environs = await asyncio.to_thread(dask_client.run, worker_environ)
    assert len(environs) == 2
    pickled = {
        "plugin": pickle.dumps(plugin),
        "auth": cloudpickle.dumps(credential.auth),
        "credential": pickle.dumps(credential),
    }
    for name, secret in secrets.items():
        assert secret
        for where, environ in environs.items():
            assert secret not in environ, f"{name} in the environment of worker {where}"
        for what, data in pickled.items():
            assert secret not in data, f"{name} in the pickled {what}"
    # The worker credential itself travels (that is its job), never shown in a repr.
    assert credential.secret.encode() in pickled["plugin"]
    assert credential.secret not in repr(plugin) + repr(credential.auth)
    await api.post("tasks", task_id, "cancel")
    await asyncio.to_thread(dask_client.unregister_worker_plugin, plugin.name)


def dask_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "dask"), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
    if process.stderr is not None:
        process.stderr.close()


async def test_dask_cli_workers_configured_from_the_environment(
    api, tasks, dask_idp, offline_app, jp_serverapp, tmp_path
):
    """``dask scheduler`` and ``dask worker`` as separate processes on loopback; the worker is
    configured only by the worker credential's environment variables (no plugin)."""
    _, task_id, credential = await start_kernel_task(api, offline_app, jp_serverapp, dask_idp)
    base = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_OFFLINE_TOKEN_")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # this checkout first
    scheduler_file = str(tmp_path / "scheduler.json")
    scheduler = dask_cli(
        "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
        "--scheduler-file", scheduler_file, env=base,
    )  # fmt: skip
    worker = dask_cli(
        "worker", "--scheduler-file", scheduler_file, "--host", "127.0.0.1", "--nthreads", "2",
        "--no-dashboard", "--no-nanny", env={**base, **credential.environ()},
    )  # fmt: skip
    try:

        def run() -> tuple[list[tuple[str, str, int, int]], dict[str, bytes], str]:
            with distributed.Client(scheduler_file=scheduler_file, timeout=60) as client:
                client.wait_for_workers(1, timeout=60)
                url = dask_idp.endpoint("userinfo")
                calls = client.gather(
                    client.map(call_userinfo, [url] * 8, [credential] * 8, pure=False)
                )
                environs = client.run(worker_environ)
                api_loop.call_soon_threadsafe(cancel_now.set)
                ended.wait(60)
                return calls, environs, client.submit(try_fetch, credential, pure=False).result()

        api_loop = asyncio.get_running_loop()
        cancel_now, ended = asyncio.Event(), threading.Event()
        running = asyncio.ensure_future(asyncio.to_thread(run))
        await asyncio.wait_for(cancel_now.wait(), 120)
        status, _ = await api.post("tasks", task_id, "cancel")
        assert status == 200
        ended.set()
        calls, environs, after_end = await running
    finally:
        stop(worker)
        stop(scheduler)
    assert {status for _, _, status, _ in calls} == {200}
    assert {pid for pid, *_ in calls} == {str(worker.pid)}
    (environ,) = environs.values()
    for secret in (jp_serverapp.identity_provider.token, dask_idp.client_secret, TEST_KEY):
        assert secret.encode() not in environ
    assert after_end.startswith("TaskEnded: "), after_end
