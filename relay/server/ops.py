"""``GET /healthz`` and ``GET /readyz``: for load balancers and orchestrators.

Healthy means the process answers. Ready means it can take a webhook: it is
not shutting down and its store answers a readiness check within 2 s (a
write, for the engines that can refuse one: ``Store.ping``).
"""

from __future__ import annotations

import trio

from ..core.request import Request
from ..store.base import Store
from .router import Responder, only_get

READY_TIMEOUT = 2.0


class Ops:
    def __init__(self, store: Store, stopping: trio.Event) -> None:
        self.store = store
        self.stopping = stopping

    async def ready(self) -> bool:
        if self.stopping.is_set():
            return False
        with trio.move_on_after(READY_TIMEOUT):
            return await self.store.ping()
        return False

    async def answer(self, request: Request, responder: Responder) -> None:
        await only_get(request)
        if request.path == "/healthz":
            await responder.send(200, b'{"status":"ok"}')
            return
        ok = await self.ready()
        await responder.send(200 if ok else 503, b'{"status":"ok"}' if ok else b'{"status":"unavailable"}')
