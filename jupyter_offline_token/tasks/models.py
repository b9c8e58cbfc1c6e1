"""Task records: long-running work linked to an offline token (no secret in here)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import rest_codes
from ..errors import InvalidRequest
from ..models import ACTIVE, EXPIRED, FAILED, PENDING, REVOKED, iso

# task.kind
KERNEL = "kernel"
COMMAND = "command"
NOTEBOOK = "notebook"
DEMO = "demo"
KINDS = (KERNEL, COMMAND, NOTEBOOK, DEMO)
PROCESS_KINDS = (COMMAND, NOTEBOOK)

# task.status
TASK_PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
TASK_FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
STATUSES = (TASK_PENDING, RUNNING, COMPLETED, TASK_FAILED, CANCELLED, INTERRUPTED)
TERMINAL = frozenset({COMPLETED, TASK_FAILED, CANCELLED, INTERRUPTED})
RETRYABLE = frozenset({TASK_PENDING, TASK_FAILED, CANCELLED, INTERRUPTED, COMPLETED})

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_MESSAGE = 2000
MAX_TEXT = 16000  # result and error
MAX_DEMO_INTERVAL = 3600.0


def is_task_id(value: object) -> bool:
    """True for a task id: a UUID in its canonical lowercase form. Any other text (an uppercase
    spelling too) names no task, so it is a 404, never a lookup or a directory name."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def demo_interval(parameters: dict[str, Any]) -> float:
    """The seconds between a demo task's steps (its ``interval`` parameter, default 1)."""
    interval = parameters.get("interval", 1.0)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 < interval <= MAX_DEMO_INTERVAL
    ):
        raise InvalidRequest(
            "parameter 'interval' of a demo task must be a number of seconds in (0, 3600]",
            code=rest_codes.INVALID_FIELD,
        )
    return float(interval)


def offline_token_status(token_status: str | None) -> str:
    """The task's view of its linked entry: none | pending | active | failed."""
    if token_status is None:
        return "none"
    if token_status in (PENDING, ACTIVE):
        return token_status
    if token_status in (FAILED, EXPIRED, REVOKED):
        return "failed"
    return "failed"


@dataclass
class TaskRecord:
    """One task as stored; ``spec`` carries the command argv, notebook path and parameters."""

    id: str
    owner: str
    name: str
    kind: str
    status: str
    created_at: float
    updated_at: float
    description: str = ""
    persistent_token_id: str | None = None
    progress: float = 0.0
    message: str = ""
    result: str | None = None
    error: str | None = None
    command: list[str] | None = None
    notebook: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    completed_at: float | None = None
    queued_at: float | None = None
    runner: str | None = None
    token_status: str | None = None  # the linked entry's status (read with the task)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def queued(self) -> bool:
        return self.status == TASK_PENDING and self.queued_at is not None

    def replace(self, **changes: Any) -> TaskRecord:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The public view (REST and events)."""
        progress = self.progress
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "status": self.status,
            "persistent_token_id": self.persistent_token_id,
            "offline_token_status": offline_token_status(self.token_status),
            "progress": int(progress) if float(progress).is_integer() else progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "command": list(self.command) if self.command is not None else None,
            "notebook": self.notebook,
            "parameters": dict(self.parameters),
        }
