"""The second cluster engine: one event log in a NATS JetStream stream.

Every relay on the same NATS and ``store.prefix`` shares one log, as with the
redis engine (contract section 8). The stream and subject are named from the
prefix, its characters other than letters, digits, ``-`` and ``_`` made
``_`` (``relay:`` -> stream ``relay_log``, subject ``relay_log.events``).
A message's stream sequence is the event id (decimal, as sqlite's), so every
relay's subscribers see one order and ``since`` resumes on any relay. A
message stores the envelope after its id (as the redis engine does), its
channel and ingest time in headers.

Writes: one writer task drains every pending append (the group commit the
other engines share) and publishes the batch pipelined on one connection;
``append`` returns once JetStream acked every message, i.e. once it is in the
stream's file storage. Retention is the stream's: ``MaxMsgs = retention``,
``MaxAge = retention_age``; a resume learns what was dropped from the
stream's first sequence.

Dedupe: JetStream's duplicate window, ``Nats-Msg-Id`` = the delivery key,
the window = ``retention_age``. The server checks it atomically with the
write, for every relay, and its ack names the first message's sequence.
Unlike a key-value bucket it costs no second write per webhook, and the
window can be as long as ``MaxAge`` (the server refuses a longer one, and
retention_age is both). One difference: after a NATS restart the server
rebuilds the window from the messages it still has, so a delivery whose
message count retention already dropped is forgotten by a restart.

Reads: one tail task per relay follows the stream with a pull consumer of
its own (no acks, in memory, removed by the server once idle) and is the
only caller of ``publish``. Resumes read a few messages by their sequence,
more with a short-lived consumer from the id on. When NATS goes away, appends fail with ``StoreUnavailable`` (503),
``ping`` is false, and the tail retries and carries on after the last id it
delivered: nothing stored is skipped.

The log's epoch: a stream made anew (NATS came back without its store) has a
new creation time; the relay that makes it moves its sequence past the ids
it had delivered (a purge up to there), so new ids stay later than old ones
and a resume from before the loss gets its gap.

nats-py is asyncio-only: it lives in ``nats_bridge``, behind one
trio-asyncio loop that ``run`` opens (in the app's root nursery) and closes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

import trio
import trio_asyncio

from ..config.files import redacted
from ..config.model import StoreConfig
from ..core.channels import selects
from ..core.envelope import Draft, Event
from ..core.errors import StoreUnavailable
from ..core.outbox import Page
from .base import Appended, Store, parse_seq
from .commit import GroupCommit
from .nats_deliveries import NatsDeliveryLog
from .nats_bridge import CHANNEL, MSG_ID, TS, Bridge, Found, State, Unavailable, stream_config
from .redis_ids import chunks, envelope_rest, join_envelope

log = logging.getLogger("relay.store")

_FAILURES = (Unavailable, trio.TooSlowError)

# Messages and bytes per crossing of the bridge: a batch is pipelined on the
# connection, and the acks of this many are awaited together.
_PUBLISH_DRAFTS = 1000
_PUBLISH_BYTES = 8 << 20
_CALL_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
# Messages scanned per read while filtering channels for a resume.
_READ_PAGE = 1000


def names(prefix: str) -> tuple[str, str]:
    """The stream and subject for ``store.prefix``."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", prefix).strip("_") or "relay"
    return f"{base}_log", f"{base}_log.events"


class NatsStore(Store):
    def __init__(self, config: StoreConfig, publish: Callable[[list[Event]], None]) -> None:
        self.config = config
        self.publish = publish
        self.stream, self.subject = names(config.prefix)
        self.where = redacted(config.url)
        self.deliveries = NatsDeliveryLog(lambda: self._bridge, self.stream.removesuffix("_log"), self.where)
        self._bridge: Bridge | None = None
        self._queue = GroupCommit()
        self._running = False
        self._stopped = trio.Event()
        self._position = 0  # last sequence the tail delivered
        self._from_log = False  # _position is a sequence the log had
        self._head = ""
        self._pruned = 0  # newest sequence retention (or a loss) dropped
        self._tail_ok = False
        self._epoch: str | None = None  # the stream's creation time, once seen
        self._poke = trio.Event()  # NATS answered someone: the tail may stop waiting
        self._moved = trio.lowlevel.ParkingLot()  # the tail delivered more
        self._received: dict[int, float] = {}
        self.round_trips = 0  # crossings of the bridge by the writer, for tests

    # -- state -----------------------------------------------------------

    @property
    def head(self) -> str:
        return self._head

    def parse_id(self, event_id: str) -> int:
        return parse_seq(event_id)

    def lost_after(self, key: object) -> bool:
        return self._pruned > key  # type: ignore[operator]

    # -- lifecycle -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        logging.getLogger("nats").setLevel(logging.CRITICAL)
        # The process's one trio-asyncio loop: nats-py runs on it, and only
        # nats_bridge runs anything on it.
        async with trio_asyncio.open_loop() as loop:
            bridge = Bridge(loop, self.config.url, self.stream, self.subject, _CALL_TIMEOUT, self.config.tls_ca)
            bridge.on_change = lambda: self._poke.set()
            self._bridge = bridge
            try:
                try:
                    with trio.fail_after(_CONNECT_TIMEOUT + 1):
                        await bridge.connect(_CONNECT_TIMEOUT)
                        self._note_state(await bridge.ensure(self._stream_config, self._known))
                    self._from_log = True
                    await self._follow(bridge)
                except _FAILURES as exc:
                    # Where the log stood is unknown: the tail follows it
                    # from wherever it is once NATS answers.
                    why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                    log.warning(f"store: cannot reach NATS at {self.where} ({why}); serving, but not ready "
                                "(/readyz 503, webhooks 503) until it answers")
                self._running = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tail, bridge)
                    task_status.started()
                    try:
                        await self._write_loop(bridge)
                    finally:
                        self._running = False
                        self._stopped.set()
                        self._queue.fail_pending("the relay is shutting down")
                        nursery.cancel_scope.cancel()
            finally:
                self._bridge = None
                await bridge.close()

    @property
    def _stream_config(self):  # type: ignore[no-untyped-def]
        return stream_config(self.stream, self.subject, self.config.retention, self.config.retention_age)

    @property
    def _known(self) -> int:
        return self._position if self._from_log else 0

    async def _follow(self, bridge: Bridge) -> None:
        await bridge.follow(self._position + 1)
        self._tail_ok = True

    def _note_state(self, state: State) -> None:
        if self._epoch is not None and state.created != self._epoch and self._from_log:
            self._lost_up_to(self._position, "its stream was made anew: restarted without its store?")
        elif self._from_log and state.last < self._position:
            self._lost_up_to(self._position, "its stream is behind what was delivered")
        self._epoch = state.created
        self._pruned = max(self._pruned, state.first - 1)
        if not self._from_log:
            self._position = state.last
            self._head = str(state.last) if state.last else ""

    def _lost_up_to(self, seq: int, why: str) -> None:
        if seq <= 0 or self._pruned >= seq:
            return
        log.warning(f"store: NATS at {self.where} lost the log up to {seq} ({why}); "
                    "resumes from before it get a gap")
        self._pruned = seq

    async def close(self) -> None:
        """Store what is pending, then let ``run`` end."""
        self._queue.close()
        if self._running:
            await self._stopped.wait()

    # -- writes ----------------------------------------------------------

    async def _write_loop(self, bridge: Bridge) -> None:
        while (batch := await self._queue.next()) is not None:
            try:
                if not self._tail_ok:
                    # Not following the log (NATS away, or the stream not
                    # checked since it came back): refuse rather than write
                    # to a stream that may need to be made first.
                    raise Unavailable("not connected")
                for chunk in chunks(batch.drafts, _PUBLISH_DRAFTS, _PUBLISH_BYTES):
                    batch.results += await self._commit(bridge, chunk)
            except _FAILURES as exc:
                why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                batch.error = StoreUnavailable(f"the event store (NATS at {self.where}) did not store the event: {why}")
                batch.results.clear()
            batch.done.set()

    async def _commit(self, bridge: Bridge, drafts: list[Draft]) -> list[Appended]:
        rests = [envelope_rest(draft) for draft in drafts]
        messages = []
        for draft, rest in zip(drafts, rests):
            headers = {CHANNEL: draft.channel, TS: str(draft.ts)}
            if draft.dedupe is not None:
                headers[MSG_ID] = draft.dedupe
            messages.append((headers, rest))
        with trio.fail_after(_CALL_TIMEOUT):
            stored = await bridge.publish(messages)
        self.round_trips += 1
        self._poke.set()
        out: list[Appended] = []
        firsts: dict[int, str] = {}  # channel of an earlier message, by sequence
        for draft, rest, item in zip(drafts, rests, stored):
            event_id = str(item.seq)
            if item.duplicate:
                channel = firsts.get(item.seq)
                if channel is None:
                    with trio.fail_after(_CALL_TIMEOUT):
                        channel = await bridge.channel_of(item.seq)
                    channel = channel or draft.channel
                out.append(Appended(Event(event_id, item.seq, channel, 0, b""), True))
                continue
            firsts[item.seq] = draft.channel
            out.append(Appended(Event(event_id, item.seq, draft.channel, draft.ts, join_envelope(event_id, rest),
                                      draft.received), False))
            if item.seq > self._position:
                if len(self._received) > 100_000:
                    self._received.clear()
                self._received[item.seq] = draft.received
        return out

    async def append(self, drafts: Sequence[Draft]) -> list[Appended]:
        if self._queue.closing or not self._running:
            raise StoreUnavailable("the event store is not running")
        return await self._queue.join(drafts)

    # -- the tail --------------------------------------------------------

    async def _tail(self, bridge: Bridge) -> None:
        delay = _BACKOFF_MIN
        while True:
            try:
                if not self._tail_ok:
                    with trio.fail_after(_CONNECT_TIMEOUT + _CALL_TIMEOUT):
                        await bridge.connect(_CONNECT_TIMEOUT)
                        self._note_state(await bridge.ensure(self._stream_config, self._known))
                        self._from_log = True
                        await self._follow(bridge)
                    delay = _BACKOFF_MIN
                    log.info(f"store: NATS at {self.where} answers; following the log after {self._position}")
                got = await bridge.take()
            except _FAILURES as exc:
                if self._tail_ok:
                    log.warning(f"store: lost NATS at {self.where} ({exc or type(exc).__name__}); "
                                f"retrying, resuming after {self._position}")
                self._tail_ok = False
                self._poke = trio.Event()
                with trio.move_on_after(delay):
                    await self._poke.wait()
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if got:
                if got[0].seq > self._position + 1:
                    # Retention dropped what came between (a relay far behind).
                    self._pruned = max(self._pruned, got[0].seq - 1)
                events = [self._event(found, self._received.pop(found.seq, 0.0)) for found in got]
                self._position = got[-1].seq
                self._head = events[-1].id
                self.publish(events)
                self._moved.unpark_all()

    @staticmethod
    def _event(found: Found, received: float = 0.0) -> Event:
        event_id = str(found.seq)
        return Event(event_id, found.seq, found.channel, found.ts, join_envelope(event_id, found.rest), received)

    # -- reads -----------------------------------------------------------

    async def read_page(self, after: object, patterns: Sequence[str], limit: int) -> Page:
        bridge = self._bridge
        if bridge is None or not self._running:
            raise StoreUnavailable("the event store is not running")
        start: int = after  # type: ignore[assignment]
        everything = "*" in patterns
        try:
            with trio.fail_after(_CALL_TIMEOUT):
                state = await bridge.state()
            pruned = max(self._pruned, state.first - 1)
            if state.last <= start:
                return Page([], state.last, pruned)
            with trio.fail_after(_CALL_TIMEOUT * 2):
                found, first, hole = await bridge.read(
                    start + 1, state.last, limit + 1,
                    (lambda channel: True) if everything else (lambda channel: selects(patterns, channel)))
        except _FAILURES as exc:
            raise StoreUnavailable(f"the event store (NATS at {self.where}) did not answer a read: "
                                   f"{exc or type(exc).__name__}") from None
        if first > start + 1:
            # Dropped since the state was read: what the read starts after.
            pruned = max(pruned, first - 1)
        more = hole or len(found) > limit
        events = [self._event(f) for f in found[:limit]]
        return Page(events, state.last, pruned, more=more)

    @property
    def readable(self) -> bool:
        bridge = self._bridge
        return (self._running and self._tail_ok and bridge is not None and bridge.connected
                and not bridge.broken)

    async def ping(self) -> bool:
        bridge = self._bridge
        if bridge is None or not self._running or not bridge.connected:
            return False
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                state = await bridge.state()
        except _FAILURES:
            return False
        self._pruned = max(self._pruned, state.first - 1)
        self._poke.set()
        return self._tail_ok and not bridge.broken

