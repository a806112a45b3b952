"""What every subscriber session (WebSocket or SSE) shares: its nursery and
how work is started in it.

An idle session is one task. Everything else it does runs as a task started
on demand in its own nursery: the reaction to an alarm (shutdown, slow
consumer, lost peer, token expiry), a writer while frames back up, a control
task for subscribe messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from .subscriber import Subscriber

if TYPE_CHECKING:
    from .app import App
    from .core.envelope import Event


class SessionBase:
    __slots__ = ("nursery", "_acting", "_woken_early")

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None
        self._acting = False  # a reaction to an alarm is running
        self._woken_early = False

    def _subscriber(self, app: App, stream: trio.abc.Stream, transport: str,
                    frame: Callable[[Event], bytes], gap: Callable[[str, str], bytes]) -> Subscriber:
        """The session's subscriber, with the delivery config and its callbacks."""
        delivery = app.config.delivery
        return Subscriber(stream, transport, frame=frame, gap=gap, limit=delivery.queue,
                          policy=delivery.slow_consumer, stats=app.frames_sent, on_trouble=self.wake,
                          spawn=self._spawn)

    def wake(self) -> None:
        """Something needs acting on; may be called before the session runs."""
        if self.nursery is None:
            self._woken_early = True
        elif not self._acting:
            self._acting = True
            self._spawn(self._react)

    async def _react(self) -> None:
        raise NotImplementedError

    # Set by each transport's session.
    app: App
    stream: trio.abc.Stream
    sub: Subscriber

    async def run(self, patterns: list[str], since: str | None) -> None:
        """The session, from its subscription until the peer or the relay
        ends it; the stream is closed and the hub left either way."""
        app, sub = self.app, self.sub
        try:
            async with trio.open_nursery() as nursery:
                self._started(nursery, app.stopping.is_set())
                app.sessions.add(self)
                self._open(patterns, since)
                await self._serve()
                nursery.cancel_scope.cancel()
        finally:
            sub.detach(app.hub)
            app.sessions.discard(self)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    def _open(self, patterns: list[str], since: str | None) -> None:
        """Subscribe and greet, synchronously: the head id in the greeting is
        exactly where live delivery starts."""
        raise NotImplementedError

    async def _serve(self) -> None:
        """Read from the peer until it is gone."""
        raise NotImplementedError

    def _started(self, nursery: trio.Nursery, stopping: bool) -> None:
        """Call first thing inside the session's nursery."""
        self.nursery = nursery
        if self._woken_early or stopping:
            self.wake()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start a task in the session's nursery, unless the session is ending
        (its nursery closes to new tasks a moment before it leaves the hub)."""
        assert self.nursery is not None
        try:
            self.nursery.start_soon(fn, *args)
        except RuntimeError:
            pass
