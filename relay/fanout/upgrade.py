"""The steps every subscription request passes before its connection
becomes a session, the same for ``GET /ws`` and ``GET /sse``, in this order:

1. ``check_method``: GET only (405);
2. the transport's own checks of its handshake (``ws.py``, ``sse.py``);
3. ``read``: the channels and ``since`` (400; ``core.subscribe``);
4. the transport's own checks of what was asked (the WebSocket subprotocol);
5. ``admit``: the Origin, the token and the channels it may read (403, 401),
   room for one more subscriber (503), and, for a resume, a store that can
   be read (503) - all before anything is sent;
6. ``take_over``: the answer's head is written and the stream leaves the
   HTTP connection, with the TCP options of a subscriber's connection; then
   ``Sessions.start`` runs the session as a task of its own.

A failed step raises the ``RelayError`` the client is answered with.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ..core.errors import MethodNotAllowed, StoreUnavailable, Unavailable
from ..core.grants import Grant
from ..core.request import Request
from ..core.subscribe import subscription
from ..net.listener import tune_subscriber
from .session import Sessions


class Answer(Protocol):
    """What an upgrade needs of the connection its request came on."""

    @property
    def version(self) -> str: ...  # the request's HTTP version, "1.1" or "1.0"

    async def send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                   content_type: str = "application/json") -> None: ...

    async def switch(self, status: int, headers: list[tuple[str, str]]) -> tuple[trio.abc.Stream, bytes]:
        """Send the head that ends HTTP on this connection; the stream, and
        the bytes already read past the request."""
        ...


def check_method(request: Request, opens: str) -> None:
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed; open {opens} with GET", "GET")


def read(request: Request, sessions: Sessions, *, last_event_id: bool = False,
         at_least_one: str | None = None) -> tuple[list[str], str | None]:
    return subscription(request.query, request.headers, sessions.store.parse_id, last_event_id=last_event_id,
                        at_least_one=at_least_one)


def admit(request: Request, sessions: Sessions, patterns: list[str], since: str | None) -> Grant | None:
    """The grant the subscription runs under (None: auth is off)."""
    grant = sessions.auth.admit(request.headers, request.query, patterns, sessions.now())
    if not sessions.may_subscribe():
        raise Unavailable("the relay holds its maximum number of subscribers", retry_after=5.0)
    if since is not None and not sessions.store.readable:
        raise StoreUnavailable("the event store is not answering; resume later")
    return grant


async def take_over(answer: Answer, sessions: Sessions, status: int,
                    headers: list[tuple[str, str]]) -> tuple[trio.abc.Stream, bytes]:
    stream, trailing = await answer.switch(status, headers)
    tune_subscriber(stream, sessions.ping_interval)
    return stream, trailing
