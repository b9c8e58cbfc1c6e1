"""The swappable parts: c.OfflineTokenApp.token_store_class, task_store_class and
task_runner_class choose the classes the app builds (with the app as their parent)."""

from __future__ import annotations

from typing import Any

import pytest
from traitlets import Unicode
from traitlets.config import Config

from jupyter_offline_token.app import OfflineTokenApp
from jupyter_offline_token.stores import SQLiteTaskStore, SQLiteTokenStore
from jupyter_offline_token.tasks.runners import LocalTaskRunner


class MarkedTokenStore(SQLiteTokenStore):
    marker = Unicode("", config=True, help="A setting of this store class, for the test.")


class MarkedTaskStore(SQLiteTaskStore):
    pass


class MarkedRunner(LocalTaskRunner):
    pass


@pytest.fixture
def offline_token_config(offline_token_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **offline_token_config,
        "token_store_class": MarkedTokenStore,
        "task_store_class": MarkedTaskStore,
        "task_runner_class": MarkedRunner,
    }


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    return {**jp_server_config, "MarkedTokenStore": {"marker": "read from its own section"}}


async def test_configured_classes_are_built_with_the_app_as_parent(offline_app, api):
    services = offline_app.services
    assert type(services.vault) is MarkedTokenStore
    assert services.vault.parent is offline_app
    assert services.vault.marker == "read from its own section"  # its own config section
    assert type(services.task_store) is MarkedTaskStore
    assert services.task_store.parent is offline_app
    assert type(services.tasks.runner) is MarkedRunner
    assert services.tasks.runner.parent is offline_app
    status, body = await api.get("tokens")
    assert status == 200, body


@pytest.mark.parametrize("setting", ["token_store_class", "task_store_class", "task_runner_class"])
def test_a_class_of_the_wrong_kind_is_a_bad_setting_naming_it(setting):
    app = OfflineTokenApp(config=Config({"OfflineTokenApp": {setting: "builtins.dict"}}))
    problems = app.check_settings()
    assert any(f"OfflineTokenApp.{setting}" in problem for problem in problems), problems
    assert getattr(app, setting).__name__.startswith(("SQLite", "Local"))  # the default kept
