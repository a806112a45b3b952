"""The daemon: one nursery that owns the store, the listener and every connection.

``serve`` wires the steps of the data's way together (ingest -> store -> hub
-> subscribers) and runs them until ``stop`` is set, then shuts down in the
contract's order: stop accepting, let webhooks in flight finish, close
websockets with 1001, flush the store, return - all within
``server.shutdown_grace``.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from . import logs
from .core.grants import Authenticator, JwtVerifier
from .config.files import server_context
from .config.model import Config
from .fanout.hub import Hub
from .fanout.session import Sessions
from .fanout.timers import Timers, WallClock, tick_every
from .core.ingest import Route, build_routes
from .metrics import Metrics
from .net.listener import Listener, fit_file_limit, split_listen
from .store import Appended, open_store

if TYPE_CHECKING:
    from .http import HttpConnection

log = logging.getLogger("relay")


class App:
    def __init__(self, config: Config, max_open: int | None = None) -> None:
        self.config = config
        self.hub = Hub()
        self.store = open_store(config.store, self.hub.publish)
        self.routes = build_routes(config.routes, config.secrets)
        jwt_verifier = None
        if config.jwt_key is not None:
            jwt_verifier = (JwtVerifier.from_public_key(config.jwt_key) if config.jwt_is_public
                            else JwtVerifier.from_secret(config.jwt_key))
        self.auth = Authenticator(config.tokens, jwt_verifier, config.auth.origins)
        self.trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]
        self.tls = None
        if config.server.tls is not None:
            self.tls = server_context(config.server.tls.cert, config.server.tls.key)
        self.listener = Listener(max_open if max_open is not None else config.server.max_connections, self.tls,
                                 self._http_connection)
        self.clock = WallClock()
        self.now = self.clock.now
        self.stopping = trio.Event()
        self.timers = Timers()
        self.fanout = Sessions(self.hub, self.store, self.timers, self.now, self.auth,
                               queue=config.delivery.queue, policy=config.delivery.slow_consumer,
                               ping_interval=config.server.ping_interval, origins=config.auth.origins,
                               stopping=self.stopping, may_subscribe=self.listener.may_subscribe,
                               hand_off=self.listener.hand_off)
        self.sessions = self.fanout.live
        self.idle = self.listener.idle
        # Webhooks waiting for body bytes, and when those waits end at
        # shutdown (http.end_body_reads): they are answered 503 then.
        self.reading: set[trio.CancelScope] = set()
        self.body_end = float("inf")
        self.webhooks: Counter[tuple[str, int]] = Counter()
        self.metrics = Metrics(self)  # relay/metrics.py: GET /metrics, delivery latency
        self.address: tuple[str, int] = ("", 0)

    # -- state -----------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new work; every subscriber session closes (1001, end of stream)."""
        self.stopping.set()
        self.fanout.begin_shutdown()

    def subscriber_count(self) -> int:
        return len(self.sessions)

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

    def _http_connection(self, stream: trio.abc.Stream) -> HttpConnection:
        from .http import HttpConnection

        return HttpConnection(self, stream)


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
        async with trio.open_nursery() as conns:
            app.conns = conns
            app.listener.run(listeners, conns)
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            scheme = "https" if app.tls is not None else "http"
            print(f"relay: listening on {scheme}://{shown}:{bound[1]}", file=sys.stderr, flush=True)
            task_status.started(app)
            await stop.wait()
            log.info("shutting down", extra={"fields": {"grace_s": grace}})
            deadline = trio.current_time() + max(0.1, grace - 1.0)
            app.listener.stop_accepting()
            app.begin_shutdown()
            app.listener.close_idle()
            conns.cancel_scope.deadline = deadline
            from .http import end_body_reads

            end_body_reads(app, deadline)
        with trio.move_on_after(max(0.5, grace * 0.1)):
            await app.store.close()
        root.cancel_scope.cancel()
