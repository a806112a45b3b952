"""Which handler answers a request, and what a handler may do with the
connection its request came on.

``Router.dispatch`` picks the handler by path: ``/hooks/<route>`` (webhooks),
``/ws`` and ``/sse`` (the fan-out's upgrades), ``/healthz`` and ``/readyz``,
``/metrics``, the admin views, the inspector, and the CORS preflight of the
paths a page on another origin may read. A handler gets the request (what
the parser read, as ``core.request.Request``) and a ``Responder``: read the
body, answer once, or take the stream over for a subscriber. It never sees
the parser. The ``RelayError`` a handler raises becomes its answer here.

``Responder`` is the answering half of ``connection.HttpConnection`` (its
base class) rather than an object made per request: the webhook path, the
hottest, pays for no extra object and no extra call.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Sequence
from typing import Protocol

import trio

from ..core import cors, envelope, http1
from ..core.errors import BadRequest, MethodNotAllowed, NotFound, RateLimited, RelayError, TooLarge, Unavailable
from ..core.request import Request, forwarded_client
from ..fanout.session import Sessions
from ..fanout.sse import accept_sse
from ..fanout.ws import accept_websocket
from ..net.sockets import send_now
from ..net.tls import TlsStream

BODY_TIMEOUT = 30.0
RECEIVE = 65536
# At shutdown, body reads stop this long (at most half the time left) before
# the connections are cancelled, so a webhook still arriving gets its 503.
ANSWER_MARGIN = 0.5

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


class Closing:
    """Shutdown as every connection sees it: whether the relay is stopping,
    and when the waits for request bodies end (``end_body_reads``)."""

    __slots__ = ("stopping", "reading", "body_end", "deadline")

    def __init__(self, stopping: trio.Event) -> None:
        self.stopping = stopping
        # Webhooks waiting for body bytes: at shutdown they are answered 503.
        self.reading: set[trio.CancelScope] = set()
        self.body_end = float("inf")
        self.deadline = float("inf")  # when the connections are cancelled (shutdown)

    def end_body_reads(self, deadline: float) -> None:
        """At shutdown, with the connections to be cancelled at ``deadline``:
        a webhook whose body is still arriving a margin before then is
        answered 503 with Retry-After, so its sender retries, instead of
        losing its connection with no answer. The margin leaves the answer
        time to leave and the client time to read it, within the grace."""
        self.deadline = deadline
        self.body_end = deadline - min(ANSWER_MARGIN, (deadline - trio.current_time()) / 2)
        for scope in list(self.reading):
            scope.deadline = min(scope.deadline, self.body_end)


class Responder:
    """One request's exchange with its client: the body, the answer, the
    stream. ``HttpConnection`` is one; handlers use its public methods and
    nothing else of it (the parser, ``_http``, is the connection's own)."""

    __slots__ = ("stream", "_http", "fd", "head", "detached", "peer", "closing", "trusted")

    def __init__(self, stream: trio.abc.Stream, parser: http1.Connection, fd: int | None, closing: Closing,
                 trusted: Networks) -> None:
        self.stream = stream
        self._http = parser
        self.fd = fd
        self.head = False  # the request is a HEAD: the answer's headers only
        self.detached = False  # the stream now belongs to a subscriber session
        self.peer: str | None = None  # the socket's peer address, looked up once
        self.closing = closing
        self.trusted = trusted

    # -- the request ------------------------------------------------------

    @property
    def version(self) -> str:
        return self._http.version

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
        return forwarded_client(peer, request.headers.get("x-forwarded-for"), self.trusted)

    async def read_body(self, limit: int) -> bytes:
        """The body, at most ``limit`` bytes, all of it within BODY_TIMEOUT.
        What the parser already holds is taken without a cancel scope: a small
        webhook's body usually came in the same read as its head. A shutdown
        ends the wait early (``Closing.end_body_reads``): Unavailable, a 503."""
        deadline = trio.current_time() + BODY_TIMEOUT
        chunks: list[bytes] = []
        size = 0
        conn = self._http
        closing = self.closing
        reading = closing.reading
        while True:
            event = conn.next_event()
            if event is http1.NEED_DATA:
                with trio.CancelScope(deadline=min(deadline, closing.body_end)) as scope:
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

    # -- the answer ---------------------------------------------------------

    async def send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> None:
        hs = [("content-type", content_type), ("content-length", str(len(body)))]
        if headers:
            hs.extend(headers)
        if self.closing.stopping.is_set() and ("connection", "close") not in hs:
            hs.append(("connection", "close"))
        # A HEAD answer has the headers of GET, no body.
        await self.write(self._http.respond(status, hs, b"" if self.head else body))

    async def send_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        """An answer with no body and so no Content-Length (RFC 9110 8.6:
        a 204), which ``send`` would add."""
        if self.closing.stopping.is_set():
            headers.append(("connection", "close"))
        await self.write(self._http.respond(status, headers))

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

    async def fail(self, error: RelayError, status: int | None = None) -> None:
        """Answer ``error``, unless an answer has begun already."""
        if self._http.our_state is not http1.SEND_RESPONSE:
            return
        if status is not None:
            error.status = status
        await self.send_error(error)

    async def bad_http(self, exc: http1.ProtocolError) -> None:
        """Answer a request the parser refused; the connection ends after it."""
        if self._http.our_state in (http1.IDLE, http1.SEND_RESPONSE):
            body = envelope.encode({"error": "bad_request", "detail": f"malformed HTTP: {exc.detail}"})
            data = self._http.refuse(exc.status, [
                ("content-type", "application/json"), ("content-length", str(len(body)))], body)
            await self.write(data)

    async def switch(self, status: int, headers: list[tuple[str, str]]) -> tuple[trio.abc.Stream, bytes]:
        """Send the head that ends HTTP on this connection (a 101, an event
        stream's 200); the stream now belongs to a subscriber session. The
        stream, and the bytes read past the request."""
        await self.write(self._http.switch(status, headers))
        self.detached = True
        return self.stream, self._http.trailing_data

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


class Handler(Protocol):
    def answer(self, request: Request, responder: Responder) -> Awaitable[None]: ...


async def only_get(request: Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed here", "GET")


class Router:
    """The relay's paths and who answers each."""

    def __init__(self, *, webhooks: Handler, sessions: Sessions, ops: Handler, metrics: Handler, admin: Handler,
                 inspector: Handler, origins: Sequence[str] | None, endpoints: Handler) -> None:
        self.endpoints = endpoints
        self.webhooks = webhooks
        self.sessions = sessions
        self.ops = ops
        self.metrics = metrics
        self.admin = admin
        self.inspector = inspector
        self.origins = origins  # auth.origins, for the CORS preflight

    async def dispatch(self, request: Request, responder: Responder) -> bool:
        """Answer one request; True when the connection was upgraded."""
        path = request.path
        responder.head = request.method == "HEAD"
        try:
            if request.method == "OPTIONS" and path in cors.PATHS:
                await self._preflight(request, responder)  # a page on another origin asks first
            elif path.startswith("/hooks/"):
                await self.webhooks.answer(request, responder)
            elif path == "/ws":
                return await accept_websocket(request, responder, self.sessions)
            elif path == "/sse":
                return await accept_sse(request, responder, self.sessions)
            elif path in ("/healthz", "/readyz"):
                await self.ops.answer(request, responder)
            elif path == "/metrics":
                await self.metrics.answer(request, responder)
            elif path in ("/admin/routes", "/admin/channels"):
                await self.admin.answer(request, responder)
            elif path == "/admin/endpoints" or path.startswith("/admin/endpoints/"):
                await self.endpoints.answer(request, responder)
            elif path == "/":
                await self.inspector.answer(request, responder)
            else:
                raise NotFound(f"nothing at {path[:200]!r}")
        except RelayError as error:
            await responder.fail(error)
        except http1.ProtocolError as exc:
            await responder.bad_http(exc)
        except trio.TooSlowError:
            await responder.fail(BadRequest("request body timed out"), status=408)
        return False

    async def _preflight(self, request: Request, responder: Responder) -> None:
        origin = request.headers.get("origin")
        status, hs = cors.preflight(self.origins, origin)
        if status == 403:
            body = envelope.encode({"error": "forbidden", "detail": f"Origin {(origin or '')[:200]!r} is not allowed"})
            await responder.send(403, body, hs)
            return
        await responder.send_empty(status, hs)
