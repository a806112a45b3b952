"""Fan-out: which subscribers get an event.

The hub maps channel names and prefix patterns to subscribers and hands each
published event to every subscriber that selects it, once, in publish order.

Publishing only queues: ``publish`` is called by the store with committed
events and returns at once, so a webhook's 202 never waits for the fan-out.
The hub's flusher task takes everything published since its last pass and
cuts it into runs of consecutive events that go to the same subscribers (one
channel, usually); each subscriber gets a whole run in one write of the run's
joined frames (``Subscriber.offer_many``). Under load runs grow by themselves,
and the cost per frame falls to a fraction of a syscall. The list of targets
of a channel is cached until the subscriptions change.

``head`` is the id of the newest event whose fan-out is done: a subscriber
that joins now receives every later event live, which is why the welcome
frame names it rather than the store's head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .core.envelope import Event
    from .subscriber import Subscriber

_CACHE_LIMIT = 10_000
# A run is cut at this many events or bytes, so one write stays modest.
RUN_EVENTS = 64
RUN_BYTES = 256 * 1024
# Subscriber writes between two yields of the flusher: ingest and the
# connections' own tasks get the loop at least this often.
WRITES_PER_YIELD = 2000


class ChannelStats:
    __slots__ = ("events", "last_id")

    def __init__(self) -> None:
        self.events = 0
        self.last_id = ""


class Hub:
    def __init__(self) -> None:
        self._exact: dict[str, set[Subscriber]] = {}
        self._prefix: dict[str, set[Subscriber]] = {}  # "github." -> subscribers
        self._all: set[Subscriber] = set()
        self._cache: dict[str, tuple[Subscriber, ...]] = {}
        self.channels: dict[str, ChannelStats] = {}
        self.published = 0
        self.head = ""
        self._pending: list[Event] = []
        self._wake = trio.lowlevel.ParkingLot()
        # Called once per live event that had subscribers, after the fan-out
        # (relay.metrics times delivery there, not per subscriber).
        self.on_published: Callable[[Event], None] | None = None

    def _bucket(self, pattern: str) -> set[Subscriber]:
        if pattern == "*":
            return self._all
        if pattern.endswith(".*"):
            return self._prefix.setdefault(pattern[:-1], set())
        return self._exact.setdefault(pattern, set())

    def add(self, sub: Subscriber, pattern: str) -> None:
        self._bucket(pattern).add(sub)
        self._cache.clear()

    def discard(self, sub: Subscriber, pattern: str) -> None:
        bucket = self._bucket(pattern)
        bucket.discard(sub)
        if not bucket and pattern != "*":
            if pattern.endswith(".*"):
                del self._prefix[pattern[:-1]]
            else:
                del self._exact[pattern]
        self._cache.clear()

    def remove(self, sub: Subscriber, patterns: Iterable[str]) -> None:
        for pattern in list(patterns):
            self.discard(sub, pattern)

    def targets(self, channel: str) -> tuple[Subscriber, ...]:
        cached = self._cache.get(channel)
        if cached is not None:
            return cached
        found: dict[Subscriber, None] = dict.fromkeys(self._exact.get(channel, ()))
        for prefix, subs in self._prefix.items():
            if channel.startswith(prefix):
                found.update(dict.fromkeys(subs))
        found.update(dict.fromkeys(self._all))
        result = tuple(found)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[channel] = result
        return result

    def subscriber_count(self, channel: str) -> int:
        return len(self.targets(channel))

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
                end = self._run_end(batch, start)
                writes += self._fan_out(batch[start:end])
                start = end
                if writes >= WRITES_PER_YIELD:
                    writes = 0
                    await trio.lowlevel.checkpoint()

    def _run_end(self, batch: list[Event], start: int) -> int:
        targets = self.targets(batch[start].channel)
        size = len(batch[start].envelope)
        end = start + 1
        while end < len(batch) and end - start < RUN_EVENTS and size < RUN_BYTES:
            event = batch[end]
            if self.targets(event.channel) is not targets:
                break
            size += len(event.envelope)
            end += 1
        return end

    def _fan_out(self, run: list[Event]) -> int:
        """Hand ``run`` (events with the same targets) to each target at once."""
        for event in run:
            stats = self.channels.get(event.channel)
            if stats is None:
                if len(self.channels) >= _CACHE_LIMIT:
                    # Channel names can come from payloads: keep the table bounded.
                    del self.channels[next(iter(self.channels))]
                stats = self.channels[event.channel] = ChannelStats()
            stats.events += 1
            stats.last_id = event.id
        self.published += len(run)
        targets = self.targets(run[0].channel)
        if len(run) == 1:
            event = run[0]
            for sub in targets:
                sub.offer(event)
        else:
            joined = Joined(run)
            for sub in targets:
                sub.offer_many(run, joined)
        self.head = run[-1].id
        if targets and self.on_published is not None:
            for event in run:
                self.on_published(event)
        return len(targets)


class Joined:
    """The frames of a run, joined once per transport and shared."""

    __slots__ = ("run", "_ws", "_sse")

    def __init__(self, run: list[Event]) -> None:
        self.run = run
        self._ws: bytes | None = None
        self._sse: bytes | None = None

    def frames(self, transport: str) -> bytes:
        if transport == "ws":
            if self._ws is None:
                self._ws = b"".join([event.ws_frame for event in self.run])
            return self._ws
        if self._sse is None:
            self._sse = b"".join([event.sse_chunk for event in self.run])
        return self._sse
