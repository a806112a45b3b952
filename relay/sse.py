"""Server-Sent Events subscribers: ``GET /sse``.

The same subscription as ``/ws`` (channels, patterns, ``since``; the
``Last-Event-ID`` header acts as ``since``) over one long chunked HTTP/1.1
response. Each event is one pre-built chunk (``Event.sse_chunk``: ``id:`` and
``data:`` lines) shared by every SSE subscriber; a ``: ping`` comment goes out
every ``ping_interval``. A slow consumer's stream ends and the browser's
EventSource comes back with ``Last-Event-ID``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .core import cors, envelope
from .core.envelope import Event
from .core.errors import BadRequest, MethodNotAllowed, Unavailable
from .core.errors import StoreUnavailable
from .session import SessionBase
from .core.subscribe import subscription

if TYPE_CHECKING:
    from .app import App
    from .core.grants import Grant
    from .http import HttpConnection, Request

HEARTBEAT = envelope.http_chunk(b": ping\n\n")
END = b"0\r\n\r\n"


def sse_chunk_of(event: Event) -> bytes:
    return event.sse_chunk


def gap_chunk(after: str, next_id: str) -> bytes:
    data = envelope.encode({"type": "gap", "after": after, "next": next_id})
    return envelope.http_chunk(b"event: gap\ndata: " + data + b"\n\n")


async def accept_sse(hc: HttpConnection, request: Request) -> bool:
    app = hc.app
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed; open an event stream with GET", "GET")
    if hc.conn.version != "1.1":
        raise BadRequest("event streams need HTTP/1.1")
    patterns, since = subscription(request.query, request.headers, app.store.parse_id, last_event_id=True,
                                   at_least_one="channel: name at least one channel or pattern, e.g. /sse?channel=github.*")
    grant = app.authorize(request, patterns)
    if not app.may_subscribe():
        raise Unavailable("the relay holds its maximum number of subscribers", retry_after=5.0)
    if since is not None and not app.store.readable:
        raise StoreUnavailable("the event store is not answering; resume later")
    head = hc.conn.switch(200, [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),  # tell nginx not to buffer the stream
        ("transfer-encoding", "chunked"),
        # An EventSource on a page of another allowed origin may read it.
        *cors.headers(app.config.auth.origins, request.headers.get("origin")),
    ])
    await hc.write(head)
    hc.detached = True
    app.tune_subscriber(hc.stream)
    app.hand_off(SseSession(app, hc.stream, grant).run, patterns, since)
    return True


class SseSession(SessionBase):
    __slots__ = ("app", "stream", "grant", "sub")

    def __init__(self, app: App, stream: trio.abc.Stream, grant: Grant | None) -> None:
        super().__init__()
        self.app = app
        self.stream = stream
        self.grant = grant
        self.sub = self._subscriber(app, stream, "sse", sse_chunk_of, gap_chunk)
        # As for websockets: no task waits for a deadline; the app's timers
        # send heartbeats (``tick``) and call back (``wake``) at expiry.

    def tick(self) -> None:
        if not self._acting:
            self.sub.write(HEARTBEAT)

    def _open(self, patterns: list[str], since: str | None) -> None:
        app, sub = self.app, self.sub
        if self.grant is not None and self.grant.expires is not None:
            delay = max(0.0, self.grant.expires - app.now())
            app.timers.call_at(trio.current_time() + delay, self.wake)
        start = app.store.parse_id(since if since is not None else app.hub.head)
        sub.subscribe(app.hub, patterns, resuming=since is not None, start=start,
                      head=(app.store.parse_id(app.hub.head), app.hub.head))
        sub.write(envelope.http_chunk(b"retry: 1000\n: welcome " + app.hub.head.encode() + b"\n\n"))
        if since is not None:
            self._spawn(self._replay, patterns, since)

    async def _replay(self, patterns: list[str], since: str) -> None:
        try:
            await self.sub.replay(self.app.store, patterns, since)
        except StoreUnavailable:
            # The held events cannot follow without a hole: end the stream;
            # the browser's EventSource comes back with Last-Event-ID.
            self.wake()

    async def _react(self) -> None:
        """Any alarm ends the stream: shutdown, slow consumer, browser gone,
        token expired."""
        sub = self.sub
        if not sub.closed:
            if sub.overflowed or sub.flooded:
                sub.truncate()
            # The last chunk: nothing may follow it.
            sub.finish(END)
            with trio.move_on_after(1.0):
                await sub.drained()
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    async def _serve(self) -> None:
        # An EventSource never sends; end of input means the browser left.
        try:
            while await self.stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.sub.lost()

