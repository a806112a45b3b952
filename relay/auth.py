"""Who may subscribe to what: tokens, the channels they grant, browser origins.

Pure. ``Authenticator.grant`` turns the presented token into a ``Grant`` (the
channel patterns it may read, and when it expires) or raises ``Unauthorized``;
``Grant.permits`` decides whether a requested channel or pattern lies wholly
inside what was granted. With no tokens configured, subscribing is open.
JWT verification plugs in as one more way to produce a ``Grant``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import Forbidden, Unauthorized

OPEN = None  # the grant of a relay with no auth configured


@dataclass(frozen=True, slots=True)
class Grant:
    channels: tuple[str, ...]
    expires: float | None = None  # unix time, for JWTs

    def permits(self, requested: str) -> bool:
        return any(covers(allowed, requested) for allowed in self.channels)

    def check(self, requested: Sequence[str]) -> None:
        for pattern in requested:
            if not self.permits(pattern):
                raise Forbidden(f"this token may not read {pattern!r}")


def covers(allowed: str, requested: str) -> bool:
    """True when every channel ``requested`` selects is also selected by ``allowed``."""
    if allowed == "*":
        return True
    if requested == "*":
        return False
    if allowed.endswith(".*"):
        prefix = allowed[:-1]  # "github."
        return requested.startswith(prefix)
    return allowed == requested


def presented_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The token from ``Authorization: Bearer`` or ``token=``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = query.get("token")
    return values[-1] if values else None


def origin_allowed(origins: Sequence[str] | None, origin: str | None) -> bool:
    """Browsers send Origin; other clients usually don't and are not limited."""
    if origins is None or origin is None:
        return True
    return "*" in origins or origin.rstrip("/") in origins


class Authenticator:
    def __init__(self, tokens: Mapping[str, Sequence[str]], jwt: object | None = None) -> None:
        self._tokens = [(value.encode(), tuple(channels)) for value, channels in tokens.items()]
        self.jwt = jwt  # an object with .grant(token, now) -> Grant, raising Unauthorized

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self.jwt is not None

    def grant(self, token: str | None, now: float) -> Grant | None:
        """The grant of ``token``; None (everything) when auth is off."""
        if not self.enabled:
            return OPEN
        if not token:
            raise Unauthorized("a token is required: Authorization: Bearer <token> or ?token=")
        presented = token.encode()
        found: tuple[str, ...] | None = None
        for value, channels in self._tokens:
            # Compare against every token, in constant time each.
            if hmac.compare_digest(value, presented):
                found = channels
        if found is not None:
            return Grant(found)
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.grant(token, now)  # type: ignore[attr-defined]
        raise Unauthorized("the token is not valid")
