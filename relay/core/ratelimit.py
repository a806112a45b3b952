"""Per-route admission: a token bucket over a clock the caller passes in.

The bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second.
A webhook takes one token; when none is left it is refused with the time
until one will be, which the HTTP edge sends as ``Retry-After``. ``now`` is
monotonic seconds from the caller, so tests drive time explicitly and the
bucket never reads a clock.
"""

from __future__ import annotations

# Refill arithmetic in floats can land a hair below a whole token (0.1 s at
# 10/s giving 0.9999999999); that must still count as one.
_EPSILON = 1e-9


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)  # a fresh route may take its whole burst at once
        self._last: float | None = None

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was taken, else seconds until one will be.

        A refusal takes nothing, so a sender that waits the returned time is
        admitted.
        """
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
        # A clock that steps backwards adds nothing and moves nothing back,
        # so it can neither mint tokens nor make the bucket wait longer.
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate
