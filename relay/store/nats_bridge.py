"""The nats engine's adapter: the asyncio-only nats-py client, behind trio-asyncio.

This is the one module of the relay that runs asyncio code. ``Bridge`` owns
one nats-py connection on one trio-asyncio loop (opened by the engine's
``run``, in the app's root nursery) and offers trio coroutines that each cross
the bridge once: a whole batch of webhooks is one crossing
(``publish``: the messages are pipelined on the connection and every
JetStream ack awaited on the asyncio side), so is a whole page of a resume
(``read``) and whatever the tail's pull request brought since it last asked
(``take``). What comes back is plain data (``Stored``, ``Found``, ``State``),
never a nats-py object; every failure is ``Unavailable``.

Cancellation: a trio cancel of a call cancels its asyncio task (trio-asyncio
does that); ``close`` closes the connection, which ends nats-py's own tasks,
and then checks that no asyncio task is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType,
                         StreamConfig)

log = logging.getLogger("relay.store")

# Channel, ingest time (ms) and delivery id travel as headers; the payload is
# the envelope after its id (see redis_ids.envelope_rest).
CHANNEL, TS, MSG_ID = "Relay-Channel", "Relay-Ts", "Nats-Msg-Id"

# A pull request of the tail: this many messages at most, held open by the
# server this long (s) when nothing comes. No answer at all for
# _EXPIRES + _GRACE means the server is gone.
_BATCH = 1000
_EXPIRES = 10.0
_GRACE = 5.0
# An idle consumer is removed by the server after this long (s): a relay that
# died leaves nothing behind for long.
_INACTIVE = 30.0
# A resume of at most this many messages reads each by its sequence.
_FEW = 16


class Unavailable(Exception):
    """NATS (or its JetStream) did not do what was asked."""


@dataclass(frozen=True, slots=True)
class State:
    created: str  # when the stream was created: a stream made anew is a new log
    first: int  # sequence of the oldest message kept (last + 1 when empty)
    last: int  # sequence of the newest message (0: none ever)


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Found:
    seq: int
    channel: str
    ts: int
    rest: bytes


def _found(msg) -> Found:  # type: ignore[no-untyped-def]
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    tokens = msg.reply.split(".")
    headers = msg.headers or {}
    return Found(int(tokens[-4]), headers.get(CHANNEL, ""), int(headers.get(TS, "0")), msg.data)


def _why(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__


class _Pull:
    """A pull consumer of one relay: messages from one sequence on, asked
    for in batches, collected by a subscription on its own inbox."""

    def __init__(self, bridge: Bridge, start: int, *, tail: bool) -> None:
        self.bridge = bridge
        self.start = start
        self.tail = tail  # the tail's: fails as soon as the connection drops
        self.name = ""
        self.inbox = ""
        self.sub = None
        self.queue: deque = deque()
        self.arrived = asyncio.Event()
        self.outstanding = 0  # messages the open request may still bring
        self.deadline = 0.0  # an answer to the open request must come by then

    async def open(self, *, ttl: float = _INACTIVE) -> None:
        b = self.bridge
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1, inactive_threshold=ttl,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self.start > 1 else DeliverPolicy.ALL,
            opt_start_seq=self.start if self.start > 1 else None)
        info = await b.js._jsm.add_consumer(b.stream, config=config, timeout=b.timeout)
        self.name = info.name
        self.inbox = b.nc.new_inbox()
        self.sub = await b.nc.subscribe(self.inbox, cb=self._arrive)

    async def _arrive(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.queue.append(msg)
        self.arrived.set()

    async def ask(self, batch: int, expires: float | None) -> None:
        request: dict[str, object] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        b = self.bridge
        await b.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{b.stream}.{self.name}", json.dumps(request).encode(),
                           reply=self.inbox)
        self.outstanding = batch
        self.deadline = time.monotonic() + (expires or 0.0) + _GRACE

    async def collect(self) -> list:
        """What has arrived for the open request, waiting for something
        (a message, or the status that ends the request) until its deadline."""
        while not self.queue:
            if self.tail and self.bridge.broken:
                raise Unavailable("the connection to NATS was lost")
            self.arrived.clear()
            wait = self.deadline - time.monotonic()
            if wait <= 0:
                raise Unavailable("NATS did not answer a pull request")
            try:
                await asyncio.wait_for(self.arrived.wait(), wait)
            except asyncio.TimeoutError:
                continue
        got = []
        while self.queue:
            msg = self.queue.popleft()
            status = msg.headers.get("Status") if msg.headers and not msg.reply else None
            if status is None:
                got.append(msg)
                self.outstanding -= 1
            elif status in ("404", "408"):  # no messages / the request expired: it is over
                self.outstanding = 0
            elif status == "100":  # a heartbeat
                continue
            else:
                raise Unavailable(f"NATS ended a pull request: {status} {msg.headers.get('Description', '')}")
        return got

    async def close(self) -> None:
        b = self.bridge
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except nats.errors.Error:
                pass
            self.sub = None
        if self.name and b.nc is not None and b.nc.is_connected:
            try:
                await b.js.delete_consumer(b.stream, self.name)
            except (nats.errors.Error, asyncio.TimeoutError):
                pass  # the server removes it once inactive
        self.name = ""


class Bridge:
    """One connection to NATS, used from trio. Methods named ``_aio_*``
    run on the asyncio side; the others are what the engine calls."""

    def __init__(self, loop: trio_asyncio.TrioEventLoop, url: str, stream: str, subject: str,
                 timeout: float, tls_ca: str | None = None) -> None:
        self.loop = loop
        self.url = url
        self.tls_ca = tls_ca
        self.stream = stream
        self.subject = subject
        self.timeout = timeout
        self.nc: nats.NATS | None = None
        self.js = None
        self.broken = False  # the connection dropped since the tail's consumer was made
        self.on_change: Callable[[], None] = lambda: None  # connected or disconnected: wake the engine
        self._tail: _Pull | None = None
        self._last_taken = 0
        self._publishing: set[asyncio.Future] = set()  # batches waiting for their acks
        self._dropped: set[asyncio.Future] = set()  # of those, the ones a lost connection ended
        self._acks = None  # the subscription acks come to
        self._inbox = ""
        self._token = 0
        self._waiting: dict[str, asyncio.Future] = {}  # acks awaited, by their reply token

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _call(self, coro) -> object:  # type: ignore[no-untyped-def]
        """Run ``coro`` on the asyncio side; every failure becomes ``Unavailable``."""
        try:
            return await self.loop.run_aio_coroutine(coro)
        except Unavailable:
            raise
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(_why(exc)) from None

    # -- connection --------------------------------------------------------

    async def connect(self, connect_timeout: float) -> None:
        await self._call(self._aio_connect(connect_timeout))

    async def _aio_connect(self, connect_timeout: float) -> None:
        if self.nc is not None:
            return
        # nats-py calls these on the asyncio side, which trio-asyncio runs
        # in a trio task: the engine's trio events may be set from here.
        async def disconnected() -> None:
            self.broken = True
            if self._tail is not None:
                self._tail.arrived.set()  # the tail's wait ends: it fails, and follows anew
            for waiting in self._publishing:
                # The acks of what was sent will not come on this connection:
                # refuse the batch now rather than at its timeout.
                self._dropped.add(waiting)
                waiting.cancel()
            self.on_change()

        async def reconnected() -> None:
            self.on_change()

        async def error(exc: Exception) -> None:
            log.debug(f"store: NATS client: {exc!r}")

        nc = nats.NATS()
        tls = {"tls": ssl.create_default_context(cafile=self.tls_ca)} if self.tls_ca else {}
        # A first connection is tried once per server (the engine's tail
        # tries again): with endless attempts nats-py's connect loops on,
        # and a cancel that lands in its asyncio.wait_for can be swallowed
        # (Python 3.11), leaving a task that never ends. Once connected,
        # nats-py reconnects on its own, forever.
        await nc.connect(self.url, connect_timeout=connect_timeout, allow_reconnect=True, max_reconnect_attempts=1,
                         reconnect_time_wait=0.25, ping_interval=5, max_outstanding_pings=2,
                         disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
                         name="relay", **tls)
        nc.options["max_reconnect_attempts"] = -1
        self.nc = nc
        self.js = nc.jetstream(timeout=self.timeout)

    async def close(self) -> None:
        """Close the connection; afterwards no asyncio task of ours runs."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
            try:
                await self.loop.run_aio_coroutine(self._aio_close())
            except (nats.errors.Error, asyncio.TimeoutError, OSError):
                pass

    async def _aio_close(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            await tail.close()
        if self.nc is not None:
            nc, self.nc = self.nc, None
            # Not wait_for: it waits for a cancelled close to end, which a
            # swallowed cancel never does.
            closing = asyncio.ensure_future(nc.close())
            await asyncio.wait({closing}, timeout=self.timeout)
            if not closing.done():
                closing.cancel()
            elif not closing.cancelled() and closing.exception() is not None:
                # Closing while NATS is away: nats-py's close fails on the
                # dead socket (ConnectionResetError) half way, before it
                # ends its subscriptions' tasks. Ended below.
                log.debug(f"store: closing the NATS connection: {closing.exception()!r}")
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if left:
            # nats-py's own tasks (a subscription's reader, its pinger),
            # which a failed close left: cancel them and let them end.
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=1.0)
            left = [t for t in left if not t.done()]
        if left:
            log.warning(f"store: {len(left)} asyncio task(s) still running after closing NATS: {left!r}")

    # -- the stream --------------------------------------------------------

    async def ensure(self, config: StreamConfig, known: int) -> State:
        """The stream, made (or its limits updated) as ``config`` says. A
        stream found empty below ``known`` (NATS lost its store) is moved on
        past it, so new ids stay later than every id handed out."""
        return await self._call(self._aio_ensure(config, known))  # type: ignore[return-value]

    async def _aio_ensure(self, config: StreamConfig, known: int) -> State:
        if not self.connected or self.js is None:
            # Reconnecting: fail now (the engine waits for the reconnect)
            # rather than let nats-py hold the request until its timeout.
            raise Unavailable("not connected")
        try:
            info = await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = await self.js.add_stream(config)
        else:
            have = info.config
            if (have.max_msgs, have.max_age, have.duplicate_window) != (
                    config.max_msgs, config.max_age, config.duplicate_window):
                info = await self.js.update_stream(config)
        if info.state.messages == 0 and info.state.last_seq < known:
            await self.js.purge_stream(self.stream, seq=known + 1)
            info = await self.js.stream_info(self.stream)
        return self._state(info)

    @staticmethod
    def _state(info) -> State:  # type: ignore[no-untyped-def]
        return State(str(info.created), info.state.first_seq, info.state.last_seq)

    async def state(self) -> State:
        return await self._call(self._aio_state())  # type: ignore[return-value]

    async def _aio_state(self) -> State:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        return self._state(await self.js.stream_info(self.stream))

    # -- writes ------------------------------------------------------------

    async def publish(self, messages: Sequence[tuple[dict[str, str], bytes]],
                      subjects: Sequence[str] | None = None) -> list[Stored]:
        """Each message stored, in order (on the log's subject, or each on its
        own of ``subjects``); returns once JetStream acked them all."""
        return await self._call(self._aio_publish(messages, subjects))  # type: ignore[return-value]

    async def _aio_publish(self, messages: Sequence[tuple[dict[str, str], bytes]],
                           subjects: Sequence[str] | None = None, refused_ok: bool = False) -> list[Stored]:
        if not self.connected or self.js is None:
            # Not buffered for a reconnect: a webhook refused now must not
            # be stored later behind the sender's back.
            raise Unavailable("not connected")
        nc = self.nc
        assert nc is not None
        if self._acks is None:
            # One subscription for every ack: a publish's reply subject is
            # this inbox and its number (what nats-py's request does, less a
            # task and a timer per message).
            self._inbox = nc.new_inbox()
            self._acks = await nc.subscribe(self._inbox + ".*", cb=self._ack)
        loop = asyncio.get_running_loop()
        futures = []
        tokens = []
        try:
            for i, (headers, payload) in enumerate(messages):
                self._token += 1
                token = str(self._token)
                future = loop.create_future()
                self._waiting[token] = future
                futures.append(future)
                tokens.append(token)
                await nc.publish(subjects[i] if subjects else self.subject, payload, reply=f"{self._inbox}.{token}",
                                 headers=headers)
        except BaseException:
            for token in tokens:
                self._waiting.pop(token, None)
            raise
        waiting = asyncio.gather(*futures)
        self._publishing.add(waiting)
        try:
            replies = await asyncio.wait_for(waiting, self.timeout)
        except asyncio.CancelledError:
            if waiting in self._dropped:
                raise Unavailable("the connection to NATS was lost") from None
            raise
        finally:
            self._publishing.discard(waiting)
            self._dropped.discard(waiting)
            for token in tokens:
                self._waiting.pop(token, None)
        out = []
        for reply in replies:
            if not reply:  # no stream answered: "503 No Responders"
                raise Unavailable(f"no stream takes {self.subject}")
            ack = json.loads(reply)
            if "error" in ack and refused_ok:
                out.append(Stored(0, False))  # refused (a compare-and-set that lost)
                continue
            if "error" in ack:
                raise Unavailable(f"JetStream refused the message: {ack['error'].get('description', ack['error'])}")
            out.append(Stored(ack["seq"], bool(ack.get("duplicate"))))
        return out

    async def _ack(self, msg) -> None:  # type: ignore[no-untyped-def]
        future = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            # A "no responders" status comes with no data: b"" says so.
            future.set_result(msg.data if not (msg.headers and msg.headers.get("Status") == "503") else b"")

    async def channel_of(self, seq: int) -> str | None:
        """The channel of the stored message ``seq`` (None if it is gone)."""
        return await self._call(self._aio_channel_of(seq))  # type: ignore[return-value]

    async def _aio_channel_of(self, seq: int) -> str | None:
        assert self.js is not None
        try:
            msg = await self.js.get_msg(self.stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        return (msg.headers or {}).get(CHANNEL)

    # -- reads -------------------------------------------------------------

    async def read(self, start: int, last: int, want: int, keep: Callable[[str], bool]) -> tuple[list[Found], int, bool]:
        """Messages from ``start`` to ``last`` whose channel ``keep`` takes,
        until ``want`` of them: (those, the first sequence seen or 0, whether
        the log had a hole: retention dropped what was being read)."""
        return await self._call(self._aio_read(start, last, want, keep))  # type: ignore[return-value]

    async def _aio_read(self, start: int, last: int, want: int,
                        keep: Callable[[str], bool]) -> tuple[list[Found], int, bool]:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        if last - start < _FEW:
            return await self._aio_read_few(start, last, want, keep)
        pull = _Pull(self, start, tail=False)
        out: list[Found] = []
        first = 0
        expected = 0
        try:
            await pull.open(ttl=_GRACE)
            while True:
                await pull.ask(min(_BATCH, max(1, last - (expected or start) + 1)), None)
                got = 0
                while pull.outstanding > 0:
                    for msg in await pull.collect():
                        got += 1
                        found = _found(msg)
                        if expected and found.seq != expected:
                            return out, first, True
                        first = first or found.seq
                        expected = found.seq + 1
                        if keep(found.channel):
                            out.append(found)
                            if len(out) >= want:
                                return out, first, False
                        if found.seq >= last:
                            return out, first, False
                if got == 0:
                    return out, first, False
        finally:
            await pull.close()

    async def _aio_read_few(self, start: int, last: int, want: int,
                            keep: Callable[[str], bool]) -> tuple[list[Found], int, bool]:
        """The same for a short range (a subscriber that was away briefly):
        each message asked for by its sequence, all at once, one round trip
        instead of a consumer's three."""
        js = self.js
        assert js is not None

        async def one(seq: int):  # type: ignore[no-untyped-def]
            try:
                return await js.get_msg(self.stream, seq)
            except nats.js.errors.NotFoundError:
                return None  # dropped by retention

        got = await asyncio.gather(*[one(seq) for seq in range(start, last + 1)])
        out: list[Found] = []
        first = 0
        for seq, msg in zip(range(start, last + 1), got):
            if msg is None:
                if first:
                    return out, first, True  # a hole after what was read
                continue
            first = first or seq
            headers = msg.headers or {}
            found = Found(seq, headers.get(CHANNEL, ""), int(headers.get(TS, "0")), msg.data or b"")
            if keep(found.channel):
                out.append(found)
                if len(out) >= want:
                    break
        return out, first, False

    # -- the tail ----------------------------------------------------------

    async def follow(self, start: int) -> None:
        """Follow the stream from sequence ``start`` (a fresh consumer)."""
        await self._call(self._aio_follow(start))

    async def _aio_follow(self, start: int) -> None:
        if not self.connected:
            raise Unavailable("not connected")
        if self._tail is not None:
            old, self._tail = self._tail, None
            await old.close()
        self.broken = False
        pull = _Pull(self, start, tail=True)
        await pull.open()
        self._tail = pull
        self._last_taken = start - 1

    async def take(self) -> list[Found]:
        """What the stream got after what was taken last (waits for the
        next message, or for the pull request to end: may be empty)."""
        return await self._call(self._aio_take())  # type: ignore[return-value]

    async def _aio_take(self) -> list[Found]:
        pull = self._tail
        if pull is None:
            raise Unavailable("not following the stream")
        if pull.outstanding <= 0:
            await pull.ask(_BATCH, _EXPIRES)
        out = []
        for msg in await pull.collect():
            found = _found(msg)
            if found.seq > self._last_taken:
                out.append(found)
                self._last_taken = found.seq
        return out


    # -- keyed records (outbound delivery state) ---------------------------
    #
    # A stream whose subjects are keys, keeping the newest ``per_subject``
    # messages of each: a record is the newest message on its subject, and
    # removing one purges its subject.

    async def ensure_keyed(self, name: str, subjects: str, per_subject: int) -> None:
        await self._call(self._aio_ensure_keyed(name, subjects, per_subject))

    async def _aio_ensure_keyed(self, name: str, subjects: str, per_subject: int) -> None:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        try:
            await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(StreamConfig(
                name=name, subjects=[subjects], storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD, max_msgs_per_subject=per_subject, num_replicas=1))

    async def scan(self, name: str, subjects: str, last_only: bool) -> list[tuple[str, int, bytes]]:
        """(subject, sequence, data) of the messages on ``subjects`` (the
        newest of each subject only, with ``last_only``), oldest first."""
        return await self._call(self._aio_scan(name, subjects, last_only))  # type: ignore[return-value]

    async def _aio_scan(self, name: str, subjects: str, last_only: bool) -> list[tuple[str, int, bytes]]:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, mem_storage=True, num_replicas=1, inactive_threshold=_GRACE,
            filter_subject=subjects,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if last_only else DeliverPolicy.ALL)
        info = await self.js._jsm.add_consumer(name, config=config, timeout=self.timeout)
        pending = info.num_pending
        out: list[tuple[str, int, bytes]] = []
        if pending:
            pull = _Pull(self, 0, tail=False)
            pull.name = info.name
            pull.inbox = self.nc.new_inbox()
            pull.sub = await self.nc.subscribe(pull.inbox, cb=pull._arrive)
            try:
                while len(out) < pending:
                    await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{name}.{info.name}",
                                          json.dumps({"batch": min(_BATCH, pending - len(out)),
                                                      "no_wait": True}).encode(), reply=pull.inbox)
                    pull.outstanding = min(_BATCH, pending - len(out))
                    pull.deadline = time.monotonic() + _GRACE
                    got = 0
                    while pull.outstanding > 0:
                        for msg in await pull.collect():
                            got += 1
                            out.append((msg.subject, int(msg.reply.split(".")[-4]), msg.data))
                    if got == 0:
                        break
            finally:
                if pull.sub is not None:
                    await pull.sub.unsubscribe()
        try:
            await self.js.delete_consumer(name, info.name)
        except (nats.errors.Error, asyncio.TimeoutError):
            pass
        return out

    async def put(self, subjects: Sequence[str], values: Sequence[bytes]) -> None:
        await self._call(self._aio_publish([({}, v) for v in values], subjects))

    async def purge(self, name: str, subjects: Sequence[str]) -> None:
        await self._call(self._aio_purge(name, subjects))

    async def _aio_purge(self, name: str, subjects: Sequence[str]) -> None:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        js = self.js
        await asyncio.gather(*[js.purge_stream(name, subject=subject) for subject in subjects])

    async def last(self, name: str, subject: str) -> tuple[int, bytes] | None:
        """(sequence, data) of the newest message on ``subject``, or None."""
        return await self._call(self._aio_last(name, subject))  # type: ignore[return-value]

    async def _aio_last(self, name: str, subject: str) -> tuple[int, bytes] | None:
        if not self.connected or self.js is None:
            raise Unavailable("not connected")
        try:
            msg = await self.js.get_msg(name, subject=subject)
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq, msg.data or b""

    async def swap(self, subject: str, value: bytes, expected: int) -> bool:
        """Store ``value`` on ``subject`` if its newest message is still
        ``expected`` (0: none): JetStream checks it with the write."""
        return await self._call(self._aio_swap(subject, value, expected))  # type: ignore[return-value]

    async def _aio_swap(self, subject: str, value: bytes, expected: int) -> bool:
        stored = await self._aio_publish([({"Nats-Expected-Last-Subject-Sequence": str(expected)}, value)],
                                         [subject], refused_ok=True)
        return stored[0].seq != 0


def stream_config(stream: str, subject: str, retention: int, retention_age: float) -> StreamConfig:
    """The log: file storage, the newest ``retention`` messages none older
    than ``retention_age``, and a duplicate window of ``retention_age``."""
    return StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE,
                        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, max_msgs=retention,
                        max_age=retention_age, duplicate_window=retention_age, num_replicas=1)
