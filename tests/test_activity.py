"""Running tasks and task-credential requests are activity of the server (``GET api/status``'s
last_activity, which JupyterHub reports and jupyterhub-idle-culler reads). Time is a fake clock:
the beat moves only when the test advances it."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Any

from fake_clock import FakeClock, run_async
from server_fixtures import Api, grant
from test_tasks import create, until, wait_status

from jupyter_offline_token.activity import ACTIVITY_SETTING, ServerActivity
from jupyter_offline_token.settings import OfflineTokenSettings

OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def make_everything_old(serverapp: Any) -> None:
    """Every source of jupyter_server's last_activity, as on a server idle since 2020."""
    settings = serverapp.web_app.settings
    settings["started"] = OLD
    for key in [k for k in settings if k.endswith("_last_activity")]:
        settings[key] = OLD
    for key in settings["last_activity_times"]:
        settings["last_activity_times"][key] = OLD
    serverapp.kernel_manager.last_kernel_activity = OLD


async def last_activity(api: Api) -> datetime:
    status, body = await api.request("GET", "api", "status")  # does not count as activity
    assert status == 200, body
    return datetime.fromisoformat(body["last_activity"].replace("Z", "+00:00"))


@run_async
async def test_the_beat_runs_only_while_a_task_runs():
    clock = FakeClock()
    settings: dict[str, Any] = {}
    activity = ServerActivity(settings, OfflineTokenSettings(activity_interval=60), clock=clock)
    await clock.settle()
    assert clock.pending_sleeps == 0 and settings == {}

    await activity.task_warmth("token-1", True)
    await activity.task_warmth("token-2", True)
    await clock.settle()
    assert settings[ACTIVITY_SETTING] == at(clock.time())
    await clock.advance(60)
    assert settings[ACTIVITY_SETTING] == at(clock.time())
    await activity.task_warmth("token-1", False)  # another task still runs
    await clock.advance(60)
    assert settings[ACTIVITY_SETTING] == at(clock.time())

    await clock.advance(30)
    await activity.task_warmth("token-2", False)  # the last one ended: that is activity too
    assert settings[ACTIVITY_SETTING] == at(clock.time())
    await clock.settle()
    assert clock.pending_sleeps == 0  # nothing wakes up while no task runs
    settings[ACTIVITY_SETTING] = OLD
    await clock.advance(3600)
    assert settings[ACTIVITY_SETTING] == OLD
    await activity.stop()


async def test_api_status_moves_while_a_kernel_task_runs(
    api, tasks, idp, offline_app, jp_serverapp
):
    clock = FakeClock(wall=time.time())
    offline_app.services.activity.clock = clock
    token_id = await grant(api, idp)
    task = await create(api, name="hours of work", kind="kernel", persistent_token_id=token_id)
    status, _ = await api.post("tasks", task["id"], "execute")
    assert status == 202

    make_everything_old(jp_serverapp)
    assert await last_activity(api) == OLD
    await clock.advance(offline_app.activity_interval)
    assert await last_activity(api) == at(clock.time())

    status, _ = await api.patch("tasks", task["id"], body={"status": "completed"})
    assert status == 200
    make_everything_old(jp_serverapp)
    await clock.advance(10 * offline_app.activity_interval)
    assert await last_activity(api) == OLD  # no task runs: no activity made up


async def test_no_beat_is_left_once_the_task_service_stops(api, tasks, idp, offline_app):
    clock = FakeClock(wall=time.time())
    offline_app.services.activity.clock = clock
    token_id = await grant(api, idp)
    task = await create(api, name="in a kernel", kind="kernel", persistent_token_id=token_id)
    await api.post("tasks", task["id"], "execute")
    await clock.settle()
    assert clock.pending_sleeps == 1
    await tasks.stop()  # the server stops: its kernel tasks are interrupted, so nothing runs
    await clock.settle()
    assert clock.pending_sleeps == 0
    _, got = await api.get("tasks", task["id"])
    assert got["status"] == "interrupted"


SECRET_TO_FILE = """
import os, pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(os.environ["JUPYTER_OFFLINE_TOKEN_TASK_SECRET"])
time.sleep(120)
"""


async def test_a_request_with_a_task_credential_is_activity(
    api, tasks, idp, offline_app, jp_serverapp, tmp_path
):
    offline_app.services.activity.clock = FakeClock(wall=time.time())  # the beat stays still
    token_id = await grant(api, idp)
    secret_file = tmp_path / "secret"
    task = await create(
        api,
        name="quiet process",
        kind="command",
        persistent_token_id=token_id,
        command=[sys.executable, "-c", SECRET_TO_FILE, str(secret_file)],
    )
    await api.post("tasks", task["id"], "execute")
    await until(lambda: secret_file.exists() and secret_file.read_text(), "the task's secret")
    headers = {"Authorization": f"OfflineTokenTask {secret_file.read_text()}"}

    make_everything_old(jp_serverapp)
    status, _ = await api.post(
        "tokens", token_id, "access-token", headers={"Authorization": "OfflineTokenTask nope"}
    )
    assert status == 403
    assert await last_activity(api) == OLD  # a refused credential is not activity
    before = datetime.now(timezone.utc)
    status, body = await api.post("tokens", token_id, "access-token", headers=headers)
    assert status == 200, body
    assert await last_activity(api) >= before

    make_everything_old(jp_serverapp)
    status, _ = await api.patch("tasks", task["id"], body={"progress": 5}, headers=headers)
    assert status == 200
    assert await last_activity(api) >= before

    await api.post("tasks", task["id"], "cancel")
    await wait_status(api, task["id"], {"cancelled"})
