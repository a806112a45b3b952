"""Deadlines and periodic work for all subscriber sessions, in two tasks.

A task per connection that only waits for a deadline (a token's expiry, the
next ping) costs a few KB per idle connection; with ten thousand subscribers
that is most of their memory. Instead the app runs one ``Timers`` task over a
heap of deadlines, and ``tick`` every ``ping_interval`` for pings and SSE
heartbeats. Callbacks are plain functions: they may only flag work and start
a task in the session's own nursery.

``WallClock`` is the relay's unix time, which tokens expire by.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

import trio


class WallClock:
    """Unix time that advances with trio's clock, so a test's
    ``autojump_clock`` moves token expiry too. Read once at start."""

    __slots__ = ("_wall0", "_mono0")

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = trio.current_time()

    def now(self) -> float:
        return self._wall0 + (trio.current_time() - self._mono0)


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = trio.lowlevel.ParkingLot()

    def call_at(self, deadline: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the trio clock reaches ``deadline``."""
        heapq.heappush(self._heap, (deadline, next(self._order), fn))
        if self._heap[0][2] is fn:
            self._wake.unpark()  # a new earliest deadline

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                await self._wake.park()
                continue
            with trio.move_on_at(heap[0][0]):
                await self._wake.park()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, fn = heapq.heappop(heap)
                fn()


async def tick_every(interval: float, sessions: set) -> None:  # type: ignore[type-arg]
    """Call ``tick()`` on every session every ``interval`` seconds."""
    while True:
        await trio.sleep(interval)
        for session in list(sessions):
            session.tick()
