"""One subscriber's queue and the send path every transport shares.

Built for broadcast. The hub calls ``offer`` for each event, synchronously.
When nothing is queued for this subscriber, the event's shared frame bytes
are written at once with one non-blocking ``send`` on a plain TCP socket, or
encrypted and written the same way on a TLS one (``TlsStream.try_send``) - no
queue, no task switch. Only when the kernel's buffer is full do frames wait
in ``pending``; the subscriber's writer task then drains everything pending
in one write. (A TLS write the kernel took only part of leaves the rest of
its ciphertext in the stream: an empty frame in ``pending`` makes the writer
flush it, and keeps later frames behind it.) The queue is bounded by
``limit`` events: past it the subscriber is a slow consumer and the
transport closes it (policy ``disconnect``) or its oldest queued events are
dropped and a ``gap`` stands in for them (policy ``drop``).

While a resume replays stored events, live events are held back and released
after the replay, minus those the replay already sent: no gap, no duplicate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from .envelope import Event
from .route import matches
from .sockets import raw_fd, send_now
from .tls import TlsStream

if TYPE_CHECKING:
    from .hub import Hub, Joined
    from .store import Store

# What a write to a peer that went away fails with.

# Seconds an on-demand writer waits for more before its task ends.
WRITER_LINGER = 5.0

# Stored events read per query while replaying.
_REPLAY_PAGE = 500


def _reaches(event: Event, subscriptions: list[tuple[str, object]]) -> bool:
    """Does one of ``subscriptions`` (pattern, start key) deliver ``event``?"""
    return any(event.key > start and matches(pattern, event.channel)  # type: ignore[operator]
               for pattern, start in subscriptions)


class Subscriber:
    # Slots: ten thousand of these stay small.
    __slots__ = (
        "stream", "transport", "frame", "gap", "limit", "policy", "fd", "patterns", "pending", "pending_ids",
        "queued", "delivered_id", "dropped", "sending", "closed", "hold", "floor", "gap_after", "last_id",
        "frames", "stats", "overflowed", "on_trouble", "_wake", "_drained", "_spawn", "_writer_running",
        "start", "covered", "tls",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        transport: str,
        frame: Callable[[Event], bytes],
        gap: Callable[[str, str], bytes],
        limit: int,
        policy: str = "disconnect",
        stats: dict[str, int] | None = None,
        on_trouble: Callable[[], None] | None = None,
        spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.frame = frame
        self.gap = gap
        self.limit = limit
        self.policy = policy
        self.fd = raw_fd(stream)
        # A TLS stream that can encrypt and write without a task switch.
        self.tls = stream if isinstance(stream, TlsStream) else None
        self.patterns: set[str] = set()
        self.pending: list[bytes | memoryview] = []
        # Parallel to ``pending``: (event id, droppable) for event frames,
        # (after id, None) for gap frames, None for other control frames.
        self.pending_ids: list[tuple[str, bool | None] | None] = []
        self.queued = 0  # event frames in ``pending``
        self.delivered_id = ""  # last event handed to the kernel
        self.dropped = 0
        self.sending = False
        self.closed = False
        self.hold: list[Event] | None = None
        # After a replay: (last key replayed, its patterns). A live event at
        # or below it on those patterns was sent by the replay already (it
        # was stored before its fan-out reached us). Cleared by the first
        # live event above it: the hub publishes in log order.
        self.floor: tuple[object, Sequence[str], list[tuple[str, object]]] | None = None
        # Where each subscription's delivery starts (see ``subscribe``).
        self.start: object = None
        self.covered: dict[str, object] | None = None
        self.gap_after: str | None = None
        self.last_id: str | None = None
        self.frames = 0
        self.stats = stats
        self.overflowed = False  # queue overflowed under "disconnect"
        # Called when the transport must act: overflow under "disconnect", or
        # the peer can no longer be written to (``closed``). A callback rather
        # than events a task waits on: idle connections stay small.
        self.on_trouble = on_trouble
        # Parking lots for the writer and for ``drained``, made on first use.
        self._wake: trio.lowlevel.ParkingLot | None = None
        self._drained: trio.lowlevel.ParkingLot | None = None
        # How to start a writer task when frames back up (the session's
        # nursery); without it, the owner runs ``run_writer`` itself.
        self._spawn = spawn
        self._writer_running = False

    # -- subscriptions --------------------------------------------------

    def subscribe(self, hub: Hub, patterns: Sequence[str], resuming: bool, start: object) -> None:
        """Register ``patterns`` with the hub. ``start`` is the key after
        which every event on them reaches this subscriber (``since``, or the
        hub's head for a live-only subscription). When ``resuming``, live
        events are held from this moment until ``replay`` has run."""
        new = [p for p in patterns if p not in self.patterns]
        if not self.patterns and self.covered is None:
            self.start = start  # the first subscriptions: one slot, no dict
        else:
            if self.covered is None:
                self.covered = {}
            for pattern in new:
                self.covered[pattern] = start
        for pattern in new:
            hub.add(self, pattern)
            self.patterns.add(pattern)
        if resuming and self.hold is None:
            self.hold = []

    def unsubscribe(self, hub: Hub, pattern: str) -> None:
        if pattern in self.patterns:
            self.patterns.discard(pattern)
            hub.discard(self, pattern)
            if self.covered is not None:
                self.covered.pop(pattern, None)

    def _covered_from(self, pattern: str) -> object:
        if self.covered is not None and pattern in self.covered:
            return self.covered[pattern]
        return self.start

    def detach(self, hub: Hub) -> None:
        hub.remove(self, self.patterns)
        self.closed = True

    # -- called by the hub ----------------------------------------------

    def offer(self, event: Event) -> None:
        if self.closed or self.overflowed:
            return
        if self.floor is not None and self._replayed(event):
            return
        hold = self.hold
        if hold is not None:
            if len(hold) >= self.limit:
                self._overflow()
                return
            hold.append(event)
            return
        self._emit(event, counted=True)

    def offer_many(self, events: Sequence[Event], joined: Joined) -> None:
        """A run of events for this subscriber: one write of the shared,
        joined frames when nothing is queued; the per-event path otherwise."""
        if self.closed or self.overflowed:
            return
        if (self.hold is not None or self.floor is not None or self.gap_after is not None or self.pending
                or self.sending or (self.fd is None and self.tls is None)):
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
                    partial = memoryview(self.frame(event))[sent - offset :]
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
            self.pending_ids.append((event.id, False))
            self._kick()
        for event in events[written:]:
            self._emit(event, counted=True)

    def _replayed(self, event: Event) -> bool:
        """Was ``event`` already sent by the last replay? (Clears the floor
        once live events have passed it.)"""
        floor = self.floor
        assert floor is not None
        if event.key > floor[0]:  # type: ignore[operator]
            self.floor = None
            return False
        return any(matches(p, event.channel) for p in floor[1]) and not _reaches(event, floor[2])

    # -- the send path ---------------------------------------------------

    def _emit(self, event: Event, counted: bool) -> None:
        if counted and self.queued >= self.limit:
            self._overflow()
            if self.overflowed:
                return
        if self.gap_after is not None:
            after, self.gap_after = self.gap_after, None
            self.write(self.gap(after, event.id), after, None)
        self.last_id = event.id
        self.frames += 1
        if self.stats is not None:
            self.stats[self.transport] += 1
        self.write(self.frame(event), event.id, counted)

    def write(self, data: bytes, event_id: str | None = None, counted: bool | None = False) -> None:
        """Send ``data`` after everything already queued, without waiting.

        ``event_id`` names the event a frame carries; ``counted`` frames (live
        events) count against the limit and may be dropped.
        """
        if self.closed:
            return
        if not self.pending and not self.sending and (self.fd is not None or self.tls is not None):
            sent = self._send_now(data)
            if sent is None:
                return
            if sent == len(data):
                if event_id is not None:
                    self.delivered_id = event_id
                return
            if sent:
                # Partly on the wire: the rest must follow, it cannot be dropped.
                data = memoryview(data)[sent:]
                counted = False
        if counted:
            self.queued += 1
        self.pending.append(data)
        self.pending_ids.append((event_id, counted) if event_id is not None else None)
        # (a gap frame is written with counted=None: tagged, never counted)
        self._kick()

    def _send_now(self, data: bytes) -> int | None:
        """One non-blocking send on the socket: bytes taken by the kernel, or
        None when the peer is gone (the subscriber is then ``lost``). Over
        TLS all of ``data`` or none is taken."""
        tls = self.tls
        try:
            if tls is None:
                assert self.fd is not None
                return send_now(self.fd, data)
            sent = tls.try_send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.lost()
            return None
        if sent and tls.backed_up:
            # Encrypted, but the kernel took only part of the ciphertext:
            # the writer's send_all (of nothing) flushes the rest.
            self.pending.append(b"")
            self.pending_ids.append(None)
            self._kick()
        return sent

    def _overflow(self) -> None:
        if self.policy == "drop" and self.hold is None:
            self._drop_oldest()
        elif not self.overflowed:
            self.overflowed = True
            if self.on_trouble is not None:
                self.on_trouble()
        else:
            return
        if self.stats is not None:
            # Read by relay.metrics as relay_slow_consumers_total{policy}.
            key = "slow." + self.policy
            self.stats[key] = self.stats.get(key, 0) + 1

    def _drop_oldest(self) -> None:
        """Discard the oldest half of the queued events; one gap replaces them.

        A gap frame still queued in front of dropped events is folded into the
        new gap, so the client never sees a gap naming an event that will not
        come."""
        to_drop = max(1, self.queued // 2)
        after = self.delivered_id or ""
        dropped = 0
        folded = False
        gap_written = False
        pending: list[bytes | memoryview] = []
        ids: list[tuple[str, bool | None] | None] = []
        for data, tag in zip(self.pending, self.pending_ids):
            if tag is not None:
                ident, kind = tag
                dropping = dropped < to_drop
                if kind is None:  # a gap frame
                    if dropping and not gap_written:
                        after, folded = ident, True
                        continue
                elif kind and dropping:
                    dropped += 1
                    continue
                else:
                    if (dropped or folded) and not gap_written:
                        pending.append(self.gap(after, ident))
                        ids.append((after, None))
                        gap_written = True
                    if not (dropped or folded):
                        after = ident
            pending.append(data)
            ids.append(tag)
        self.pending, self.pending_ids = pending, ids
        self.queued -= dropped
        self.dropped += dropped
        if (dropped or folded) and not gap_written:
            self.gap_after = after

    def truncate(self) -> None:
        """Forget queued frames, but finish one that is half on the wire."""
        keep = [data for data in self.pending[:1] if isinstance(data, memoryview)]
        self.pending = keep
        self.pending_ids = [None] * len(keep)
        self.queued = 0

    def lost(self) -> None:
        self.closed = True
        self.pending.clear()
        self.pending_ids.clear()
        self.queued = 0
        if self._wake is not None:
            self._wake.unpark_all()
        if self._drained is not None:
            self._drained.unpark_all()
        if self.on_trouble is not None:
            self.on_trouble()

    def _wake_lot(self) -> trio.lowlevel.ParkingLot:
        if self._wake is None:
            self._wake = trio.lowlevel.ParkingLot()
        return self._wake

    def _kick(self) -> None:
        """Something is pending: make sure a writer will send it."""
        if self._spawn is None or self._writer_running:
            if self._wake is not None:
                self._wake.unpark()
            return
        # Started on demand: most subscribers never back up, and an idle
        # connection with no writer task is a few KB smaller.
        self._writer_running = True
        self._spawn(self._write_episode)

    async def _write_episode(self) -> None:
        """Send until nothing is pending and nothing came for a moment."""
        try:
            while not self.closed:
                if not self.pending:
                    # A subscriber that backed up once tends to again soon:
                    # linger rather than start a task per backlog.
                    with trio.move_on_after(WRITER_LINGER):
                        await self._wake_lot().park()
                    if not self.pending:
                        return
                    continue
                await self._send_pending()
        finally:
            self._writer_running = False

    async def run_writer(self) -> None:
        """A writer for the subscriber's whole life (when nothing spawns one)."""
        while not self.closed:
            if not self.pending:
                await self._wake_lot().park()
                continue
            await self._send_pending()

    async def _send_pending(self) -> None:
        """Drain ``pending`` into the stream, many frames in one write."""
        batch, self.pending = self.pending, []
        ids, self.pending_ids = self.pending_ids, []
        self.queued = 0
        for tag in reversed(ids):
            if tag is not None:
                self.delivered_id = tag[0]
                break
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        self.sending = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.lost()
            return
        finally:
            self.sending = False
        if not self.pending:
            if self._drained is not None:
                self._drained.unpark_all()

    async def drained(self) -> None:
        """Wait until everything written so far has reached the kernel."""
        while (self.pending or self.sending) and not self.closed:
            if self._drained is None:
                self._drained = trio.lowlevel.ParkingLot()
            await self._drained.park()

    # -- resume ----------------------------------------------------------

    async def replay(self, store: Store, patterns: Sequence[str], since: str) -> None:
        """Send stored events after ``since`` on ``patterns``, then release
        the live events held meanwhile, skipping those already sent.

        The caller has added ``patterns`` to the hub before calling, so every
        event is either stored before the read or published into ``hold``.
        """
        after = store.parse_id(since)
        self.hold = [] if self.hold is None else self.hold
        # The connection's other subscriptions: a stored event they already
        # deliver (live, or by their own resume) is not sent twice.
        others = [(p, self._covered_from(p)) for p in self.patterns if p not in patterns]
        try:
            if store.lost_after(after):
                self.gap_after = since
            while not self.closed:
                events = await store.read(after, patterns, _REPLAY_PAGE)
                for event in events:
                    if not (others and _reaches(event, others)):
                        self._emit(event, counted=False)
                if events:
                    after = events[-1].key
                if len(events) < _REPLAY_PAGE:
                    break
                await self.drained()
        finally:
            held, self.hold = self.hold, None
            self.floor = (after, patterns, others)
            for event in held:
                if not self.closed and not self._replayed(event):
                    self._emit(event, counted=True)
