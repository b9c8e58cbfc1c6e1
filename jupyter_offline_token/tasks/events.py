"""Every stored change of a task, and its publication to the subscribers of the events stream.

A change goes to the store (on the vault's thread) and, once stored, to each subscriber's queue;
``GET tasks/{id}/events`` drains one such queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .. import rest_codes
from ..errors import Conflict
from ..stores import TaskStore
from .models import TaskRecord

EVENT_QUEUE_SIZE = 1024
Event = dict[str, Any]


class TaskEvents:
    """Per-task subscribers: bounded queues of the task's public JSON after each change."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = {}

    def subscribe(self, task_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._subscribers.setdefault(task_id, set()).add(queue)
        return queue

    def unsubscribe(self, task_id: str, queue: asyncio.Queue[Event]) -> None:
        queues = self._subscribers.get(task_id)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._subscribers[task_id]

    def subscriber_count(self, task_id: str) -> int:
        return len(self._subscribers.get(task_id, ()))

    def publish(self, task: TaskRecord) -> None:
        queues = self._subscribers.get(task.id)
        if not queues:
            return
        event = task.to_json()
        event["_updated_at"] = task.updated_at  # lets a stream skip what it already sent
        for queue in list(queues):
            _offer(queue, event)

    def close(self) -> None:
        """Tell every stream that the service stops (the stream ends)."""
        for queues in self._subscribers.values():
            for queue in queues:
                _offer(queue, {"_closed": True})


class TaskUpdates:
    """Stores a change of a task and publishes its new state."""

    def __init__(self, store: TaskStore, events: TaskEvents, clock: Callable[[], float]) -> None:
        self.store = store
        self.events = events
        self.clock = clock

    async def try_update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord | None:
        """Store ``changes`` and publish the new state; None when the task is gone or its
        status is not in ``expect`` (a racing change won)."""
        changes["updated_at"] = self.clock()
        updated = await self.store.update(task_id, expect=expect, **changes)
        if updated is not None:
            self.events.publish(updated)
        return updated

    async def update(
        self, task_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> TaskRecord:
        """Like :meth:`try_update`, but Conflict when a racing change won."""
        updated = await self.try_update(task_id, expect=expect, **changes)
        if updated is None:
            raise Conflict(
                f"task {task_id} changed meanwhile; try again", code=rest_codes.TASK_CHANGED
            )
        return updated


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    """Queue an event; a subscriber that fell far behind loses its oldest events."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(event)
