"""WebSocket subscribers: the upgrade, the session, and the client's messages.

The server has parsed the upgrade request (``relay.server.connection`` says
why the session runs on wsproto rather than trio-websocket); this module
checks it (``upgrade.py``: the steps it shares with SSE), answers it with a
101 and runs the session on wsproto's post-handshake ``Connection``, which
parses client frames and builds control frames. Event
frames do not pass through wsproto: they are the shared bytes of
``Event.ws_frame``, written by the subscriber's send path.

A session's tasks live in one nursery: the reader (client frames, in the
parent task), the subscriber's writer, the pinger, the control task (subscribe
and resume, one at a time) and the watchers that close the connection on
shutdown (1001), slow consumption (1013) or a lost peer.
"""

from __future__ import annotations

import logging
from collections import deque

import msgspec
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

from ..core import envelope, wire
from ..core.channels import parse_pattern
from ..core.envelope import Event
from ..core.errors import BadRequest, Forbidden, RateLimited, RelayError, StoreUnavailable
from ..core.grants import Grant
from ..core.publish import Publisher
from ..core.request import Request
from . import upgrade
from .session import SessionBase, Sessions

log = logging.getLogger("relay.ws")

CONTROL_BACKLOG = 32  # client requests waiting for the control task
PUBLISH_BACKLOG = 256  # publishes of one connection waiting for the store before `unavailable`
PUBLISH_BATCH = 1000  # publishes of one connection appended to the store at once
SLOW_DRAIN = 1.0  # seconds a slow consumer gets to take its close frame
CLOSE_WAIT = 1.0  # seconds to wait for the client's close reply
PING_PAYLOAD = b"relay"


class _ServerConnection(Connection):
    """wsproto's post-handshake connection without its per-connection deque.

    The deque (760 bytes, the largest part of wsproto's state) only ever holds
    the synthetic close event that ``receive_data(None)`` makes; the relay
    never calls that (it ends a session at end of input itself). A shared
    ``deque(maxlen=0)`` takes its place: nothing can accumulate in it, and if
    a later wsproto stops using ``_events`` this assignment is simply unused.
    """

    def __init__(self, trailing_data: bytes) -> None:
        super().__init__(ConnectionType.SERVER, trailing_data=trailing_data)
        self._events = _NO_EVENTS


_NO_EVENTS: deque = deque(maxlen=0)  # type: ignore[type-arg]


def ws_frame_of(event: Event) -> bytes:
    return event.ws_frame


def gap_frame(after: str, next_id: str) -> bytes:
    return envelope.ws_text_frame(wire.encode(wire.Gap(after=after, next=next_id)))


async def accept_websocket(request: Request, answer: upgrade.Answer, sessions: Sessions) -> bool:
    """Answer ``GET /ws``; True once the connection has been upgraded."""
    upgrade.check_method(request, "a WebSocket")
    headers = request.headers
    if "websocket" not in headers.get("upgrade", "").lower() or "upgrade" not in headers.get("connection", "").lower():
        body = envelope.encode({"error": "upgrade_required", "detail": "GET /ws needs a WebSocket upgrade"})
        await answer.send(426, body, [("upgrade", "websocket"), ("sec-websocket-version", "13")])
        return False
    if headers.get("sec-websocket-version") != "13":
        body = envelope.encode({"error": "upgrade_required", "detail": "Sec-WebSocket-Version must be 13"})
        await answer.send(426, body, [("sec-websocket-version", "13")])
        return False
    key = headers.get("sec-websocket-key")
    if not key:
        raise BadRequest("Sec-WebSocket-Key is missing")
    patterns, since = upgrade.read(request, sessions)
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    subprotocol = None
    if offered:
        if wire.SUBPROTOCOL not in offered:
            raise BadRequest(f"Sec-WebSocket-Protocol: this relay speaks {wire.SUBPROTOCOL} only")
        subprotocol = wire.SUBPROTOCOL
    grant = upgrade.admit(request, sessions, patterns, since)
    response = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", generate_accept_token(key.encode()).decode("ascii")),
    ]
    if subprotocol:
        response.append(("sec-websocket-protocol", subprotocol))
    stream, trailing = await upgrade.take_over(answer, sessions, 101, response)
    sessions.start(Session(sessions, stream, trailing, grant), patterns, since)
    return True


class Session(SessionBase):
    __slots__ = ("sessions", "grant", "stream", "ws", "sub", "unanswered_pings", "closing", "expires", "_requests",
                 "_control_running", "_publisher", "_outgoing", "_waiting", "_publishing")

    def __init__(self, sessions: Sessions, stream: trio.abc.Stream, trailing: bytes, grant: Grant | None = None) -> None:
        super().__init__()
        self.sessions = sessions
        self.grant = grant
        self.stream = stream
        self.ws = _ServerConnection(trailing)
        self.sub = self._subscriber(sessions, stream, "ws", ws_frame_of, gap_frame)
        self.unanswered_pings = 0
        self.closing = False
        self.expires: float | None = grant.expires if grant is not None else None
        # Client requests wait here for the control task (both made on demand).
        self._requests: deque[tuple[str, str, str | None]] | None = None
        self._control_running = False
        # Publishing (contract section 10), made on first use: the rules'
        # state, and publishes (drafts, or refusals kept in their order)
        # waiting for the store and the publish task that appends them.
        self._publisher: Publisher | None = None
        self._outgoing: deque[tuple[object, object]] | None = None
        self._waiting = 0  # drafts among them
        self._publishing = False
        # Pings and expiry come from the app's timers; the session's other
        # tasks start on demand (``SessionBase``): an idle one is the reader.

    def tick(self) -> None:
        """Every ``ping_interval``: ping, or close a peer that missed two."""
        if self.closing or self._acting or self.nursery is None:
            return
        if self.unanswered_pings >= 2:
            log.info("closing a websocket that missed two pings")
            self._acting = True
            self._spawn(self.close, 1011, "missed pings")
            return
        self.unanswered_pings += 1
        if self.ws.state is ConnectionState.OPEN:
            self.sub.write(self.ws.send(Ping(payload=PING_PAYLOAD)))

    def _schedule_expiry(self) -> None:
        if self.expires is not None:
            self.sessions.timers.call_at(trio.current_time() + max(0.0, self.expires - self.sessions.now()),
                                         self._expiry_due)

    def _expiry_due(self) -> None:
        # A refresh may have moved the expiry since this was scheduled.
        if self.expires is not None and self.sessions.now() >= self.expires and not self.sub.closed:
            self.wake()

    def refresh(self, token: str | None) -> None:
        """A client's refresh message: a fresh JWT for this connection."""
        auth = self.sessions.auth
        if auth.jwt is None:
            self.error("bad_token", "this relay has no JWT key configured; nothing to refresh")
            return
        try:
            grant = auth.grant(token, self.sessions.now())
        except RelayError as exc:
            self.error(exc.code, exc.detail)
            return
        assert grant is not None  # a relay with a JWT key has auth on
        self.refreshed(grant)

    def refreshed(self, grant: Grant) -> None:
        """A fresh token: it must still cover every current subscription."""
        for pattern in self.sub.patterns:
            if not grant.permits(pattern):
                self.error("forbidden", f"the new token may not read {pattern!r}; nothing changed")
                return
        self.grant = grant
        self.expires = grant.expires
        self._schedule_expiry()
        self.send(wire.Refreshed(expires=grant.expires))

    def send(self, message: wire.Message) -> None:
        self.sub.write(envelope.ws_text_frame(wire.encode(message)))

    def error(self, code: str, detail: str) -> None:
        self.send(wire.Error(error=code, detail=detail))

    def _open(self, patterns: list[str], since: str | None) -> None:
        sessions, sub = self.sessions, self.sub
        hub, store = sessions.hub, sessions.store
        self._schedule_expiry()
        start = store.parse_id(since if since is not None else hub.head)
        sub.subscribe(hub, patterns, resuming=since is not None and bool(patterns), start=start,
                      head=(store.parse_id(hub.head), hub.head))
        self.send(wire.Welcome(id=hub.head, channels=patterns))
        if since is not None and patterns:
            self._request(("resume", ",".join(patterns), since))

    # -- client frames ---------------------------------------------------

    async def _serve(self) -> None:
        """The reader: client frames, until the peer is gone."""
        parts: list[str] = []
        size = 0
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Message):
                    size += len(event.data)
                    if size > self.sessions.max_message:
                        await self.close(1009, "message too big", wait_reply=False)
                        return
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                    if event.message_finished:
                        if isinstance(event, BytesMessage):
                            self.error("bad_message", "send JSON text messages")
                        else:
                            self._on_message("".join(parts))
                        parts, size = [], 0
                elif isinstance(event, Ping):
                    if self.ws.state is ConnectionState.OPEN:  # (no pong after our close frame)
                        self.sub.write(self.ws.send(event.response()))
                elif isinstance(event, Pong):
                    # Only an answer to our ping shows the client reads; an
                    # unsolicited pong (allowed as a heartbeat) shows nothing.
                    if event.payload == PING_PAYLOAD:
                        self.unanswered_pings = 0
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        # The client closes: echo its close, flush, done.
                        self.sub.finish(self.ws.send(event.response()))
                        with trio.move_on_after(CLOSE_WAIT):
                            await self.sub.drained()
                    elif self.ws.state is ConnectionState.OPEN:
                        # wsproto could not parse the client's frames.
                        await self.close(event.code, event.reason or "protocol error", wait_reply=False)
                    return

    def _on_message(self, text: str) -> None:
        if self.closing:
            return  # after our close frame, only the client's close reply matters
        try:
            message = wire.decode_client(text)
        except msgspec.DecodeError as exc:
            self.error("bad_message", f"not a client message: {exc}")
            return
        if isinstance(message, (wire.Subscribe, wire.Unsubscribe)):
            if not message.channel:
                self.error("bad_message", f"{message.type} needs a channel")
                return
            if self._requests is not None and len(self._requests) >= CONTROL_BACKLOG:
                # A client that floods requests faster than they can be served.
                self._spawn(self.close, 1008, "too many requests", False)
            else:
                since = message.since if isinstance(message, wire.Subscribe) else None
                self._request((message.type, message.channel, since))
        elif isinstance(message, wire.Refresh):
            self.refresh(message.token)
        elif isinstance(message, wire.Publish):
            self.publish(message)
        else:
            self.error("bad_message", f"unknown message type {message.type[:40]!r}")

    # -- publishing ------------------------------------------------------

    def publish(self, message: wire.Publish) -> None:
        """A client's publish: checked now (grant, size, schema, rate), then
        stored by the publish task; answered in the order they came."""
        sessions = self.sessions
        key = message.key if isinstance(message.key, str) else None
        if self._publisher is None:
            self._publisher = Publisher(sessions.publish_rules)
        publisher = self._publisher
        outgoing = self._outgoing
        if outgoing is None:
            outgoing = self._outgoing = deque()
        if len(outgoing) >= 4 * PUBLISH_BACKLOG:
            # Answers it does not wait for, faster than the store takes them
            # (closed as for a flood past the rate: read until its reply).
            self._spawn(self.close, 1008, "too many requests")
            return
        now = sessions.now()
        try:
            if self.expires is not None and now >= self.expires:
                raise Forbidden("the token has expired; refresh it to publish")
            draft = publisher.admit(self.grant, message.channel, bytes(message.data), message.key,
                                    trio.current_time(), now)
        except RelayError as exc:
            if isinstance(exc, RateLimited) and publisher.flooding:
                # Closed, but still read until its close reply (within
                # CLOSE_WAIT): closing on unread data would reset the
                # connection and lose the close frame with the reason.
                sessions.published["rate_limited"] += 1
                self._spawn(self.close, 1008, "too many requests")
                return
            outgoing.append((wire.Error(error=exc.code, detail=exc.detail, key=key), exc.code))
        else:
            if self._waiting >= PUBLISH_BACKLOG:
                outgoing.append((wire.Error(error="unavailable", key=key,
                                            detail=f"{self._waiting} publishes of this connection are waiting for "
                                                   "the store; wait for their answers"), "unavailable"))
            else:
                self._waiting += 1
                outgoing.append((draft, key))
        if not self._publishing:
            self._publishing = True
            self._spawn(self._publish_task)

    async def _publish_task(self) -> None:
        """Appends the connection's waiting publishes, a run of them at once,
        and answers each: ``published`` once stored, or the refusal."""
        outgoing, published = self._outgoing, self.sessions.published
        assert outgoing is not None
        try:
            while outgoing:
                head, tag = outgoing[0]
                if isinstance(head, wire.Error):
                    outgoing.popleft()
                    published[str(tag)] += 1
                    self.send(head)
                    continue
                batch = []
                while outgoing and len(batch) < PUBLISH_BATCH and not isinstance(outgoing[0][0], wire.Error):
                    batch.append(outgoing.popleft())
                drafts = [draft for draft, _ in batch]
                try:
                    appended = await self.sessions.store.append(drafts)  # type: ignore[arg-type]
                except StoreUnavailable as exc:
                    for _, key in batch:
                        published["unavailable"] += 1
                        self.send(wire.Error(error="unavailable", detail=exc.detail, key=key))  # type: ignore[arg-type]
                else:
                    for (_, key), done in zip(batch, appended):
                        published["duplicate" if done.duplicate else "published"] += 1
                        self.send(wire.Published(id=done.event.id, channel=done.event.channel,
                                                 key=key))  # type: ignore[arg-type]
                finally:
                    self._waiting -= len(batch)
        finally:
            self._publishing = False

    # -- subscriptions ---------------------------------------------------

    def _request(self, request: tuple[str, str, str | None]) -> None:
        if self._requests is None:
            self._requests = deque()
        self._requests.append(request)
        if not self._control_running:
            # Started on demand: most connections never send a request.
            self._control_running = True
            self._spawn(self._control)

    async def _control(self) -> None:
        try:
            while self._requests:
                await self._serve_request(*self._requests.popleft())
            self._requests = None
        finally:
            self._control_running = False

    async def _replay(self, patterns: list[str], since: str) -> None:
        try:
            await self.sub.replay(self.sessions.store, patterns, since)
        except StoreUnavailable as exc:
            # The events held meanwhile cannot follow without a hole: say why,
            # and close so the client resumes once the store is back.
            log.info("closing a resuming websocket: %s", exc.detail)
            self.send(wire.Error(error="unavailable", detail=exc.detail))
            self._acting = True
            await self.close(1013, "store unavailable")

    async def _serve_request(self, kind: str, channel: str, since: str | None) -> None:
        sub, hub, store = self.sub, self.sessions.hub, self.sessions.store
        if kind == "resume":
            await self._replay(channel.split(","), since or "")
            return
        try:
            pattern = parse_pattern(channel)
        except ValueError as exc:
            self.error("bad_channel", str(exc))
            return
        if kind == "unsubscribe":
            sub.unsubscribe(hub, pattern)
            self.send(wire.Unsubscribed(channel=pattern))
            return
        if since is not None:
            try:
                store.parse_id(since)
            except ValueError as exc:
                self.error("bad_since", str(exc))
                return
        if self.grant is not None:
            try:
                self.grant.check([pattern])  # not a channel this connection may read
            except RelayError as exc:
                self.error(exc.code, exc.detail)
                return
        start = store.parse_id(since if since is not None else hub.head)
        sub.subscribe(hub, [pattern], resuming=since is not None, start=start,
                      head=(store.parse_id(hub.head), hub.head))
        self.send(wire.Subscribed(channel=pattern, id=hub.head))
        if since is not None:
            await self._replay([pattern], since)

    # -- liveness and closing -------------------------------------------

    async def _react(self) -> None:
        sub = self.sub
        if sub.overflowed:
            await self.close(1013, "slow consumer")
        elif sub.flooded:
            await self.close(1008, "too many requests", wait_reply=False)
        elif sub.closed:
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel()  # the peer is gone: nothing to say
        elif self.sessions.stopping.is_set():
            await self.close(1001, "server shutting down")
        elif self.expires is not None and self.sessions.now() >= self.expires:
            await self.close(4001, "token expired")
        else:
            self._acting = False  # nothing to do after all

    async def close(self, code: int, reason: str, wait_reply: bool = True) -> None:
        """Send a close frame, give the client a moment, then end the session."""
        if self.closing:
            return
        self.closing = True
        sub = self.sub
        if self.ws.state is ConnectionState.OPEN:
            frame = self.ws.send(CloseConnection(code=code, reason=reason))
            if code in (1013, 1008):
                # Queued events will come back by resume, and a flooding
                # client's answers are not worth waiting for; only the close
                # frame (after any half-written frame) still has to get through.
                sub.truncate()
            # Nothing follows a close frame (RFC 6455 5.5.1): no event, no pong.
            sub.finish(frame)
        with trio.move_on_after(SLOW_DRAIN if code in (1013, 1008) else CLOSE_WAIT):
            await sub.drained()
            if wait_reply and code != 1013:
                # Wait for the client's close reply (the reader returns on it).
                await trio.sleep_forever()
        self.nursery.cancel_scope.cancel()
