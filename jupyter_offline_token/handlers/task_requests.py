"""The request models of the task routes: each body is parsed and validated once, here, and
the task service receives typed values (it still enforces state rules and ownership).

Every rule answers 400 with a code (``invalid_field``, ``missing_field``, ``invalid_kind``,
``unknown_field``, ``invalid_json``) and never stores anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .. import rest_codes
from ..errors import InvalidRequest
from ..tasks.models import (
    COMMAND,
    COMPLETED,
    DEMO,
    KERNEL,
    KINDS,
    MAX_DESCRIPTION,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_TEXT,
    NOTEBOOK,
    RUNNING,
    STATUSES,
    TASK_FAILED,
    demo_interval,
)
from .base import Field, in_range, max_len, parse_body

MAX_ARGV = 256
MAX_ARG_CHARS = 8192
MAX_NOTEBOOK_PATH = 4096
MAX_TOKEN_ID = 64
MAX_PARAMETERS_BYTES = 32 * 1024
MAX_PARAMETERS_DEPTH = 32
REPORTED_STATUSES = (RUNNING, COMPLETED, TASK_FAILED)


def _one_of(values: tuple[str, ...]) -> Any:
    def check(value: Any) -> str | None:
        return None if value in values else f"must be one of {', '.join(values)}"

    return check


def _no_nul(limit: int) -> Any:
    too_long = max_len(limit)

    def check(value: Any) -> str | None:
        return too_long(value) or ("must not contain NUL" if "\x00" in value else None)

    return check


@dataclass(frozen=True)
class CreateTask:
    """``POST tasks``: a task and, for a command or notebook task, what it runs."""

    name: str
    description: str = ""
    kind: str = KERNEL
    command: list[str] | None = None
    notebook: str | None = None
    persistent_token_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    FIELDS = {
        "name": Field(str, required=True, check=_no_nul(MAX_NAME)),
        "description": Field(str, check=_no_nul(MAX_DESCRIPTION)),
        "kind": Field(str, check=_one_of(KINDS)),
        "command": Field(list),
        "notebook": Field(str, check=max_len(MAX_NOTEBOOK_PATH)),
        "persistent_token_id": Field(str, check=_no_nul(MAX_TOKEN_ID)),
        "parameters": Field(dict),
    }

    @classmethod
    def parse(cls, raw: bytes) -> CreateTask:
        body = parse_body(raw, cls.FIELDS, allow_empty=False)
        name = body["name"].strip()
        if not name:
            raise InvalidRequest("field 'name' must not be empty", code=rest_codes.INVALID_FIELD)
        kind = body.get("kind", KERNEL)
        if "command" in body and kind != COMMAND:
            raise InvalidRequest(
                "field 'command' is only for kind 'command'", code=rest_codes.INVALID_FIELD
            )
        if "notebook" in body and kind != NOTEBOOK:
            raise InvalidRequest(
                "field 'notebook' is only for kind 'notebook'", code=rest_codes.INVALID_FIELD
            )
        if kind == NOTEBOOK and not body.get("notebook"):
            raise InvalidRequest(
                "a notebook task needs 'notebook': a path inside the server's root directory",
                code=rest_codes.MISSING_FIELD,
            )
        parameters = _parameters(body.get("parameters", {}))
        if kind == DEMO:
            demo_interval(parameters)
        token_id = body.get("persistent_token_id")
        if token_id == "":
            raise InvalidRequest(
                "field 'persistent_token_id' must be a token id", code=rest_codes.INVALID_FIELD
            )
        return cls(
            name=name,
            description=body.get("description", ""),
            kind=kind,
            command=_argv(body.get("command")) if kind == COMMAND else None,
            notebook=body.get("notebook"),
            persistent_token_id=token_id,
            parameters=parameters,
        )


@dataclass(frozen=True)
class LinkTask:
    """``POST tasks/{id}/link``: the offline token the task runs with."""

    persistent_token_id: str

    FIELDS = {"persistent_token_id": Field(str, required=True, check=_no_nul(MAX_TOKEN_ID))}

    @classmethod
    def parse(cls, raw: bytes) -> LinkTask:
        body = parse_body(raw, cls.FIELDS, allow_empty=False)
        if not body["persistent_token_id"]:
            raise InvalidRequest(
                "field 'persistent_token_id' must be a token id", code=rest_codes.INVALID_FIELD
            )
        return cls(body["persistent_token_id"])


@dataclass(frozen=True)
class PatchTask:
    """``PATCH tasks/{id}``: a progress or end report of the work itself."""

    progress: float | None = None
    message: str | None = None
    status: str | None = None
    result: str | None = None
    error: str | None = None

    FIELDS = {
        "progress": Field((int, float), check=in_range(0, 100)),
        "message": Field(str, check=_no_nul(MAX_MESSAGE)),
        "status": Field(str, check=_one_of(REPORTED_STATUSES)),
        "result": Field(str, check=_no_nul(MAX_TEXT)),
        "error": Field(str, check=_no_nul(MAX_TEXT)),
    }

    @property
    def ends_task(self) -> bool:
        """Whether it reports an end (status, result or error), not just progress."""
        return self.status is not None or self.result is not None or self.error is not None

    @classmethod
    def parse(cls, raw: bytes) -> PatchTask:
        body = parse_body(raw, cls.FIELDS, allow_empty=False)
        if not body:
            raise InvalidRequest("nothing to update", code=rest_codes.MISSING_FIELD)
        progress = body.get("progress")
        if progress is not None and not math.isfinite(progress):
            raise InvalidRequest(
                "field 'progress' must be between 0 and 100", code=rest_codes.INVALID_FIELD
            )
        return cls(
            progress=float(progress) if progress is not None else None,
            message=body.get("message"),
            status=body.get("status"),
            result=body.get("result"),
            error=body.get("error"),
        )


def status_filter(raw: str | None) -> str | None:
    """The ``status`` query of ``GET tasks``: one of the task statuses, or none."""
    if raw is not None and raw not in STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(STATUSES)}", code=rest_codes.INVALID_QUERY
        )
    return raw


def _argv(command: Any) -> list[str]:
    if command is None:
        raise InvalidRequest(
            'a command task needs \'command\': an argv list such as ["python", "train.py"]',
            code=rest_codes.MISSING_FIELD,
        )
    if not all(isinstance(a, str) for a in command):
        raise InvalidRequest(
            "field 'command' must be an array of strings (argv; no shell)",
            code=rest_codes.INVALID_FIELD,
        )
    if not command or not command[0]:
        raise InvalidRequest(
            "field 'command' must not be empty: its first item is the program",
            code=rest_codes.INVALID_FIELD,
        )
    if len(command) > MAX_ARGV:
        raise InvalidRequest(
            f"field 'command' has more than {MAX_ARGV} items", code=rest_codes.INVALID_FIELD
        )
    if any(len(arg) > MAX_ARG_CHARS or "\x00" in arg for arg in command):
        raise InvalidRequest(
            f"each command item must be valid text of at most {MAX_ARG_CHARS} characters "
            "without NUL",
            code=rest_codes.INVALID_FIELD,
        )
    return list(command)


def _parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON: nested at most 32 levels, at most 32 KiB, finite numbers."""
    if _depth(parameters) > MAX_PARAMETERS_DEPTH:
        raise InvalidRequest(
            f"field 'parameters' is nested deeper than {MAX_PARAMETERS_DEPTH} levels",
            code=rest_codes.INVALID_FIELD,
        )
    try:
        text = json.dumps(parameters, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(
            "field 'parameters' must hold valid Unicode text only", code=rest_codes.INVALID_FIELD
        ) from None
    except (ValueError, TypeError, RecursionError):
        raise InvalidRequest(
            "field 'parameters' must be JSON with finite numbers only",
            code=rest_codes.INVALID_FIELD,
        ) from None
    if size > MAX_PARAMETERS_BYTES:
        raise InvalidRequest(
            f"field 'parameters' is larger than {MAX_PARAMETERS_BYTES} bytes",
            code=rest_codes.INVALID_FIELD,
        )
    return dict(parameters)


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (iteratively: deep input never recurses)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= MAX_PARAMETERS_DEPTH:
                stack.extend((child, level + 1) for child in item)
    return deepest
