"""The relay as a webhook sender: every endpoint's deliveries, in one task.

How an event travels: the hub tells the service a batch was published
(``published``); the puller reads, for each endpoint with room, the stored
events after where it last looked on its channels, and owes each one a
delivery: a row in the store, with the endpoint's cursor, in one write, then
an entry in the endpoint's ``Plan`` (``relay.core.delivery``). The scheduler
sleeps until the earliest moment a plan may start something, starts those
attempts as tasks under the endpoint's cap and a global cap on outbound
connections, and each attempt's verdict (delivered, retry at, failed,
disable) is persisted in the next batch. Waiting deliveries cost a row and a
heap entry, never a task: thousands can wait on retries while ingest and
fan-out go on untouched.

Failure stays with its endpoint: an endpoint that never answers holds at
most its own cap of attempts (one, once it has failed), each bounded by
``timeout``; the others' attempts start as before.

In cluster mode an endpoint is served by the relay that holds its lease; the
lease outlives an attempt's timeout, so a relay that dies mid-attempt leaves
the endpoint to another only after that attempt could have ended.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from ..core import whsec
from ..core.addresses import Network
from ..core.channels import matches
from ..core.delivery import DELIVERED, FAILED, RETRY, Plan, Policy, outcome_class, parse_retry_after
from ..core.endpoints import PENDING, Attempt, Endpoint, Row
from ..core.envelope import Event
from ..core.errors import StoreUnavailable
from ..core.wire import received
from ..store.base import Store
from ..store.deliveries import DeliveryLog
from . import client

log = logging.getLogger("relay.outbound")

# Deliveries an endpoint may owe at once (rows waiting or in flight); the
# rest of its backlog stays in the log until these are done.
WINDOW = 1000
# Seconds between persisting batches of verdicts, at most.
FLUSH_EVERY = 0.05
# Seconds between looks at the log for new events, at least: the looks
# coalesce a burst of publishes, and bound what a delivery waits before it
# is owed (a part of its latency, so small).
PULL_EVERY = 0.002
# A lease lasts this much longer than an attempt may take: half the timeout
# again, and two seconds for the renewal's own round trip.
LEASE_MARGIN = 2.0
# Seconds between reloading endpoints other relays may have changed.
RELOAD_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    timeout: float = 15.0
    retry: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    jitter: float = 0.2
    max_in_flight: int = 8
    max_connections: int = 512
    https_only: bool = False
    allow_private: tuple[Network, ...] = ()
    disable_after: float = 432000.0

    def policy(self, endpoint: Endpoint) -> Policy:
        return Policy(retry=self.retry, jitter=self.jitter, disable_after=self.disable_after,
                      max_in_flight=self.max_in_flight, ordered=endpoint.ordered, rate=endpoint.rate)


@dataclass(slots=True)
class Live:
    """An endpoint this relay serves: its record, plan and what it has read."""

    endpoint: Endpoint
    plan: Plan
    seen: Any  # the log key up to which its channels were read
    events: dict[str, Event] = field(default_factory=dict)  # bodies of deliveries owed, when known
    failed: set[str] = field(default_factory=set)  # event ids whose delivery failed (kept, recoverable)
    leased: bool = True
    behind: bool = True  # the log may hold events for it that it has not read (its window was full)


class Outbound:
    def __init__(self, settings: Settings, configured: Sequence[Endpoint], store: Store, dlog: DeliveryLog,
                 now: Callable[[], float], cluster: bool = False,
                 on_attempt: Callable[[str, str, float | None], None] | None = None) -> None:
        self.settings = settings
        self.configured = {e.id: e for e in configured}
        self.store = store
        self.dlog = dlog
        self.now = now
        self.cluster = cluster
        self.holder = secrets.token_hex(8)
        self.live: dict[str, Live] = {}
        self.known: dict[str, Endpoint] = {}  # every endpoint, served here or not
        self._heap: list[tuple[float, int, str]] = []
        self._tie = itertools.count()
        self._wake = trio.lowlevel.ParkingLot()
        self._pull = trio.Event()
        # What the next look reads: every endpoint, or those named here.
        self._look_all = True
        self._look_at: set[str] = set()
        # Channel -> ids of the endpoints served here that take it; cleared
        # whenever an endpoint is served, changed or dropped.
        self._takers: dict[str, list[str]] = {}
        self._flush = trio.Event()
        self._put: dict[tuple[str, str], Row] = {}
        self._done: set[tuple[str, str]] = set()
        self._attempts: list[Attempt] = []
        self._changed: dict[str, Endpoint] = {}
        self._limiter = trio.CapacityLimiter(settings.max_connections)
        self.pool = client.Pool(max_connections=settings.max_connections)
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        # Called after each attempt: (endpoint id, outcome class, seconds from
        # receipt to a 2xx or None) - relay.metrics counts them.
        self.on_attempt = on_attempt
        self.attempts_by_outcome: dict[tuple[str, str], int] = {}

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await self._load()
        # Keep-alive connections shared by every endpoint; the cap on
        # outbound connections counts the idle ones too. The pool's task
        # closes them as they expire and every idle one when this ends.
        self.pool = client.Pool(max_connections=self.settings.max_connections)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pool.run)
            nursery.start_soon(self._puller)
            nursery.start_soon(self._scheduler)
            nursery.start_soon(self._flusher)
            if self.cluster:
                nursery.start_soon(self._leases)
            task_status.started()
            self._look()

    async def _load(self) -> None:
        stored, rows = await self.dlog.load()
        now = self.now()
        by_id = {e.id: e for e in stored}
        for endpoint_id, conf in self.configured.items():
            kept = by_id.get(endpoint_id)
            if kept is not None and kept.source == "config":
                # The file decides what it sends; the store keeps how far it
                # got (and another relay of a cluster may be moving it now:
                # nothing is written back here).
                merged = _configured(conf, kept)
            else:
                merged = conf
                merged.created = now
                merged.cursor = self._since(conf.cursor)
                await self.dlog.save_endpoint(merged)
            by_id[endpoint_id] = merged
        for endpoint_id, kept in list(by_id.items()):
            if kept.source == "config" and endpoint_id not in self.configured:
                # Removed from the file: forget it, its rows and attempts.
                await self.dlog.delete_endpoint(endpoint_id)
                del by_id[endpoint_id]
        self.known = by_id
        owed: dict[str, list[Row]] = {}
        for row in rows:
            if row.endpoint in by_id:
                owed.setdefault(row.endpoint, []).append(row)
        for endpoint in by_id.values():
            if not self.cluster:
                self._serve(endpoint, owed.get(endpoint.id, []))

    def _since(self, since: str) -> str:
        """The cursor a new endpoint starts from: "now" is the log's head."""
        return self.store.head if since == "now" else since

    def _serve(self, endpoint: Endpoint, rows: Sequence[Row]) -> Live:
        plan = Plan(self.settings.policy(endpoint), enabled=endpoint.enabled)
        live = Live(endpoint, plan, self.store.parse_id(endpoint.cursor))
        for row in rows:
            if row.state == PENDING:
                plan.add(row.event_id, self.store.parse_id(row.event_id), row.attempt, row.due)
            else:
                live.failed.add(row.event_id)
        self.live[endpoint.id] = live
        self._takers.clear()
        self._schedule(live)
        return live

    # -- the hub's side ----------------------------------------------------------

    def published(self, events: Sequence[Event]) -> None:
        """Events were stored (called by the hub, synchronously): the
        endpoints that take their channels look at the log."""
        takers = self._takers
        if len(takers) > 10_000:
            takers.clear()  # many channels: keep the cache bounded
        for channel in {event.channel for event in events}:
            ids = takers.get(channel)
            if ids is None:
                ids = takers[channel] = [i for i, live in self.live.items() if channel_matches(live.endpoint, channel)]
            if ids:
                self._look_at.update(ids)
                self._pull.set()

    def _look(self, endpoint_id: str | None = None) -> None:
        """Have the puller read the log for one endpoint (None: for all)."""
        if endpoint_id is None:
            self._look_all = True
        else:
            self._look_at.add(endpoint_id)
        self._pull.set()

    # -- reading what endpoints owe -------------------------------------------------

    async def _puller(self) -> None:
        while True:
            await self._pull.wait()
            self._pull = trio.Event()
            # Only the endpoints something happened to: with many endpoints,
            # a webhook costs a read for those that take it, not for all.
            if self._look_all:
                wanted = list(self.live.values())
            else:
                wanted = [live for i in self._look_at if (live := self.live.get(i)) is not None]
            self._look_all, self._look_at = False, set()
            for n, live in enumerate(wanted):
                if live.leased and live.plan.enabled:
                    try:
                        await self._read(live)
                    except StoreUnavailable as exc:
                        log.warning("outbound: cannot read the log for %s: %s", live.endpoint.id, exc.detail)
                        for rest in wanted[n:]:
                            self._look_at.add(rest.endpoint.id)
                        with trio.move_on_after(1.0):
                            await trio.sleep_forever()
                        self._pull.set()
                        break
            await trio.sleep(PULL_EVERY)  # coalesce: one look per batch of publishes

    async def _read(self, live: Live) -> None:
        endpoint = live.endpoint
        room = WINDOW - len(live.plan) - len(live.plan.in_flight)
        if room <= 0:
            live.behind = True  # read again when a delivery ends
            return
        page = await self.store.read_page(live.seen, endpoint.channels, room)
        if page.pruned > live.seen:
            # Retention dropped events this endpoint never took (it was
            # disabled or behind for longer than the log keeps them).
            note = Attempt(endpoint=endpoint.id, event_id=endpoint.cursor, attempt=0, at=self.now(), status=None,
                           error="expired", duration_ms=0.0,
                           response="events after this id were dropped by retention before they could be sent")
            self._attempts.append(note)
            self._flush.set()
        if page.events:
            now = self.now()
            rows = [Row(endpoint.id, e.id, 1, now) for e in page.events]
            endpoint.cursor = page.events[-1].id
            await self.dlog.take(endpoint, rows)
            for event in page.events:
                live.events[event.id] = event
                live.plan.add(event.id, event.key, 1, now)
            live.seen = page.events[-1].key
            self._schedule(live)
        if not page.more:
            live.seen = max(live.seen, page.head)
            live.behind = False
        else:
            live.behind = True
            self._look(endpoint.id)

    # -- attempts -------------------------------------------------------------------

    def _schedule(self, live: Live) -> None:
        wake = live.plan.wake_at(self.now())
        if wake is not None:
            heapq.heappush(self._heap, (wake, next(self._tie), live.endpoint.id))
            if self._heap[0][2] == live.endpoint.id:
                self._wake.unpark_all()

    async def _scheduler(self) -> None:
        assert self._nursery is not None
        while True:
            heap = self._heap
            now = self.now()
            while heap and heap[0][0] <= now:
                _, _, endpoint_id = heapq.heappop(heap)
                live = self.live.get(endpoint_id)
                if live is None or not live.leased:
                    continue
                for event_id, key, attempt in live.plan.take(now):
                    self._nursery.start_soon(self._attempt, live, event_id, key, attempt)
                self._schedule(live)
                now = self.now()
            if heap:
                with trio.move_on_after(max(0.0, heap[0][0] - now)):
                    await self._wake.park()
            else:
                await self._wake.park()

    async def _event(self, live: Live, event_id: str, key: Any) -> Event | None:
        event = live.events.get(event_id)
        if event is None:
            found = await self.store.read_page(_before(key), ["*"], 1)
            if found.events and found.events[0].id == event_id:
                event = found.events[0]
        return event

    async def _attempt(self, live: Live, event_id: str, key: Any, attempt: int) -> None:
        try:
            await self._attempt_once(live, event_id, key, attempt)
        except Exception:
            # One endpoint's broken attempt must not stop the others (nor the
            # relay): the delivery waits for a retry after a restart.
            log.exception("outbound: an attempt for %s failed unexpectedly", live.endpoint.id)
            live.plan.in_flight.pop(event_id, None)

    async def _attempt_once(self, live: Live, event_id: str, key: Any, attempt: int) -> None:
        endpoint = live.endpoint
        try:
            event = await self._event(live, event_id, key)
        except StoreUnavailable:
            event = None
            answer = client.Answer(None, "store", 0.0, detail="the event store did not answer")
        else:
            if event is None:
                answer = client.Answer(None, "expired", 0.0,
                                       detail="retention dropped the event before it could be sent")
            else:
                async with self._limiter:
                    answer = await self._send(endpoint, event, attempt)
        now = self.now()
        expired = answer.error == "expired"
        verdict = live.plan.finished(event_id, key, attempt, answer.status, answer.error,
                                     parse_retry_after(answer.retry_after, now), now, self._rng.random())
        if expired and verdict.kind == RETRY:
            live.plan.drop(event_id)  # nothing left to send: fail it now
            verdict = type(verdict)(FAILED, disable=verdict.disable)
        self._attempts.append(Attempt(endpoint=endpoint.id, event_id=event_id, attempt=attempt, at=now,
                                      status=answer.status, error=answer.error,
                                      duration_ms=round(answer.seconds * 1000, 3),
                                      response=answer.body.decode("utf-8", "replace") or answer.detail))
        outcome = outcome_class(answer.status, answer.error)
        counted = (endpoint.id, outcome)
        self.attempts_by_outcome[counted] = self.attempts_by_outcome.get(counted, 0) + 1
        latency = None
        if verdict.kind == DELIVERED:
            self._done.add((endpoint.id, event_id))
            self._put.pop((endpoint.id, event_id), None)
            live.events.pop(event_id, None)
            endpoint.delivered += 1
            endpoint.last_success = now
            if event is not None:
                latency = max(0.0, now - event.ts / 1000)
        else:
            endpoint.last_failure = now
            if verdict.kind == RETRY:
                assert verdict.due is not None
                self._put[(endpoint.id, event_id)] = Row(endpoint.id, event_id, attempt + 1, verdict.due)
            else:
                self._put[(endpoint.id, event_id)] = Row(endpoint.id, event_id, attempt, now, "failed")
                live.failed.add(event_id)
                live.events.pop(event_id, None)
                endpoint.failed += 1
        if verdict.disable is not None and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = verdict.disable
            log.warning("outbound: endpoint %s disabled: %s", endpoint.id, verdict.disable)
        self._changed[endpoint.id] = endpoint
        self._flush.set()
        if self.on_attempt is not None:
            self.on_attempt(endpoint.id, outcome, latency)
        self._schedule(live)
        if verdict.kind != RETRY and live.behind:
            self._look(endpoint.id)  # room for more

    async def _send(self, endpoint: Endpoint, event: Event, attempt: int) -> client.Answer:
        now = self.now()
        if endpoint.format == "envelope":
            body, headers = event.envelope, [("Content-Type", "application/json")]
        else:
            forwarded, body = received(event.envelope)
            headers = list(forwarded.items())
        headers += list(endpoint.headers.items())
        try:
            signed = whsec.headers(endpoint.secrets, event.id, now, body)
        except whsec.SecretError as exc:
            return client.Answer(None, "secret", 0.0, detail=str(exc))
        headers += list(signed.items())
        headers += [("relay-channel", event.channel), ("relay-attempt", str(attempt))]
        return await self.pool.post(endpoint.url, headers, body, timeout=self.settings.timeout,
                                    allow=self.settings.allow_private)

    # -- persistence ------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            self._flush = trio.Event()
            await trio.sleep(FLUSH_EVERY)
            put, self._put = list(self._put.values()), {}
            done, self._done = list(self._done), set()
            attempts, self._attempts = self._attempts, []
            changed, self._changed = list(self._changed.values()), {}
            try:
                await self.dlog.apply(put, done, attempts, changed)
            except StoreUnavailable as exc:
                log.warning("outbound: cannot persist delivery state: %s; retrying", exc.detail)
                for row in put:
                    self._put.setdefault((row.endpoint, row.event_id), row)
                self._done.update(key for key in done if key not in self._put)
                self._attempts[:0] = attempts
                for endpoint in changed:
                    self._changed.setdefault(endpoint.id, endpoint)
                self._flush.set()
                await trio.sleep(1.0)

    async def flush(self) -> None:
        """Persist what is pending now (for shutdown)."""
        put, self._put = list(self._put.values()), {}
        done, self._done = list(self._done), set()
        attempts, self._attempts = self._attempts, []
        changed, self._changed = list(self._changed.values()), {}
        if put or done or attempts or changed:
            await self.dlog.apply(put, done, attempts, changed)

    # -- the cluster's leases -------------------------------------------------------

    async def _leases(self) -> None:
        ttl = self.settings.timeout * 1.5 + LEASE_MARGIN
        while True:
            try:
                stored, rows = await self.dlog.load()
                known = {}
                for e in stored:
                    conf = self.configured.get(e.id)
                    known[e.id] = _configured(msgspec.structs.replace(conf), e) if conf is not None else e
                for endpoint_id, live in self.live.items():
                    newer = known.get(endpoint_id)
                    if newer is not None and newer.revision > live.endpoint.revision:
                        # Changed through another relay's API: adopt it,
                        # keeping the delivery state this relay moves.
                        _adopt(live.endpoint, newer)
                        self._takers.clear()  # its channels may have changed
                        live.plan.policy = self.settings.policy(live.endpoint)
                        if live.endpoint.enabled and not live.plan.enabled:
                            live.plan.enable()
                        elif not live.endpoint.enabled:
                            live.plan.enabled = False
                        self._look(endpoint_id)
                    if newer is not None:
                        known[endpoint_id] = live.endpoint
                self.known = known
                owed: dict[str, list[Row]] = {}
                for row in rows:
                    owed.setdefault(row.endpoint, []).append(row)
                for endpoint_id in list(self.live):
                    if endpoint_id not in self.known:
                        self.live.pop(endpoint_id).leased = False
                        self._takers.clear()
                for endpoint in self.known.values():
                    held = await self.dlog.lease(endpoint.id, self.holder, ttl)
                    live = self.live.get(endpoint.id)
                    if held and live is None:
                        self._serve(endpoint, owed.get(endpoint.id, []))
                        self._look(endpoint.id)
                    elif not held and live is not None:
                        live.leased = False
                        del self.live[endpoint.id]
                        self._takers.clear()
            except StoreUnavailable as exc:
                log.warning("outbound: leases: %s", exc.detail)
            await trio.sleep(min(RELOAD_EVERY, ttl / 3))

    # -- what the API asks -------------------------------------------------------------

    def pending(self, endpoint_id: str) -> int:
        live = self.live.get(endpoint_id)
        return len(live.plan) if live is not None else 0

    def in_flight(self, endpoint_id: str) -> int:
        live = self.live.get(endpoint_id)
        return len(live.plan.in_flight) if live is not None else 0

    async def create(self, endpoint: Endpoint) -> Endpoint:
        endpoint.created = self.now()
        endpoint.cursor = self._since(endpoint.cursor)
        await self.dlog.save_endpoint(endpoint)
        self.known[endpoint.id] = endpoint
        if not self.cluster:
            self._serve(endpoint, [])
            self._look(endpoint.id)
        return endpoint

    async def update(self, endpoint: Endpoint) -> None:
        await self.dlog.save_endpoint(endpoint)
        self.known[endpoint.id] = endpoint
        live = self.live.get(endpoint.id)
        if live is not None:
            was = live.plan.enabled
            live.endpoint = endpoint
            self._takers.clear()  # its channels may have changed
            live.plan.policy = self.settings.policy(endpoint)
            if endpoint.enabled and not was:
                live.plan.enable()
            elif not endpoint.enabled:
                live.plan.enabled = False
            self._look(endpoint.id)
            self._schedule(live)

    async def delete(self, endpoint_id: str) -> None:
        await self.dlog.delete_endpoint(endpoint_id)
        self.known.pop(endpoint_id, None)
        live = self.live.pop(endpoint_id, None)
        if live is not None:
            live.leased = False
            self._takers.clear()

    async def recover(self, endpoint_id: str, since: str) -> int:
        """Every failed delivery after ``since`` waits for a first attempt
        again; the endpoint restarts from one attempt at a time."""
        live = self.live.get(endpoint_id)
        if live is None:
            return 0
        after = self.store.parse_id(since)
        now = self.now()
        again = sorted((e for e in live.failed if self.store.parse_id(e) > after), key=self.store.parse_id)
        rows = []
        for event_id in again:
            live.failed.discard(event_id)
            live.plan.add(event_id, self.store.parse_id(event_id), 1, now)
            rows.append(Row(endpoint_id, event_id, 1, now))
        if again:
            live.endpoint.failed = max(0, live.endpoint.failed - len(again))
            live.plan.enable() if live.endpoint.enabled else None
            await self.dlog.apply(rows, [], [], [live.endpoint])
            self._schedule(live)
        return len(again)


def _configured(conf: Endpoint, kept: Endpoint) -> Endpoint:
    conf.cursor = kept.cursor
    conf.created = kept.created
    conf.revision = kept.revision
    conf.delivered, conf.failed = kept.delivered, kept.failed
    conf.last_success, conf.last_failure = kept.last_success, kept.last_failure
    conf.enabled, conf.disabled_reason = kept.enabled, kept.disabled_reason
    # A rotation made through the API outlives restarts; the file's secret
    # is added when it is not among them (it was changed in the file).
    values = {s.value for s in kept.secrets}
    conf.secrets = kept.secrets if all(s.value in values for s in conf.secrets) else conf.secrets
    return conf


def _adopt(live: Endpoint, newer: Endpoint) -> None:
    for name in ("url", "channels", "secrets", "format", "ordered", "rate", "headers", "enabled",
                 "disabled_reason", "revision"):
        setattr(live, name, getattr(newer, name))


def _before(key: Any) -> Any:
    """The key just before ``key`` in the log's order (for a read of one event)."""
    if isinstance(key, int):
        return key - 1
    ms, seq = key
    return (ms, seq - 1) if seq > 0 else (ms - 1, 2**64 - 1)


def channel_matches(endpoint: Endpoint, channel: str) -> bool:
    return any(matches(p, channel) for p in endpoint.channels)
