"""One subscriber's frames on their way to its socket, and how a resume joins
the stored log to the live stream: the rules, without I/O.

The promise these rules keep: a subscriber gets every event of its
subscriptions once, in the store's order, or a ``gap`` frame exactly where
events will not come (retention dropped them, ``drop`` mode discarded them,
or ``since`` named a position this log never had).

``Outbox`` is the queue. The hub ``offer``s each live event synchronously.
When nothing is queued, the event's shared frame goes straight to
``_send_now`` (the shell's one non-blocking write); only what the kernel did
not take waits in ``pending``, bounded by ``limit`` live events. Past it the
subscriber is a slow consumer: ``disconnect`` flags it ``overflowed`` for the
transport to close, ``drop`` discards the oldest queued events and a gap
frame takes their place. Control frames (answers, pongs, errors) are bounded
too: a client that keeps asking for answers it does not read is ``flooded``.
A writer (the shell's task) ``take``s everything pending for one write and
reports back with ``taken`` or ``broken``; after a write that may have been
cut short nothing more is ever written, since the next frame would land
inside the half-sent one. ``finish`` queues the connection's last frame (a
close frame, the end of a stream): nothing follows it.

A resume is a ``Replay``. While it reads the store page by page, live events
are held; when it has read everything up to the log's head, the held events
are released minus those it already sent, and a *floor* keeps dropping the
ones still on their way through the hub (stored before the read, fanned out
after it). If the hold fills up, it is emptied and the replay reads again:
every event the hold let go was stored before that next read.

The shell's only duties: call these in order, and never write around them.
Nothing here reads a clock, waits, or touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .envelope import Event
from .channels import matches

# Control frames a connection may have waiting before it counts as flooding
# (a client that sends pings or bad messages and never reads the answers).
CONTROL_LIMIT = 64
# Times a resume's hold may overflow and be re-read before the live stream is
# taken to outrun the replay: then the slow-consumer policy applies.
MAX_HOLD_CLEARS = 4

# A subscription and the key after which it delivers events.
Start = tuple[str, Any]
# After a replay: (the key it read up to, its patterns, the connection's other
# subscriptions then). A live event at or below the key that one of them
# wants was sent by the replay already, or was the client's before it.
Floor = tuple[Any, tuple[str, ...], list[Start]]
# An event frame waiting in ``pending``: (id, droppable, gap after or None).
Tag = tuple[str, bool, "str | None"]


def slow_key(policy: str) -> str:
    """The key under which a subscriber counts its slow-consumer episodes in
    the stats it shares with the others (the server's metrics read them as
    relay_slow_consumers_total{policy})."""
    return "slow." + policy


def reaches(event: Event, subscriptions: Sequence[Start]) -> bool:
    """Does one of ``subscriptions`` deliver ``event``?"""
    return any(event.key > start and matches(pattern, event.channel) for pattern, start in subscriptions)


@dataclass(frozen=True, slots=True)
class Page:
    """One read of the store for a resume, as of one moment of the log.

    ``events``: stored events after the read's key on its patterns, in order.
    ``head``: the key of the newest event in the log at that moment.
    ``pruned``: the key of the newest event retention had dropped (or the
    start of the log).
    ``more``: there may be more events after the last one (read again after it).
    """

    events: list[Event]
    head: Any
    pruned: Any
    more: bool = False


class Outbox:
    """A subscriber's queue and resume state. The shell subclasses it and
    provides ``_send_now``, ``_kick`` and ``_trouble``."""

    __slots__ = (
        "transport", "frame", "gap", "limit", "policy", "control_limit", "stats", "direct", "patterns", "start",
        "covered", "pending", "pending_ids", "queued", "controls", "delivered_id", "last_id", "gap_after", "frames",
        "dropped", "sending", "closed", "sealed", "ended", "overflowed", "flooded", "hold", "hold_cleared",
        "held_from", "floors",
    )

    def __init__(self, transport: str, frame: Callable[[Event], bytes], gap: Callable[[str, str], bytes], limit: int,
                 policy: str = "disconnect", stats: dict[str, int] | None = None,
                 control_limit: int = CONTROL_LIMIT) -> None:
        self.transport = transport
        self.frame = frame
        self.gap = gap
        self.limit = limit
        self.policy = policy
        self.control_limit = control_limit
        self.stats = stats
        # True when ``_send_now`` can write at once (the shell's socket allows it).
        self.direct = False
        self.patterns: set[str] = set()
        # Where each subscription's delivery starts: one slot for the first
        # subscriptions, a dict once others come with other starts.
        self.start: Any = None
        self.covered: dict[str, Any] | None = None
        self.pending: list[bytes | memoryview] = []
        # Parallel to ``pending``: None for a control frame; for an event
        # frame (event id, droppable, the "after" of the gap frame written
        # just before it in the same bytes, or None). A gap always travels
        # with the event it names, so no write can split them.
        self.pending_ids: list[Tag | None] = []
        self.queued = 0  # droppable (live) event frames in ``pending``
        self.controls = 0  # control frames in ``pending``
        self.delivered_id = ""  # last event handed to the kernel (or to the writer)
        self.last_id: str | None = None  # last event written or queued
        self.gap_after: str | None = None  # a gap to send before the next event
        self.frames = 0
        self.dropped = 0
        self.sending = False  # a writer's write is in progress
        self.closed = False  # nothing may be written any more: peer gone, or a write cut short
        self.sealed = False  # the last frame is queued: nothing may follow it
        self.ended = False  # no more event frames (closed, sealed, overflowed, or a failed resume)
        self.overflowed = False  # the queue overflowed under "disconnect"
        self.flooded = False  # too many control frames waiting
        self.hold: list[Event] | None = None  # live events held during a resume
        self.hold_cleared = False
        # The hub's head (key, id) when the hold began: every later event the
        # connection wants is the replay's to send.
        self.held_from: tuple[Any, str] | None = None
        self.floors: list[Floor] | None = None

    # -- what the shell provides --------------------------------------------

    def _send_now(self, data: bytes | memoryview) -> int | None:
        """One non-blocking write: bytes taken, or None when the peer is gone
        (after calling ``lost``). Called only when nothing is pending."""
        return 0

    def _kick(self) -> None:
        """Something is pending: make sure a writer will send it."""

    def _trouble(self) -> None:
        """The owner must act: overflowed, flooded, or closed."""

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, index: Any, patterns: Sequence[str], resuming: bool, start: Any,
                  head: tuple[Any, str] | None = None) -> None:
        """Register ``patterns`` with the hub (``index``: ``add``/``discard``).
        ``start`` is the key after which every event on them reaches this
        subscriber (``since``, or the hub's head for a live-only
        subscription). When ``resuming``, live events are held from this
        moment until the replay ends; ``head`` is the hub's head now, as
        (key, id)."""
        new = [p for p in patterns if p not in self.patterns]
        if not self.patterns and self.covered is None:
            self.start = start
        else:
            if self.covered is None:
                self.covered = {}
            for pattern in new:
                self.covered[pattern] = start
        for pattern in new:
            index.add(self, pattern)
            self.patterns.add(pattern)
        if resuming and self.hold is None:
            self.hold = []
            self.hold_cleared = False
            self.held_from = head

    def unsubscribe(self, index: Any, pattern: str) -> None:
        if pattern in self.patterns:
            self.patterns.discard(pattern)
            index.discard(self, pattern)
            if self.covered is not None:
                self.covered.pop(pattern, None)

    def covered_from(self, pattern: str) -> Any:
        if self.covered is not None and pattern in self.covered:
            return self.covered[pattern]
        return self.start

    def restart(self, patterns: Sequence[str], start: Any) -> None:
        """``patterns`` deliver from ``start`` after all (a resume whose
        ``since`` this log never had sends the log from its beginning)."""
        for pattern in patterns:
            if self.covered is not None and pattern in self.covered:
                self.covered[pattern] = start
            elif pattern in self.patterns:
                self.start = start

    def others(self, patterns: Sequence[str]) -> list[Start]:
        """The connection's subscriptions besides ``patterns``, with their starts."""
        return [(p, self.covered_from(p)) for p in self.patterns if p not in patterns]

    # -- called by the hub ----------------------------------------------------

    def offer(self, event: Event) -> None:
        if self.ended:
            return
        if self.floors is not None and self._replayed(event):
            return
        hold = self.hold
        if hold is not None:
            if len(hold) >= self.limit:
                # The replay is slower than the live stream: let the held
                # events go; they are stored, and the replay reads again.
                hold.clear()
                self.hold_cleared = True
            hold.append(event)
            return
        self._emit(event, counted=True)

    def offer_many(self, events: Sequence[Event], joined: Any) -> None:
        """A run of events for this subscriber: one write of the shared,
        joined frames (``joined.frames(transport)``) when nothing is queued;
        the per-event path otherwise."""
        if self.ended:
            return
        if (self.hold is not None or self.floors is not None or self.gap_after is not None or self.pending
                or self.sending or not self.direct):
            for event in events:
                self.offer(event)
            return
        data = joined.frames(self.transport)
        sent = self._send_now(data)
        if sent is None:
            return
        if sent == len(data):  # the usual case: all of it in the kernel
            count = len(events)
            self.frames += count
            if self.stats is not None:
                self.stats[self.transport] += count
            self.delivered_id = self.last_id = events[-1].id
            return
        done = 0  # events wholly in the kernel
        offset = 0
        partial: memoryview | None = None
        for event in events:
            end = offset + len(self.frame(event))
            if end > sent:
                if sent > offset:
                    partial = memoryview(self.frame(event))[sent - offset:]
                break
            done += 1
            offset = end
        written = done + (partial is not None)
        self.frames += written
        if self.stats is not None:
            self.stats[self.transport] += written
        if done:
            self.delivered_id = self.last_id = events[done - 1].id
        if partial is not None:
            # Partly on the wire: the rest must follow, it cannot be dropped.
            event = events[done]
            self.last_id = event.id
            self.pending.append(partial)
            self.pending_ids.append((event.id, False, None))
            self._kick()
        for event in events[written:]:
            self._emit(event, counted=True)

    def floored(self, event: Event) -> bool:
        """Did a replay whose floor is still up send ``event`` (or find it
        the client's already)?"""
        return self.floors is not None and any(
            event.key <= floor_key and (any(matches(p, event.channel) for p in patterns) or reaches(event, others))
            for floor_key, patterns, others in self.floors)

    def _replayed(self, event: Event) -> bool:
        """Was ``event`` sent by a replay already? Floors that live events
        have passed are forgotten (the hub offers in log order)."""
        floors = self.floors
        assert floors is not None
        key = event.key
        replayed = False
        passed = False
        for floor_key, patterns, others in floors:
            if key > floor_key:
                passed = True
            elif not replayed and (any(matches(p, event.channel) for p in patterns) or reaches(event, others)):
                replayed = True
        if passed:
            kept = [floor for floor in floors if key <= floor[0]]
            self.floors = kept or None
        return replayed

    # -- the send path ----------------------------------------------------------

    def _emit(self, event: Event, counted: bool) -> None:
        if counted and self.queued >= self.limit:
            self._overflow()
            if self.ended:
                return
        data = self.frame(event)
        gap_after = self.gap_after
        if gap_after is not None:
            self.gap_after = None
            data = self.gap(gap_after, event.id) + data
        self.last_id = event.id
        self.frames += 1
        if self.stats is not None:
            self.stats[self.transport] += 1
        self._queue_or_send(data, (event.id, counted, gap_after))

    def write(self, data: bytes) -> None:
        """A control frame (welcome, an answer, a ping or pong, a heartbeat),
        after everything already queued, without waiting."""
        if self.closed or self.sealed or self.flooded:
            return
        self._queue_or_send(data, None)

    def finish(self, data: bytes) -> None:
        """Queue the connection's last frame; nothing is written after it."""
        if self.closed or self.sealed:
            return
        self.ended = self.sealed = True
        self.hold = None
        self._queue_or_send(data, None)

    def _queue_or_send(self, data: bytes | memoryview, tag: Tag | None) -> None:
        if self.closed:
            return
        if not self.pending and not self.sending and self.direct:
            sent = self._send_now(data)
            if sent is None:
                return
            if sent == len(data):
                if tag is not None:
                    self.delivered_id = tag[0]
                return
            if sent:
                # Partly on the wire: the rest must follow, it cannot be dropped.
                data = memoryview(data)[sent:]
                if tag is not None:
                    tag = (tag[0], False, tag[2])
        self.pending.append(data)
        self.pending_ids.append(tag)
        if tag is None:
            self.controls += 1
            if self.controls > self.control_limit and not self.flooded and not self.sealed:
                self.flooded = True
                self.ended = True
                self._trouble()
        elif tag[1]:
            self.queued += 1
        self._kick()

    def _overflow(self, hold: bool = False) -> None:
        if self.policy == "drop" and not hold:
            self._drop_oldest()
        elif not self.overflowed:
            self.overflowed = True
            self.ended = True
            self._trouble()
        else:
            return
        if self.stats is not None:
            key = slow_key(self.policy)
            self.stats[key] = self.stats.get(key, 0) + 1

    def _drop_oldest(self) -> None:
        """Discard the oldest half of the queued live events; a gap stands
        before the next event kept, naming the last event before the run
        (a gap that named a dropped event is folded into it)."""
        to_drop = max(1, self.queued // 2)
        dropped = 0
        gap_from: str | None = None  # a run was dropped after this id
        last = self.delivered_id or ""
        pending: list[bytes | memoryview] = []
        ids: list[Tag | None] = []
        for data, tag in zip(self.pending, self.pending_ids):
            if tag is None:
                pending.append(data)
                ids.append(None)
                continue
            ident, droppable, gap_after = tag
            if droppable and dropped < to_drop:
                dropped += 1
                if gap_from is None:
                    gap_from = gap_after if gap_after is not None else last
                continue
            if gap_from is not None:
                # (Only the first item can be half written, and nothing
                # dropped comes before it: ``data`` is whole here.)
                if gap_after is not None:
                    data = data[len(self.gap(gap_after, ident)):]
                data = self.gap(gap_from, ident) + data
                tag = (ident, droppable, gap_from)
                gap_from = None
            pending.append(data)
            ids.append(tag)
            last = ident
        self.pending, self.pending_ids = pending, ids
        self.queued -= dropped
        self.dropped += dropped
        if gap_from is not None:
            self.gap_after = gap_from

    def truncate(self) -> None:
        """Forget queued frames, but finish one that is half on the wire."""
        keep = [data for data in self.pending[:1] if isinstance(data, memoryview)]
        self.pending = keep
        self.pending_ids = [None] * len(keep)
        self.queued = 0
        self.controls = len(keep)

    def lost(self) -> None:
        """The peer is gone: nothing more is written."""
        if self.closed:
            return
        self.closed = self.ended = True
        self.hold = None
        self.pending.clear()
        self.pending_ids.clear()
        self.queued = self.controls = 0
        self._trouble()

    # -- the writer's side --------------------------------------------------------

    def take(self) -> bytes | memoryview:
        """Everything pending, for one write; ``taken`` or ``broken`` follows."""
        batch, self.pending = self.pending, []
        ids, self.pending_ids = self.pending_ids, []
        self.queued = self.controls = 0
        for tag in reversed(ids):
            if tag is not None:
                self.delivered_id = tag[0]
                break
        self.sending = True
        return batch[0] if len(batch) == 1 else b"".join(batch)

    def taken(self) -> None:
        """The write of ``take`` went through whole."""
        self.sending = False

    def broken(self) -> None:
        """A write failed or was cut short: the stream may hold part of a
        frame, so nothing may ever follow."""
        self.sending = False
        self.lost()

    # -- resume -------------------------------------------------------------------

    def abort_replay(self) -> None:
        """The store failed during a resume: no more events (the held ones
        would skip what the replay did not send); the owner closes."""
        self.hold = None
        self.ended = True

    def release(self, floor: Floor, gap_after: str | None = None) -> None:
        """End a resume: remember its floor, then send the held events it
        did not send itself."""
        held, self.hold = self.hold or [], None
        self.hold_cleared = False
        self.floors = [*self.floors, floor] if self.floors is not None else [floor]
        if gap_after is not None and self.gap_after is None:
            self.gap_after = gap_after
        for event in held:
            if self.ended:
                return
            if self.floors is not None and self._replayed(event):
                continue
            self._emit(event, counted=True)


class Replay:
    """One resume of ``patterns`` after ``since``, page by page.

    The shell loops: read the store after ``after`` on ``reading``, hand the
    page to ``take``, and (while not ``done``) let the subscriber drain
    before the next read. ``start`` is the key of the log's beginning
    (``parse_id("")``).

    Besides the stored events of ``patterns`` after ``since``, the replay
    sends the events of the connection's other subscriptions that came after
    the hold began (they were held, and a full hold lets them go): so the
    events it sends are in log order, the held ones follow, and a full hold
    can always be read again.
    """

    __slots__ = ("outbox", "patterns", "others", "reading", "since", "since_key", "held_from", "after", "cursor_id",
                 "start", "first", "clears", "done")

    def __init__(self, outbox: Outbox, patterns: Sequence[str], since: str, since_key: Any, start: Any) -> None:
        self.outbox = outbox
        self.patterns = tuple(patterns)
        # The connection's other subscriptions, with where each delivers from.
        self.others = outbox.others(patterns)
        self.reading = self.patterns + tuple(p for p, _ in self.others if p not in self.patterns)
        if outbox.hold is None:
            outbox.hold = []
            outbox.hold_cleared = False
        held_key, held_id = outbox.held_from if outbox.held_from is not None else (since_key, since)
        self.since, self.since_key = since, since_key
        self.held_from = held_key
        # Where reading starts, and the last id the client got from there
        # (a gap's "after").
        self.after, self.cursor_id = since_key, since
        if self.others and held_key < since_key:
            self.after, self.cursor_id = held_key, held_id
        self.start = start
        self.first = True
        self.clears = 0
        self.done = False

    def _sends(self, event: Event) -> bool:
        if self.others and reaches(event, self.others):
            # The others delivered it live (or an earlier replay sent it),
            # unless it came after the hold began.
            return event.key > self.held_from and not self.outbox.floored(event)
        return event.key > self.since_key and any(matches(p, event.channel) for p in self.patterns)

    def take(self, page: Page) -> None:
        outbox = self.outbox
        if outbox.ended:
            self.done = True
            return
        if self.first:
            self.first = False
            if self.since_key > page.head:
                # ``since`` is ahead of everything this log holds (a memory
                # relay restarted, an id from another cluster): every stored
                # event is news to this client. Say so, then send them all.
                outbox.gap_after = self.since
                outbox.restart(self.patterns, self.start)
                self.since_key = self.after = self.start
                return
        if page.pruned > self.after and outbox.gap_after is None:
            outbox.gap_after = self.cursor_id
        for event in page.events:
            if outbox.ended:
                self.done = True
                return
            if self._sends(event):
                outbox._emit(event, counted=False)
                self.cursor_id = event.id
        if page.events:
            self.after = page.events[-1].key
        cleared, outbox.hold_cleared = outbox.hold_cleared, False
        if cleared:
            self.clears += 1
            if self.clears > MAX_HOLD_CLEARS:
                # The live stream outruns this resume: a slow consumer.
                self.done = True
                if outbox.policy == "drop":
                    # Go live from here; a gap stands for what was let go.
                    outbox.release((self.after, self.patterns, self.others), gap_after=self.cursor_id)
                else:
                    outbox.hold = None
                    outbox._overflow(hold=True)
                return
            return  # read again: what the hold let go is stored
        if page.more:
            return
        # Everything up to the head was read.
        self.done = True
        floor_key = page.head if page.head > self.after else self.after
        outbox.release((floor_key, self.patterns, self.others))
