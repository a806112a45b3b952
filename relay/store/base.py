"""What every store engine offers (``Store``), what an append returns
(``Appended``), and what the embedded engines share (``SeqLog``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..core.envelope import Draft, Event
from ..core.outbox import Page
from .deliveries import DeliveryLog


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


class Store:
    """Interface of an engine. ``run`` owns its background tasks."""

    publish: Callable[[list[Event]], None]
    # Where outbound delivery state (endpoints, deliveries owed, attempts)
    # is kept, in the same engine as the log.
    deliveries: DeliveryLog

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
