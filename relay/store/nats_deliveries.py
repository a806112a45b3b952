"""Outbound delivery state in JetStream, shared by every relay on the same
NATS and prefix (the nats engine's ``Store.deliveries``).

Two streams beside the log, named from the same base (``relay_``):

- ``<base>_ob``, a stream of keyed records (the newest message of each
  subject is the record, as a JetStream key-value bucket keeps them):
  ``<base>_ob.ep.<endpoint>`` an endpoint's JSON record (cursor and counters
  included), ``<base>_ob.owed.<endpoint>.<event id>`` a delivery it owes (a
  ``Row``), ``<base>_ob.lease.<endpoint>`` which relay delivers for it and
  until when. Removing a record purges its subject.
- ``<base>_ob_att``: the attempts, on ``<base>_ob_att.<endpoint>``, the
  newest ``ATTEMPTS_KEPT`` per endpoint kept by the stream itself.

In subjects an endpoint id's dots are written ``=`` (ids never hold one), so
one endpoint's records never match another's filter.

The lease is a compare-and-set: a write that names the sequence of the
record it replaces (``Nats-Expected-Last-Subject-Sequence``), which
JetStream checks with the write, so two relays never both take it. Its
expiry is on the relays' clocks (they must agree to within the lease's
margin, as any lease's holders do). A batch (``apply``) is several writes,
not one transaction: rows first, the endpoint's record (its cursor) last, so
after a crash an event is owed twice at worst (the same subject: one row),
never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import trio

from ..core.endpoints import Attempt, Endpoint, Row, decode_attempt, decode_endpoint, decode_row, encode
from ..core.errors import StoreUnavailable
from .deliveries import ATTEMPTS_KEPT, DeliveryLog, newest
from .nats_bridge import Bridge, Unavailable

_CALL_TIMEOUT = 10.0


def _key(endpoint_id: str) -> str:
    return endpoint_id.replace(".", "=")


class NatsDeliveryLog(DeliveryLog):
    def __init__(self, bridge: Callable[[], Bridge | None], base: str, where: str) -> None:
        self.bridge = bridge  # the engine's bridge, None while it is not running
        self.where = where
        self.records = f"{base}_ob"
        self.attempt_log = f"{base}_ob_att"
        self._ready = False

    async def _run(self, fn):  # type: ignore[no-untyped-def]
        bridge = self.bridge()
        if bridge is None:
            raise StoreUnavailable("the event store is not running")
        try:
            with trio.fail_after(_CALL_TIMEOUT):
                if not self._ready:
                    await bridge.ensure_keyed(self.records, self.records + ".>", 1)
                    await bridge.ensure_keyed(self.attempt_log, self.attempt_log + ".>", ATTEMPTS_KEPT)
                    self._ready = True
                return await fn(bridge)
        except (Unavailable, trio.TooSlowError) as exc:
            self._ready = False
            raise StoreUnavailable(f"the event store (NATS at {self.where}) failed (outbound state): "
                                   f"{exc or type(exc).__name__}") from None

    def _ep(self, endpoint_id: str) -> str:
        return f"{self.records}.ep.{_key(endpoint_id)}"

    def _owed(self, endpoint_id: str, event_id: str = "*") -> str:
        return f"{self.records}.owed.{_key(endpoint_id)}.{event_id}"

    def _lease(self, endpoint_id: str) -> str:
        return f"{self.records}.lease.{_key(endpoint_id)}"

    def _attempts(self, endpoint_id: str) -> str:
        return f"{self.attempt_log}.{_key(endpoint_id)}"

    async def load(self) -> tuple[list[Endpoint], list[Row]]:
        async def go(bridge: Bridge):  # type: ignore[no-untyped-def]
            endpoints = [decode_endpoint(data) for _, _, data in
                         await bridge.scan(self.records, f"{self.records}.ep.*", True)]
            rows = [decode_row(data) for _, _, data in
                    await bridge.scan(self.records, f"{self.records}.owed.>", True)]
            known = {e.id for e in endpoints}
            return endpoints, [row for row in rows if row.endpoint in known]

        return await self._run(go)

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        await self._run(lambda bridge: bridge.put([self._ep(endpoint.id)], [encode(endpoint)]))

    async def delete_endpoint(self, endpoint_id: str) -> None:
        async def go(bridge: Bridge) -> None:
            # The record first: rows left by a crash here are of no endpoint.
            await bridge.purge(self.records, [self._ep(endpoint_id)])
            await bridge.purge(self.records, [self._owed(endpoint_id, ">"), self._lease(endpoint_id)])
            await bridge.purge(self.attempt_log, [self._attempts(endpoint_id)])

        await self._run(go)

    async def take(self, endpoint: Endpoint, rows: Sequence[Row]) -> None:
        await self.apply(rows, [], [], [endpoint], existing_only=False)

    async def apply(self, put: Sequence[Row], done: Sequence[tuple[str, str]], attempts: Sequence[Attempt],
                    endpoints: Sequence[Endpoint], existing_only: bool = True) -> None:
        async def go(bridge: Bridge) -> None:
            subjects = [self._owed(row.endpoint, row.event_id) for row in put]
            values = [encode(row) for row in put]
            subjects += [self._attempts(a.endpoint) for a in attempts]
            values += [encode(a) for a in attempts]
            if subjects:
                await bridge.put(subjects, values)
            if done:
                await bridge.purge(self.records, [self._owed(e, event_id) for e, event_id in done])
            kept = list(endpoints)
            if existing_only and kept:
                # A verdict about an endpoint deleted meanwhile must not bring it back.
                present = {e.id for _, _, data in await bridge.scan(self.records, f"{self.records}.ep.*", True)
                           for e in [decode_endpoint(data)]}
                kept = [e for e in kept if e.id in present]
            if kept:
                await bridge.put([self._ep(e.id) for e in kept], [encode(e) for e in kept])

        await self._run(go)

    async def attempts(self, endpoint_id: str, failed_only: bool, limit: int,
                       before: float | None) -> list[Attempt]:
        found = await self._run(lambda bridge: bridge.scan(self.attempt_log, self._attempts(endpoint_id), False))
        return newest((decode_attempt(data) for _, _, data in reversed(found)), failed_only, limit, before)

    async def lease(self, endpoint_id: str, holder: str, ttl: float) -> bool:
        async def go(bridge: Bridge) -> bool:
            subject = self._lease(endpoint_id)
            now = time.time()
            current = await bridge.last(self.records, subject)
            seq = 0
            if current is not None:
                seq, data = current
                who, _, until = data.decode().rpartition(" ")
                if who != holder and until and float(until) > now:
                    return False
            return await bridge.swap(subject, f"{holder} {now + ttl:.3f}".encode(), seq)

        return await self._run(go)

    async def release(self, endpoint_id: str, holder: str) -> None:
        async def go(bridge: Bridge) -> None:
            subject = self._lease(endpoint_id)
            current = await bridge.last(self.records, subject)
            if current is not None and current[1].decode().rpartition(" ")[0] == holder:
                await bridge.swap(subject, f"{holder} 0".encode(), current[0])

        await self._run(go)
