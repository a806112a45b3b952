"""Outbound delivery rules: when each endpoint's next attempt goes, and what
an attempt's answer means. Pure: the caller passes ``now`` (unix seconds,
since due times outlive the process) and a uniform draw for the jitter.

The retry schedule (contract section 9): ``retry[n]`` is the delay before
attempt n+1, each drawn within +/- ``jitter`` of it. A 2xx delivers; any
other answer, a timeout or a connection error fails the attempt, and the
next one comes after the schedule's next delay. ``Retry-After`` on a 429 or
503 sets it no earlier than that, capped at the schedule's longest delay.
When the last scheduled attempt fails, the delivery is ``failed``. A 410
disables the endpoint at once; so do ``disable_after`` seconds of failures
with no success between them.

An endpoint's ``Plan`` holds its waiting deliveries in a heap (they are rows
in the store and entries here, not tasks) and decides which start now:
at most ``cap`` in flight, where ``cap`` falls to 1 on a failure and
doubles with each success up to ``max_in_flight``, so a recovered
endpoint's backlog goes out at a growing rate rather than all at once; an
optional rate in attempts per second; and with ``ordered``, one attempt at
a time in log order, a delivery that fails its whole schedule being skipped
for the next.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEFAULT_RETRY = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)

# What an attempt ended with, as the API and metrics name it.
DELIVERED, RETRY, FAILED = "delivered", "retry", "failed"


@dataclass(frozen=True, slots=True)
class Policy:
    retry: tuple[float, ...] = DEFAULT_RETRY
    jitter: float = 0.2
    disable_after: float = 432000.0
    max_in_flight: int = 8
    ordered: bool = False
    rate: float | None = None

    @property
    def attempts(self) -> int:
        return len(self.retry)

    def delay(self, attempt: int, draw: float) -> float:
        """The delay before ``attempt`` (1-based), jittered by ``draw`` in [0, 1)."""
        base = self.retry[attempt - 1]
        return max(0.0, base * (1.0 + self.jitter * (2.0 * draw - 1.0)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` asks for (delta-seconds
    or an HTTP date), or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    # An HTTP date (RFC 9110 5.6.7, IMF-fixdate), read without email.utils,
    # which would load the socket module into the core.
    try:
        when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now)


def outcome_class(status: int | None, error: str | None) -> str:
    """The metric's outcome: ``2xx``..``5xx``, ``timeout`` or ``error``."""
    if status is not None:
        return f"{min(max(status // 100, 1), 5)}xx"
    return "timeout" if error == "timeout" else "error"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after an attempt: ``kind`` is DELIVERED, RETRY (at
    ``due``) or FAILED; ``disable`` names why the endpoint stops, if it must."""

    kind: str
    due: float | None = None
    disable: str | None = None


def judge(policy: Policy, attempt: int, status: int | None, error: str | None, retry_after: float | None,
          now: float, draw: float, failing_since: float | None) -> Verdict:
    """The verdict on ``attempt`` of a delivery, which ended at ``now`` with
    ``status`` (or ``error``); ``failing_since`` is when the endpoint's
    current run of failures began (None if its last attempt succeeded)."""
    if status is not None and 200 <= status < 300:
        return Verdict(DELIVERED)
    disable = None
    if status == 410:
        disable = "410 Gone"
    elif failing_since is not None and now - failing_since >= policy.disable_after:
        disable = f"failing for {int(now - failing_since)} s with no success (disable_after)"
    if attempt >= policy.attempts:
        return Verdict(FAILED, disable=disable)
    wait = policy.delay(attempt + 1, draw)
    if retry_after is not None and status in (429, 503):
        wait = max(wait, min(retry_after, max(policy.retry)))
    return Verdict(RETRY, due=now + wait, disable=disable)


class Plan:
    """One endpoint's waiting deliveries and what may start now."""

    __slots__ = ("policy", "enabled", "cap", "failing_since", "last_success", "_heap", "_order", "in_flight",
                 "_tokens", "_filled")

    def __init__(self, policy: Policy, enabled: bool = True) -> None:
        self.policy = policy
        self.enabled = enabled
        self.cap = 1 if policy.ordered else policy.max_in_flight
        self.failing_since: float | None = None
        self.last_success: float | None = None
        # (sort key, tie, event key, event id, attempt, due): sorted by due,
        # or by the event's place in the log when ordered.
        self._heap: list[tuple[Any, int, Any, str, int, float]] = []
        self._order = itertools.count()
        self.in_flight: dict[str, int] = {}
        # ``rate``: a bucket of max(1, rate) attempts, refilled at ``rate``/s.
        self._tokens = self._burst
        self._filled: float | None = None

    @property
    def _burst(self) -> float:
        return float(max(1, int(self.policy.rate or 1)))

    def _refill(self, now: float) -> None:
        rate = self.policy.rate
        if rate is None:
            return
        if self._filled is not None and now > self._filled:
            self._tokens = min(self._burst, self._tokens + (now - self._filled) * rate)
        if self._filled is None or now > self._filled:
            self._filled = now

    def _token_wait(self, now: float) -> float:
        """Seconds until the rate allows an attempt (0: now)."""
        if self.policy.rate is None:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 - 1e-9 else (1.0 - self._tokens) / self.policy.rate

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def add(self, event_id: str, key: Any, attempt: int, due: float) -> None:
        """A delivery that waits for its ``attempt`` until ``due``."""
        sort = key if self.policy.ordered else due
        heapq.heappush(self._heap, (sort, next(self._order), key, event_id, attempt, due))

    def take(self, now: float) -> list[tuple[str, Any, int]]:
        """The attempts to start at ``now``: (event id, key, attempt)."""
        started: list[tuple[str, Any, int]] = []
        if not self.enabled:
            return started
        heap = self._heap
        limit = 1 if self.policy.ordered else self.cap
        while heap and len(self.in_flight) < limit and heap[0][5] <= now:
            if self._token_wait(now) > 0:
                break
            if self.policy.rate is not None:
                self._tokens = max(0.0, self._tokens - 1.0)
            _, _, key, event_id, attempt, _ = heapq.heappop(heap)
            self.in_flight[event_id] = attempt
            started.append((event_id, key, attempt))
        return started

    def wake_at(self, now: float) -> float | None:
        """When ``take`` may start something next (None: only after an
        attempt ends, or never)."""
        if not self.enabled or not self._heap:
            return None
        limit = 1 if self.policy.ordered else self.cap
        if len(self.in_flight) >= limit:
            return None
        due = self._heap[0][5]
        if due <= now:
            return now + self._token_wait(now)
        return due

    def finished(self, event_id: str, key: Any, attempt: int, status: int | None, error: str | None,
                 retry_after: float | None, now: float, draw: float) -> Verdict:
        """Record the end of an attempt ``take`` started; returns its verdict
        (a RETRY is back in the heap; the caller persists what it says)."""
        self.in_flight.pop(event_id, None)
        verdict = judge(self.policy, attempt, status, error, retry_after, now, draw, self.failing_since)
        if verdict.kind == DELIVERED:
            self.failing_since = None
            self.last_success = now
            if not self.policy.ordered:
                self.cap = min(self.policy.max_in_flight, self.cap * 2)
        else:
            if self.failing_since is None:
                self.failing_since = now
            self.cap = 1  # probe with one attempt at a time until one succeeds
            if verdict.kind == RETRY:
                assert verdict.due is not None
                self.add(event_id, key, attempt + 1, verdict.due)
        if verdict.disable is not None:
            self.enabled = False
        return verdict

    def enable(self) -> None:
        """Enabled again (by the API): the backlog restarts from one attempt
        at a time, the failure run from zero."""
        self.enabled = True
        self.cap = 1
        self.failing_since = None

    def drop(self, event_id: str) -> bool:
        """Forget a waiting delivery (not one in flight)."""
        for i, entry in enumerate(self._heap):
            if entry[3] == event_id:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False
