"""The event log behind every acknowledgement.

Engines share one shape (``base.Store``): ``append`` takes drafts and returns
their stored events (or the first event of a duplicate delivery) only once they
are durable; ``read_page`` serves resumes; ``publish`` is called with each
committed batch in log order, so the hub sees events in exactly the store's
order. ``commit.GroupCommit`` is the group commit the durable engines share.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.model import StoreConfig
from .base import Store


def open_store(config: StoreConfig, publish: Callable[[list], None]) -> Store:
    """The configured engine. Each is imported here, when chosen, rather than
    at the top: the redis engine loads coredis and anyio, the nats engine
    nats-py, asyncio and trio-asyncio, the sqlite engine sqlite3 and a
    thread, and a relay needs only the one it runs."""
    if config.engine == "memory":
        from .memory import MemoryStore

        return MemoryStore(config, publish)
    if config.engine == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(config, publish)
    if config.engine == "redis":
        from .redis import RedisStore

        return RedisStore(config, publish)
    if config.engine == "nats":
        # nats-py, asyncio and trio-asyncio load only here.
        from .nats import NatsStore

        return NatsStore(config, publish)
    raise NotImplementedError(f"store.engine = {config.engine!r} is not available yet")


__all__ = ["Store", "open_store"]
