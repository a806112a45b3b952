"""The memory engine: the same log semantics as sqlite, gone with the process.

For tests and for relays that need no durability. Appends are committed at
once, so each ``append`` is its own batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import trio

from ..config.model import StoreConfig
from ..core.channels import selects
from ..core.envelope import Draft, Event, encode_envelope
from ..core.errors import StoreUnavailable
from ..core.outbox import Page
from .deliveries import MemoryDeliveryLog
from .base import Appended, SeqLog


class MemoryStore(SeqLog):
    def __init__(self, config: StoreConfig, publish: Callable[[list[Event]], None]) -> None:
        self.config = config
        self.publish = publish
        self.deliveries = MemoryDeliveryLog()
        # Lists with a moving start (deques index in O(n)): _keys parallels
        # _events so a resume finds its place by bisection.
        self._events: list[Event] = []
        self._keys: list[int] = []
        self._start = 0
        self._seq = 0
        self._pruned = 0  # newest seq dropped by retention
        self._deliveries: dict[str, tuple[Event, int]] = {}  # key -> (first event, ts ms)
        self._closed = False

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def append(self, drafts: Sequence[Draft]) -> list[Appended]:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StoreUnavailable("the store is closed")
        out: list[Appended] = []
        fresh: list[Event] = []
        for draft in drafts:
            if draft.dedupe is not None:
                seen = self._deliveries.get(draft.dedupe)
                if seen is not None and seen[1] >= draft.ts - self.config.retention_age * 1000:
                    out.append(Appended(seen[0], True))
                    continue
            self._seq += 1
            event_id = str(self._seq)
            event = Event(event_id, self._seq, draft.channel, draft.ts, encode_envelope(draft, event_id), draft.received)
            self._events.append(event)
            self._keys.append(self._seq)
            if draft.dedupe is not None:
                self._deliveries[draft.dedupe] = (event, draft.ts)
            out.append(Appended(event, False))
            fresh.append(event)
        if fresh:
            self._retain(fresh[-1].ts)
            self.publish(fresh)
        return out

    def _retain(self, now_ms: int) -> None:
        cutoff = now_ms - self.config.retention_age * 1000
        events, start = self._events, self._start
        while start < len(events) and (len(events) - start > self.config.retention or events[start].ts < cutoff):
            self._pruned = self._keys[start]
            start += 1
        if start > 1024 and start * 2 > len(events):
            del events[:start], self._keys[:start]
            start = 0
        self._start = start
        if len(self._deliveries) > 2 * self.config.retention or (
            self._deliveries and next(iter(self._deliveries.values()))[1] < cutoff
        ):
            self._deliveries = {k: v for k, v in self._deliveries.items() if v[1] >= cutoff}

    async def read_page(self, after: object, patterns: Sequence[str], limit: int) -> Page:
        await trio.lowlevel.checkpoint()
        start = bisect.bisect_right(self._keys, after, lo=self._start)  # type: ignore[call-overload]
        out: list[Event] = []
        more = False
        for i in range(start, len(self._events)):
            event = self._events[i]
            if selects(patterns, event.channel):
                if len(out) >= limit:
                    more = True
                    break
                out.append(event)
        return Page(out, self._seq, self._pruned, more=more)

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True
