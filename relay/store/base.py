"""What every store engine offers, and the pure rules they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..core.outbox import Page
from ..core.envelope import Draft, Event
from ..core.errors import Unavailable
from ..core.channels import matches


class StoreUnavailable(Unavailable):
    def __init__(self, detail: str = "the event store is not answering") -> None:
        super().__init__(detail, retry_after=1.0)


@dataclass(frozen=True, slots=True)
class Appended:
    event: Event
    duplicate: bool


def parse_seq(event_id: str) -> int:
    """Ids of the embedded engines are decimal sequence numbers; "" is the start."""
    if event_id == "":
        return 0
    if not event_id.isdigit() or len(event_id) > 19:
        raise ValueError(f"{event_id[:40]!r} is not an event id of this relay")
    return int(event_id)


def selects(patterns: Sequence[str], channel: str) -> bool:
    return any(matches(p, channel) for p in patterns)


# Webhooks waiting for the next commit before ingest answers 503. One commit
# of this many takes well under a second on any disk that fsyncs at all.
MAX_BACKLOG = 10_000


class Batch:
    __slots__ = ("drafts", "done", "results", "error")

    def __init__(self) -> None:
        self.drafts: list[Draft] = []
        self.done = trio.Event()
        self.results: list[Appended] = []
        self.error: BaseException | None = None


class GroupCommit:
    """Webhooks waiting for an engine's next write (group commit).

    ``join`` adds drafts to the open batch and waits until the engine's
    writer has stored that whole batch; the writer takes batches with
    ``next``. Every webhook that arrives while a write is in progress joins
    the next one, so one round trip (one fsync) serves them all.
    """

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.closing = False
        self._batch = Batch()
        self._wake = trio.Event()

    async def join(self, drafts: Sequence[Draft]) -> list[Appended]:
        batch = self._batch
        if len(batch.drafts) >= self.backlog:
            # The store cannot keep up: refuse (503 + Retry-After) rather than
            # hold ever more webhooks in memory without an acknowledgement.
            raise StoreUnavailable(f"the event store is behind ({len(batch.drafts)} webhooks waiting to commit)")
        start = len(batch.drafts)
        batch.drafts.extend(drafts)
        self._wake.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results[start : start + len(drafts)]

    async def next(self) -> Batch | None:
        """The batch to write next; None once closing with nothing pending."""
        while not self._batch.drafts:
            if self.closing:
                return None
            await self._wake.wait()
            self._wake = trio.Event()
        batch, self._batch = self._batch, Batch()
        return batch

    def close(self) -> None:
        self.closing = True
        self._wake.set()

    def fail_pending(self, why: str) -> None:
        batch = self._batch
        if batch.drafts and not batch.done.is_set():
            batch.error = StoreUnavailable(why)
            batch.done.set()


class Store:
    """Interface of an engine. ``run`` owns its background tasks."""

    publish: Callable[[list[Event]], None]

    @property
    def head(self) -> str:  # newest id, "" while the log is empty
        raise NotImplementedError

    def parse_id(self, event_id: str) -> object:
        raise NotImplementedError

    def lost_after(self, key: object) -> bool:
        """True when retention dropped events newer than ``key``."""
        raise NotImplementedError

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def append(self, drafts: Sequence[Draft]) -> list[Appended]:
        raise NotImplementedError

    async def read(self, after: object, patterns: Sequence[str], limit: int) -> list[Event]:
        """Up to ``limit`` stored events after ``after`` on ``patterns``."""
        return (await self.read_page(after, patterns, limit)).events

    async def read_page(self, after: object, patterns: Sequence[str], limit: int) -> Page:
        """The same, with what a resume must know of the log at that moment
        (its head; whether retention dropped events after ``after``), all
        read at once so no trim can slip between them."""
        raise NotImplementedError

    @property
    def readable(self) -> bool:
        """Whether a resume can read the log now (a cheap, local answer)."""
        return True

    async def ping(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        """Flush what is pending and stop; ``append`` fails afterwards."""
        raise NotImplementedError


class SeqLog(Store):
    """What the embedded engines share: ids are decimal sequence numbers, and
    retention keeps the log a contiguous suffix, so "lost after k" is simply
    "something newer than k was dropped"."""

    _seq: int
    _pruned: int

    @property
    def head(self) -> str:
        return str(self._seq) if self._seq else ""

    def parse_id(self, event_id: str) -> int:
        return parse_seq(event_id)

    def lost_after(self, key: object) -> bool:
        return self._pruned > key  # type: ignore[operator]
