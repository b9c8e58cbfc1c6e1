"""The run queue: at most ``max_running`` runs at once on this server, the rest wait in order.

A queued task is stored ``pending`` with ``queued_at`` set; its message says how many tasks are
ahead of it, renumbered whenever the queue moves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .events import TaskUpdates
from .models import TASK_PENDING


class RunQueue:
    """The FIFO of task ids waiting for a free run slot."""

    def __init__(self, max_running: int) -> None:
        if isinstance(max_running, bool) or not isinstance(max_running, int):
            raise ValueError("max_running_tasks must be an integer")
        if max_running < 1:
            raise ValueError("max_running_tasks must be at least 1")
        self.max_running = max_running
        self._ids: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def slot_free(self, running: int) -> bool:
        """True when a run may start now, with ``running`` runs busy."""
        return running < self.max_running

    def append(self, task_id: str) -> str:
        """Queue a task; returns its queued message."""
        self._ids.append(task_id)
        return queued_message(len(self._ids) - 1)

    def remove(self, task_id: str) -> None:
        if task_id in self._ids:
            self._ids.remove(task_id)

    def pop(self) -> str:
        return self._ids.popleft()

    def clear(self) -> None:
        self._ids.clear()

    async def renumber(self, updates: TaskUpdates) -> None:
        """Store each queued task's position in its message."""
        for position, task_id in enumerate(self._ids):
            await updates.try_update(
                task_id, expect=(TASK_PENDING,), message=queued_message(position)
            )


def queued_message(ahead: int) -> str:
    return f"queued: {ahead} task{'s' if ahead != 1 else ''} ahead"
