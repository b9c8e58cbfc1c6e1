"""The task runner is a swappable part (tasks/runners.py): the service starts and stops every
run through a TaskRunner, and LocalTaskRunner (the default) reads its own config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from server_fixtures import grant
from test_tasks import TERMINAL, create, until, wait_status
from traitlets.config import Config

from jupyter_offline_token.tasks.credentials import ENV_TASK_SECRET
from jupyter_offline_token.tasks.models import COMPLETED
from jupyter_offline_token.tasks.runners import (
    LocalTaskRunner,
    Outcome,
    TaskLaunch,
    TaskRun,
    TaskRunner,
)
from jupyter_offline_token.tasks.service import TaskService

pytestmark = pytest.mark.timeout(90)


class _Finished(TaskRun):
    """Work that is over at once (or when stopped): says what it was started with."""

    def __init__(self, launch: TaskLaunch, hold: asyncio.Event) -> None:
        super().__init__()
        self.launch = launch
        self.hold = hold

    async def run(self) -> Outcome:
        await self.hold.wait()
        if self.stop_requested:
            return Outcome("cancelled", message="cancelled")
        return Outcome(COMPLETED, result=f"ran {self.launch.task.command}", message="done")

    async def terminate(self, grace: float) -> None:
        self.stop_requested = True
        self.hold.set()


class RecordingRunner(TaskRunner):
    """A runner of our own: records each launch and stop, runs nothing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launches: list[TaskLaunch] = []
        self.stopped: list[str] = []
        self.hold = asyncio.Event()

    async def start(self, launch: TaskLaunch) -> TaskRun:
        self.launches.append(launch)
        return _Finished(launch, self.hold)

    async def stop(self, run: TaskRun, grace: float) -> None:
        assert isinstance(run, _Finished)
        self.stopped.append(run.launch.task.id)
        await super().stop(run, grace)


def test_the_runner_base_is_abstract_and_the_default_reads_its_config():
    with pytest.raises(TypeError):
        TaskRunner()  # type: ignore[abstract]
    config = Config({"LocalTaskRunner": {"python": "/opt/python/bin/python3"}})
    assert LocalTaskRunner(config=config).python == "/opt/python/bin/python3"
    assert isinstance(LocalTaskRunner(), TaskRunner)


async def test_the_service_starts_and_stops_runs_through_its_runner(
    api, tasks, idp, offline_app, jp_root_dir
):
    assert isinstance(tasks.runner, LocalTaskRunner)  # what install() builds by default
    token_id = await grant(api, idp)
    done = await create(
        api, name="one", kind="command", persistent_token_id=token_id, command=["prog", "a"]
    )
    stopped = await create(
        api, name="two", kind="command", persistent_token_id=token_id, command=["prog", "b"]
    )
    runner = RecordingRunner()
    service = TaskService(
        offline_app.services.vault,
        offline_app.services.broker,
        root_dir=jp_root_dir,
        server_url="http://127.0.0.1:1/",
        runner=runner,
    )
    await service.start()
    try:
        await service.execute(None, done["id"])
        await service.execute(None, stopped["id"])
        assert [launch.task.id for launch in runner.launches] == [done["id"], stopped["id"]]
        first = runner.launches[0]
        assert first.root_dir == jp_root_dir and first.directory == service.task_dir(done["id"])
        # The process's environment carries its scoped credential, never shown in a repr.
        secret = first.environment[ENV_TASK_SECRET]
        assert secret and secret not in repr(first)
        await service.cancel(None, stopped["id"])
        await until(lambda: runner.stopped == [stopped["id"]], "the runner to stop the run")
        got = await wait_status(api, done["id"], TERMINAL)
        assert got["status"] == "completed" and got["result"] == "ran ['prog', 'a']", got
        assert (await wait_status(api, stopped["id"], TERMINAL))["status"] == "cancelled"
        await until(lambda: not service.supervisor.active, "the runs to be settled")
    finally:
        await service.stop()
