"""Which subscribers get an event, and how a batch of events is cut into
runs: the hub's rules, without its task (``relay.fanout.hub``).

The index maps channel names and prefix patterns to subscribers
(``Outbox``es): ``targets`` lists every subscriber that selects a channel,
once, and is cached per channel until the subscriptions change.

A batch of published events is handed out run by run: ``cut`` finds the end
of a run of consecutive events that go to the same subscribers (one channel,
usually), at most ``RUN_EVENTS`` events or about ``RUN_BYTES``; ``fan_out``
gives each target the whole run at once (``Outbox.offer_many`` with the
run's frames joined once per transport and shared), counts the channels'
events, and moves ``head``. Under load runs grow by themselves, and the cost
per frame falls to a fraction of a syscall.

``head`` is the id of the newest event whose fan-out is done: a subscriber
that joins now receives every later event live, which is why the welcome
frame names it rather than the store's head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .envelope import Event
from .outbox import Outbox

_CACHE_LIMIT = 10_000
# A run is cut at this many events or bytes, so one write stays modest.
RUN_EVENTS = 64
RUN_BYTES = 256 * 1024


class ChannelStats:
    __slots__ = ("events", "last_id")

    def __init__(self) -> None:
        self.events = 0
        self.last_id = ""


class Index:
    def __init__(self) -> None:
        self._exact: dict[str, set[Outbox]] = {}
        self._prefix: dict[str, set[Outbox]] = {}  # "github." -> subscribers
        self._all: set[Outbox] = set()
        self._cache: dict[str, tuple[Outbox, ...]] = {}
        self.channels: dict[str, ChannelStats] = {}
        self.published = 0
        self.head = ""
        # Called once per live event that had subscribers, after the fan-out
        # (the server's metrics time delivery there, not per subscriber).
        self.on_published: Callable[[Event], None] | None = None

    def _bucket(self, pattern: str) -> set[Outbox]:
        if pattern == "*":
            return self._all
        if pattern.endswith(".*"):
            return self._prefix.setdefault(pattern[:-1], set())
        return self._exact.setdefault(pattern, set())

    def add(self, sub: Outbox, pattern: str) -> None:
        self._bucket(pattern).add(sub)
        self._cache.clear()

    def discard(self, sub: Outbox, pattern: str) -> None:
        bucket = self._bucket(pattern)
        bucket.discard(sub)
        if not bucket and pattern != "*":
            if pattern.endswith(".*"):
                del self._prefix[pattern[:-1]]
            else:
                del self._exact[pattern]
        self._cache.clear()

    def remove(self, sub: Outbox, patterns: Iterable[str]) -> None:
        for pattern in list(patterns):
            self.discard(sub, pattern)

    def targets(self, channel: str) -> tuple[Outbox, ...]:
        cached = self._cache.get(channel)
        if cached is not None:
            return cached
        found: dict[Outbox, None] = dict.fromkeys(self._exact.get(channel, ()))
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

    def cut(self, batch: list[Event], start: int) -> int:
        """The end of the run that starts at ``batch[start]``: the events
        after it with the same targets, within the run's bounds."""
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

    def fan_out(self, run: list[Event]) -> int:
        """Hand ``run`` (events with the same targets) to each target at
        once; the number of targets (each one write, at most)."""
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
