"""A webhook receiver for the outbound tests: a real HTTP/1.1 server on port
0 (h11 over trio) that records every request and answers as the test says
(a status, a Retry-After, a delay, or never). By default it answers with
``Connection: close``; with ``keep_alive`` it keeps connections open for
more requests, and counts the connections it accepted and saw closed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ssl

import h11
import trio


@dataclass
class Received:
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # trio time


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer
    close: bool = False  # close the connection after this answer, without saying so first
    drop: bool = False  # read the request and close the connection without an answer


class Receiver:
    def __init__(self, answer: Callable[[Received], Reply] | None = None, *, keep_alive: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer or (lambda _: Reply())
        self.keep_alive = keep_alive
        self.tls = tls
        self.got: list[Received] = []  # every request read, answered or dropped
        self.answered = 0
        self.accepted = 0  # connections
        self.closed = 0  # connections ended (by either side)
        self.port = 0
        self._more = trio.lowlevel.ParkingLot()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        self.accepted += 1
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    got = Received(request.target.decode(), {k.decode().lower(): v.decode() for k, v in request.headers},
                                   body, trio.current_time())
                    self.got.append(got)
                    self._more.unpark_all()
                    reply = self.answer(got)
                    if reply.drop:
                        return
                    if reply.hang:
                        await trio.sleep_forever()
                    if reply.delay:
                        await trio.sleep(reply.delay)
                    closing = [] if self.keep_alive else [("connection", "close")]
                    self.answered += 1  # before the client can see the answer
                    await stream.send_all(conn.send(h11.Response(
                        status_code=reply.status,
                        headers=[("content-length", str(len(reply.body))), *closing, *reply.headers])))
                    await stream.send_all(conn.send(h11.Data(data=reply.body)) + conn.send(h11.EndOfMessage()))
                    if not self.keep_alive or reply.close or conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
            self.closed += 1
            self._more.unpark_all()

    async def until(self, n: int, timeout: float = 20.0) -> list[Received]:
        with trio.fail_after(timeout):
            while len(self.got) < n:
                await self._more.park()
        return self.got

    async def until_closed(self, n: int, timeout: float = 20.0) -> None:
        """Wait until ``n`` connections in all have ended."""
        with trio.fail_after(timeout):
            while self.closed < n:
                await self._more.park()

    def ids(self) -> list[str]:
        return [r.headers.get("webhook-id", "") for r in self.got]
