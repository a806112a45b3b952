"""Subscribers that publish (contract section 10): the pure rules.

A WebSocket subscriber sends ``{"type": "publish", "channel", "data", "key"}``;
``Publisher.admit`` decides, before anything is stored, whether it may and
turns it into the ``Draft`` the store appends, or raises the typed error the
client gets (``Forbidden``, ``Invalid``, ``RateLimited``):

- the channel is a channel name (never a pattern) and the connection's grant
  covers it (``Grant.may_publish``, the same ``covers`` rule as subscribing,
  so no pattern widens past the grant). A relay with auth off has no grants:
  there a channel may be published to only where a ``[publish."..."]`` section
  opened it, so an open relay never takes writes nobody configured;
- the section that matches the channel (``Rules.rule_for``: an exact name
  before the longest prefix pattern before ``*``) sets ``max_bytes`` (of
  ``data``, default 65536), a schema (the routes' JSON Schema subset or
  ``module:Struct``, errors naming the JSON path) and a per-connection rate
  with its burst;
- over the rate the answer is ``rate_limited`` and the connection stays open;
  a client that goes on regardless (``FLOOD`` refusals in a row with no
  publish admitted between them) is ``flooding``, and the session closes it
  with 1008 as for any client that floods requests.

The draft: route ``"ws"``, ``delivery`` the key, ``data`` the message's
``data`` byte for byte, ``Content-Type: application/json`` (what an outbound
endpoint with ``format = "data"`` is sent) and, when the publisher's token
names a subject (a JWT's ``sub``), ``Relay-Publisher`` with it. A key is
deduped per publisher (``Grant.who``) by the store, within ``retention_age``
and across relays where the store is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .channels import CHANNEL_RE, matches
from .envelope import Draft
from .errors import Forbidden, Invalid, RateLimited
from .grants import Grant
from .ratelimit import TokenBucket
from .schema import Validator, load_schema

ROUTE = "ws"  # the envelope's route for a published event
MAX_BYTES = 65536  # default bound on a published message's data
MAX_KEY = 200  # characters of an idempotency key
FLOOD = 64  # refusals in a row, with nothing admitted, that make a flood
ANONYMOUS = "anon"  # the publisher of a relay with auth off


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[publish."pattern"]`` section, compiled."""

    pattern: str
    max_bytes: int = MAX_BYTES
    validator: Validator | None = None
    rate: float | None = None
    burst: int | None = None


DEFAULT = Rule("*")  # for a channel no section matches (where a grant allows it)


def _specificity(pattern: str) -> tuple[int, int]:
    if pattern == "*":
        return (0, 0)
    if pattern.endswith(".*"):
        return (1, len(pattern))
    return (2, len(pattern))


@dataclass(frozen=True, slots=True)
class Rules:
    """Every ``[publish]`` section, most specific first."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def of(cls, rules: list[Rule]) -> Rules:
        return cls(tuple(sorted(rules, key=lambda r: _specificity(r.pattern), reverse=True)))

    def rule_for(self, channel: str) -> Rule | None:
        """The section for ``channel``: its exact name, else the longest
        prefix pattern, else ``*``; None when no section matches."""
        for rule in self.rules:
            if matches(rule.pattern, channel):
                return rule
        return None

    @property
    def largest(self) -> int:
        """The largest ``data`` any section admits (for the frame bound)."""
        return max([MAX_BYTES, *(r.max_bytes for r in self.rules)])


@dataclass(slots=True)
class Publisher:
    """One connection's publishing state: its rate buckets (one per section)
    and how many publishes in a row it had refused."""

    rules: Rules
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    refused: int = 0

    @property
    def flooding(self) -> bool:
        return self.refused >= FLOOD

    def admit(self, grant: Grant | None, channel: object, data: bytes, key: object, monotonic: float,
              now: float) -> Draft:
        """The draft for one publish, or the error its client gets.

        ``grant`` is the connection's (None: auth is off), ``data`` the
        message's ``data`` as sent, ``monotonic`` seconds for the rate and
        ``now`` unix seconds for the event's ``ts``."""
        try:
            draft = self._admit(grant, channel, data, key, monotonic, now)
        except RateLimited:
            self.refused += 1
            raise
        self.refused = 0
        return draft

    def _admit(self, grant: Grant | None, channel: object, data: bytes, key: object, monotonic: float,
               now: float) -> Draft:
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY):
            raise Invalid(f"key must be a string of 1 to {MAX_KEY} characters")
        if not isinstance(channel, str) or not channel:
            raise Invalid("publish needs a channel")
        if not CHANNEL_RE.match(channel):
            raise Invalid(f"{channel[:200]!r} is not a channel name (letters, digits, '_', '.', ':', '-'; "
                          "1-200 characters; a publish names one channel, never a pattern)")
        rule = self.rules.rule_for(channel)
        if grant is None:
            if rule is None:
                raise Forbidden(f"publishing to {channel!r} is not open: this relay has no auth, and no "
                                "[publish] section matches the channel")
        elif not grant.may_publish(channel):
            raise Forbidden(f"this token may not publish to {channel!r}")
        rule = rule or DEFAULT
        if not data:
            raise Invalid("publish needs data (any JSON value)")
        if len(data) > rule.max_bytes:
            raise Invalid(f"data is {len(data)} bytes, over the limit of {rule.max_bytes} for {channel!r}")
        if rule.validator is not None:
            rule.validator.validate(data)
        if rule.rate is not None:
            bucket = self.buckets.get(rule.pattern)
            if bucket is None:
                bucket = self.buckets[rule.pattern] = TokenBucket(rule.rate, rule.burst or max(1, int(rule.rate)))
            wait = bucket.take(monotonic)
            if wait > 0:
                raise RateLimited(f"{channel!r} takes {rule.rate:g} publishes/s per connection; "
                                  f"the next in {wait:.3f} s", wait)
        who = grant.who if grant is not None and grant.who else ANONYMOUS
        headers = {"Content-Type": "application/json"}
        if grant is not None and grant.subject:
            headers["Relay-Publisher"] = grant.subject
        return Draft(channel=channel, route=ROUTE, ts=int(now * 1000), delivery=key, headers=headers, data=data,
                     dedupe=f"{ROUTE}\x00{who}\x00{key}" if key is not None else None)


def compile_rules(sections: Mapping[str, object]) -> Rules:
    """``[publish]`` sections (``relay.config.model.PublishConfig``) compiled;
    ``ValueError``/``ImportError`` from a schema that does not load."""
    rules = []
    for pattern, section in sections.items():
        schema = getattr(section, "schema", None)
        rules.append(Rule(pattern=pattern, max_bytes=getattr(section, "max_bytes", MAX_BYTES),
                          validator=load_schema(schema) if schema is not None else None,
                          rate=getattr(section, "rate", None), burst=getattr(section, "burst", None)))
    return Rules.of(rules)
