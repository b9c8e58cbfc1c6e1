"""The refresh loop's sleep, which a laptop's wake or new work ends at once.

asyncio sleeps follow the monotonic clock, which stops while the machine is suspended, so the
sleep is cut in steps of ``check_interval`` seconds that only compare the wall and monotonic
clocks (cheap): a jump of one against the other beyond ``threshold`` reveals a wake.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .clock import Clock


class WakeableSleep:
    """One sleeper at a time (the scheduler's loop); not thread-safe."""

    def __init__(
        self,
        clock: Clock,
        *,
        check_interval: float,
        threshold: float,
        log: logging.Logger,
        task_name: str,
    ) -> None:
        self.clock = clock
        self.check_interval = check_interval
        self.threshold = threshold
        self.log = log
        self.task_name = task_name
        self.sleep_until: float | None = None  # wall time the sleeper plans to wake
        self._wake: asyncio.Future[None] | None = None
        self._offset: float | None = None  # wall - monotonic at the last check

    def reset(self) -> None:
        """Forget the last clock comparison (a loop (re)starts)."""
        self._offset = None

    def wakeup(self) -> None:
        """End the current sleep now (new work is due, or a slot is free)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def check_jump(self, schedules: int) -> bool:
        """Whether the wall clock jumped against the monotonic one since the last check (logged
        with the number of ``schedules`` to re-evaluate); remembers the new offset."""
        offset = self.clock.time() - self.clock.monotonic()
        jumped = False
        if self._offset is not None:
            jump = offset - self._offset
            if abs(jump) > self.threshold:
                jumped = True
                self.log.info(
                    "clock jumped by %+.0f s (suspend/resume?): re-evaluating %d schedules",
                    jump,
                    schedules,
                )
        self._offset = offset
        return jumped

    def moved(self) -> bool:
        """Whether the wall clock jumped against the monotonic one (no log, no update)."""
        if self._offset is None:
            return False
        offset = self.clock.time() - self.clock.monotonic()
        return abs(offset - self._offset) > self.threshold

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` in steps of ``check_interval``, each ending with a cheap
        comparison of the clocks, so a wake from suspend is seen within one step."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        until = self.clock.time() + seconds
        self.sleep_until = until
        remaining = seconds
        try:
            while True:
                step = min(remaining, self.check_interval)
                sleeper = loop.create_task(self.clock.sleep(step), name=f"{self.task_name}-sleep")
                try:
                    await asyncio.wait((sleeper, wake), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not sleeper.done():
                        sleeper.cancel()
                    await asyncio.wait((sleeper,))
                remaining = until - self.clock.time()
                if wake.done() or remaining <= 0 or self.moved():
                    return
        finally:
            self._wake = None
            self.sleep_until = None
            wake.cancel()
