"""The task routes' request models (handlers/task_requests.py): each body is validated once,
there, and the service receives typed values. The API-level twins of these cases (400, nothing
stored) are in test_tasks.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jupyter_offline_token.errors import InvalidRequest
from jupyter_offline_token.handlers.task_requests import (
    CreateTask,
    LinkTask,
    PatchTask,
    status_filter,
)
from jupyter_offline_token.tasks.models import is_task_id


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_create_gives_typed_values_with_defaults():
    assert CreateTask.parse(body(name="  report  ")) == CreateTask(name="report")
    command = CreateTask.parse(body(name="c", kind="command", command=["python", "x.py"]))
    assert command.kind == "command" and command.command == ["python", "x.py"]
    assert command.parameters == {} and command.notebook is None
    notebook = CreateTask.parse(body(name="n", kind="notebook", notebook="a/b.ipynb"))
    assert notebook.notebook == "a/b.ipynb" and notebook.command is None
    demo = CreateTask.parse(body(name="d", kind="demo", parameters={"interval": 0.5}))
    assert demo.parameters == {"interval": 0.5}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": "x", "kind": "cron"}, "invalid_field"),
        ({"name": "x", "kind": "command"}, "missing_field"),
        ({"name": "x", "kind": "command", "command": []}, "invalid_field"),
        ({"name": "x", "kind": "command", "command": [""]}, "invalid_field"),
        ({"name": "x", "kind": "command", "command": ["ls", 3]}, "invalid_field"),
        ({"name": "x", "kind": "command", "command": ["a"] * 257}, "invalid_field"),
        ({"name": "x", "kind": "command", "command": ["a\x00b"]}, "invalid_field"),
        ({"name": "x", "kind": "command", "command": ["a" * 8193]}, "invalid_field"),
        ({"name": "x", "kind": "kernel", "command": ["ls"]}, "invalid_field"),
        ({"name": "x", "notebook": "a.ipynb"}, "invalid_field"),
        ({"name": "x", "kind": "notebook"}, "missing_field"),
        ({"name": "x", "kind": "notebook", "notebook": ""}, "missing_field"),
        ({"name": "x", "kind": "demo", "parameters": {"interval": 0}}, "invalid_field"),
        ({"name": "x", "kind": "demo", "parameters": {"interval": True}}, "invalid_field"),
        ({"name": "x", "kind": "demo", "parameters": {"interval": 3601}}, "invalid_field"),
        ({"name": "x", "parameters": {"big": "x" * 33000}}, "invalid_field"),
        ({"name": "   "}, "invalid_field"),
        ({"name": "a\x00b"}, "invalid_field"),
        ({"name": "x", "description": "a\x00b"}, "invalid_field"),
        ({"name": "x", "persistent_token_id": ""}, "invalid_field"),
        ({"name": "x", "persistent_token_id": "a\x00b"}, "invalid_field"),
        ({"name": "x", "persistent_token_id": "x" * 65}, "invalid_field"),
        ({"name": "x", "extra": 1}, "unknown_field"),
        ({"description": "no name"}, "missing_field"),
    ],
)
def test_create_refuses_bad_bodies_with_their_code(fields, code):
    with pytest.raises(InvalidRequest) as refused:
        CreateTask.parse(json.dumps(fields).encode())
    assert refused.value.code == code, refused.value.message


def test_link_needs_a_token_id():
    assert LinkTask.parse(body(persistent_token_id="t-1")).persistent_token_id == "t-1"
    for raw in (b"", b"{}", body(persistent_token_id=""), body(persistent_token_id=5)):
        with pytest.raises(InvalidRequest):
            LinkTask.parse(raw)


def test_patch_gives_typed_values_and_refuses_an_empty_report():
    report = PatchTask.parse(body(progress=40, message="hi", status="running"))
    assert report == PatchTask(progress=40.0, message="hi", status="running")
    assert isinstance(report.progress, float)
    assert PatchTask.parse(body(status="completed")).status == "completed"
    for raw in (
        b"{}",
        b'{"progress": null}',
        body(progress=101),
        body(progress=True),
        body(status="cancelled"),
        body(message="a\x00b"),
        body(error="e" * 16001),
        b'{"progress": 1e999}',
        b'{"progress": NaN}',
    ):
        with pytest.raises(InvalidRequest):
            PatchTask.parse(raw)


def test_status_filter_and_the_one_task_id_rule():
    assert status_filter(None) is None and status_filter("running") == "running"
    with pytest.raises(InvalidRequest) as refused:
        status_filter("bogus")
    assert refused.value.code == "invalid_query"
    task_id = "4d7d5b5e-0000-4000-8000-000000000000"
    assert is_task_id(task_id)
    # Only the canonical spelling names a task: an uppercase id is a 404, as it always was.
    for other in (task_id.upper(), "{" + task_id + "}", task_id.replace("-", ""), "", None, 5):
        assert not is_task_id(other)
