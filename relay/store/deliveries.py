"""Where outbound delivery state lives: the interface every store engine
offers for it (``Store.deliveries``), and the memory engine's.

Writes come in batches (``apply``): the service collects what a moment's
attempts decided and persists it in one transaction, as ingest's group
commit does for webhooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import trio

from ..core.endpoints import FAILED, Attempt, Endpoint, Row

# Attempts kept per endpoint; older ones are dropped as new ones are logged.
ATTEMPTS_KEPT = 1000


class DeliveryLog:
    """Interface. Every method may raise ``StoreUnavailable``."""

    async def load(self) -> tuple[list[Endpoint], list[Row]]:
        """Every endpoint the store knows, and every row (waiting or failed)."""
        raise NotImplementedError

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        raise NotImplementedError

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """The endpoint, its rows and its attempts."""
        raise NotImplementedError

    async def take(self, endpoint: Endpoint, rows: Sequence[Row]) -> None:
        """New rows for events the endpoint now owes, with its moved cursor,
        at once: after a crash, an event is either owed or not yet read."""
        raise NotImplementedError

    async def apply(self, put: Sequence[Row], done: Sequence[tuple[str, str]], attempts: Sequence[Attempt],
                    endpoints: Sequence[Endpoint]) -> None:
        """One batch: rows to write, rows done (delivered: removed), attempts
        to log, endpoints whose state changed."""
        raise NotImplementedError

    async def attempts(self, endpoint_id: str, failed_only: bool, limit: int,
                       before: float | None) -> list[Attempt]:
        """Newest first; ``before``: only attempts made before that time."""
        raise NotImplementedError

    async def lease(self, endpoint_id: str, holder: str, ttl: float) -> bool:
        """Hold (or renew) the right to deliver for the endpoint for ``ttl``
        seconds. One process of a single store always holds it."""
        return True

    async def release(self, endpoint_id: str, holder: str) -> None:
        return None


class MemoryDeliveryLog(DeliveryLog):
    """For the memory engine: gone with the process, as its events are."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.rows: dict[tuple[str, str], Row] = {}
        self.logged: dict[str, list[Attempt]] = {}

    async def load(self) -> tuple[list[Endpoint], list[Row]]:
        await trio.lowlevel.checkpoint()
        return list(self.endpoints.values()), list(self.rows.values())

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        await trio.lowlevel.checkpoint()
        self.endpoints[endpoint.id] = endpoint

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.endpoints.pop(endpoint_id, None)
        self.logged.pop(endpoint_id, None)
        for key in [k for k in self.rows if k[0] == endpoint_id]:
            del self.rows[key]

    async def take(self, endpoint: Endpoint, rows: Sequence[Row]) -> None:
        await trio.lowlevel.checkpoint()
        self._put(rows)
        self.endpoints[endpoint.id] = endpoint

    def _put(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.rows[(row.endpoint, row.event_id)] = row

    async def apply(self, put: Sequence[Row], done: Sequence[tuple[str, str]], attempts: Sequence[Attempt],
                    endpoints: Sequence[Endpoint]) -> None:
        await trio.lowlevel.checkpoint()
        self._put(put)
        for key in done:
            self.rows.pop(key, None)
        for attempt in attempts:
            kept = self.logged.setdefault(attempt.endpoint, [])
            kept.append(attempt)
            if len(kept) > ATTEMPTS_KEPT:
                del kept[: len(kept) - ATTEMPTS_KEPT]
        for endpoint in endpoints:
            if endpoint.id in self.endpoints:
                self.endpoints[endpoint.id] = endpoint

    async def attempts(self, endpoint_id: str, failed_only: bool, limit: int,
                       before: float | None) -> list[Attempt]:
        await trio.lowlevel.checkpoint()
        return newest(reversed(self.logged.get(endpoint_id, [])), failed_only, limit, before)


def newest(attempts: Iterable[Attempt], failed_only: bool, limit: int, before: float | None) -> list[Attempt]:
    """Of ``attempts`` (newest first), those ``attempts`` asks for."""
    out: list[Attempt] = []
    for attempt in attempts:
        if before is not None and attempt.at >= before:
            continue
        if failed_only and attempt.status is not None and 200 <= attempt.status < 300:
            continue
        out.append(attempt)
        if len(out) >= limit:
            break
    return out


def failed_rows(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if row.state == FAILED]
