"""Where refresh scheduling reads time and sleeps: the real clocks, or a fake one in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Where the scheduler reads time and sleeps; swapped for a fake clock in tests."""

    def time(self) -> float:
        """Wall clock, epoch seconds (due times are expressed in it)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (rate limits; stops while the machine is suspended)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks: ``time.time``, ``time.monotonic`` and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def wait_for_tasks(
    clock: Clock, tasks: set[asyncio.Task[None]], seconds: float
) -> set[asyncio.Task[None]]:
    """Wait until ``tasks`` finish or ``seconds`` pass on ``clock``; return the unfinished."""
    if not tasks:
        return tasks
    sleeper = asyncio.get_running_loop().create_task(clock.sleep(max(0.0, seconds)))
    try:
        while tasks and not sleeper.done():
            done, _ = await asyncio.wait({*tasks, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            tasks = tasks - done
    finally:
        if not sleeper.done():
            sleeper.cancel()
        await asyncio.wait((sleeper,))
    return tasks
