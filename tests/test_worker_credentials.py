"""Worker credentials at the REST level (issue 13), against the real server and provider: what a
worker credential may do and what it may not, that it dies with its task run, that a task process
can mint one with its own credential, and that no credential reaches a log line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sys

import pytest
from server_fixtures import grant
from test_tasks import TERMINAL, create, wait_status

from jupyter_offline_token import rest_codes as rc
from jupyter_offline_token.kernel import WorkerCredential

pytestmark = pytest.mark.timeout(90)


def as_worker(credential: str) -> dict[str, str]:
    return {"Authorization": f"OfflineTokenTask {credential}"}


async def running_kernel_task(api, token_id: str) -> dict:
    task = await create(api, name="fan out", persistent_token_id=token_id)
    status, body = await api.post("tasks", task["id"], "execute")
    assert status == 202, body
    return task


async def test_a_worker_credential_fetches_tokens_and_reports_progress_only(
    api, tasks, idp, caplog
):
    caplog.set_level(logging.DEBUG)
    token_id = await grant(api, idp)
    other_token = await grant(api, idp)
    task = await running_kernel_task(api, token_id)
    status, minted = await api.post("tasks", task["id"], "worker-credentials")
    assert status == 201, minted
    assert minted["task_id"] == task["id"] and minted["persistent_token_id"] == token_id
    worker = as_worker(minted["credential"])

    status, body = await api.post("tokens", token_id, "access-token", headers=worker)
    assert status == 200 and idp.userinfo(body["access_token"]).status_code == 200
    status, _ = await api.get("tasks", task["id"], headers=worker)
    assert status == 200
    status, body = await api.patch(
        "tasks", task["id"], body={"progress": 40, "message": "from a worker"}, headers=worker
    )
    assert status == 200 and body["progress"] == 40

    refused = {
        "end the task": await api.patch(
            "tasks", task["id"], body={"status": "completed"}, headers=worker
        ),
        "set a result": await api.patch("tasks", task["id"], body={"result": "x"}, headers=worker),
        "mint more": await api.post("tasks", task["id"], "worker-credentials", headers=worker),
        "cancel": await api.post("tasks", task["id"], "cancel", headers=worker),
        "link": await api.post(
            "tasks", task["id"], "link", body={"persistent_token_id": token_id}, headers=worker
        ),
        "delete the task": await api.delete("tasks", task["id"], headers=worker),
        "delete the token": await api.delete("tokens", token_id, headers=worker),
        "another token": await api.post("tokens", other_token, "access-token", headers=worker),
        "list tasks": await api.get("tasks", headers=worker),
        "consent": await api.post("consents", body={}, headers=worker),
    }
    for what, (status, body) in refused.items():
        assert status == 403 and body["error"] == rc.FORBIDDEN, (what, body)
    _, state = await api.get("tasks", task["id"])
    assert state["status"] == "running" and state["result"] is None  # nothing changed

    # Reading the task table gives the run hash, never the key its MAC needs: no forging.
    _, run_hash, key_id, _ = minted["credential"].split(".")
    other_key_mac = hmac.new(os.urandom(32), run_hash.encode(), hashlib.sha256).hexdigest()
    for forged in (
        "jotw1." + "0" * 64,
        "jotw1.not-hex",
        minted["credential"] + "0",
        "jotw1." + run_hash,
        f"jotw1.{run_hash}.{key_id}.{other_key_mac}",
    ):
        status, body = await api.post("tokens", token_id, "access-token", headers=as_worker(forged))
        assert status == 403 and body["error"] == rc.TASK_CREDENTIAL_ENDED, forged

    # The run ends: the credential dies with it, and the next run's credential is another one.
    status, _ = await api.patch("tasks", task["id"], body={"status": "completed"})
    assert status == 200
    status, body = await api.post("tokens", token_id, "access-token", headers=worker)
    assert status == 403 and body["error"] == rc.TASK_CREDENTIAL_ENDED
    status, body = await api.post("tasks", task["id"], "worker-credentials")
    assert status == 409 and body["error"] == rc.TASK_FINISHED
    await api.post("tasks", task["id"], "execute")
    status, again = await api.post("tasks", task["id"], "worker-credentials")
    assert status == 201 and again["credential"] != minted["credential"]
    status, _ = await api.get("tasks", task["id"], headers=worker)
    assert status == 403
    status, _ = await api.get("tasks", task["id"], headers=as_worker(again["credential"]))
    assert status == 200
    await api.post("tasks", task["id"], "cancel")
    status, _ = await api.get("tasks", task["id"], headers=as_worker(again["credential"]))
    assert status == 403

    logged = caplog.text
    assert minted["credential"] not in logged and again["credential"] not in logged
    assert run_hash not in logged  # nor the run hash inside it


MINT_FROM_THE_TASK = """
import json, os, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
base = os.environ["JUPYTER_OFFLINE_TOKEN_URL"] + "api/offline-token/"
me = os.environ["JUPYTER_OFFLINE_TOKEN_TASK_ID"]
token = os.environ["JUPYTER_OFFLINE_TOKEN_TOKEN_ID"]

def call(secret, method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body or {}).encode(),
        headers={"Authorization": "OfflineTokenTask " + secret,
                 "Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

status, minted = call(os.environ["JUPYTER_OFFLINE_TOKEN_TASK_SECRET"], "POST",
                      f"tasks/{me}/worker-credentials")
worker = minted["credential"]
print(json.dumps({
    "mint": status,
    "worker_access": call(worker, "POST", f"tokens/{token}/access-token")[0],
    "worker_mint": call(worker, "POST", f"tasks/{me}/worker-credentials")[0],
}), flush=True)
"""


async def test_a_task_process_mints_worker_credentials_with_its_own(api, tasks, idp):
    token_id = await grant(api, idp)
    task = await create(
        api,
        name="mints",
        kind="command",
        persistent_token_id=token_id,
        command=[sys.executable, "-c", MINT_FROM_THE_TASK],
    )
    await api.post("tasks", task["id"], "execute")
    done = await wait_status(api, task["id"], TERMINAL)
    assert done["status"] == "completed", done
    _, log = await api.get("tasks", task["id"], "log")
    results = json.loads(log["lines"][-1])
    assert results == {"mint": 201, "worker_access": 200, "worker_mint": 403}


REMOTE_PROCESS = """
import sys, httpx
from jupyter_offline_token.kernel import current_task
task = current_task()
print(httpx.get(sys.argv[1], auth=task.token.auth, timeout=30).status_code, flush=True)
for i in range(1, 201):
    task.progress(i / 2, message=f"{i} of 200")
"""  # exits without flushing: the last report must still arrive


async def test_a_remote_process_configured_from_the_environment(api, tasks, idp, jp_serverapp):
    token_id = await grant(api, idp)
    task = await running_kernel_task(api, token_id)
    status, minted = await api.post("tasks", task["id"], "worker-credentials")
    assert status == 201
    credential = WorkerCredential.from_answer(minted)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_OFFLINE_TOKEN_")}
    env.update(credential.environ(), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REMOTE_PROCESS, idp.endpoint("userinfo"),
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0 and out.decode().split() == ["200"]
    _, state = await api.get("tasks", task["id"])
    assert state["progress"] == 100 and state["message"] == "200 of 200"
    assert state["status"] == "running"
    await api.post("tasks", task["id"], "cancel")
