"""Group commit: webhooks that wait at the same moment share one write.

``GroupCommit`` is the queue between ingest and an engine's one writer task
(sqlite: a transaction and its fsync; redis: one script call). ``join`` adds
drafts to the open batch and waits until the writer has stored that whole
batch; the writer takes batches with ``next``.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..core.envelope import Draft
from ..core.errors import StoreUnavailable
from .base import Appended

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

    def __init__(self, backlog: int | None = None) -> None:
        self.backlog = MAX_BACKLOG if backlog is None else backlog
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
