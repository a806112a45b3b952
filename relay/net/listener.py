"""The listening sockets: the accept loop, the TLS handshake, the count of
connections, and the socket options of a subscriber's connection.

``Listener.run`` accepts on each listening socket and serves every
connection as a task of its own in the connections' nursery: the handshake
first when the port speaks TLS, then ``connection(stream).serve()``, the
server's HTTP connection. The count and its shares are ``core.limits``'s
rules: the accept loop waits in ``_make_room`` while every slot is taken,
closing the connection idle longest for a newcomer (``idle``: the cancel
scopes of connections waiting for a request, oldest first), and backs off
when accept fails for want of descriptors. A connection the server hands to
a subscriber session (``hand_off``) keeps its slot, counted as a
subscriber's, until the session ends.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ..core.limits import BACKOFF_MAX_S, Backoff, Connections, Throttle, Waiting, plan_files
from .tls import HANDSHAKE_TIMEOUT, TlsStream

try:
    import resource
except ImportError:  # not a Unix: no file limit to ask for
    resource = None  # type: ignore[assignment]

log = logging.getLogger("relay")

# Accept errors that mean "out of resources for now", not "broken listener".
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def _being_closed(scope: trio.CancelScope) -> bool:
    return scope.cancel_called


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def fit_file_limit(max_connections: int) -> int:
    """Raise the soft file limit to the hard one; the connections that fit
    (``max_connections``, or fewer with a warning on stderr)."""
    if resource is None:
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    plan = plan_files(max_connections, soft, None if hard == unlimited else hard)
    if plan.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (ValueError, OSError):
            # The system caps it lower than the hard limit says (macOS).
            plan = plan_files(max_connections, soft, soft)
    if plan.warning is not None:
        log.warning(plan.warning)
    return plan.connections


def tune_subscriber(stream: trio.abc.Stream, interval: float) -> None:
    """Find half-open subscribers: TCP keepalive probes on idle connections
    (a probe every ``interval`` / 3 after ``interval`` idle), and a cap on
    how long sent data may stay unacknowledged. Only connections that become
    subscriptions pay for these five calls; a webhook's connection is
    short-lived and bounded by the server's idle timeout."""
    sock = getattr(stream, "transport_stream", stream).socket  # type: ignore[attr-defined]
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(interval)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval / 3)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(3 * interval * 1000))
    except OSError:
        pass  # not every platform has every option


class Served(Protocol):
    """One connection as the listener sees it (the server's HTTP connection)."""

    detached: bool  # its stream now belongs to a subscriber session

    async def serve(self) -> None: ...


class Listener:
    """Every connection's slot, from accept to close."""

    def __init__(self, limit: int, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.connections = Connections(limit)
        # Connections waiting for a request (or a TLS handshake), oldest
        # first: shutdown ends them at once, and the accept loop closes the
        # oldest when every slot is taken (relay/core/limits.py says why).
        self.idle: Waiting[trio.CancelScope] = Waiting(on_add=self._idle_joined)
        self.idle_closed = 0  # connections closed for room (metrics)
        self.accept_failures = 0
        self.nursery: trio.Nursery  # set by ``run``: every connection's task lives there
        self.connection: Callable[[trio.abc.Stream], Served]  # set by ``run``
        self._room = trio.lowlevel.ParkingLot()  # unparked when a slot may have come free
        self._want_idle = False  # the accept loop also waits for a connection to become idle
        self._full_log = Throttle()
        self._accept_log = Throttle()
        self._accepting: list[trio.CancelScope] = []

    def run(self, listeners: list[trio.SocketListener], nursery: trio.Nursery,
            connection: Callable[[trio.abc.Stream], Served]) -> None:
        """Accept on every listener; each connection runs in ``nursery``, its
        stream served by what ``connection`` makes of it."""
        self.nursery = nursery
        self.connection = connection
        for listener in listeners:
            nursery.start_soon(self._accept, listener)

    def stop_accepting(self) -> None:
        for scope in self._accepting:
            scope.cancel()

    def close_idle(self) -> None:
        """End every connection that waits for a request (at shutdown)."""
        for scope in list(self.idle):
            scope.cancel()

    def may_subscribe(self) -> bool:
        """Is there room for one more subscriber (its share of max_connections)?"""
        return self.connections.may_subscribe()

    def hand_off(self, session_run: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a subscriber session as a task of its own in the connections'
        nursery: the HTTP request that opened it, its parser and its stack
        frames are released instead of living as long as the subscription."""
        self.connections.subscribed()  # the connection's slot is now a subscriber's
        self.nursery.start_soon(self._session, session_run, *args)

    async def _session(self, session_run: Callable[..., Awaitable[None]], *args: object) -> None:
        try:
            await session_run(*args)
        except Exception:
            # One broken subscriber must never take the relay down.
            log.exception("subscriber session failed")
        finally:
            self._closed(subscriber=True)  # the session closed its stream

    def _closed(self, subscriber: bool = False) -> None:
        self.connections.closed(subscriber)
        self._room.unpark_all()

    def _idle_joined(self) -> None:
        if self._want_idle:
            self._room.unpark_all()

    async def _connection(self, stream: trio.SocketStream) -> None:
        served = None
        try:
            if self.tls is not None:
                tls_stream = TlsStream(stream, self.tls)
                # A client that never finishes its handshake costs one socket
                # for a bounded time, and nothing else; while it lasts, its
                # slot may be taken for a newcomer, as an idle one's.
                with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
                    self.idle.add(scope)
                    try:
                        await tls_stream.do_handshake()
                    except trio.BrokenResourceError:
                        await stream.aclose()
                        return
                    finally:
                        self.idle.discard(scope)
                if scope.cancelled_caught:
                    await stream.aclose()
                    return
                served = self.connection(tls_stream)
            else:
                served = self.connection(stream)
            await served.serve()
        except Exception:
            # One broken connection must never take the relay down.
            log.exception("connection failed")
        finally:
            if served is None or not served.detached:
                self._closed()  # else a subscriber session owns the stream now

    async def _accept(self, listener: trio.SocketListener) -> None:
        scope = trio.CancelScope()
        self._accepting.append(scope)
        backoff = Backoff()
        with scope:
            while True:
                await self._make_room(listener)
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in _TRANSIENT_ACCEPT:
                        await self._accept_failed(exc, backoff)
                        continue
                    raise
                backoff.reset()
                self.connections.opened()
                self.nursery.start_soon(self._connection, stream)
        await listener.aclose()

    async def _make_room(self, listener: trio.SocketListener) -> None:
        """Return once another connection may be accepted. While every slot
        is taken and a newcomer waits in the backlog, close the connection
        that has waited longest for a request and wait for its slot; with
        none waiting for a request, wait (the newcomer stays in the backlog)
        until one ends or becomes idle. Nothing is closed for a newcomer
        that has not come."""
        connections = self.connections
        while not connections.room():
            await trio.lowlevel.wait_readable(listener.socket)
            if connections.room():
                break
            victim = self.idle.oldest(skip=_being_closed)
            self._want_idle = victim is None
            if victim is not None:
                victim.cancel()
                self.idle_closed += 1
            self._warn_full(closing=victim is not None)
            await self._room.park()
        self._want_idle = False

    def _warn_full(self, closing: bool) -> None:
        held = self._full_log.admit(trio.current_time())
        if held is None:
            return
        c = self.connections
        log.warning("all %d connection slots are taken: %s", c.limit,
                    "closing the connections idle longest to make room" if closing
                    else "new connections wait until one ends",
                    extra={"fields": {"connections": c.open, "subscribers": c.subscribers,
                                      "idle": len(self.idle), "more_since_last_line": held}})

    async def _accept_failed(self, exc: OSError, backoff: Backoff) -> None:
        """Out of descriptors (or memory) at accept: the connection stays in
        the backlog. Make room as at the limit, or wait for any connection
        to end, at most a back-off that doubles while it keeps failing. One
        warning per ``LOG_EVERY_S``, with the count of those held back."""
        self.accept_failures += 1
        held = self._accept_log.admit(trio.current_time())
        if held is not None:
            log.warning("accept failed: %s", exc.strerror or exc,
                        extra={"fields": {"errno": errno.errorcode.get(exc.errno or 0, exc.errno),
                                          "connections": self.connections.open,
                                          "more_since_last_line": held}})
        victim = self.idle.oldest(skip=_being_closed)
        if victim is not None:
            victim.cancel()  # its descriptor is what accept needs
            self.idle_closed += 1
            delay = BACKOFF_MAX_S
        else:
            delay = backoff.next()
        with trio.move_on_after(delay):
            await self._room.park()
