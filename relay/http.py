"""The one listening port: HTTP/1.1 with keep-alive, the trio shell around
the pure state machine of ``http1.py``.

Each connection is a loop of requests. Webhooks go to ``App.ingest``;
``GET /ws`` is answered with a 101 here and the rest of the stream is handed
to the WebSocket session; ``/healthz`` and ``/readyz`` answer here.

Why our parser plus wsproto's ``Connection`` rather than trio-websocket: the
request line and headers have already been parsed when we learn a request is
an upgrade, and trio-websocket's server handshake insists on reading the
request itself. Rather than replay bytes into it, we send the 101 and
wsproto's post-handshake ``Connection`` takes the bytes read past the request
(``trailing_data``). That keeps one parser per protocol and leaves the send
path free to write pre-built frames shared by all subscribers, which
trio-websocket's ``send_message`` (encode per connection, lock, always yield)
cannot do. ``http1.py`` says why the parser is our own.

Timeouts map to statuses at this edge: headers must arrive within
``HEADER_TIMEOUT`` (slowloris), a body within ``BODY_TIMEOUT``; an idle
keep-alive connection is closed after ``IDLE_TIMEOUT``, and an answer that
takes over ``ANSWER_TIMEOUT`` (a store stalled that long) ends its
connection.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import TYPE_CHECKING

import trio

from .core import cors, envelope, http1
from .core.errors import BadRequest, MethodNotAllowed, NotFound, RelayError, TooLarge
from .core.errors import RateLimited, Unavailable
from .core.ingest import Challenge, find_route
from .core.request import Request, forwarded_client, request_of
from .fanout.sse import accept_sse
from .fanout.ws import accept_websocket
from .net.sockets import raw_fd, send_now
from .net.tls import TlsStream

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("relay.http")

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
IDLE_TIMEOUT = 75.0
ANSWER_TIMEOUT = 60.0  # a request's whole answer, body included (a webhook waits for its commit)
RECEIVE = 65536
UNREAD_BODY_LIMIT = 65536
LINGER = 2.0  # seconds, and bytes, a refused client's unread input is drained
LINGER_BYTES = 8 * 1024 * 1024
# At shutdown, body reads stop this long (at most half the time left) before
# the connections are cancelled, so a webhook still arriving gets its 503.
ANSWER_MARGIN = 0.5
# The status logged and counted for a webhook whose client went away before
# any answer could be sent (nginx's "client closed request"): none was sent.
CLIENT_GONE = 499


def end_body_reads(app: App, deadline: float) -> None:
    """At shutdown (``app.serve``), with the connections to be cancelled at
    ``deadline``: a webhook whose body is still arriving a margin before then
    is answered 503 with Retry-After, so its sender retries, instead of
    losing its connection with no answer. The margin leaves the answer time
    to leave and the client time to read it, within the grace."""
    app.body_end = deadline - min(ANSWER_MARGIN, (deadline - trio.current_time()) / 2)
    for scope in list(app.reading):
        scope.deadline = min(scope.deadline, app.body_end)


class HttpConnection:
    """One client connection, from its first request until it closes or upgrades."""

    def __init__(self, app: App, stream: trio.abc.Stream) -> None:
        self.app = app
        self.stream = stream
        self.conn = http1.Connection(MAX_HEADER_BYTES)
        self.head = False
        self.detached = False  # the stream now belongs to a subscriber session
        self.peer: str | None = None  # the socket's peer address, looked up once
        self.fd = raw_fd(stream)

    async def send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> None:
        hs = [("content-type", content_type), ("content-length", str(len(body)))]
        if headers:
            hs.extend(headers)
        if self.app.stopping.is_set() and ("connection", "close") not in hs:
            hs.append(("connection", "close"))
        # A HEAD answer has the headers of GET, no body.
        await self.write(self.conn.respond(status, hs, b"" if self.head else body))

    @property
    def version(self) -> str:
        return self.conn.version

    async def switch(self, status: int, headers: list[tuple[str, str]]) -> tuple[trio.abc.Stream, bytes]:
        """Send the head that ends HTTP on this connection (a 101, an event
        stream's 200); the stream now belongs to a subscriber session. The
        stream, and the bytes read past the request."""
        await self.write(self.conn.switch(status, headers))
        self.detached = True
        return self.stream, self.conn.trailing_data

    async def write(self, data: bytes) -> None:
        """Try one non-blocking write first: an answer nearly always fits the
        socket buffer, and ``send_all`` costs two trips through the
        scheduler per answer. The loop still yields at every read. Over TLS
        the answer is encrypted and written the same way (``try_send``)."""
        if self.fd is not None:
            sent = send_now(self.fd, data)
            if sent == len(data):
                return
            data = data[sent:]
        elif isinstance(self.stream, TlsStream) and self.stream.try_send(data):
            if not self.stream.backed_up:
                return
            data = b""  # taken; what is left of its ciphertext is flushed
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        """The next bytes from the client (b"" at its end). On a plain socket
        a direct non-blocking read: when the bytes are not there yet, one
        wait for readability is the only trip through the scheduler
        (``receive_some`` takes a second one after every read)."""
        fd = self.fd
        if fd is None:
            return await self.stream.receive_some(RECEIVE)
        waited = False
        while True:
            try:
                data = os.read(fd, RECEIVE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"the client is gone: {exc}") from None
            if not waited:
                await trio.lowlevel.checkpoint()  # data was waiting: still let others run
            return data

    async def send_error(self, error: RelayError) -> None:
        headers: list[tuple[str, str]] = []
        if isinstance(error, MethodNotAllowed):
            headers.append(("allow", error.allow))
        if isinstance(error, (RateLimited, Unavailable)):
            headers.append(("retry-after", str(max(1, int(error.retry_after + 0.999)))))
        if error.status in (408, 413):
            # The body was not read to its end (too slow, too large): what
            # follows on this connection cannot be told from the rest of it.
            headers.append(("connection", "close"))
        body = envelope.encode({"error": error.code, "detail": error.detail})
        await self.send(error.status, body, headers)

    async def _close(self) -> None:
        conn = self.conn
        if conn.their_state in (http1.SEND_BODY, http1.ERROR) and conn.our_state in (http1.DONE, http1.MUST_CLOSE):
            # We answered (413, 400) before reading all the client sent.
            # Closing with unread bytes makes the kernel reset the
            # connection, and the client may never see our answer: shut
            # our side, then read and discard a bounded amount first.
            with trio.move_on_at(self._linger_end()) as scope:
                scope.shield = True
                try:
                    await self.stream.send_eof()  # type: ignore[attr-defined]
                    drained = 0
                    while drained < LINGER_BYTES:
                        data = await self.stream.receive_some(RECEIVE)
                        if not data:
                            break
                        drained += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
                    pass
        if self.fd is not None:
            # A plain socket closes at once, cancelled or not; only TLS has a
            # goodbye to send, under a shield and a bound.
            await self.stream.aclose()
            return
        with trio.move_on_at(self._linger_end()) as scope:
            scope.shield = True
            await self.stream.aclose()

    def _linger_end(self) -> float:
        """LINGER from now, but never past the shutdown's deadline for connections."""
        return min(trio.current_time() + LINGER, self.app.conns.cancel_scope.deadline)

    async def serve(self) -> None:
        try:
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not self.detached:
                await self._close()

    async def _read_head(self, scope: trio.CancelScope) -> object:
        """The next request head, read under ``scope``: its deadline is the
        wait for the first byte (idle keep-alive); once that byte came, the
        rest must follow within HEADER_TIMEOUT. One scope per request whose
        deadline moves is cheaper than a ``fail_after`` per read."""
        event = self.conn.next_event()
        if event is http1.NEED_DATA:
            self.conn.receive_data(await self.receive())
            event = self.conn.next_event()
            if event is http1.NEED_DATA:
                scope.deadline = trio.current_time() + HEADER_TIMEOUT
                while event is http1.NEED_DATA:
                    self.conn.receive_data(await self.receive())
                    event = self.conn.next_event()
        return event

    async def _serve(self) -> None:
        app, conn = self.app, self.conn
        # One cancel scope for the connection's life. Its deadline is the
        # idle wait, then the header timeout, while a request head is due;
        # an answer gets at least ANSWER_TIMEOUT. Moving a deadline costs a
        # few µs, so on a busy connection it moves about once a second, not
        # twice per request. Shutdown cancels the scopes in ``app.idle``:
        # connections waiting between requests, never one in the middle of
        # an answer.
        with trio.CancelScope(deadline=trio.current_time() + HEADER_TIMEOUT) as scope:
            while True:
                app.idle.add(scope)
                try:
                    if app.stopping.is_set():
                        return
                    event = await self._read_head(scope)
                except http1.ProtocolError as exc:
                    app.idle.discard(scope)
                    scope.deadline = math.inf  # the 400 is not held to the header timeout
                    await self._bad_http(exc)
                    return
                finally:
                    app.idle.discard(scope)
                if event is http1.CONNECTION_CLOSED or scope.cancel_called:
                    return  # (a deadline or shutdown that came with the head: no half answer)
                now = trio.current_time()
                if scope.deadline < now + ANSWER_TIMEOUT:
                    scope.deadline = now + ANSWER_TIMEOUT
                assert isinstance(event, http1.Request), event
                if await self._dispatch(request_of(event)):
                    return  # upgraded: the WebSocket session owned the stream
                if conn.their_state is http1.SEND_BODY and conn.our_state is http1.DONE:
                    # A request we answered without needing its body (a GET,
                    # usually empty): read past it so the connection can be reused.
                    try:
                        await self._read_body(UNREAD_BODY_LIMIT)
                    except (RelayError, http1.ProtocolError, trio.TooSlowError):
                        return
                if conn.our_state is not http1.DONE or conn.their_state is not http1.DONE:
                    return
                if app.stopping.is_set():
                    return
                conn.start_next_cycle()
                now = trio.current_time()
                if scope.deadline < now + IDLE_TIMEOUT - 1.0:
                    scope.deadline = now + IDLE_TIMEOUT

    async def _bad_http(self, exc: http1.ProtocolError) -> None:
        if self.conn.our_state in (http1.IDLE, http1.SEND_RESPONSE):
            body = envelope.encode({"error": "bad_request", "detail": f"malformed HTTP: {exc.detail}"})
            data = self.conn.refuse(exc.status, [
                ("content-type", "application/json"), ("content-length", str(len(body)))], body)
            await self.write(data)

    async def _read_body(self, limit: int) -> bytes:
        """The body, at most ``limit`` bytes, all of it within BODY_TIMEOUT.
        What the parser already holds is taken without a cancel scope: a small
        webhook's body usually came in the same read as its head. A shutdown
        ends the wait early (``end_body_reads``): Unavailable, a 503."""
        deadline = trio.current_time() + BODY_TIMEOUT
        chunks: list[bytes] = []
        size = 0
        conn = self.conn
        reading = self.app.reading
        while True:
            event = conn.next_event()
            if event is http1.NEED_DATA:
                with trio.CancelScope(deadline=min(deadline, self.app.body_end)) as scope:
                    reading.add(scope)
                    try:
                        if conn.client_waits:  # Expect: 100-continue
                            await self.write(conn.send_continue())
                        conn.receive_data(await self.receive())
                    finally:
                        reading.discard(scope)
                if scope.cancelled_caught:
                    if trio.current_time() < deadline:
                        raise Unavailable("the relay is shutting down; send the request again")
                    raise trio.TooSlowError
            elif event is http1.END_OF_MESSAGE:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            else:
                assert isinstance(event, http1.Data), event
                size += len(event.data)
                if size > limit:
                    raise TooLarge(f"body is over the limit of {limit} bytes")
                chunks.append(event.data)

    async def _dispatch(self, request: Request) -> bool:
        """Answer one request; True when the connection was upgraded."""
        path = request.path
        self.head = request.method == "HEAD"
        try:
            if request.method == "OPTIONS" and path in cors.PATHS:
                await self._preflight(request)  # a page on another origin asks first
            elif path.startswith("/hooks/"):
                await self._webhook(request, path[len("/hooks/"):])
            elif path == "/ws":
                return await accept_websocket(request, self, self.app.fanout)
            elif path == "/sse":
                return await accept_sse(request, self, self.app.fanout)
            elif path == "/healthz":
                await self._only_get(request)
                await self.send(200, b'{"status":"ok"}')
            elif path == "/readyz":
                await self._only_get(request)
                ok = await self.app.ready()
                await self.send(200 if ok else 503, b'{"status":"ok"}' if ok else b'{"status":"unavailable"}')
            elif path == "/metrics":
                from . import metrics
                await metrics.answer(self, request)
            elif path in ("/admin/routes", "/admin/channels"):
                from . import admin
                await admin.answer(self, request)
            elif path == "/":
                from . import inspector
                await inspector.answer(self, request)
            else:
                raise NotFound(f"nothing at {path[:200]!r}")
        except RelayError as error:
            await self._fail(error)
        except http1.ProtocolError as exc:
            await self._bad_http(exc)
        except trio.TooSlowError:
            await self._fail(BadRequest("request body timed out"), status=408)
        return False

    async def _preflight(self, request: Request) -> None:
        origin = request.headers.get("origin")
        status, hs = cors.preflight(self.app.config.auth.origins, origin)
        if status == 403:
            body = envelope.encode({"error": "forbidden", "detail": f"Origin {(origin or '')[:200]!r} is not allowed"})
            await self.send(403, body, hs)
            return
        # A 204 has no body and so no Content-Length (RFC 9110 8.6), which
        # ``send`` would add.
        if self.app.stopping.is_set():
            hs.append(("connection", "close"))
        await self.write(self.conn.respond(status, hs))

    async def _fail(self, error: RelayError, status: int | None = None) -> None:
        if self.conn.our_state is not http1.SEND_RESPONSE:
            return
        if status is not None:
            error.status = status
        await self.send_error(error)

    async def _only_get(self, request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not allowed here", "GET")

    def client_address(self, request: Request) -> str | None:
        """The peer's address; behind a trusted proxy, the client it names in
        X-Forwarded-For. The header of anyone else is ignored: it is a claim."""
        peer = self.peer
        if peer is None:
            stream = getattr(self.stream, "transport_stream", self.stream)
            try:
                peer = self.peer = stream.socket.getpeername()[0]  # type: ignore[attr-defined]
            except (AttributeError, OSError):
                return None
        return forwarded_client(peer, request.headers.get("x-forwarded-for"), self.app.trusted_proxies)

    async def _webhook(self, request: Request, name: str) -> None:
        """Answer one webhook, refusals included, then log and count the
        status that was sent: ``CLIENT_GONE`` when the client left before any
        answer, 500 only for a failure of the relay's own."""
        started = time.perf_counter()
        received = time.time()
        monotonic = trio.current_time()
        app = self.app
        route = None
        status = 500
        appended = None
        delivery = None
        try:
            try:
                route = find_route(app.routes, name)
                if request.method != "POST":
                    raise MethodNotAllowed(f"{request.method} is not allowed; webhooks are POSTed", "POST")
                limit = app.config.server.max_body_bytes
                length = request.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise TooLarge(f"Content-Length {length} is over the limit of {limit} bytes")
                body = await self._read_body(limit)
                route.admit(monotonic)
                draft = route.prepare(request.headers, body, received)
                if isinstance(draft, Challenge):
                    await self.send(200, envelope.encode({"challenge": draft.challenge}))
                    status = 200
                    return
                draft.received = monotonic
                delivery = draft.delivery
                (appended,) = await app.store.append([draft])
                event = appended.event
                answer = 200 if appended.duplicate else 202
                await self.send(answer, envelope.encode({"id": event.id, "channel": event.channel,
                                                         "duplicate": appended.duplicate}))
                status = answer
            except RelayError as error:
                await self._fail(error)
                status = error.status
            except http1.ProtocolError as exc:  # a malformed body, or one cut short
                await self._bad_http(exc)
                status = exc.status
            except trio.TooSlowError:
                await self._fail(BadRequest("request body timed out"), status=408)
                status = 408
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            status = CLIENT_GONE
            raise
        finally:
            app.webhook_done(name, route, status, appended, delivery, time.perf_counter() - started,
                             self.client_address(request))
