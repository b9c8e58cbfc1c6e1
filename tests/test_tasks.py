"""Tasks end to end: REST, runners with real subprocesses, the scoped task credential, the events
stream, cancel/failure/retry/restart, the running-task bound, and bad input changing nothing.
Tokens come from the real dev provider."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
import uuid
from typing import Any

import httpx
import pytest
from server_fixtures import Api, grant, task_processes

from jupyter_offline_token.errors import InvalidRequest
from jupyter_offline_token.handlers.task_requests import CreateTask
from jupyter_offline_token.tasks.models import TaskRecord
from jupyter_offline_token.tasks.runners import TaskLaunch
from jupyter_offline_token.tasks.service import TaskService

pytestmark = pytest.mark.timeout(90)

PY = sys.executable
TERMINAL = {"completed", "failed", "cancelled", "interrupted"}


async def until(predicate: Any, what: str, limit: float = 40.0) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; a hang guard, not a timing assertion."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_status(api: Api, task_id: str, statuses: set[str], limit: float = 40.0) -> dict:
    async def check() -> dict | None:
        status, task = await api.get("tasks", task_id)
        assert status == 200, task
        return task if task["status"] in statuses else None

    return await until(check, f"task {task_id} in {statuses}", limit)


async def no_processes_left(task_id: str) -> None:
    await until(lambda: not task_processes(task_id), f"processes of task {task_id} to end")


async def create(api: Api, **body: Any) -> dict:
    status, task = await api.post("tasks", body=body)
    assert status == 201, task
    return task


async def log_has(api: Api, task_id: str, text: str) -> bool:
    _, body = await api.get("tasks", task_id, "log")
    return any(text in line for line in body["lines"])


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# --- CRUD, validation and consent linking -------------------------------------------------------
async def test_create_list_get_delete(api, tasks):
    task = await create(api, name="report", description="nightly", kind="command", command=["true"])
    assert task["status"] == "pending" and task["kind"] == "command"
    assert task["offline_token_status"] == "none" and task["persistent_token_id"] is None
    assert task["command"] == ["true"] and task["notebook"] is None and task["parameters"] == {}
    assert task["progress"] == 0 and task["created_at"].endswith("Z")
    kernel = await create(api, name="in the kernel")
    assert kernel["kind"] == "kernel"
    status, listing = await api.get("tasks")
    assert [t["id"] for t in listing["tasks"]] == [kernel["id"], task["id"]]
    status, listing = await api.get("tasks", params={"status": "running"})
    assert status == 200 and listing["tasks"] == []
    status, err = await api.get("tasks", params={"status": "bogus"})
    assert status == 400 and err["error"] == "invalid_query"
    status, got = await api.get("tasks", task["id"])
    assert status == 200 and got == task
    status, err = await api.get("tasks", task["id"].upper())  # ids are canonical lowercase
    assert status == 404 and err["error"] == "not_found"
    status, _ = await api.delete("tasks", task["id"])
    assert status == 204
    status, err = await api.get("tasks", task["id"])
    assert status == 404 and err["error"] == "not_found"
    status, _ = await api.get("tasks", "not-a-task")
    assert status == 404


async def test_bad_input_gets_4xx_and_changes_nothing(api, tasks, jp_root_dir, tmp_path):
    (jp_root_dir / "ok.ipynb").write_text("{}")
    outside = tmp_path / "outside.ipynb"
    outside.write_text("{}")
    (jp_root_dir / "link.ipynb").symlink_to(outside)
    kernel = await create(api, name="k")
    _, before = await api.get("tasks")
    bad_bodies = [
        {"name": "x", "kind": "cron"},
        {"name": "x", "kind": "command"},
        {"name": "x", "kind": "command", "command": []},
        {"name": "x", "kind": "command", "command": ""},
        {"name": "x", "kind": "command", "command": "ls -l"},
        {"name": "x", "kind": "command", "command": ["ls", 3]},
        {"name": "x", "kind": "command", "command": [""]},
        {"name": "x", "kind": "kernel", "command": ["ls"]},
        {"name": "x", "kind": "notebook", "notebook": "../outside.ipynb"},
        {"name": "x", "kind": "notebook", "notebook": str(outside)},
        {"name": "x", "kind": "notebook", "notebook": "link.ipynb"},
        {"name": "x", "kind": "notebook", "notebook": "missing.ipynb"},
        {"name": "x", "kind": "notebook"},
        {"name": "x", "kind": "demo", "parameters": {"interval": -1}},
        {"name": "x", "parameters": []},
        {"name": "n" * 201},
        {"name": "   "},
        {"name": "x", "description": "d" * 2001},
        {"name": "x", "unknown": 1},
        {"description": "no name"},
        {"name": 5},
        {"name": "x", "persistent_token_id": "no-such-token"},
    ]
    for body in bad_bodies:
        status, err = await api.post("tasks", body=body)
        assert 400 <= status < 500, (body, status, err)
        assert err["error"] and err["message"], body
    for raw in (b"", b"[]", b"{not json", b'{"name": "x", "parameters": {"a": NaN}}'):
        status, _ = await api.post("tasks", raw=raw)
        assert status == 400, raw
    # PATCH/execute/cancel on wrong states or with bad values
    status, err = await api.patch("tasks", kernel["id"], body={"progress": 5})
    assert status == 409 and err["error"] == "not_running"
    status, err = await api.post("tasks", kernel["id"], "cancel")
    assert status == 409 and err["error"] == "not_running"
    status, err = await api.post("tasks", kernel["id"], "link", body={"persistent_token_id": "x"})
    assert status == 404
    _, after = await api.get("tasks")
    assert after == before
    # the valid notebook path is accepted
    await create(api, name="nb", kind="notebook", notebook="ok.ipynb")


async def test_execute_checks_the_token_then_kernel_task_reports(api, tasks, idp, offline_app):
    task = await create(api, name="kernel work")
    status, err = await api.post("tasks", task["id"], "execute")
    assert status == 409 and err["error"] == "needs_consent"

    status, consent = await api.post("consents", body={"task_id": task["id"]})
    assert status == 201
    status, linked = await api.post(
        "tasks", task["id"], "link", body={"persistent_token_id": consent["persistent_token_id"]}
    )
    assert status == 200 and linked["offline_token_status"] == "pending"
    status, err = await api.post("tasks", task["id"], "execute")
    assert status == 409 and err["error"] == "waiting_consent"

    token_id = await grant(api, idp)
    await api.post("tasks", task["id"], "link", body={"persistent_token_id": token_id})
    await offline_app.services.vault.mark_failed(token_id, error="test: dead", now=time.time())
    status, err = await api.post("tasks", task["id"], "execute")
    assert status == 409 and err["error"] == "token_failed"
    _, got = await api.get("tasks", task["id"])
    assert got["status"] == "pending" and got["offline_token_status"] == "failed"

    good = await grant(api, idp)
    await api.post("tasks", task["id"], "link", body={"persistent_token_id": good})
    status, started = await api.post("tasks", task["id"], "execute")
    assert status == 202 and started["status"] == "executing"
    assert started["task"]["status"] == "running" and started["task"]["started_at"]
    status, err = await api.post("tasks", task["id"], "execute")
    assert status == 409 and err["error"] == "already_running"
    status, err = await api.post("tasks", task["id"], "link", body={"persistent_token_id": good})
    assert status == 409
    assert good in tasks.warm_tokens()
    status, body = await api.get("tokens", good)
    assert body["tasks"] == [task["id"]]

    status, patched = await api.patch("tasks", task["id"], body={"progress": 40.5, "message": "hi"})
    assert status == 200 and patched["progress"] == 40.5 and patched["message"] == "hi"
    for bad in (
        {"progress": 101},
        {"progress": -1},
        {"progress": True},
        {"status": "pending"},
        {"status": "cancelled"},
        {},
        {"message": 3},
        {"extra": 1},
    ):
        status, _ = await api.patch("tasks", task["id"], body=bad)
        assert status == 400, bad
    status, done = await api.patch(
        "tasks", task["id"], body={"status": "completed", "result": "42 rows"}
    )
    assert status == 200 and done["status"] == "completed" and done["progress"] == 100
    assert done["result"] == "42 rows" and done["completed_at"]
    assert good not in tasks.warm_tokens()
    status, err = await api.patch("tasks", task["id"], body={"progress": 10})
    assert status == 409 and err["error"] == "task_finished"
    _, after = await api.get("tasks", task["id"])
    assert after == done
    # Executing a finished task runs it again.
    status, again = await api.post("tasks", task["id"], "execute")
    assert status == 202 and again["task"]["status"] == "running"
    assert again["task"]["progress"] == 0 and again["task"]["result"] is None


async def test_consent_with_task_id_links_the_task_when_granted(api, tasks, idp):
    task = await create(api, name="needs a token")
    status, _err = await api.post(
        "consents", body={"task_id": "4d7d5b5e-0000-4000-8000-000000000000"}
    )
    assert status == 404
    token_id = await grant(api, idp, task_id=task["id"])
    _, got = await api.get("tasks", task["id"])
    assert got["persistent_token_id"] == token_id and got["offline_token_status"] == "active"


# --- demo and the events stream -------------------------------------------------------------------
def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or all(line.startswith(":") for line in lines):
            continue
        assert lines[0] == "event: task", block
        events.append(json.loads(lines[1].removeprefix("data: ")))
    return events


async def test_events_stream_delivers_every_demo_step(api, tasks, idp, jp_fetch):
    token_id = await grant(api, idp)
    task = await create(
        api,
        name="demo",
        kind="demo",
        persistent_token_id=token_id,
        parameters={"interval": 0.05},
    )
    idp.reset_stats()
    stream = asyncio.ensure_future(
        jp_fetch("api", "offline-token", "tasks", task["id"], "events", request_timeout=60)
    )
    await until(lambda: tasks.events.subscriber_count(task["id"]) == 1, "the stream to subscribe")
    status, _ = await api.post("tasks", task["id"], "execute")
    assert status == 202
    response = await stream
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(response.body.decode())
    assert events[0]["status"] == "pending"
    assert events[-1]["status"] == "completed"
    assert events[-1]["result"] == "demo finished: 11 fresh access tokens obtained"
    steps = []
    for event in events:
        if event["status"] != "pending" and (not steps or steps[-1] != event["progress"]):
            steps.append(event["progress"])
    assert steps == list(range(0, 101, 10))
    assert all(e["status"] == "running" for e in events[1:-1])
    assert tasks.events.subscriber_count(task["id"]) == 0
    # A finished task's stream is its final state, then the end.
    response = await jp_fetch("api", "offline-token", "tasks", task["id"], "events")
    assert [e["status"] for e in parse_sse(response.body.decode())] == ["completed"]


async def test_demo_fails_with_the_reason_when_the_token_dies(api, tasks, idp, offline_app):
    token_id = await grant(api, idp)
    task = await create(api, name="demo", kind="demo", persistent_token_id=token_id)
    idp.revoke_account_grants("alice")  # an admin ends the grant at the provider
    offline_app.services.broker._cache.clear()  # as after a restart: no access token in memory
    status, _ = await api.post("tasks", task["id"], "execute")
    assert status == 202
    failed = await wait_status(api, task["id"], TERMINAL)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("could not get an access token")
    assert "request consent again" in failed["error"]
    assert failed["offline_token_status"] == "failed"


async def test_events_keepalive_and_client_disconnect(api, tasks, idp, jp_serverapp, caplog):
    tasks.keepalive_interval = 0.1
    token_id = await grant(api, idp)
    task = await create(api, name="kernel work", persistent_token_id=token_id)
    await api.post("tasks", task["id"], "execute")
    url = f"{jp_serverapp.connection_url}api/offline-token/tasks/{task['id']}/events"
    headers = {"Authorization": f"token {jp_serverapp.identity_provider.token}"}
    seen = []
    async with httpx.AsyncClient(trust_env=False) as client:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                seen.append(line)
                if line == ": keepalive":
                    break  # and hang up
    assert seen[0] == "event: task" and json.loads(seen[1][6:])["status"] == "running"
    await until(lambda: tasks.events.subscriber_count(task["id"]) == 0, "the stream to unsubscribe")
    status, done = await api.patch("tasks", task["id"], body={"status": "completed"})
    assert status == 200 and done["status"] == "completed"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# --- command tasks: failure, retry, cancel, credential scope ------------------------------------
async def test_command_failure_then_retry(api, tasks, idp, jp_root_dir):
    token_id = await grant(api, idp)
    task = await create(
        api,
        name="needs flag",
        kind="command",
        persistent_token_id=token_id,
        command=py(
            """
            import pathlib, sys
            print("looking for ok.flag")
            if not pathlib.Path("ok.flag").exists():
                print("ok.flag is missing", file=sys.stderr)
                sys.exit(3)
            print("found it")
            """
        ),
    )
    await api.post("tasks", task["id"], "execute")
    failed = await wait_status(api, task["id"], TERMINAL)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("exited with code 3")
    assert "ok.flag is missing" in failed["error"] and "looking for ok.flag" in failed["error"]
    _, body = await api.get("tasks", task["id"], "log")
    assert body["lines"] == ["looking for ok.flag", "ok.flag is missing"]
    assert (tasks.task_dir(task["id"]) / "output.log").exists()

    (jp_root_dir / "ok.flag").write_text("")  # the command runs in the server's root dir
    status, retried = await api.post("tasks", task["id"], "execute")
    assert status == 202 and retried["task"]["error"] is None
    done = await wait_status(api, task["id"], TERMINAL)
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert await log_has(api, task["id"], "found it")
    status, _missing = await api.post("tasks", task["id"], "execute")  # and once more
    assert status == 202
    await wait_status(api, task["id"], TERMINAL)


async def test_cancel_sigterm_then_sigkill(api, tasks, idp):
    tasks.cancel_grace = 1.0
    token_id = await grant(api, idp)
    stubborn = await create(
        api,
        name="ignores SIGTERM",
        kind="command",
        persistent_token_id=token_id,
        command=py(
            """
            import signal, subprocess, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            print("started", flush=True)
            time.sleep(120)
            """
        ),
    )
    await api.post("tasks", stubborn["id"], "execute")
    await until(lambda: log_has(api, stubborn["id"], "started"), "the child to start")
    assert len(task_processes(stubborn["id"])) == 2  # the command and its own child
    status, cancelled = await api.post("tasks", stubborn["id"], "cancel")
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["completed_at"]
    await no_processes_left(stubborn["id"])
    _, got = await api.get("tasks", stubborn["id"])
    assert got["status"] == "cancelled"
    status, _err = await api.post("tasks", stubborn["id"], "cancel")
    assert status == 409


CREDENTIAL_PROBE = """
import json, os, sys, time, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
base = os.environ["JUPYTER_OFFLINE_TOKEN_URL"] + "api/offline-token/"
secret = os.environ["JUPYTER_OFFLINE_TOKEN_TASK_SECRET"]
me = os.environ["JUPYTER_OFFLINE_TOKEN_TASK_ID"]
token = os.environ["JUPYTER_OFFLINE_TOKEN_TOKEN_ID"]
params = json.loads(os.environ["JUPYTER_OFFLINE_TOKEN_PARAMETERS"])
other_task, other_token = params["other_task"], params["other_token"]

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": "OfflineTokenTask " + secret, "Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

results = {
    "own_access": call("POST", f"tokens/{token}/access-token", {})[0],
    "own_get": call("GET", f"tasks/{me}")[0],
    "own_patch": call("PATCH", f"tasks/{me}", {"progress": 50, "message": "half"})[0],
    "other_access": call("POST", f"tokens/{other_token}/access-token", {}),
    "other_task": call("GET", f"tasks/{other_task}")[0],
    "other_patch": call("PATCH", f"tasks/{other_task}", {"progress": 1})[0],
    "list_tasks": call("GET", "tasks")[0],
    "list_tokens": call("GET", "tokens")[0],
    "own_token_meta": call("GET", f"tokens/{token}")[0],
    "own_cancel": call("POST", f"tasks/{me}/cancel")[0],
    "own_delete": call("DELETE", f"tasks/{me}")[0],
    "own_log": call("GET", f"tasks/{me}/log")[0],
    "consent": call("POST", "consents", {})[0],
    "env_has_server_token": any(k in os.environ for k in ("JUPYTER_TOKEN", "JPY_API_TOKEN")),
}
with open(params["secret_file"], "w") as f:
    f.write(secret)
print(json.dumps(results), flush=True)
"""


async def test_scoped_credential_only_for_its_own_task_and_while_it_runs(
    api, tasks, idp, tmp_path, jp_serverapp
):
    token_id = await grant(api, idp)
    other_token = await grant(api, idp)
    other = await create(api, name="other", persistent_token_id=other_token)
    secret_file = tmp_path / "secret"
    task = await create(
        api,
        name="probe",
        kind="command",
        persistent_token_id=token_id,
        command=[PY, "-c", CREDENTIAL_PROBE],
        parameters={
            "other_task": other["id"],
            "other_token": other_token,
            "secret_file": str(secret_file),
        },
    )
    await api.post("tasks", task["id"], "execute")
    done = await wait_status(api, task["id"], TERMINAL)
    assert done["status"] == "completed", done
    assert done["message"] == "exited with code 0"
    _, body = await api.get("tasks", task["id"], "log")
    results = json.loads(body["lines"][-1])
    assert results["own_access"] == 200
    assert results["own_get"] == 200
    assert results["own_patch"] == 200
    assert results["other_access"] == [
        403,
        {"error": "forbidden", "message": results["other_access"][1]["message"]},
    ]
    for key in (
        "other_task",
        "other_patch",
        "list_tasks",
        "list_tokens",
        "own_token_meta",
        "own_cancel",
        "own_delete",
        "own_log",
        "consent",
    ):
        assert results[key] == 403, key
    assert results["env_has_server_token"] is False
    assert jp_serverapp.identity_provider.token not in str(results)

    secret = secret_file.read_text()
    assert secret and secret not in json.dumps(done)
    headers = {"Authorization": f"OfflineTokenTask {secret}"}
    # The task ended: its credential is dead everywhere.
    status, err = await api.post("tokens", token_id, "access-token", headers=headers)
    assert status == 403 and err["error"] == "task_credential_ended"
    status, _ = await api.get("tasks", task["id"], headers=headers)
    assert status == 403
    status, _ = await api.patch("tasks", task["id"], body={"progress": 1}, headers=headers)
    assert status == 403
    # Only its hash is stored.
    rows = await tasks.vault.run(
        lambda conn: [tuple(r) for r in conn.execute("SELECT * FROM tasks")]
    )
    assert secret not in str(rows)


# --- restart, queue, token deletion ---------------------------------------------------------------
async def test_restart_interrupts_running_tasks_which_can_run_again(api, tasks, idp, offline_app):
    token_id = await grant(api, idp)
    kernel = await create(api, name="kernel", persistent_token_id=token_id)
    await api.post("tasks", kernel["id"], "execute")
    # A new server process on the same vault: what the old one ran has no process any more.
    successor = TaskService(
        offline_app.services.vault, offline_app.services.broker, root_dir="/", server_url="x"
    )
    assert await successor.start() == [kernel["id"]]
    _, got = await api.get("tasks", kernel["id"])
    assert got["status"] == "interrupted" and got["completed_at"]
    status, again = await api.post("tasks", kernel["id"], "execute")
    assert status == 202 and again["task"]["status"] == "running"

    sleeper = await create(
        api,
        name="sleeper",
        kind="command",
        persistent_token_id=token_id,
        command=py("import time; print('up', flush=True); time.sleep(120)"),
    )
    await api.post("tasks", sleeper["id"], "execute")
    await until(lambda: log_has(api, sleeper["id"], "up"), "the sleeper to start")
    await tasks.stop()  # the server stops: its process dies with it
    await no_processes_left(sleeper["id"])
    for task_id in (sleeper["id"], kernel["id"]):
        _, got = await api.get("tasks", task_id)
        assert got["status"] == "interrupted", got
    await tasks.start()
    status, again = await api.post("tasks", sleeper["id"], "execute")
    assert status == 202 and again["task"]["status"] == "running"
    await api.post("tasks", sleeper["id"], "cancel")
    await no_processes_left(sleeper["id"])


async def test_max_running_tasks_queues_the_rest(api, tasks, idp, jp_root_dir):
    tasks.queue.max_running = 1
    token_id = await grant(api, idp)
    wait_for_go = py(
        """
        import pathlib, time
        print("up", flush=True)
        while not pathlib.Path("go.flag").exists():
            time.sleep(0.05)
        """
    )
    ids = []
    for n in range(3):
        task = await create(
            api, name=f"t{n}", kind="command", persistent_token_id=token_id, command=wait_for_go
        )
        status, _started = await api.post("tasks", task["id"], "execute")
        assert status == 202
        ids.append(task["id"])
    first, second, third = ids
    _, got = await api.get("tasks", first)
    assert got["status"] == "running"
    _, got = await api.get("tasks", second)
    assert got["status"] == "pending" and got["message"] == "queued: 0 tasks ahead"
    _, got = await api.get("tasks", third)
    assert got["status"] == "pending" and got["message"] == "queued: 1 task ahead"
    status, err = await api.post("tasks", second, "execute")
    assert status == 409 and err["error"] == "already_running"
    status, err = await api.delete("tasks", third)
    assert status == 409
    status, cancelled = await api.post("tasks", third, "cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    (jp_root_dir / "go.flag").write_text("")
    assert (await wait_status(api, first, TERMINAL))["status"] == "completed"
    assert (await wait_status(api, second, TERMINAL))["status"] == "completed"
    assert await log_has(api, second, "up")
    _, got = await api.get("tasks", third)
    assert got["status"] == "cancelled" and got["started_at"] is None


async def test_deleting_a_token_in_use_needs_force_which_cancels_its_tasks(api, tasks, idp):
    token_id = await grant(api, idp)
    task = await create(
        api,
        name="sleeper",
        kind="command",
        persistent_token_id=token_id,
        command=py("import time; print('up', flush=True); time.sleep(120)"),
    )
    await api.post("tasks", task["id"], "execute")
    await until(lambda: log_has(api, task["id"], "up"), "the sleeper to start")
    status, err = await api.delete("tokens", token_id)
    assert status == 409 and err["error"] == "token_in_use" and err["tasks"] == [task["id"]]
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active"
    status, _ = await api.delete("tokens", token_id, params={"force": "true"})
    assert status in (200, 204)
    got = await wait_status(api, task["id"], {"cancelled"})
    assert got["persistent_token_id"] is None and got["offline_token_status"] == "none"
    await no_processes_left(task["id"])


@pytest.mark.parametrize("multi_user", [True])
async def test_tasks_belong_to_their_user(api, tasks, idp):
    alice, bob = api.as_user("alice"), api.as_user("bob")
    task = await create(alice, name="alice's")
    token_id = await grant(alice, idp)
    assert (await bob.get("tasks"))[1] == {"tasks": [], "next_cursor": None}
    for method, parts in [
        ("GET", ()),
        ("DELETE", ()),
        ("POST", ("execute",)),
        ("POST", ("cancel",)),
        ("GET", ("log",)),
        ("GET", ("events",)),
    ]:
        status, _ = await bob.request(method, "api", "offline-token", "tasks", task["id"], *parts)
        assert status == 404, (method, parts)
    status, _ = await bob.patch("tasks", task["id"], body={"progress": 1})
    assert status == 404
    mine = await create(bob, name="bob's")
    status, _ = await bob.post("tasks", mine["id"], "link", body={"persistent_token_id": token_id})
    assert status == 404
    status, _ = await bob.post("tasks", body={"name": "x", "persistent_token_id": token_id})
    assert status == 404
    status, _ = await api.as_user(None).get("tasks")
    assert status == 403


# --- paths the OS refuses, who ends a process, launch faults, text that cannot be encoded -------
async def test_notebook_path_the_os_refuses_is_a_400_and_changes_nothing(
    api, tasks, idp, jp_root_dir
):
    (jp_root_dir / "loop.ipynb").symlink_to(jp_root_dir / "loop.ipynb")
    _, before = await api.get("tasks")
    for notebook in ("a" * 300 + ".ipynb", "a" * 300 + "/x.ipynb", "loop.ipynb"):
        status, err = await api.post(
            "tasks", body={"name": "x", "kind": "notebook", "notebook": notebook}
        )
        assert status == 400 and err["error"] == "invalid_notebook", (notebook[:20], err)
    _, after = await api.get("tasks")
    assert after == before
    # A notebook that turned into a symlink loop after creation: execute refuses, nothing changes.
    (jp_root_dir / "ok.ipynb").write_text("{}")
    token_id = await grant(api, idp)
    task = await create(
        api, name="nb", kind="notebook", notebook="ok.ipynb", persistent_token_id=token_id
    )
    (jp_root_dir / "ok.ipynb").unlink()
    (jp_root_dir / "ok.ipynb").symlink_to(jp_root_dir / "ok.ipynb")
    status, err = await api.post("tasks", task["id"], "execute")
    assert status == 400 and err["error"] == "invalid_notebook", err
    assert (await api.get("tasks", task["id"]))[1] == task


SLEEPER = py("import time; print('up', flush=True); time.sleep(120)")


async def test_the_user_cannot_end_a_process_or_demo_task_with_a_status(api, tasks, idp):
    token_id = await grant(api, idp)
    command = await create(
        api, name="sleeper", kind="command", persistent_token_id=token_id, command=SLEEPER
    )
    demo = await create(
        api,
        name="slow demo",
        kind="demo",
        persistent_token_id=token_id,
        parameters={"interval": 60},
    )
    for task in (command, demo):
        status, _ = await api.post("tasks", task["id"], "execute")
        assert status == 202
    await until(lambda: log_has(api, command["id"], "up"), "the sleeper to start")
    for task in (command, demo):
        for body in ({"status": "completed"}, {"status": "failed", "error": "stop"}):
            status, err = await api.patch("tasks", task["id"], body=body)
            assert status == 409 and err["error"] == "use_cancel", (task["kind"], err)
        # Progress and messages are still welcome.
        status, got = await api.patch("tasks", task["id"], body={"message": "note"})
        assert status == 200 and got["status"] == "running" and got["message"] == "note"
    assert task_processes(command["id"])
    status, err = await api.post("tasks", command["id"], "execute")
    assert status == 409 and err["error"] == "already_running"
    for task in (command, demo):
        status, got = await api.post("tasks", task["id"], "cancel")
        assert status == 200 and got["status"] == "cancelled"
    await no_processes_left(command["id"])


# Inside a command task: the kernel helper's Task, through the task's scoped credential.
REPORTS_ITS_END = """
import json, os, sys, time
from jupyter_offline_token.kernel import current_task
mode = json.loads(os.environ["JUPYTER_OFFLINE_TOKEN_PARAMETERS"])["mode"]
task = current_task()
with task.running():
    task.progress(0.5, message="half way")
    if mode == "fail":
        raise ValueError("bad input data")
    task.complete(result=f"{mode}: 42")
    print("reported", task.known_status, flush=True)
    if mode == "linger":
        time.sleep(120)
if mode == "lie":
    sys.exit(4)
"""


async def test_a_task_process_reports_its_end_and_its_exit_settles_it(api, tasks, idp):
    tasks.supervisor.report_grace = 0.5
    token_id = await grant(api, idp)
    ids = {}
    for mode in ("complete", "fail", "linger", "lie"):
        task = await create(
            api,
            name=mode,
            kind="command",
            persistent_token_id=token_id,
            command=[PY, "-c", REPORTS_ITS_END],
            parameters={"mode": mode},
        )
        status, _ = await api.post("tasks", task["id"], "execute")
        assert status == 202
        ids[mode] = task["id"]
    done = {mode: await wait_status(api, task_id, TERMINAL) for mode, task_id in ids.items()}
    for task_id in ids.values():
        await no_processes_left(task_id)

    complete = done["complete"]
    assert complete["status"] == "completed" and complete["result"] == "complete: 42", complete
    assert complete["progress"] == 100 and complete["message"] == "exited with code 0"
    # The report did not end the task: the process still saw itself running afterwards.
    assert await log_has(api, ids["complete"], "reported running")

    fail = done["fail"]
    assert fail["status"] == "failed", fail
    assert fail["error"].startswith("ValueError: bad input data")
    assert "exited with code 1" in fail["error"] and fail["message"] == "exited with code 1"

    linger = done["linger"]  # reported completed, then kept running: stopped after the grace
    assert linger["status"] == "completed" and linger["result"] == "linger: 42", linger
    assert linger["message"].startswith("reported completed; stopped")

    lie = done["lie"]  # reported completed, then exited with code 4: the exit code decides
    assert lie["status"] == "failed" and lie["result"] == "lie: 42", lie
    assert lie["message"] == "reported completed, but exited with code 4"
    assert lie["error"].startswith("exited with code 4")


async def test_a_launch_that_fails_fails_its_task_and_the_queue_goes_on(
    api, tasks, idp, jp_root_dir, monkeypatch
):
    tasks.queue.max_running = 1
    token_id = await grant(api, idp)
    blocker = await create(
        api,
        name="blocker",
        kind="command",
        persistent_token_id=token_id,
        command=py(
            """
            import pathlib, time
            while not pathlib.Path("go.flag").exists():
                time.sleep(0.05)
            """
        ),
    )
    missing = await create(
        api,
        name="no such program",
        kind="command",
        persistent_token_id=token_id,
        command=["/no/such/program-xyz"],
    )
    faulty = await create(
        api, name="disk full", kind="command", persistent_token_id=token_id, command=["true"]
    )
    last = await create(
        api,
        name="last",
        kind="command",
        persistent_token_id=token_id,
        command=py("print('last one ran')"),
    )
    # A fault of the file system while the runner sets a run up (its log directory, its env).
    start_run = tasks.runner.start

    async def failing_start(launch: TaskLaunch) -> Any:
        if launch.task.id == faulty["id"]:
            raise OSError(28, "No space left on device")
        return await start_run(launch)

    monkeypatch.setattr(tasks.runner, "start", failing_start)
    for task in (blocker, missing, faulty, last):
        status, _ = await api.post("tasks", task["id"], "execute")
        assert status == 202
    assert (await api.get("tasks", last["id"]))[1]["message"] == "queued: 2 tasks ahead"
    (jp_root_dir / "go.flag").write_text("")
    assert (await wait_status(api, last["id"], TERMINAL))["status"] == "completed"
    assert await log_has(api, last["id"], "last one ran")
    got = (await api.get("tasks", missing["id"]))[1]
    assert got["status"] == "failed" and got["error"].startswith("cannot start '/no/such/")
    got = (await api.get("tasks", faulty["id"]))[1]
    assert got["status"] == "failed" and got["message"] == "could not start"
    assert got["error"] == "could not start: No space left on device" and got["completed_at"]
    # Executed directly (a free slot): the same clear failure, not a 500.
    status, body = await api.post("tasks", faulty["id"], "execute")
    assert status == 202 and body["task"]["status"] == "failed"
    assert body["task"]["error"] == "could not start: No space left on device"
    assert not tasks.supervisor.active and not tasks.warm_tokens()


async def test_text_that_cannot_be_encoded_never_reaches_a_runner(api, tasks, idp):
    token_id = await grant(api, idp)
    bad = "bad \ud800 text"
    for fields in (
        {"name": bad},
        {"name": "x", "description": bad},
        {"name": "x", "kind": "command", "command": ["echo", bad]},
        {"name": "x", "kind": "command", "command": [bad]},
        {"name": "x", "parameters": {"key": bad}},
        {"name": "x", "parameters": {bad: 1}},
        {"name": "x", "kind": "notebook", "notebook": bad + ".ipynb"},
        {"name": "x", "persistent_token_id": bad},
    ):
        # Refused by the request model, before any service sees it.
        with pytest.raises(InvalidRequest):
            CreateTask.parse(json.dumps(fields).encode())
        # Escaped in JSON it is valid JSON: the API refuses it with a 400 as well.
        status, err = await api.post("tasks", raw=json.dumps(fields).encode())
        assert status == 400, (fields, err)
    assert (await api.get("tasks"))[1] == {"tasks": [], "next_cursor": None}
    # A row stored before this validation existed: its run fails with the reason, no 500.
    probe = await create(api, name="whose")
    owner = (await tasks.store.get(probe["id"])).owner
    now = time.time()
    legacy = await tasks.store.create(
        TaskRecord(
            id=str(uuid.uuid4()),
            owner=owner,
            name="legacy",
            kind="command",
            status="pending",
            created_at=now,
            updated_at=now,
            persistent_token_id=token_id,
            command=[PY, "-c", "print(1)", bad],
            parameters={"p": bad},
        )
    )
    status, _ = await api.post("tasks", legacy.id, "execute")
    assert status == 202
    failed = await wait_status(api, legacy.id, TERMINAL)
    assert failed["status"] == "failed" and failed["message"] == "could not start"
    assert "is not valid text" in failed["error"] and "internal error" not in failed["error"]


async def test_task_routes_never_answer_5xx_to_bad_input(api, tasks, idp):
    token_id = await grant(api, idp)
    kernel = await create(api, name="k", persistent_token_id=token_id)
    await api.post("tasks", kernel["id"], "execute")
    _, before = await api.get("tasks")
    problems = []

    async def check(label: Any, answer: Any) -> None:
        status, body = await answer
        if not 400 <= status < 500:
            problems.append((label, status, body))

    deep = b'{"a":' * 900 + b"1" + b"}" * 900
    for raw in (
        b'{"name": "x", "parameters": {"a": Infinity}}',
        b'{"name": "x", "parameters": {"a": 1e999}}',
        b'{"name": "x", "parameters": {"a": ' + b"9" * 5000 + b"}}",
        b'{"name": "x", "kind": "demo", "parameters": {"interval": NaN}}',
        b'{"name": "x", "kind": "demo", "parameters": {"interval": ' + b"9" * 400 + b"}}",
        b'{"name": "x", "parameters": ' + deep + b"}",
        b'{"name": "x", "parameters": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"name": "x", "kind": "notebook", "notebook": "/"}',
        b'{"name": "x", "kind": "notebook", "notebook": "."}',
        b'{"name": "x", "persistent_token_id": ""}',
        b'{"name": "x", "persistent_token_id": "../.."}',
        b'{"name": "x", "kind": ["demo"]}',
        b'{"name": "x", "command": {}}',
        b'{"name": "\xff"}',
        b"\xff\xfe",
        b"1e999",
        b"NaN",
    ):
        await check(("POST tasks", raw[:60]), api.post("tasks", raw=raw))
    for raw in (
        b'{"progress": NaN}',
        b'{"progress": -Infinity}',
        b'{"progress": 1e999}',
        b'{"progress": -1e-9}',
        b'{"progress": ' + b"9" * 400 + b"}",
        b'{"progress": "5"}',
        b'{"status": "completed", "result": 42}',
        b"",
        b"null",
        b"[]",
    ):
        await check(("PATCH", raw[:60]), api.patch("tasks", kernel["id"], raw=raw))
    for raw in (b'{"persistent_token_id": ""}', b'{"persistent_token_id": 5}', b""):
        await check(("link", raw), api.post("tasks", kernel["id"], "link", raw=raw))
    for raw in (b'{"x": 1}', b"[]"):
        await check(("execute", raw), api.post("tasks", kernel["id"], "execute", raw=raw))
        await check(("cancel", raw), api.post("tasks", kernel["id"], "cancel", raw=raw))
    for task_id in ("..", "%2e%2e", "a%2Fb", "%00", "%ff", "%ED%A0%80", "x" * 3000, " "):
        for method, parts in (
            ("GET", ()),
            ("DELETE", ()),
            ("PATCH", ()),
            ("POST", ("execute",)),
            ("POST", ("cancel",)),
            ("POST", ("link",)),
            ("GET", ("log",)),
            ("GET", ("events",)),
        ):
            raw = b'{"progress": 1}' if method == "PATCH" else None
            if parts == ("link",):
                raw = b'{"persistent_token_id": "x"}'
            await check(
                (method, task_id[:10], parts),
                api.request(method, "api", "offline-token", "tasks", task_id, *parts, raw=raw),
            )
    for method, parts in (
        ("PUT", ()),
        ("DELETE", ()),
        ("PATCH", ()),
        ("PUT", (kernel["id"],)),
        ("POST", (kernel["id"],)),
        ("GET", (kernel["id"], "execute")),
        ("DELETE", (kernel["id"], "cancel")),
    ):
        raw = None if method in ("GET", "DELETE") else b"{}"
        await check(
            (method, parts), api.request(method, "api", "offline-token", "tasks", *parts, raw=raw)
        )
    for query in ("", "%ff", "x" * 5000):
        await check(("status", query[:10]), api.get("tasks", params={"status": query}))
    assert problems == []
    for levels, refusal in ((40, "nested deeper"), (100, "too deeply nested")):
        nested: dict = {}
        for _ in range(levels):
            nested = {"a": nested}
        with pytest.raises(InvalidRequest, match=refusal):
            CreateTask.parse(json.dumps({"name": "x", "parameters": nested}).encode())
    _, after = await api.get("tasks")
    assert after == before
