"""Outbound delivery state in Redis, shared by every relay of a cluster.

Keys, under ``store.prefix``:

- ``ob:endpoints``: a hash, endpoint id -> its JSON record (cursor and
  counters included).
- ``ob:owed:<id>``: a hash, event id -> the delivery it owes (a ``Row``).
- ``ob:attempts:<id>``: a list, newest attempt first, trimmed to
  ``ATTEMPTS_KEPT``.
- ``ob:lease:<id>``: which relay delivers for the endpoint, expiring.

A relay delivers for an endpoint only while it holds its lease; the lease
lasts longer than an attempt may take, so a takeover never doubles an
attempt in flight. Writes of one batch go in one MULTI/EXEC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..core.endpoints import Attempt, Endpoint, Row, decode_attempt, decode_endpoint, decode_row, encode
from ..core.errors import StoreUnavailable
from .deliveries import ATTEMPTS_KEPT, DeliveryLog, newest

# Take or renew a lease: KEYS[1] the lease, ARGV holder, ttl ms.
_LEASE_LUA = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_CALL_TIMEOUT = 5.0


class RedisDeliveryLog(DeliveryLog):
    def __init__(self, client: Callable[[], Any], prefix: str, where: str, failures: tuple[type, ...]) -> None:
        self.client = client  # the engine's client, None while it is not running
        self.where = where
        self.failures = failures
        prefix = prefix + "ob:"
        self.endpoints_key = prefix + "endpoints"
        self.owed_prefix = prefix + "owed:"
        self.attempts_prefix = prefix + "attempts:"
        self.lease_prefix = prefix + "lease:"

    def _client(self):  # type: ignore[no-untyped-def]
        client = self.client()
        if client is None:
            raise StoreUnavailable("the event store is not running")
        return client

    async def _run(self, fn):  # type: ignore[no-untyped-def]
        try:
            with trio.fail_after(_CALL_TIMEOUT):
                return await fn(self._client())
        except self.failures as exc:
            raise StoreUnavailable(f"the event store (Redis at {self.where}) failed (outbound state): "
                                   f"{exc or type(exc).__name__}") from None

    async def load(self) -> tuple[list[Endpoint], list[Row]]:
        async def go(client):  # type: ignore[no-untyped-def]
            records = await client.hgetall(self.endpoints_key)
            endpoints = [decode_endpoint(v) for v in records.values()]
            rows: list[Row] = []
            for endpoint in endpoints:
                owed = await client.hgetall(self.owed_prefix + endpoint.id)
                rows += [decode_row(v) for v in owed.values()]
            return endpoints, rows

        return await self._run(go)

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        await self._run(lambda client: client.hset(self.endpoints_key, {endpoint.id: encode(endpoint)}))

    async def delete_endpoint(self, endpoint_id: str) -> None:
        async def go(client):  # type: ignore[no-untyped-def]
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.endpoints_key, [endpoint_id])
                pipe.delete([self.owed_prefix + endpoint_id, self.attempts_prefix + endpoint_id])

        await self._run(go)

    async def take(self, endpoint: Endpoint, rows: Sequence[Row]) -> None:
        await self.apply(rows, [], [], [endpoint], existing_only=False)

    async def apply(self, put: Sequence[Row], done: Sequence[tuple[str, str]], attempts: Sequence[Attempt],
                    endpoints: Sequence[Endpoint], existing_only: bool = True) -> None:
        async def go(client):  # type: ignore[no-untyped-def]
            if existing_only and endpoints:
                # A verdict about an endpoint deleted meanwhile must not bring it back.
                present = await client.hmget(self.endpoints_key, [e.id for e in endpoints])
                kept = [e for e, p in zip(endpoints, present) if p is not None]
            else:
                kept = list(endpoints)
            async with client.pipeline(transaction=True) as pipe:
                by_endpoint: dict[str, dict[str, bytes]] = {}
                for row in put:
                    by_endpoint.setdefault(row.endpoint, {})[row.event_id] = encode(row)
                for endpoint_id, mapping in by_endpoint.items():
                    pipe.hset(self.owed_prefix + endpoint_id, mapping)
                gone: dict[str, list[str]] = {}
                for endpoint_id, event_id in done:
                    gone.setdefault(endpoint_id, []).append(event_id)
                for endpoint_id, event_ids in gone.items():
                    pipe.hdel(self.owed_prefix + endpoint_id, event_ids)
                logged: dict[str, list[bytes]] = {}
                for attempt in attempts:
                    logged.setdefault(attempt.endpoint, []).append(encode(attempt))
                for endpoint_id, records in logged.items():
                    pipe.lpush(self.attempts_prefix + endpoint_id, records)
                    pipe.ltrim(self.attempts_prefix + endpoint_id, 0, ATTEMPTS_KEPT - 1)
                if kept:
                    pipe.hset(self.endpoints_key, {e.id: encode(e) for e in kept})

        await self._run(go)

    async def attempts(self, endpoint_id: str, failed_only: bool, limit: int,
                       before: float | None) -> list[Attempt]:
        records = await self._run(lambda client: client.lrange(self.attempts_prefix + endpoint_id, 0, -1))
        return newest((decode_attempt(record) for record in records), failed_only, limit, before)

    async def lease(self, endpoint_id: str, holder: str, ttl: float) -> bool:
        got = await self._run(lambda client: client.eval(_LEASE_LUA, [self.lease_prefix + endpoint_id],
                                                          [holder, int(ttl * 1000)]))
        return bool(got)

    async def release(self, endpoint_id: str, holder: str) -> None:
        await self._run(lambda client: client.eval(_RELEASE_LUA, [self.lease_prefix + endpoint_id], [holder]))
