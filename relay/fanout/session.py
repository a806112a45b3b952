"""What every subscriber session (WebSocket or SSE) is given, and what it
shares with the others: ``Sessions``; its nursery and how work is started in
it: ``SessionBase``.

``Sessions`` is the one object a session reads: the hub, the store, the
timers and the relay's wall clock, the delivery settings, the subscriber
auth, whether the relay is stopping, the counters sessions add to
(``stats``: frames sent per transport, slow consumers by policy), and the
listener's room for subscribers and its hand-off. The app builds it once.

An idle session is one task. Everything else it does runs as a task started
on demand in its own nursery: the reaction to an alarm (shutdown, slow
consumer, lost peer, token expiry), a writer while frames back up, a control
task for subscribe messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..core.envelope import Event
from ..core.grants import Authenticator
from ..core.publish import Rules
from ..store.base import Store
from .hub import Hub
from .subscriber import Subscriber
from .timers import Timers


MAX_CLIENT_MESSAGE = 64 * 1024  # contract section 5: a client frame over this closes with 1009


class Sessions:
    """The live sessions and what each of them is given."""

    def __init__(self, hub: Hub, store: Store, timers: Timers, now: Callable[[], float], auth: Authenticator, *,
                 queue: int, policy: str, ping_interval: float, origins: Sequence[str] | None,
                 stopping: trio.Event, may_subscribe: Callable[[], bool],
                 hand_off: Callable[..., None], publish_rules: Rules = Rules()) -> None:
        self.hub = hub
        self.store = store
        self.timers = timers
        self.now = now  # unix time, for token expiry (``timers.WallClock``)
        self.auth = auth
        self.queue = queue  # events a subscriber may have waiting (delivery.queue)
        self.policy = policy  # delivery.slow_consumer
        self.ping_interval = ping_interval
        self.origins = origins  # auth.origins, for the CORS headers of an event stream
        self.stopping = stopping
        self.may_subscribe = may_subscribe
        self.hand_off = hand_off
        self.live: set[SessionBase] = set()
        # Frames sent per transport, and slow consumers per policy
        # (``core.outbox.slow_key``): every subscriber adds to this one dict.
        self.stats: dict[str, int] = {"ws": 0, "sse": 0}
        # Publishing: the [publish] sections, the largest client message they
        # admit (64 KiB, or a section's max_bytes and room for the message
        # around it), and publishes answered by status (published,
        # duplicate, forbidden, invalid, rate_limited, unavailable).
        self.publish_rules = publish_rules
        largest = max([0, *(rule.max_bytes for rule in publish_rules.rules)])
        self.max_message = MAX_CLIENT_MESSAGE if largest <= MAX_CLIENT_MESSAGE else largest + 4096
        self.published: Counter[str] = Counter()

    def start(self, session: SessionBase, patterns: list[str], since: str | None) -> None:
        """Run ``session`` as a task of its own (the listener keeps its slot)."""
        self.hand_off(session.run, patterns, since)

    def begin_shutdown(self) -> None:
        """Every session closes (1001, end of stream)."""
        for session in list(self.live):
            session.wake()

    def by_transport(self) -> Counter[str]:
        return Counter(session.sub.transport for session in list(self.live))

    def patterns(self) -> Counter[str]:
        """How many sessions hold each subscription."""
        return Counter(pattern for session in list(self.live) for pattern in session.sub.patterns)


class SessionBase:
    __slots__ = ("nursery", "_acting", "_woken_early")

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None
        self._acting = False  # a reaction to an alarm is running
        self._woken_early = False

    def _subscriber(self, sessions: Sessions, stream: trio.abc.Stream, transport: str,
                    frame: Callable[[Event], bytes], gap: Callable[[str, str], bytes]) -> Subscriber:
        """The session's subscriber, with the delivery config and its callbacks."""
        return Subscriber(stream, transport, frame=frame, gap=gap, limit=sessions.queue, policy=sessions.policy,
                          stats=sessions.stats, on_trouble=self.wake, spawn=self._spawn)

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
    sessions: Sessions
    stream: trio.abc.Stream
    sub: Subscriber

    async def run(self, patterns: list[str], since: str | None) -> None:
        """The session, from its subscription until the peer or the relay
        ends it; the stream is closed and the hub left either way."""
        sessions, sub = self.sessions, self.sub
        try:
            async with trio.open_nursery() as nursery:
                self._started(nursery, sessions.stopping.is_set())
                sessions.live.add(self)
                self._open(patterns, since)
                await self._serve()
                nursery.cancel_scope.cancel()
        finally:
            sub.detach(sessions.hub)
            sessions.live.discard(self)
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
