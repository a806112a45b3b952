"""The daemon: one nursery that owns the store, the listener and every connection.

``serve`` wires the steps of the data's way together (ingest -> store -> hub
-> subscribers) and runs them until ``stop`` is set, then shuts down in the
contract's order: stop accepting, let webhooks in flight finish, close
websockets with 1001, flush the store, return - all within
``server.shutdown_grace``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from . import logs
from .core.grants import Authenticator, Grant, origin_allowed, presented_token
from .config.files import server_context
from .config.model import Config
from .core.errors import Forbidden, RelayError
from .hub import Hub
from .core.ingest import Route, build_routes
from .core.limits import BACKOFF_MAX_S, Backoff, Connections, Throttle, Waiting, plan_files
from .metrics import Metrics
from .store import Appended, open_store
from .timers import Timers, tick_every

if TYPE_CHECKING:
    from .http import Request
    from .sse import SseSession
    from .ws import Session

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
    try:
        import resource
    except ImportError:  # not a Unix: nothing to ask for
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


class App:
    def __init__(self, config: Config, max_open: int | None = None) -> None:
        self.config = config
        self.hub = Hub()
        self.store = open_store(config.store, self.hub.publish)
        self.routes = build_routes(config.routes, config.secrets)
        jwt_verifier = None
        if config.jwt_key is not None:
            from .core.grants import JwtVerifier

            jwt_verifier = (JwtVerifier.from_public_key(config.jwt_key) if config.jwt_is_public
                            else JwtVerifier.from_secret(config.jwt_key))
        self.auth = Authenticator(config.tokens, jwt_verifier)
        self.trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]
        self.tls = None
        if config.server.tls is not None:
            self.tls = server_context(config.server.tls.cert, config.server.tls.key)
        # Wall time that advances with trio's clock (so tests can jump it):
        # token expiry is judged by it.
        self._wall0 = time.time()
        self._mono0 = trio.current_time()
        self.stopping = trio.Event()
        # Connections waiting for a request (or a TLS handshake), oldest
        # first: shutdown ends them at once, and the accept loop closes the
        # oldest when every slot is taken (relay/limits.py says why).
        self.idle: Waiting[trio.CancelScope] = Waiting(on_add=self._idle_joined)
        self.connections = Connections(max_open if max_open is not None else config.server.max_connections)
        self._room = trio.lowlevel.ParkingLot()  # unparked when a slot may have come free
        self._want_idle = False  # the accept loop also waits for a connection to become idle
        self._full_log = Throttle()
        self._accept_log = Throttle()
        self.idle_closed = 0  # connections closed for room (metrics)
        self.accept_failures = 0
        # Webhooks waiting for body bytes, and when those waits end at
        # shutdown (http.end_body_reads): they are answered 503 then.
        self.reading: set[trio.CancelScope] = set()
        self.body_end = float("inf")
        self.sessions: set[Session | SseSession] = set()
        self.frames_sent: dict[str, int] = {"ws": 0, "sse": 0}
        self.webhooks: Counter[tuple[str, int]] = Counter()
        self.metrics = Metrics(self)  # relay/metrics.py: GET /metrics, delivery latency
        self.address: tuple[str, int] = ("", 0)
        self.conns: trio.Nursery  # set by serve: every connection's task lives there
        self.timers = Timers()

    # -- subscriber auth -------------------------------------------------

    def authorize(self, request: Request, patterns: list[str]) -> Grant | None:
        """Check a subscription before the upgrade: the browser's Origin (403),
        the token (401), the channels it asks for (403). None: auth is off."""
        if not origin_allowed(self.config.auth.origins, request.headers.get("origin")):
            raise Forbidden(f"Origin {request.headers.get('origin', '')[:200]!r} is not allowed")
        grant = self.auth.grant(presented_token(request.headers, request.query), self.now())
        if grant is not None:
            grant.check(patterns)
        return grant

    def authorize_channel(self, session: Session, pattern: str) -> None:
        """Refuse a subscribe message for a channel the connection may not read."""
        if session.grant is not None:
            session.grant.check([pattern])

    def refresh(self, session: Session, token: str | None) -> None:
        if self.auth.jwt is None:
            session.error("bad_token", "this relay has no JWT key configured; nothing to refresh")
            return
        try:
            grant = self.auth.grant(token, self.now())
        except RelayError as exc:
            session.error(exc.code, exc.detail)
            return
        session.refreshed(grant)

    # -- state -----------------------------------------------------------

    def now(self) -> float:
        return self._wall0 + (trio.current_time() - self._mono0)

    def begin_shutdown(self) -> None:
        """Refuse new work; every subscriber session closes (1001, end of stream)."""
        self.stopping.set()
        for session in list(self.sessions):
            session.wake()

    def subscriber_count(self) -> int:
        return len(self.sessions)

    def may_subscribe(self) -> bool:
        """Is there room for one more subscriber (its share of max_connections)?"""
        return self.connections.may_subscribe()

    async def ready(self) -> bool:
        if self.stopping.is_set():
            return False
        with trio.move_on_after(2):
            return await self.store.ping()
        return False

    def webhook_done(self, name: str, route: Route | None, status: int, appended: Appended | None,
                     delivery: str | None, seconds: float, client: str | None = None) -> None:
        self.webhooks[(name if route else "", status)] += 1
        level = logging.INFO if status < 500 else logging.WARNING
        if not log.isEnabledFor(level):
            return  # build the line's fields only when it is written
        event = appended.event if appended else None
        fields: dict[str, Any] = {
            "route": name[:100],
            "status": status,
            "channel": event.channel if event else None,
            "event_id": event.id if event else None,
            "delivery": delivery,
            "duration_ms": round(seconds * 1000, 3),
            "client": client,
        }
        log.log(level, "webhook", extra={"fields": fields})

    # -- running ---------------------------------------------------------

    def hand_off(self, session_run: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a subscriber session as a task of its own in the connections'
        nursery: the HTTP request that opened it, its parser and its stack
        frames are released instead of living as long as the subscription."""
        self.connections.subscribed()  # the connection's slot is now a subscriber's
        self.conns.start_soon(self._session, session_run, *args)

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
        from .http import HttpConnection

        hc = None
        try:
            if self.tls is not None:
                from .tls import HANDSHAKE_TIMEOUT, TlsStream

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
                hc = HttpConnection(self, tls_stream)
            else:
                hc = HttpConnection(self, stream)
            await hc.serve()
        except Exception:
            # One broken connection must never take the relay down.
            log.exception("connection failed")
        finally:
            if hc is None or not hc.detached:
                self._closed()  # else a subscriber session owns the stream now

    def tune_subscriber(self, stream: trio.abc.Stream) -> None:
        """Find half-open subscribers: TCP keepalive probes on idle
        connections, and a cap on how long sent data may stay unacknowledged.
        Only connections that become subscriptions pay for these five calls;
        a webhook's connection is short-lived and bounded by IDLE_TIMEOUT."""
        interval = self.config.server.ping_interval
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

    async def _accept(self, listener: trio.SocketListener, conns: trio.Nursery,
                      scopes: list[trio.CancelScope]) -> None:
        scope = trio.CancelScope()
        scopes.append(scope)
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
                conns.start_soon(self._connection, stream)
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


async def _flush_logs() -> None:
    """Write what the batched log handler holds after a quiet moment."""
    try:
        while True:
            await trio.sleep(logs.FLUSH_S)
            logs.flush()
    finally:
        logs.flush()


async def serve(config: Config, stop: trio.Event, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    app = App(config, fit_file_limit(config.server.max_connections))
    host, port = split_listen(config.server.listen)
    grace = config.server.shutdown_grace
    async with trio.open_nursery() as root:
        await root.start(app.store.run)
        app.hub.head = app.store.head  # what is stored before start is history
        root.start_soon(app.hub.run)
        root.start_soon(app.timers.run)
        root.start_soon(tick_every, config.server.ping_interval, app.sessions)
        root.start_soon(_flush_logs)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        app.address = (bound[0], bound[1])
        accepting: list[trio.CancelScope] = []
        async with trio.open_nursery() as conns:
            app.conns = conns
            for listener in listeners:
                conns.start_soon(app._accept, listener, conns, accepting)
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            scheme = "https" if app.tls is not None else "http"
            print(f"relay: listening on {scheme}://{shown}:{bound[1]}", file=sys.stderr, flush=True)
            task_status.started(app)
            await stop.wait()
            log.info("shutting down", extra={"fields": {"grace_s": grace}})
            deadline = trio.current_time() + max(0.1, grace - 1.0)
            for scope in accepting:
                scope.cancel()
            app.begin_shutdown()
            for scope in list(app.idle):
                scope.cancel()
            conns.cancel_scope.deadline = deadline
            from .http import end_body_reads

            end_body_reads(app, deadline)
        with trio.move_on_after(max(0.5, grace * 0.1)):
            await app.store.close()
        root.cancel_scope.cancel()
