"""Outbound delivery state in the SQLite database, beside the event log.

Three tables: the endpoints (one JSON record each, delivery counters and
cursor included), the deliveries they owe (``outbound_owed``: waiting for
an attempt, or failed and kept for ``recover``), and the attempts log (the
newest ``ATTEMPTS_KEPT`` per endpoint). Every write runs on the store's
writer thread in one transaction, so a batch of verdicts costs one fsync,
and ``take`` writes the rows an endpoint now owes with its moved cursor at
once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..core.endpoints import Attempt, Endpoint, Row, decode_attempt, decode_endpoint, encode
from ..core.errors import StoreUnavailable
from .deliveries import ATTEMPTS_KEPT, DeliveryLog

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbound_endpoints (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbound_owed (
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    due REAL NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (endpoint, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbound_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_attempts_endpoint ON outbound_attempts (endpoint, seq);
"""


class SqliteDeliveryLog(DeliveryLog):
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        # ``call(fn, *args)`` runs ``fn(writer connection, *args)`` on the
        # store's writer thread.
        self.call = call

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.call(fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the event store failed (outbound state): {exc}") from None

    async def load(self) -> tuple[list[Endpoint], list[Row]]:
        return await self._call(_load)

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        await self._call(_write, [], [], [], [endpoint])

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._call(_delete, endpoint_id)

    async def take(self, endpoint: Endpoint, rows: Sequence[Row]) -> None:
        await self._call(_write, rows, [], [], [endpoint])

    async def apply(self, put: Sequence[Row], done: Sequence[tuple[str, str]], attempts: Sequence[Attempt],
                    endpoints: Sequence[Endpoint]) -> None:
        await self._call(_write, put, done, attempts, endpoints, True)

    async def attempts(self, endpoint_id: str, failed_only: bool, limit: int,
                       before: float | None) -> list[Attempt]:
        return await self._call(_attempts, endpoint_id, failed_only, limit, before)


# -- on the writer thread --------------------------------------------------------


def _load(db: sqlite3.Connection) -> tuple[list[Endpoint], list[Row]]:
    endpoints = [decode_endpoint(record) for (record,) in db.execute("SELECT record FROM outbound_endpoints")]
    rows = [Row(*r) for r in db.execute("SELECT endpoint, event_id, attempt, due, state FROM outbound_owed")]
    return endpoints, rows


def _write(db: sqlite3.Connection, put: Sequence[Row], done: Sequence[tuple[str, str]],
           attempts: Sequence[Attempt], endpoints: Sequence[Endpoint], existing_only: bool = False) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        if put:
            db.executemany("INSERT OR REPLACE INTO outbound_owed VALUES (?, ?, ?, ?, ?)",
                           [(r.endpoint, r.event_id, r.attempt, r.due, r.state) for r in put])
        if done:
            db.executemany("DELETE FROM outbound_owed WHERE endpoint = ? AND event_id = ?", list(done))
        if attempts:
            db.executemany("INSERT INTO outbound_attempts (endpoint, at, ok, record) VALUES (?, ?, ?, ?)",
                           [(a.endpoint, a.at, int(a.status is not None and 200 <= a.status < 300), encode(a))
                            for a in attempts])
            for endpoint_id in {a.endpoint for a in attempts}:
                db.execute("DELETE FROM outbound_attempts WHERE endpoint = ? AND seq <= (SELECT seq FROM "
                           "outbound_attempts WHERE endpoint = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                           (endpoint_id, endpoint_id, ATTEMPTS_KEPT))
        for endpoint in endpoints:
            if existing_only:
                # A verdict about an endpoint deleted meanwhile must not bring it back.
                db.execute("UPDATE outbound_endpoints SET record = ? WHERE id = ?", (encode(endpoint), endpoint.id))
            else:
                db.execute("INSERT OR REPLACE INTO outbound_endpoints VALUES (?, ?)", (endpoint.id, encode(endpoint)))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _delete(db: sqlite3.Connection, endpoint_id: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column in (("outbound_endpoints", "id"), ("outbound_owed", "endpoint"),
                              ("outbound_attempts", "endpoint")):
            db.execute(f"DELETE FROM {table} WHERE {column} = ?", (endpoint_id,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _attempts(db: sqlite3.Connection, endpoint_id: str, failed_only: bool, limit: int,
              before: float | None) -> list[Attempt]:
    sql = "SELECT record FROM outbound_attempts WHERE endpoint = ?"
    args: list[object] = [endpoint_id]
    if failed_only:
        sql += " AND ok = 0"
    if before is not None:
        sql += " AND at < ?"
        args.append(before)
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    return [decode_attempt(record) for (record,) in db.execute(sql, args)]
