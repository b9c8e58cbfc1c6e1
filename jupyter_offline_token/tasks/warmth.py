"""Which offline tokens the tasks running on this server keep warm.

A token is warm while at least one of its tasks runs. The first task starting and the last one
ending tell every ``token_events.WarmthListener`` (the refresh engine keeps the token's access
token fresh; the activity beat keeps the server from being culled).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .models import TaskRecord

if TYPE_CHECKING:
    from ..token_events import WarmthListener

log = logging.getLogger("jupyter_offline_token.tasks")


class TaskWarmth:
    """Running task ids per token, and the listeners told when a token turns warm or cold."""

    def __init__(self) -> None:
        self._listeners: list[WarmthListener] = []
        self._running: dict[str, set[str]] = {}  # token id -> running task ids

    def add_listener(self, listener: WarmthListener) -> None:
        """Tell ``listener`` when a token turns warm or cold, after those added before it."""
        self._listeners.append(listener)

    def tokens(self) -> set[str]:
        """Tokens linked to a task running on this server."""
        return set(self._running)

    async def add(self, task: TaskRecord) -> None:
        token_id = task.persistent_token_id
        if token_id is None:
            return
        running = self._running.setdefault(token_id, set())
        first = not running
        running.add(task.id)
        if first:
            await self._notify(token_id, True)

    async def remove(self, task_id: str, token_id: str | None) -> None:
        if token_id is None or token_id not in self._running:
            return
        running = self._running[token_id]
        running.discard(task_id)
        if not running:
            del self._running[token_id]
            await self._notify(token_id, False)

    async def clear(self) -> None:
        """Every token turns cold (the service stops)."""
        for token_id, running in list(self._running.items()):
            for task_id in list(running):
                await self.remove(task_id, token_id)

    async def _notify(self, token_id: str, warm: bool) -> None:
        for listener in self._listeners:
            try:
                await listener.task_warmth(token_id, warm)
            except Exception:
                log.exception("keep-warm listener failed for token %s", token_id)
