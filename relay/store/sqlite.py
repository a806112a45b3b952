"""The embedded, durable engine: SQLite in WAL mode with group commit.

One writer task owns all writes. Webhooks that arrive while a commit is in
progress wait in the next batch, and the whole batch becomes one transaction:
one fsync for many acknowledgements. Every ``append`` returns only after the
commit of its batch, so a 202 always means "on disk".

The stdlib sqlite3 module blocks, so no sqlite call runs on the trio loop.
Writes go to one dedicated writer thread that ``run`` starts and waits for;
the writer connection is opened, used and closed on that thread only. Reads use
their own connection in trio's worker threads, one at a time.

Ready (``ping``) means a write can succeed, not merely that the file answers
a read: a full disk or a failing one leaves reads working while every
webhook gets 503. So once a commit has failed, and until one succeeds,
``ping`` tries a small write of its own (``_probe``) on the writer thread;
readiness comes back as soon as that passes, e.g. when space is freed, with
no webhook having to fail first.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

from ..config.model import StoreConfig
from ..core.envelope import Draft, Event, encode_envelope
from ..core.errors import StoreUnavailable
from ..core.outbox import Page
from .base import Appended, SeqLog
from .sqlite_deliveries import SCHEMA as DELIVERIES_SCHEMA
from .sqlite_deliveries import SqliteDeliveryLog
from .commit import Batch, GroupCommit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    ts INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    channel TEXT NOT NULL,
    ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_ts ON deliveries (ts);
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY,
    pad BLOB NOT NULL
);
"""

log = logging.getLogger("relay.store")

# What the readiness probe writes: room for a batch of ordinary webhooks,
# not just one page, so a disk with a few bytes left is not called ready.
_PROBE_BYTES = 64 * 1024

# Dedupe keys looked up per query (SQLite allows 32,766 variables since 3.32).
_KEYS_PER_QUERY = 500

# Age retention scans an index; once a second is plenty.
_AGE_SWEEP_MS = 1000


def pattern_sql(patterns: Sequence[str]) -> tuple[str, list[object]]:
    """A WHERE fragment selecting the channels of ``patterns``.

    Prefix patterns become a range (``github.`` <= channel < ``github/``) rather
    than LIKE, whose ``_`` wildcard would also match ordinary channel names.
    """
    if "*" in patterns:
        return "1", []
    exact = [p for p in patterns if not p.endswith(".*")]
    clauses: list[str] = []
    args: list[object] = []
    if exact:
        clauses.append(f"channel IN ({','.join('?' * len(exact))})")
        args.extend(exact)
    for p in patterns:
        if p.endswith(".*"):
            prefix = p[:-1]
            clauses.append("(channel >= ? AND channel < ?)")
            args.extend((prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
    return ("(" + " OR ".join(clauses) + ")") if clauses else "0", args


def _in_flight(_: Any) -> trio.lowlevel.Abort:
    # A call handed to the writer thread cannot be taken back: the caller
    # waits for it, and a cancellation lands at its next checkpoint.
    return trio.lowlevel.Abort.FAILED


class _WriterThread:
    """One thread that runs the calls it is given, in order, for a store's life.

    It is a trio worker thread held for the whole run (so ``trio.from_thread``
    works inside a commit), but calls do not pay ``trio.to_thread.run_sync``
    each (thread cache, limiter, naming): a call is one queue put, and its
    outcome comes back as one ``run_sync_soon`` that reschedules the caller.
    """

    NAME = "relay sqlite writer"

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # (waiting task, function or None to end the loop, args)
        self._inbox: queue.SimpleQueue[tuple[trio.lowlevel.Task, Callable[..., Any] | None, tuple[Any, ...]]]
        self._inbox = queue.SimpleQueue()
        self._gone = False

    async def host(self) -> None:
        """Lend a thread to the loop until ``stop`` ends it."""
        try:
            # Shielded: only ``stop`` ends the loop, and the owner always calls
            # it; a cancellation must not keep the thread from ever starting
            # while calls are queued. Its own limiter: it holds no token of
            # the default one, which reads use.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._main, thread_name=self.NAME, limiter=trio.CapacityLimiter(1))
        finally:
            # The loop has ended, or never began (no thread to be had): no one
            # else will answer what is queued.
            self._gone = True
            while True:
                try:
                    task, fn, _ = self._inbox.get_nowait()
                except queue.Empty:
                    break
                gone = StoreUnavailable("the event store's writer thread is gone")
                trio.lowlevel.reschedule(task, outcome.Value(None) if fn is None else outcome.Error(gone))

    def _main(self) -> None:
        reschedule, inbox, token = trio.lowlevel.reschedule, self._inbox, self._token
        while True:
            task, fn, args = inbox.get()
            if fn is None:
                token.run_sync_soon(reschedule, task)
                return
            token.run_sync_soon(reschedule, task, outcome.capture(fn, *args))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the thread; raises what it raises."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._gone:
            raise StoreUnavailable("the event store's writer thread is gone")
        self._inbox.put((trio.lowlevel.current_task(), fn, args))
        return await trio.lowlevel.wait_task_rescheduled(_in_flight)

    async def stop(self) -> None:
        """Let the loop finish what it was given and end; ``host`` then returns."""
        if not self._gone:
            self._inbox.put((trio.lowlevel.current_task(), None, ()))
            await trio.lowlevel.wait_task_rescheduled(_in_flight)


class SqliteStore(SeqLog):
    def __init__(self, config: StoreConfig, publish: Callable[[list[Event]], None]) -> None:
        self.config = config
        self.publish = publish
        self.path = config.path
        self._queue = GroupCommit()
        self._running = False
        self._stopped = trio.Event()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = trio.Lock()
        self._seq = 0
        self._pruned = 0
        self._last_sweep = 0
        self.commits = 0  # transactions committed, for tests and metrics
        self._thread: _WriterThread | None = None
        self.deliveries = SqliteDeliveryLog(self.call)
        # Why the last commit failed, until one succeeds: readiness then
        # depends on a probe write (``ping``), one at a time.
        self._write_failed: str | None = None
        self._probing: trio.Event | None = None

    # -- state -----------------------------------------------------------

    # -- lifecycle -------------------------------------------------------

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Opened on the writer thread, and sqlite3 enforces that only it uses it.
        writer = sqlite3.connect(self.path, isolation_level=None)
        try:
            writer.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk (WAL fsynced) before the 202 goes out.
            writer.execute("PRAGMA synchronous=FULL")
            writer.executescript(_SCHEMA)
            writer.executescript(DELIVERIES_SCHEMA)
            row = writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            self._seq = row[0] if row else 0
            (oldest,) = writer.execute("SELECT MIN(seq) FROM events").fetchone()
            self._pruned = oldest - 1 if oldest is not None else self._seq
            reader = sqlite3.connect(self.path, check_same_thread=False)
        except BaseException:
            writer.close()
            raise
        reader.execute("PRAGMA query_only=ON")
        self._writer, self._reader = writer, reader

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        thread = self._thread = _WriterThread()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(thread.host)
            batch: Batch | None = None
            try:
                await thread.call(self._open)
                self._running = True
                task_status.started()
                while (batch := await self._queue.next()) is not None:
                    try:
                        fresh = await thread.call(self._commit, batch)
                    except sqlite3.Error as exc:
                        self._failed(exc)
                        batch.error = StoreUnavailable(f"the event store failed to commit: {exc}")
                        batch.done.set()
                        continue
                    self._wrote()
                    if fresh:
                        self.publish(fresh)
                    batch.done.set()
            finally:
                self._running = False
                self._stopped.set()
                # A batch taken but not committed (cancelled before the hand-off)
                # would otherwise leave its webhooks waiting forever.
                if batch is not None and not batch.done.is_set():
                    batch.error = StoreUnavailable("the relay is shutting down")
                    batch.done.set()
                self._queue.fail_pending("the relay is shutting down")
                writer, reader = self._writer, self._reader
                self._writer = self._reader = None
                with trio.CancelScope(shield=True):
                    try:
                        if writer is not None:
                            await thread.call(writer.close)
                    finally:
                        await thread.stop()
                    if reader is not None:
                        await trio.to_thread.run_sync(reader.close)

    async def close(self) -> None:
        """Commit what is pending, then let ``run`` end."""
        self._queue.close()
        if self._running:
            await self._stopped.wait()

    # -- writes ----------------------------------------------------------

    def _commit(self, batch: Batch) -> list[Event]:
        """Runs on the writer thread: one transaction for the whole batch."""
        db = self._writer
        assert db is not None
        window = self.config.retention_age * 1000
        seq = self._seq
        fresh: list[Event] = []
        rows: list[tuple[int, str, int, bytes]] = []
        deliveries: list[tuple[str, int, str, int]] = []
        in_batch: dict[str, Event] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            seen = self._delivered(db, batch.drafts)
            for draft in batch.drafts:
                key = draft.dedupe
                if key is not None:
                    first = in_batch.get(key)
                    if first is None:
                        row = seen.get(key)
                        if row is not None and row[2] >= draft.ts - window:
                            first = Event(str(row[0]), row[0], row[1], 0, b"")
                    if first is not None:
                        batch.results.append(Appended(first, True))
                        continue
                seq += 1
                event_id = str(seq)
                envelope = encode_envelope(draft, event_id)
                event = Event(event_id, seq, draft.channel, draft.ts, envelope, draft.received)
                rows.append((seq, draft.channel, draft.ts, envelope))
                if key is not None:
                    in_batch[key] = event
                    deliveries.append((key, seq, draft.channel, draft.ts))
                fresh.append(event)
                batch.results.append(Appended(event, False))
            db.executemany("INSERT INTO events (seq, channel, ts, envelope) VALUES (?, ?, ?, ?)", rows)
            if deliveries:
                db.executemany("INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?)", deliveries)
            pruned = self._retain(db, seq, fresh[-1].ts if fresh else 0)
            db.execute("COMMIT")
        except BaseException:
            batch.results.clear()
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._seq = seq
        self._pruned = max(self._pruned, pruned)
        self.commits += 1
        return fresh

    def _delivered(self, db: sqlite3.Connection, drafts: Sequence[Draft]) -> dict[str, tuple[int, str, int]]:
        """The stored deliveries among the batch's dedupe keys: key -> (seq,
        channel, ts). One query per batch (in slices under SQLite's variable
        limit), not one per webhook: nearly every GitHub, Stripe or Shopify
        delivery carries an id."""
        keys = list({d.dedupe for d in drafts if d.dedupe is not None})
        found: dict[str, tuple[int, str, int]] = {}
        for i in range(0, len(keys), _KEYS_PER_QUERY):
            part = keys[i:i + _KEYS_PER_QUERY]
            rows = db.execute(
                f"SELECT key, seq, channel, ts FROM deliveries WHERE key IN ({','.join('?' * len(part))})", part)
            for key, seq, channel, ts in rows:
                found[key] = (seq, channel, ts)
        return found

    def _retain(self, db: sqlite3.Connection, last_seq: int, now_ms: int) -> int:
        """Drop what retention says, inside the batch's transaction; returns
        the newest seq dropped so far. The log stays a contiguous suffix."""
        pruned = self._pruned
        floor = last_seq - self.config.retention
        if floor > pruned:
            db.execute("DELETE FROM events WHERE seq <= ?", (floor,))
            pruned = floor
        if now_ms and now_ms - self._last_sweep >= _AGE_SWEEP_MS:
            self._last_sweep = now_ms
            cutoff = now_ms - int(self.config.retention_age * 1000)
            # INDEXED BY: left to itself the planner walks the table back from
            # the newest seq until a row is old enough - all of it when none is.
            (old,) = db.execute("SELECT MAX(seq) FROM events INDEXED BY events_ts WHERE ts < ?", (cutoff,)).fetchone()
            if old is not None and old > pruned:
                db.execute("DELETE FROM events WHERE seq <= ?", (old,))
                pruned = old
            db.execute("DELETE FROM deliveries WHERE ts < ?", (cutoff,))
        return pruned

    async def append(self, drafts: Sequence[Draft]) -> list[Appended]:
        if self._queue.closing or not self._running:
            raise StoreUnavailable("the event store is not running")
        return await self._queue.join(drafts)

    # -- reads -----------------------------------------------------------

    def _select(self, after: int, patterns: Sequence[str], limit: int) -> tuple[list[tuple[int, str, int, bytes]], int, int]:
        """Rows after ``after`` (one more than ``limit``, to tell whether more
        follow), the newest seq ever given and the newest seq retention
        dropped: one read transaction, so one snapshot of the log."""
        db = self._reader
        assert db is not None
        where, args = pattern_sql(patterns)
        db.execute("BEGIN")
        try:
            rows = db.execute(
                f"SELECT seq, channel, ts, envelope FROM events WHERE seq > ? AND {where} ORDER BY seq LIMIT ?",
                (after, *args, limit + 1),
            ).fetchall()
            (oldest,) = db.execute("SELECT MIN(seq) FROM events").fetchone()
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        finally:
            db.execute("COMMIT")
        head = row[0] if row else 0
        return rows, head, (oldest - 1 if oldest is not None else head)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(writer connection, *args)`` on the writer thread, in turn
        with the commits (outbound delivery state is written this way)."""
        thread, db = self._thread, self._writer
        if thread is None or db is None or not self._running:
            raise StoreUnavailable("the event store is not running")
        return await thread.call(fn, db, *args)

    async def read_page(self, after: object, patterns: Sequence[str], limit: int) -> Page:
        if self._reader is None:
            raise StoreUnavailable("the event store is not running")
        async with self._read_lock:
            try:
                rows, head, pruned = await trio.to_thread.run_sync(self._select, after, patterns, limit)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"the event store failed to read: {exc}") from None
        more = len(rows) > limit
        events = [Event(str(seq), seq, channel, ts, bytes(envelope)) for seq, channel, ts, envelope in rows[:limit]]
        return Page(events, head, pruned, more=more)

    @property
    def readable(self) -> bool:
        return self._running and self._reader is not None

    async def ping(self) -> bool:
        """Ready: running, and a write can succeed (module docstring)."""
        if not self._running or self._reader is None:
            return False
        if self._write_failed is not None:
            return await self._probe_write()
        async with self._read_lock:
            try:
                await trio.to_thread.run_sync(self._reader.execute, "SELECT 1")
            except sqlite3.Error:
                return False
        return True

    def _failed(self, exc: sqlite3.Error) -> None:
        if self._write_failed is None:
            log.warning("the event store cannot write; not ready until a write succeeds",
                        extra={"fields": {"error": str(exc), "path": self.path}})
        self._write_failed = str(exc)

    def _wrote(self) -> None:
        if self._write_failed is not None:
            log.info("the event store writes again; ready", extra={"fields": {"path": self.path}})
            self._write_failed = None

    async def _probe_write(self) -> bool:
        """One probe at a time; callers that come while it runs share its
        outcome rather than queue more writes behind it."""
        if self._probing is not None:
            await self._probing.wait()
            return self._write_failed is None
        self._probing = probing = trio.Event()
        try:
            assert self._thread is not None
            try:
                await self._thread.call(self._probe)
            except sqlite3.Error as exc:
                self._failed(exc)
                return False
            except StoreUnavailable:
                return False
            self._wrote()
            return True
        finally:
            self._probing = None
            probing.set()

    def _probe(self) -> None:
        """Runs on the writer thread: a committed write of ``_PROBE_BYTES``
        to the probe table's one row (the same file, WAL and fsync a batch
        of webhooks needs)."""
        db = self._writer
        if db is None:
            raise sqlite3.OperationalError("the event store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO probe (id, pad) VALUES (1, zeroblob(?))", (_PROBE_BYTES,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
