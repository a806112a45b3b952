"""``GET /metrics``: the relay's counters in the Prometheus text format.

Counters that already exist as plain numbers where their work is done
(webhooks by route and status: ``Webhooks.counts``; frames sent per
transport and slow consumers: ``Sessions.stats``; subscribers:
``Sessions.live``; channels: the hub; connections: the listener) are read
when Prometheus scrapes, by a custom collector given each of them: the hot
path pays nothing for them, and they never reset while the process lives
because the numbers they read never do.

The one series that needs work on the hot path is ``relay_delivery_seconds``,
the time from receipt (``Event.received``, the trio clock when the webhook's
request head was parsed) to send. It is observed once per live event, right
after the hub has offered the event to every subscriber of its channel, that
is, when each subscriber's copy was either handed to the kernel or queued.
Observing per subscriber would cost one histogram update per frame (a lock
and a bucket search each) and would make a broadcast to a thousand
subscribers a thousand times dearer for a number that is nearly the same for
all of them; what it would add (the time a frame waits in a slow consumer's
queue) is what ``relay_slow_consumers_total`` reports. Events no subscriber
wants are not observed: nothing was sent. Events replayed on resume are not
observed either: their latency is the subscriber's absence, not the relay's.

Each relay has its own registry, so several relays can live in one process
(the tests run many) without their series mixing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..core.envelope import Event
from ..core.errors import MethodNotAllowed
from ..core.outbox import slow_key
from ..core.request import Request
from ..fanout.hub import Hub
from ..fanout.session import Sessions
from ..net.listener import Listener
from ..outbound.service import Outbound
from .router import Responder

PUBLISH_STATUSES = ("published", "duplicate", "forbidden", "invalid", "rate_limited", "unavailable")
TRANSPORTS = ("ws", "sse")
POLICIES = ("disconnect", "drop")
# A relay on one host delivers in well under a millisecond; a loaded one, or
# one whose store commits to a slow disk, in tens. The tail goes to seconds.
DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Collector(Collector):
    def __init__(self, webhooks: Counter[tuple[str, int]], sessions: Sessions, hub: Hub, listener: Listener,
                 outbound: Outbound | None) -> None:
        self.outbound = outbound
        self.webhooks = webhooks
        self.sessions = sessions
        self.hub = hub
        self.listener = listener

    def collect(self) -> Iterator[Metric]:
        webhooks = CounterMetricFamily(
            "relay_webhooks", "Webhooks answered, by route and HTTP status (route is empty for unknown routes).",
            labels=["route", "status"])
        stored = 0
        for (route, status), count in sorted(self.webhooks.items()):
            webhooks.add_metric([route, str(status)], count)
            if status == 202:
                stored += count
        yield webhooks
        # A 202 is sent only once the event is in the store: the 202s are
        # exactly the webhooks this relay stored (duplicates answer 200); a
        # subscriber's publish is answered `published` the same way.
        stored += self.sessions.published.get("published", 0)
        yield CounterMetricFamily("relay_events_stored", "Events this relay appended to the store.", value=stored)
        stats = self.sessions.stats
        frames = CounterMetricFamily("relay_frames_sent", "Event frames sent to subscribers, by transport.",
                                     labels=["transport"])
        for transport in TRANSPORTS:
            frames.add_metric([transport], stats.get(transport, 0))
        yield frames
        published = CounterMetricFamily(
            "relay_published", "Publishes from WebSocket subscribers, by answer: published, duplicate (an "
            "idempotency key seen before), forbidden, invalid, rate_limited, unavailable.", labels=["status"])
        answered = self.sessions.published
        for status in PUBLISH_STATUSES:
            published.add_metric([status], answered.get(status, 0))
        yield published
        slow = CounterMetricFamily(
            "relay_slow_consumers", "Subscribers whose queue overflowed: disconnected (1013) or events dropped.",
            labels=["policy"])
        for policy in POLICIES:
            slow.add_metric([policy], stats.get(slow_key(policy), 0))
        yield slow
        subscribers = GaugeMetricFamily("relay_subscribers", "Connected subscribers, by transport.",
                                        labels=["transport"])
        counts = dict.fromkeys(TRANSPORTS, 0)
        counts.update(self.sessions.by_transport())
        for transport, count in counts.items():
            subscribers.add_metric([transport], count)
        yield subscribers
        yield GaugeMetricFamily("relay_channels", "Channels that carried an event since the start (bounded table).",
                                value=len(self.hub.channels))
        listener = self.listener
        c = listener.connections
        connections = GaugeMetricFamily("relay_connections", "Open connections: plain HTTP, and subscribers.",
                                        labels=["kind"])
        connections.add_metric(["http"], c.http)
        connections.add_metric(["subscriber"], c.subscribers)
        yield connections
        yield GaugeMetricFamily("relay_connections_max", "Connections held at most (max_connections, or what "
                                "the file limit fits).", value=c.limit)
        yield CounterMetricFamily("relay_idle_closed", "Connections waiting for a request closed to make room "
                                  "for a new one.", value=listener.idle_closed)
        yield CounterMetricFamily("relay_accept_failures", "Accepts that failed for want of descriptors or memory.",
                                  value=listener.accept_failures)
        outbound = self.outbound
        if outbound is not None:
            attempts = CounterMetricFamily(
                "relay_outbound_attempts", "Outbound attempts, by endpoint and outcome (2xx..5xx, timeout, error).",
                labels=["endpoint", "outcome"])
            for (endpoint, outcome), count in sorted(outbound.attempts_by_outcome.items()):
                attempts.add_metric([endpoint, outcome], count)
            yield attempts
            pending = GaugeMetricFamily("relay_outbound_pending", "Deliveries an endpoint owes, waiting or in flight.",
                                        labels=["endpoint"])
            for endpoint_id in sorted(outbound.live):
                pending.add_metric([endpoint_id], outbound.pending(endpoint_id) + outbound.in_flight(endpoint_id))
            yield pending


class Metrics:
    def __init__(self, webhooks: Counter[tuple[str, int]], sessions: Sessions, hub: Hub, listener: Listener,
                 outbound: Outbound | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(webhooks, sessions, hub, listener, outbound))
        self.outbound_delivered = Histogram(
            "relay_outbound_delivered_seconds", "Seconds from a webhook's receipt to an endpoint's 2xx for it.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
            registry=self.registry)
        self.delivery = Histogram(
            "relay_delivery_seconds", "Seconds from a webhook's receipt to its frames being sent or queued, per event.",
            buckets=DELIVERY_BUCKETS, registry=self.registry)
        self._observe = self.delivery.observe

    def published(self, event: Event) -> None:
        """Called by the hub once per live event that had subscribers."""
        if event.received:
            self._observe(max(0.0, trio.current_time() - event.received))

    def outbound_attempt(self, endpoint: str, outcome: str, latency: float | None) -> None:
        """Called after each outbound attempt (the counts are the service's)."""
        if latency is not None:
            self.outbound_delivered.observe(latency)

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def answer(self, request: Request, responder: Responder) -> None:
        """``GET /metrics``; the format follows the scraper's Accept header."""
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not allowed here", "GET")
        body, content_type = self.render(request.headers.get("accept", ""))
        await responder.send(200, body, [("cache-control", "no-store")], content_type=content_type)
