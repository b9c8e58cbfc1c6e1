"""Long-running task processes against a provider whose access tokens live 3 s: every token a
command or notebook task gets through its scoped credential, once a second, is accepted by the
provider's userinfo endpoint. Real provider, real subprocesses, a real kernel."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import nbformat
import pytest
from server_fixtures import grant, task_processes

PY = sys.executable
TERMINAL = {"completed", "failed", "cancelled", "interrupted"}

# Asks for an access token every second through the task credential and checks each one at the
# provider; prints "userinfo <HTTP status>" per check, and reports progress with the credential.
CHECK_TOKENS = """
import json, os, time, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
base = os.environ["JUPYTER_OFFLINE_TOKEN_URL"] + "api/offline-token/"
auth = {"Authorization": "OfflineTokenTask " + os.environ["JUPYTER_OFFLINE_TOKEN_TASK_SECRET"],
        "Content-Type": "application/json"}
token_id = os.environ["JUPYTER_OFFLINE_TOKEN_TOKEN_ID"]
task_id = os.environ["JUPYTER_OFFLINE_TOKEN_TASK_ID"]
params = json.loads(os.environ["JUPYTER_OFFLINE_TOKEN_PARAMETERS"])

def check_once(step, steps):
    req = urllib.request.Request(base + f"tokens/{token_id}/access-token", method="POST",
                                 data=json.dumps({"min_ttl": 2}).encode(), headers=auth)
    with opener.open(req, timeout=20) as r:
        access = json.load(r)["access_token"]
    probe = urllib.request.Request(params["userinfo"],
                                   headers={"Authorization": "Bearer " + access})
    try:
        with opener.open(probe, timeout=20) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    print(f"userinfo {status}", flush=True)
    patch = urllib.request.Request(base + f"tasks/{task_id}", method="PATCH", headers=auth,
                                   data=json.dumps({"progress": 100 * step / steps}).encode())
    opener.open(patch, timeout=20).close()

steps = int(params["seconds"])
for step in range(steps + 1):
    check_once(step, steps)
    if step < steps:
        time.sleep(1)
"""


@pytest.fixture
def provider_for_test(idp_short_ttl):
    return idp_short_ttl


async def run_to_the_end(api, task_id: str, limit: float = 80.0) -> dict:
    status, body = await api.post("tasks", task_id, "execute")
    assert status == 202, body
    deadline = time.monotonic() + limit
    while True:
        _, task = await api.get("tasks", task_id)
        if task["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, "gave up waiting for the task"
        await asyncio.sleep(0.2)
    while task_processes(task_id):  # nothing of the task outlives it
        assert time.monotonic() < deadline + 20, f"processes left: {task_processes(task_id)}"
        await asyncio.sleep(0.1)
    return task


def userinfo_statuses(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("userinfo ")]


@pytest.mark.timeout(90)
async def test_command_task_gets_a_token_the_provider_accepts_every_second(
    api, tasks, idp_short_ttl
):
    token_id = await grant(api, idp_short_ttl)
    status, task = await api.post(
        "tasks",
        body={
            "name": "15 s of API calls",
            "kind": "command",
            "command": [PY, "-c", CHECK_TOKENS],
            "persistent_token_id": token_id,
            "parameters": {"seconds": 15, "userinfo": idp_short_ttl.endpoint("userinfo")},
        },
    )
    assert status == 201
    idp_short_ttl.reset_stats()
    done = await run_to_the_end(api, task["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100
    _, log = await api.get("tasks", task["id"], "log")
    statuses = userinfo_statuses(log["lines"])
    assert len(statuses) == 16, log["lines"]
    assert statuses == [200] * 16
    # 15 s with 3 s tokens: the token was refreshed along the way, not served stale.
    assert idp_short_ttl.stats()["refresh_token_grants"] >= 4


@pytest.mark.timeout(90)
async def test_notebook_task_gets_a_token_the_provider_accepts(
    api, tasks, idp_short_ttl, jp_root_dir
):
    token_id = await grant(api, idp_short_ttl)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import json, os\nparams = {'seconds': seconds, 'userinfo': userinfo}"
        ),
        nbformat.v4.new_code_cell(
            CHECK_TOKENS.replace(
                'params = json.loads(os.environ["JUPYTER_OFFLINE_TOKEN_PARAMETERS"])', ""
            )
        ),
        nbformat.v4.new_code_cell("print('notebook done', len(parameters))"),
    ]
    (jp_root_dir / "work").mkdir()
    nbformat.write(nb, jp_root_dir / "work" / "check.ipynb")
    status, task = await api.post(
        "tasks",
        body={
            "name": "notebook",
            "kind": "notebook",
            "notebook": "work/check.ipynb",
            "persistent_token_id": token_id,
            "parameters": {"seconds": 6, "userinfo": idp_short_ttl.endpoint("userinfo")},
        },
    )
    assert status == 201, task
    done = await run_to_the_end(api, task["id"])
    _, log = await api.get("tasks", task["id"], "log")
    assert done["status"] == "completed", (done, log["lines"])
    assert userinfo_statuses(log["lines"]) == [200] * 7, log["lines"]
    assert any("notebook done 2" in line for line in log["lines"])
    executed = nbformat.read(tasks.task_dir(task["id"]) / "executed.ipynb", as_version=4)
    assert "injected-parameters" in executed.cells[0].metadata["tags"]
    outputs = "".join(o.get("text", "") for c in executed.cells[1:] for o in c.get("outputs", []))
    assert outputs.count("userinfo 200") == 7
    # The source notebook is left as it was.
    assert len(nbformat.read(jp_root_dir / "work" / "check.ipynb", as_version=4).cells) == 3


@pytest.mark.timeout(60)
async def test_failing_notebook_fails_the_task_and_keeps_the_executed_copy(
    api, tasks, idp_short_ttl, jp_root_dir
):
    token_id = await grant(api, idp_short_ttl)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('before')"),
        nbformat.v4.new_code_cell("raise ValueError('bad input data')"),
    ]
    nbformat.write(nb, jp_root_dir / "fails.ipynb")
    _, task = await api.post(
        "tasks",
        body={
            "name": "nb",
            "kind": "notebook",
            "notebook": "fails.ipynb",
            "persistent_token_id": token_id,
        },
    )
    done = await run_to_the_end(api, task["id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("exited with code 1") and "bad input data" in done["error"]
    executed = json.loads((tasks.task_dir(task["id"]) / "executed.ipynb").read_text())
    assert executed["cells"][1]["outputs"][0]["ename"] == "ValueError"
