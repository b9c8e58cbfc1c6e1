"""A virtual clock for asyncio tests: time moves only when the test says so.

``FakeClock`` implements ``jupyter_offline_token.refresh.Clock``. ``sleep()`` blocks until the test
calls ``await clock.advance(seconds)``, which walks virtual time from one sleeper's deadline to the
next, waking each and letting the event loop run to quiescence in between, so code that sleeps in
a loop sees every intermediate wake-up at the right virtual time. ``jump_wall(seconds)`` moves only
the wall clock, as a laptop's suspend/resume does.

Quiescence means "no callback is ready to run": it covers coroutines, tasks and futures on this
loop, not real timers, threads or I/O, which these tests must not use.

``run_async`` turns an ``async def`` test into a plain one that runs on its own fresh event loop, so
these tests need no async pytest plugin and never share a loop with another test.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any


class FakeClock:
    """Deterministic wall + monotonic clocks with sleeps that only end on ``advance()``."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = float(wall)
        self._mono = float(monotonic)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    # --- Clock protocol ---------------------------------------------------------------------

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        try:
            await fut
        finally:
            fut.cancel()  # no-op when it fired; marks it dead for the heap otherwise

    # --- test controls ----------------------------------------------------------------------

    @property
    def pending_sleeps(self) -> int:
        """Sleeps still waiting (cancelled ones excluded)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """Monotonic time of the earliest pending sleep, or None."""
        self._drop_dead()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``, waking sleepers in deadline order."""
        if seconds < 0:
            raise ValueError("time only moves forward; use jump_wall() for a wall-clock jump")
        target = self._mono + seconds
        await self.settle()
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._move_to(max(deadline, self._mono))
            while self._sleepers and self._sleepers[0][0] <= self._mono:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await self.settle()
        self._move_to(target)
        await self.settle()

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock (suspend/resume, or an NTP step); no sleeper wakes."""
        self._wall += seconds

    async def settle(self, max_rounds: int = 200_000) -> None:
        """Let every ready callback run until the loop has nothing ready left to do."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # CPython's run queue; absent on other loops
        idle_rounds = 0
        for _ in range(max_rounds):
            await asyncio.sleep(0)
            if ready is None:
                idle_rounds += 1
                if idle_rounds >= 200:
                    return
            elif len(ready) == 0:
                idle_rounds += 1
                if idle_rounds >= 2:
                    return
            else:
                idle_rounds = 0
        raise RuntimeError(f"event loop did not settle within {max_rounds} rounds (busy loop?)")

    # --- internals --------------------------------------------------------------------------

    def _move_to(self, mono: float) -> None:
        self._wall += mono - self._mono
        self._mono = mono

    def _drop_dead(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Decorator: run an ``async def`` test to completion on a new event loop (fixtures still
    resolve, since the wrapper keeps the test's signature). Tasks left behind are cancelled."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(test(*args, **kwargs))
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return wrapper
