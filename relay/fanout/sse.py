"""Server-Sent Events subscribers: ``GET /sse``.

The same subscription as ``/ws`` (channels, patterns, ``since``; the
``Last-Event-ID`` header acts as ``since``) over one long chunked HTTP/1.1
response. Each event is one pre-built chunk (``Event.sse_chunk``: ``id:`` and
``data:`` lines) shared by every SSE subscriber; a ``: ping`` comment goes out
every ``ping_interval``. A slow consumer's stream ends and the browser's
EventSource comes back with ``Last-Event-ID``.
"""

from __future__ import annotations

import trio

from ..core import cors, envelope, wire
from ..core.envelope import Event
from ..core.errors import BadRequest, StoreUnavailable
from ..core.grants import Grant
from ..core.request import Request
from . import upgrade
from .session import SessionBase, Sessions

HEARTBEAT = envelope.http_chunk(b": ping\n\n")
END = b"0\r\n\r\n"


def sse_chunk_of(event: Event) -> bytes:
    return event.sse_chunk


def gap_chunk(after: str, next_id: str) -> bytes:
    data = wire.encode(wire.Gap(after=after, next=next_id))
    return envelope.http_chunk(b"event: gap\ndata: " + data + b"\n\n")


async def accept_sse(request: Request, answer: upgrade.Answer, sessions: Sessions) -> bool:
    """Answer ``GET /sse``; True once the stream has begun."""
    upgrade.check_method(request, "an event stream")
    if answer.version != "1.1":
        raise BadRequest("event streams need HTTP/1.1")
    patterns, since = upgrade.read(
        request, sessions, last_event_id=True,
        at_least_one="channel: name at least one channel or pattern, e.g. /sse?channel=github.*")
    grant = upgrade.admit(request, sessions, patterns, since)
    stream, _ = await upgrade.take_over(answer, sessions, 200, [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),  # tell nginx not to buffer the stream
        ("transfer-encoding", "chunked"),
        # An EventSource on a page of another allowed origin may read it.
        *cors.headers(sessions.origins, request.headers.get("origin")),
    ])
    sessions.start(SseSession(sessions, stream, grant), patterns, since)
    return True


class SseSession(SessionBase):
    __slots__ = ("sessions", "stream", "grant", "sub")

    def __init__(self, sessions: Sessions, stream: trio.abc.Stream, grant: Grant | None) -> None:
        super().__init__()
        self.sessions = sessions
        self.stream = stream
        self.grant = grant
        self.sub = self._subscriber(sessions, stream, "sse", sse_chunk_of, gap_chunk)
        # As for websockets: no task waits for a deadline; the app's timers
        # send heartbeats (``tick``) and call back (``wake``) at expiry.

    def tick(self) -> None:
        if not self._acting:
            self.sub.write(HEARTBEAT)

    def _open(self, patterns: list[str], since: str | None) -> None:
        sessions, sub = self.sessions, self.sub
        hub, store = sessions.hub, sessions.store
        if self.grant is not None and self.grant.expires is not None:
            delay = max(0.0, self.grant.expires - sessions.now())
            sessions.timers.call_at(trio.current_time() + delay, self.wake)
        start = store.parse_id(since if since is not None else hub.head)
        sub.subscribe(hub, patterns, resuming=since is not None, start=start,
                      head=(store.parse_id(hub.head), hub.head))
        sub.write(envelope.http_chunk(b"retry: 1000\n: welcome " + hub.head.encode() + b"\n\n"))
        if since is not None:
            self._spawn(self._replay, patterns, since)

    async def _replay(self, patterns: list[str], since: str) -> None:
        try:
            await self.sub.replay(self.sessions.store, patterns, since)
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

