"""Running tasks count as activity of the Jupyter server, as kernels' execution does.

jupyter_server's ``last_activity`` (``GET api/status``) is the newest of its ``*_last_activity``
settings, among others; JupyterHub's single-user server reports it to the hub, and
jupyterhub-idle-culler stops servers on it. A task that runs for hours without calling the API
would leave it unchanged, so while any task of this server runs, :class:`ServerActivity` sets
``offline_token_last_activity`` every ``interval`` seconds. (Requests made with a task's
credential count like any API request: see ``OfflineTokenHandler.update_api_activity``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from typing import Any

from .refresh.scheduler import Clock, SystemClock
from .settings import OfflineTokenSettings

log = logging.getLogger("jupyter_offline_token")

ACTIVITY_SETTING = "offline_token_last_activity"


class ServerActivity:
    """Marks the server active while tasks run: one sleeping asyncio task, only while busy."""

    def __init__(
        self,
        web_settings: dict[str, Any],
        settings: OfflineTokenSettings | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        """``web_settings``: the Tornado application's settings, read by ``last_activity()``.
        Beats every ``settings.activity_interval`` seconds (the default when None)."""
        self._settings = web_settings
        settings = settings if settings is not None else OfflineTokenSettings()
        self.interval = settings.activity_interval
        self.clock: Clock = clock or SystemClock()
        self._busy: set[str] = set()  # tokens with a running task
        self._beat: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ServerActivity(interval={self.interval:g}, busy={len(self._busy)})"

    def touch(self) -> None:
        self._settings[ACTIVITY_SETTING] = datetime.fromtimestamp(self.clock.time(), timezone.utc)

    async def task_warmth(self, token_id: str, warm: bool) -> None:
        """The task service's hook: a token's first running task started, or its last ended."""
        if warm:
            self._busy.add(token_id)
            if self._beat is None or self._beat.done():
                self._beat = asyncio.create_task(
                    self._beat_while_busy(), name="offline-token-activity"
                )
        else:
            self._busy.discard(token_id)
            if not self._busy:
                self.touch()  # a task ending is activity too
                await self.stop()

    async def _beat_while_busy(self) -> None:
        while self._busy:
            self.touch()
            await self.clock.sleep(self.interval)

    async def stop(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None and beat is not asyncio.current_task():
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
