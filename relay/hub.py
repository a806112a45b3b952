"""Fan-out: which subscribers get an event.

The hub maps channel names and prefix patterns to subscribers and hands each
published event to every subscriber that selects it, once, in publish order.
Publishing never waits: ``Subscriber.offer`` is synchronous and bounded.
The list of targets of a channel is cached until the subscriptions change, so
a broadcast to a thousand subscribers is one dict lookup and a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .envelope import Event
    from .subscriber import Subscriber

_CACHE_LIMIT = 10_000


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
        for event in events:
            stats = self.channels.get(event.channel)
            if stats is None:
                if len(self.channels) >= _CACHE_LIMIT:
                    # Channel names can come from payloads: keep the table bounded.
                    del self.channels[next(iter(self.channels))]
                stats = self.channels[event.channel] = ChannelStats()
            stats.events += 1
            stats.last_id = event.id
            self.published += 1
            targets = self.targets(event.channel)
            for sub in targets:
                sub.offer(event)
            if targets and self.on_published is not None:
                self.on_published(event)
