"""One HTTP/1.1 connection with keep-alive: the trio shell around the pure
state machine of ``core/http1.py``.

Each connection is a loop of requests: read a head, have the router answer
it (``router.py``), read past a body nobody needed, and wait for the next
one. An upgrade (``/ws``, ``/sse``) ends the loop: the stream belongs to a
subscriber session from then on (``relay.fanout``).

Why our parser plus wsproto's ``Connection`` rather than trio-websocket: the
request line and headers have already been parsed when we learn a request is
an upgrade, and trio-websocket's server handshake insists on reading the
request itself. Rather than replay bytes into it, we send the 101 and
wsproto's post-handshake ``Connection`` takes the bytes read past the request
(``trailing_data``). That keeps one parser per protocol and leaves the send
path free to write pre-built frames shared by all subscribers, which
trio-websocket's ``send_message`` (encode per connection, lock, always yield)
cannot do. ``core/http1.py`` says why the parser is our own.

Timeouts map to statuses at this edge: headers must arrive within
``HEADER_TIMEOUT`` (slowloris), a body within ``router.BODY_TIMEOUT``; an
idle keep-alive connection is closed after ``IDLE_TIMEOUT``, and an answer
that takes over ``ANSWER_TIMEOUT`` (a store stalled that long) ends its
connection.
"""

from __future__ import annotations

import math

import trio

from ..core import http1
from ..core.errors import RelayError
from ..core.limits import Waiting
from ..core.request import request_of
from ..net.sockets import raw_fd
from .router import RECEIVE, Closing, Networks, Responder, Router

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
ANSWER_TIMEOUT = 60.0  # a request's whole answer, body included (a webhook waits for its commit)
UNREAD_BODY_LIMIT = 65536
LINGER = 2.0  # seconds, and bytes, a refused client's unread input is drained
LINGER_BYTES = 8 * 1024 * 1024


class Server:
    """What every HTTP connection shares: the router, shutdown's state, the
    listener's list of connections waiting for a request, the proxies whose
    X-Forwarded-For is believed."""

    __slots__ = ("router", "closing", "idle", "trusted")

    def __init__(self, router: Router, closing: Closing, idle: Waiting[trio.CancelScope], trusted: Networks) -> None:
        self.router = router
        self.closing = closing
        self.idle = idle
        self.trusted = trusted

    def connection(self, stream: trio.abc.Stream) -> HttpConnection:
        return HttpConnection(self, stream)


class HttpConnection(Responder):
    """One client connection, from its first request until it closes or upgrades."""

    __slots__ = ("idle", "dispatch")

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        super().__init__(stream, http1.Connection(MAX_HEADER_BYTES), raw_fd(stream), server.closing, server.trusted)
        self.idle = server.idle
        self.dispatch = server.router.dispatch

    async def serve(self) -> None:
        try:
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not self.detached:
                await self._close()

    async def _close(self) -> None:
        conn = self._http
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
        return min(trio.current_time() + LINGER, self.closing.deadline)

    async def _read_head(self, scope: trio.CancelScope) -> object:
        """The next request head, read under ``scope``: its deadline is the
        wait for the first byte (idle keep-alive); once that byte came, the
        rest must follow within HEADER_TIMEOUT. One scope per request whose
        deadline moves is cheaper than a ``fail_after`` per read."""
        event = self._http.next_event()
        if event is http1.NEED_DATA:
            self._http.receive_data(await self.receive())
            event = self._http.next_event()
            if event is http1.NEED_DATA:
                scope.deadline = trio.current_time() + HEADER_TIMEOUT
                while event is http1.NEED_DATA:
                    self._http.receive_data(await self.receive())
                    event = self._http.next_event()
        return event

    async def _serve(self) -> None:
        conn, idle, stopping = self._http, self.idle, self.closing.stopping
        # One cancel scope for the connection's life. Its deadline is the
        # idle wait, then the header timeout, while a request head is due;
        # an answer gets at least ANSWER_TIMEOUT. Moving a deadline costs a
        # few µs, so on a busy connection it moves about once a second, not
        # twice per request. Shutdown cancels the scopes in ``idle``:
        # connections waiting between requests, never one in the middle of
        # an answer.
        with trio.CancelScope(deadline=trio.current_time() + HEADER_TIMEOUT) as scope:
            while True:
                idle.add(scope)
                try:
                    if stopping.is_set():
                        return
                    event = await self._read_head(scope)
                except http1.ProtocolError as exc:
                    idle.discard(scope)
                    scope.deadline = math.inf  # the 400 is not held to the header timeout
                    await self.bad_http(exc)
                    return
                finally:
                    idle.discard(scope)
                if event is http1.CONNECTION_CLOSED or scope.cancel_called:
                    return  # (a deadline or shutdown that came with the head: no half answer)
                now = trio.current_time()
                if scope.deadline < now + ANSWER_TIMEOUT:
                    scope.deadline = now + ANSWER_TIMEOUT
                assert isinstance(event, http1.Request), event
                if await self.dispatch(request_of(event), self):
                    return  # upgraded: a subscriber session owns the stream
                if conn.their_state is http1.SEND_BODY and conn.our_state is http1.DONE:
                    # A request we answered without needing its body (a GET,
                    # usually empty): read past it so the connection can be reused.
                    try:
                        await self.read_body(UNREAD_BODY_LIMIT)
                    except (RelayError, http1.ProtocolError, trio.TooSlowError):
                        return
                if conn.our_state is not http1.DONE or conn.their_state is not http1.DONE:
                    return
                if stopping.is_set():
                    return
                conn.start_next_cycle()
                now = trio.current_time()
                if scope.deadline < now + IDLE_TIMEOUT - 1.0:
                    scope.deadline = now + IDLE_TIMEOUT
