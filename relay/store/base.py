"""What every store engine offers, and the pure rules they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..envelope import Draft, Event
from ..errors import Unavailable
from ..route import matches


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
        raise NotImplementedError

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
