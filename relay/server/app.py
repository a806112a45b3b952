"""The daemon: its parts wired together, run in one nursery, and shut down.

``App`` builds the parts once from the config, each given what it uses: the
store and the hub it publishes to, the routes, the subscriber auth, the
listener, the sessions' shared state (``fanout.session.Sessions``), the
handlers (webhooks, ops, metrics, admin, inspector) and the router and
connection state the HTTP connections share. ``serve`` runs them until
``stop`` is set, then shuts down in the contract's order: stop accepting,
let webhooks in flight finish, close websockets with 1001 and end event
streams, flush the store, return - all within ``server.shutdown_grace``.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys

import trio

from ..config.files import server_context
from ..config.model import Config
from ..core.grants import Authenticator, JwtVerifier
from ..core.ingest import build_routes
from ..core.publish import compile_rules
from ..fanout.hub import Hub
from ..fanout.session import Sessions
from ..fanout.timers import Timers, WallClock, tick_every
from ..net.listener import Listener, fit_file_limit, split_listen
from ..core import whsec
from ..core.addresses import networks
from ..core.endpoints import Endpoint
from ..core.errors import StoreUnavailable
from ..outbound.service import Outbound, Settings
from ..store import open_store
from . import logs
from .admin import Admin
from .connection import Server
from .endpoints import Endpoints
from .inspector import Inspector
from .metrics import Metrics
from .ops import Ops
from .router import Closing, Router
from .webhooks import Webhooks

log = logging.getLogger("relay")


class App:
    def __init__(self, config: Config, max_open: int | None = None) -> None:
        self.config = config
        self.hub = Hub()
        self.store = open_store(config.store, self._published)
        self.outbound = Outbound(_settings(config), _configured(config), self.store, self.store.deliveries,
                                 WallClock().now, cluster=config.store.engine in ("redis", "nats"))
        routes = build_routes(config.routes, config.secrets)
        jwt_verifier = None
        if config.jwt_key is not None:
            jwt_verifier = (JwtVerifier.from_public_key(config.jwt_key) if config.jwt_is_public
                            else JwtVerifier.from_secret(config.jwt_key))
        auth = Authenticator(config.tokens, jwt_verifier, config.auth.origins, publish=config.token_publish)
        self.tls = None
        if config.server.tls is not None:
            self.tls = server_context(config.server.tls.cert, config.server.tls.key)
        self.listener = Listener(max_open if max_open is not None else config.server.max_connections, self.tls)
        self.now = WallClock().now
        self.stopping = trio.Event()
        self.timers = Timers()
        self.fanout = Sessions(self.hub, self.store, self.timers, self.now, auth,
                               queue=config.delivery.queue, policy=config.delivery.slow_consumer,
                               ping_interval=config.server.ping_interval, origins=config.auth.origins,
                               stopping=self.stopping, may_subscribe=self.listener.may_subscribe,
                               hand_off=self.listener.hand_off, publish_rules=compile_rules(config.publish))
        self.sessions = self.fanout.live
        webhooks = Webhooks(routes, self.store, config.server.max_body_bytes)
        self.webhooks = webhooks.counts  # answered, by (route, status)
        self.metrics = Metrics(self.webhooks, self.fanout, self.hub, self.listener, self.outbound)
        self.outbound.on_attempt = self.metrics.outbound_attempt
        self.hub.on_published = self.metrics.published  # delivery latency, once per event
        router = Router(
            webhooks=webhooks, sessions=self.fanout, ops=Ops(self.store, self.stopping), metrics=self.metrics,
            admin=Admin(routes, self.webhooks, self.hub, self.fanout, config.admin_guard, config.auth.origins),
            inspector=Inspector(), origins=config.auth.origins,
            endpoints=Endpoints(self.outbound, config.admin_guard, config.auth.origins))
        self.closing = Closing(self.stopping)
        trusted = [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]
        self.server = Server(router, self.closing, self.listener.idle, trusted)
        self.address: tuple[str, int] = ("", 0)

    def _published(self, events: list) -> None:  # type: ignore[type-arg]
        """The store committed ``events``, in log order: fan out, and wake
        the outbound deliveries."""
        self.hub.publish(events)
        self.outbound.published(events)

    def subscriber_count(self) -> int:
        return len(self.sessions)

    def begin_shutdown(self) -> None:
        """Refuse new work; every subscriber session closes (1001, end of stream)."""
        self.stopping.set()
        self.fanout.begin_shutdown()


async def serve(config: Config, stop: trio.Event, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    app = App(config, fit_file_limit(config.server.max_connections))
    host, port = split_listen(config.server.listen)
    grace = config.server.shutdown_grace
    async with trio.open_nursery() as root:
        await root.start(app.store.run)
        app.hub.head = app.store.head  # what is stored before start is history
        outbound = trio.CancelScope()
        root.start_soon(_run_outbound, app.outbound, outbound)
        root.start_soon(app.hub.run)
        root.start_soon(app.timers.run)
        root.start_soon(tick_every, config.server.ping_interval, app.sessions)
        root.start_soon(logs.flush_every)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        app.address = (bound[0], bound[1])
        async with trio.open_nursery() as conns:
            app.listener.run(listeners, conns, app.server.connection)
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
            app.closing.end_body_reads(deadline)
        outbound.cancel()  # attempts in flight end unanswered; they are made again after a restart
        with trio.move_on_after(max(0.5, grace * 0.1)):
            try:
                await app.outbound.flush()
            except StoreUnavailable:
                pass
            await app.store.close()
        root.cancel_scope.cancel()


async def _run_outbound(outbound: Outbound, scope: trio.CancelScope) -> None:
    with scope:
        try:
            await outbound.run()
        except StoreUnavailable as exc:
            # The store cannot say what endpoints owe (Redis down at start):
            # deliveries start once it answers; ingest does not wait.
            log.warning("outbound: %s; retrying", exc.detail)
            while True:
                await trio.sleep(2.0)
                try:
                    await outbound.run()
                except StoreUnavailable:
                    continue


def _settings(config: Config) -> Settings:
    o = config.outbound
    return Settings(timeout=o.timeout, retry=tuple(o.retry), jitter=o.jitter, max_in_flight=o.max_in_flight,
                    max_connections=o.max_connections, https_only=o.https_only,
                    allow_private=tuple(networks(o.allow_private)), disable_after=o.disable_after)


def _configured(config: Config) -> list[Endpoint]:
    return [Endpoint(id=name, url=e.url, channels=list(e.channels), secrets=[whsec.Secret(config.endpoint_secrets[name])],
                     format=e.format, ordered=e.ordered, rate=e.rate, headers=dict(e.headers), source="config",
                     cursor=e.since)
            for name, e in config.endpoints.items()]


def run_daemon(config: Config) -> int:
    """``relay serve``: the daemon until SIGTERM or SIGINT, logging as the
    config says; the exit status (0 stopped, 1 could not start)."""
    logs.configure(config.log.level, config.log.format)
    try:
        trio.run(_serve_until_signalled, config, strict_exception_groups=True)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        failure = _first_leaf(group)
        if isinstance(failure, KeyboardInterrupt):
            return 0
        if isinstance(failure, OSError):
            print(f"relay: cannot start: {failure}", file=sys.stderr)
            return 1
        raise
    return 0


async def _serve_until_signalled(config: Config) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        nursery.start_soon(watch_signals)
        await serve(config, stop)
        nursery.cancel_scope.cancel()


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
