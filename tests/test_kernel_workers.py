"""The kernel side of worker credentials against the fake REST API (which the contract
scenarios keep in step with the server): one broker call for many threads and coroutines,
coalesced progress whose last value always arrives, the typed end, pickling and configuration
from the environment. The real server and real Dask workers: test_kernel_dask.py."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import threading

import httpx
import pytest

from jupyter_offline_token.kernel import TaskCancelled, TaskEnded, create_task, current_task
from jupyter_offline_token.kernel import workers as workers_module
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI
from jupyter_offline_token.kernel.workers import WorkerClient, WorkerCredential


@pytest.fixture
def worker_of(offline_token_api: FakeOfflineTokenAPI, monkeypatch):
    """A running task of the fake and a function giving its worker credential; worker clients
    reach the fake through its transport (a real process would reach the server by URL)."""
    real_client = WorkerClient
    monkeypatch.setattr(
        workers_module,
        "WorkerClient",
        lambda info: real_client(info, transport=offline_token_api.transport()),
    )
    monkeypatch.setattr(workers_module, "_SHARED", {})
    monkeypatch.setattr(workers_module, "_installed", None)
    client = offline_token_api.client()
    token_id = client.create_consent(label="w")["persistent_token_id"]
    offline_token_api.grant(token_id)
    task = create_task("fan out", token=token_id, client=client)
    task.execute()

    def credential(**kw) -> WorkerCredential:
        return task.worker_credential(**kw)

    return task, credential


def test_many_threads_and_coroutines_cost_one_broker_call(offline_token_api, worker_of):
    _task, mint = worker_of
    credential = mint(min_ttl=5)
    auth = pickle.loads(pickle.dumps(credential.auth))  # noqa: S301 - as a worker gets it
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def call() -> None:
        barrier.wait()
        with httpx.Client(transport=offline_token_api.transport()) as http:
            statuses.append(http.get("http://resource.test/", auth=auth).status_code)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def many() -> list[int]:
        async with httpx.AsyncClient(transport=offline_token_api.transport(), auth=auth) as http:
            answers = await asyncio.gather(*(http.get("http://resource.test/") for _ in range(16)))
        return [a.status_code for a in answers]

    statuses += asyncio.run(many())
    assert statuses == [200] * 32
    assert offline_token_api.count("POST", "/access-token") == 1
    assert credential.broker_fetches() == 1


def test_progress_is_coalesced_and_the_last_value_arrives(offline_token_api, worker_of):
    task, mint = worker_of
    credential = mint(progress_interval=3600)  # nothing but the first report and the flush
    credential.install()
    worker_task = current_task()
    assert worker_task is not None and worker_task.id == task.id
    for i in range(1, 501):
        worker_task.progress(i / 5, message=f"{i} of 500")
    credential.flush_progress()
    assert offline_token_api.count("PATCH", f"/tasks/{task.id}") <= 2
    state = task.refresh()
    assert state["progress"] == 100 and state["message"] == "500 of 500"


def test_after_the_task_ends_workers_get_task_ended(offline_token_api, worker_of):
    task, mint = worker_of
    credential = mint()
    credential.token().access_token()
    task.cancel()
    with pytest.raises(TaskEnded) as ended:
        credential.token().access_token(min_ttl=3600)
    assert ended.value.code == "task_credential_ended"
    reporter_task = credential.task()
    reporter_task.progress(10)
    credential.flush_progress()
    with pytest.raises(TaskCancelled):
        reporter_task.progress(20)


def test_the_credential_pickles_hides_its_secret_and_configures_from_the_environment(worker_of):
    _task, mint = worker_of
    credential = mint()
    assert credential.secret.startswith("jotw1.")
    assert credential.secret not in repr(credential) + repr(credential.auth)
    assert pickle.loads(pickle.dumps(credential)) == credential  # noqa: S301 - our own bytes
    environ = credential.environ()
    again = WorkerCredential.from_environ(environ)
    assert again is not None and again.secret == credential.secret
    assert again.task_id == credential.task_id and again.token_id == credential.token_id
    assert (
        WorkerCredential.from_environ({**environ, "JUPYTER_OFFLINE_TOKEN_TASK_SECRET": "x"}) is None
    )


def test_the_kernel_package_does_not_import_distributed():
    code = (
        "import sys, jupyter_offline_token.kernel, jupyter_offline_token.kernel.workers;"
        "print('distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
