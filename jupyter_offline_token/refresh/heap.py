"""The scheduler's due times: a min-heap of ``(due, seq, token_id)`` with lazy deletion.

Rescheduling or cancelling a token does not search the heap: it only makes the token's current
item stale (its ``seq`` is no longer the live one), and stale items are dropped when they reach
the top or when they outnumber live ones two to one (a rebuild, so memory stays bounded by the
live tokens however often they are rescheduled).
"""

from __future__ import annotations

import heapq
import itertools


class DueHeap:
    """At most one live due time per token, earliest first. Not thread-safe."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, tuple[float, int]] = {}  # token_id -> its live (due, seq)
        self._seq = itertools.count()

    def push(self, token_id: str, due: float) -> None:
        """Queue ``token_id`` at ``due``, replacing its earlier due time if any."""
        seq = next(self._seq)
        self._live[token_id] = (due, seq)
        heapq.heappush(self._heap, (due, seq, token_id))

    def discard(self, token_id: str) -> None:
        """Unqueue ``token_id`` (its item goes stale); no-op if it is not queued."""
        self._live.pop(token_id, None)

    def peek(self) -> tuple[float, str] | None:
        """The earliest live ``(due, token_id)``, left in the heap; None when empty."""
        while self._heap:
            due, seq, token_id = self._heap[0]
            if self._live.get(token_id, (None, None))[1] == seq:
                return due, token_id
            heapq.heappop(self._heap)
        return None

    def pop(self) -> tuple[float, str] | None:
        """Remove and return the earliest live ``(due, token_id)``; None when empty."""
        top = self.peek()
        if top is not None:
            heapq.heappop(self._heap)
            del self._live[top[1]]
        return top

    def compact_if_sparse(self) -> bool:
        """Rebuild without stale items once they outnumber live ones 2:1; True if rebuilt."""
        if len(self._heap) - len(self._live) <= 2 * len(self._live):
            return False
        self._heap = [(due, seq, token_id) for token_id, (due, seq) in self._live.items()]
        heapq.heapify(self._heap)
        return True

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._live

    def __len__(self) -> int:
        """Live (queued) tokens."""
        return len(self._live)

    @property
    def size(self) -> int:
        """Items in the heap, live and stale (for tests and diagnostics)."""
        return len(self._heap)
