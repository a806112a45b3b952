"""How many connections the relay holds, and who may hold them: the rules,
as plain counting over numbers the shell (``relay.net.listener``) passes in.

``server.max_connections`` bounds every connection the relay holds at once:
webhook senders, probes and scrapers, and subscribers. It is shared so that
neither side can starve the other:

- Subscribers (upgraded WebSocket and SSE connections) may hold at most
  ``max_connections`` minus a reserve for plain HTTP (``http_reserve``: a
  tenth, at least 1 and at most 1000). The next subscriber gets 503 with
  ``Retry-After`` before its upgrade, and a webhook still finds a slot.
- Plain HTTP connections may use every slot the subscribers do not hold.
  When all are taken, the connection that has waited longest for a request
  (an idle keep-alive one, one that has not finished its request head, or a
  TLS handshake) is closed to make room for the new one, as nginx reuses
  its idle connections once ``worker_connections`` run out. Such a
  connection has nothing in flight, and an honest client reconnects; an
  attacker holding hundreds of idle sockets only keeps his oldest ones
  closing. A connection with a request in flight is never closed for room:
  when every slot has one, new connections wait in the listen backlog (as at
  h2o's ``max-connections``) until one ends, which the request timeouts
  bound, rather than be accepted and dropped.

The file limit: every connection is a descriptor, so ``max_connections``
only holds if ``RLIMIT_NOFILE`` leaves room for it and for what the relay
needs besides (``RESERVED_FILES``). At start the soft limit is raised to the
hard one (what Go's runtime and many servers do); when that is still too
low, the relay holds as many connections as fit and says so, rather than
meet ``EMFILE`` at accept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

# Descriptors the relay uses besides its connections: stdio, the event
# loop's own (epoll, wake-up socket pairs), the listeners, the store (sqlite:
# the database twice, its WAL and shared memory; redis: its pooled
# connections), and the odd file opened at runtime. About 15 were counted
# with sqlite; the rest is room to spare.
RESERVED_FILES = 64

# Fewest connections the relay tries to hold, whatever the file limit says:
# below this it is not worth running, and EMFILE handling takes over.
MIN_CONNECTIONS = 2

# At most one line per this many seconds for a repeated warning (accept
# failures, idle connections closed for room), with a count of the rest.
LOG_EVERY_S = 10.0

# Back-off after an accept that failed for want of resources, doubling from
# the first to the last while it keeps failing; any connection that closes
# ends the wait early (its descriptor is what accept needed).
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


def http_reserve(max_connections: int) -> int:
    """Slots subscribers may never take: a tenth, at least 1, at most 1000.

    Webhooks and probes are short requests; a thousand at once is far more
    than any sender fleet keeps open, and a tenth of a small relay still
    leaves it most of its slots for subscribers."""
    return min(1000, max(1, max_connections // 10))


class Connections:
    """The counts behind the shares: every open connection, and how many of
    them are subscribers. A connection is counted from accept to close; its
    upgrade moves it from HTTP to subscriber without a second slot."""

    __slots__ = ("limit", "subscriber_limit", "open", "subscribers")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the connection limit must be at least 1, got {limit!r}")
        self.limit = limit
        self.subscriber_limit = limit - http_reserve(limit)
        self.open = 0
        self.subscribers = 0

    @property
    def http(self) -> int:
        return self.open - self.subscribers

    def room(self) -> bool:
        """May another connection be accepted now?"""
        return self.open < self.limit

    def may_subscribe(self) -> bool:
        """May an open HTTP connection become a subscriber now?"""
        return self.subscribers < self.subscriber_limit

    def opened(self) -> None:
        self.open += 1

    def subscribed(self) -> None:
        self.subscribers += 1

    def closed(self, subscriber: bool = False) -> None:
        self.open -= 1
        if subscriber:
            self.subscribers -= 1


T = TypeVar("T", bound=Hashable)


class Waiting(Generic[T]):
    """Connections waiting for a request, oldest first (an insertion-ordered
    set): the ones that may be closed to make room, and the ones shutdown
    ends at once. ``on_add`` is called whenever one joins."""

    __slots__ = ("_items", "on_add")

    def __init__(self, on_add: Callable[[], None] | None = None) -> None:
        self._items: dict[T, None] = {}
        self.on_add = on_add

    def add(self, item: T) -> None:
        self._items.pop(item, None)  # joining again makes it the newest
        self._items[item] = None
        if self.on_add is not None:
            self.on_add()

    def discard(self, item: T) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def oldest(self, skip: Callable[[T], bool] = lambda item: False) -> T | None:
        """The one that has waited longest, passing over those ``skip`` says
        (already being closed)."""
        for item in self._items:
            if not skip(item):
                return item
        return None


class Throttle:
    """At most one line per ``every`` seconds for one kind of warning.

    ``admit(now)`` says whether a line may be written now; when it may, it
    also says how many were held back since the last one, so the line can
    carry the count instead of the flood."""

    __slots__ = ("every", "_last", "_held")

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self._last = -math.inf
        self._held = 0

    def admit(self, now: float) -> int | None:
        """None: stay quiet (counted). Else the number held back before it."""
        if now - self._last < self.every:
            self._held += 1
            return None
        self._last = now
        held, self._held = self._held, 0
        return held


class Backoff:
    """Seconds to wait after each consecutive failure, doubling up to a cap;
    ``reset`` after a success."""

    __slots__ = ("first", "cap", "_next")

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass(frozen=True, slots=True)
class FilePlan:
    soft: int  # the soft RLIMIT_NOFILE to set (the current one when it cannot rise)
    connections: int  # connections the relay holds at most
    warning: str | None  # for stderr, when max_connections does not fit


def plan_files(max_connections: int, soft: int, hard: int | None, reserved: int = RESERVED_FILES) -> FilePlan:
    """The file limit to ask for and the connections that fit in it.

    ``hard`` is None when unlimited: the soft limit then rises as far as
    ``max_connections`` needs (the caller falls back to the old soft limit
    if the system refuses it)."""
    needed = max_connections + reserved
    target = max(soft, needed if hard is None else hard)
    if needed <= target:
        return FilePlan(target, max_connections, None)
    fits = max(MIN_CONNECTIONS, target - reserved)
    warning = (f"server.max_connections = {max_connections} does not fit the file limit of {target} open files "
               f"({reserved} are kept for the relay itself): holding at most {fits} connections; raise the "
               f"limit (ulimit -n, systemd LimitNOFILE=) to at least {needed}")
    return FilePlan(target, fits, warning)
