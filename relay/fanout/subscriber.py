"""One subscriber's socket side: the direct write, the writer task, the resume loop.

The rules (what is queued, dropped, held, released; when a gap is due) are
the pure ``relay.core.outbox``; this module gives them a socket. When nothing
is queued, the event's shared frame bytes are written at once with one
non-blocking ``send`` on a plain TCP socket, or encrypted and written the
same way on a TLS one (``TlsStream.try_send``) - no queue, no task switch.
Only when the kernel's buffer is full do frames wait; a writer task, started
on demand in the session's nursery, then drains everything pending in one
write. (A TLS write the kernel took only part of leaves the rest of its
ciphertext in the stream: an empty frame in ``pending`` makes the writer
flush it, and keeps later frames behind it.) A write that fails or is
cancelled part way ends the subscriber's writing for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from ..core.envelope import Event
from ..core.index import Index
from ..core.outbox import Outbox, Replay
from ..net.sockets import raw_fd, send_now
from ..net.tls import TlsStream
from ..store.base import Store

# Seconds an on-demand writer waits for more before its task ends.
WRITER_LINGER = 5.0

# Stored events read per query while replaying.
REPLAY_PAGE = 500


class Subscriber(Outbox):
    # Slots: ten thousand of these stay small.
    __slots__ = ("stream", "fd", "tls", "on_trouble", "_wake", "_drained", "_spawn", "_writer_running")

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
        super().__init__(transport, frame, gap, limit, policy, stats)
        self.stream = stream
        self.fd = raw_fd(stream)
        # A TLS stream that can encrypt and write without a task switch.
        self.tls = stream if isinstance(stream, TlsStream) else None
        self.direct = self.fd is not None or self.tls is not None
        # Called when the transport must act: overflow under "disconnect", a
        # control flood, or the peer can no longer be written to (``closed``).
        # A callback rather than events a task waits on: idle connections
        # stay small.
        self.on_trouble = on_trouble
        # Parking lots for the writer and for ``drained``, made on first use.
        self._wake: trio.lowlevel.ParkingLot | None = None
        self._drained: trio.lowlevel.ParkingLot | None = None
        # How to start a writer task when frames back up (the session's
        # nursery); without it, the owner runs ``run_writer`` itself.
        self._spawn = spawn
        self._writer_running = False

    def detach(self, hub: Index) -> None:
        hub.remove(self, self.patterns)
        self.closed = self.ended = True

    # -- what the rules call ----------------------------------------------

    def _send_now(self, data: bytes | memoryview) -> int | None:
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

    def _trouble(self) -> None:
        if self.closed:
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
        if self._spawn is None or self._writer_running:
            if self._wake is not None:
                self._wake.unpark()
            return
        # Started on demand: most subscribers never back up, and an idle
        # connection with no writer task is a few KB smaller.
        self._writer_running = True
        self._spawn(self._write_episode)

    # -- the writer --------------------------------------------------------

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
        data = self.take()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken()
            return
        except BaseException:
            # Cancelled mid-write: part of a frame may be on the wire, and
            # any later frame would be read as its rest.
            self.broken()
            raise
        self.taken()
        if not self.pending and self._drained is not None:
            self._drained.unpark_all()

    async def drained(self) -> None:
        """Wait until everything written so far has reached the kernel."""
        while (self.pending or self.sending) and not self.closed:
            if self._drained is None:
                self._drained = trio.lowlevel.ParkingLot()
            await self._drained.park()

    # -- resume ------------------------------------------------------------

    async def replay(self, store: Store, patterns: Sequence[str], since: str) -> None:
        """Send stored events after ``since`` on ``patterns``, then release
        the live events held meanwhile (``relay.core.outbox.Replay``).

        The caller has added ``patterns`` to the hub first, so every event is
        either stored before a read or offered into the hold. Raises
        ``StoreUnavailable`` after ``abort_replay`` when the store fails: the
        owner says so and closes, since the events held cannot be released
        without a hole behind them.
        """
        replay = Replay(self, patterns, since, store.parse_id(since), store.parse_id(""))
        try:
            while not replay.done:
                page = await store.read_page(replay.after, replay.reading, REPLAY_PAGE)
                replay.take(page)
                if not replay.done:
                    await self.drained()
        except BaseException:
            if not replay.done:
                self.abort_replay()
            raise
