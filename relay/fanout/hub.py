"""The hub: the task that fans out what the store commits.

Publishing only queues: ``publish`` is called by the store with committed
events, in log order, and returns at once, so a webhook's 202 never waits
for the fan-out. The flusher (``run``) takes everything published since its
last pass and hands it out run by run by the index's rules
(``relay.core.index``: which subscribers, where a run ends, one write of a
run's joined frames per subscriber), yielding to the loop every
``WRITES_PER_YIELD`` subscriber writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ..core.envelope import Event
from ..core.index import Index

# Subscriber writes between two yields of the flusher: ingest and the
# connections' own tasks get the loop at least this often.
WRITES_PER_YIELD = 2000


class Hub(Index):
    def __init__(self) -> None:
        super().__init__()
        self._pending: list[Event] = []
        self._wake = trio.lowlevel.ParkingLot()

    def publish(self, events: Iterable[Event]) -> None:
        """Queue committed events for fan-out, in log order; never waits."""
        self._pending.extend(events)
        self._wake.unpark()

    async def run(self) -> None:
        """The flusher: fan out everything published, run by run."""
        while True:
            while not self._pending:
                await self._wake.park()
            # One more scheduler pass before fanning out: webhooks whose
            # commits are ready join this batch, and each subscriber gets
            # more events per write (fewer syscalls per frame under load).
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch, self._pending = self._pending, []
            writes = 0
            start = 0
            while start < len(batch):
                end = self.cut(batch, start)
                writes += self.fan_out(batch[start:end])
                start = end
                if writes >= WRITES_PER_YIELD:
                    writes = 0
                    await trio.lowlevel.checkpoint()
