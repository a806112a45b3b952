"""The webhook's pure steps: route -> rate -> verify -> validate -> channel -> draft.

``build_routes`` compiles a config's routes once (templates, signature
specs, schemas, rate buckets). At ingest, ``find_route`` finds a route by
name, ``Route.admit`` takes a token of its rate, and ``Route.prepare``, given
the request's headers, body and the time it was received, returns the
``Draft`` to store or raises the ``RelayError`` the sender gets. Times come
in as arguments; the store round trip and the answer are the server's
(``relay.server.webhooks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qs

import msgspec

from .channels import Template, compile_template, render
from .envelope import Draft
from .errors import BadJson, MediaType, NoRoute, RateLimited
from .ratelimit import TokenBucket
from .schema import Validator, load_schema
from .verify import VerifySpec, verify

_json_decoder = msgspec.json.Decoder()
# A number beyond a double's range (1e400) is valid JSON (RFC 8259 leaves
# range to implementations), but msgspec refuses to make a float of it. Such a
# body is read again with every float as a Decimal, which has no such limit;
# only those bodies pay for it. The stored body is the bytes either way.
_wide_decoder = msgspec.json.Decoder(float_hook=Decimal)


def parse_json(body: bytes) -> Any:
    """The body's JSON value; ``BadJson`` when it is not UTF-8 JSON."""
    try:
        return _json_decoder.decode(body)
    except msgspec.ValidationError:
        pass  # a number out of a double's range: see _wide_decoder
    except msgspec.DecodeError as exc:
        raise BadJson(f"body is not valid UTF-8 JSON: {exc}") from None
    try:
        return _wide_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadJson(f"body is not valid UTF-8 JSON: {exc}") from None


def media_kind(content_type: str | None) -> str | None:
    """ "json", "form" or None for a Content-Type header value."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.endswith("+json") and "/" in media):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    return None


@dataclass(frozen=True, slots=True)
class Challenge:
    """Slack's url_verification: answered by the relay itself, nothing stored."""

    challenge: str


class RouteSettings(Protocol):
    """What a route's config says (``relay.config.model.RouteConfig`` is one)."""

    @property
    def channel(self) -> str: ...
    @property
    def verify(self) -> str: ...
    @property
    def schema(self) -> str | None: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def forward_headers(self) -> Sequence[str]: ...
    @property
    def accepted(self) -> tuple[str, ...]: ...
    @property
    def signature_header(self) -> str | None: ...
    @property
    def signature_encoding(self) -> str: ...
    @property
    def signature_prefix(self) -> str: ...
    @property
    def dedupe_header(self) -> str | None: ...


@dataclass(slots=True)
class Route:
    name: str
    config: RouteSettings
    template: Template
    verifier: VerifySpec | None = None
    validator: Validator | None = None
    bucket: TokenBucket | None = None
    forward: tuple[tuple[str, str], ...] = ()  # (lower-case name, name as configured)

    def admit(self, monotonic: float) -> None:
        """Take a token of the route's rate at ``monotonic`` seconds, or raise
        ``RateLimited`` with the wait until one will be there."""
        if self.bucket is not None:
            wait = self.bucket.take(monotonic)
            if wait > 0:
                raise RateLimited(f"route {self.name!r} takes {self.config.rate:g} webhooks/s", wait)

    def prepare(self, headers: Mapping[str, str], body: bytes, now: float) -> Draft | Challenge:
        """Check one webhook and build its draft. ``headers`` are lower-cased.

        The signature is checked before anything else is looked at, so nothing
        unsigned can be stored or answered in any other way."""
        delivery = None
        if self.verifier is not None:
            delivery = verify(self.verifier, headers, body, now)
        content_type = headers.get("content-type")
        kind = media_kind(content_type)
        accepted = self.config.accepted
        if kind is None or kind not in accepted:
            wanted = " or ".join(
                {"json": "application/json (or */*+json)", "form": "application/x-www-form-urlencoded"}[a]
                for a in accepted
            )
            raise MediaType(f"Content-Type {content_type or '(missing)'!r} is not accepted here; send {wanted}")
        if self.config.dedupe_header:
            delivery = headers.get(self.config.dedupe_header.lower()) or delivery
        payload: Any = None
        if kind == "json":
            payload = parse_json(body)
            if (
                self.config.verify == "slack"
                and isinstance(payload, dict)
                and payload.get("type") == "url_verification"
                and isinstance(payload.get("challenge"), str)
            ):
                return Challenge(payload["challenge"])
            if self.validator is not None:
                self.validator.validate(body)
            data = body
        else:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadJson("form body is not valid UTF-8") from None
            if self.template.needs_json:
                payload = {k: v[0] for k, v in parse_qs(text).items()}
            data = msgspec.json.encode(text)
        channel = render(self.template, self.name, headers, payload)
        forwarded = {"Content-Type": content_type or ""}
        for lower, spelled in self.forward:
            value = headers.get(lower)
            if value is not None:
                forwarded[spelled] = value
        return Draft(
            channel=channel,
            route=self.name,
            ts=int(now * 1000),
            delivery=delivery,
            headers=forwarded,
            data=data,
            dedupe=f"{self.name}\x00{delivery}" if delivery is not None else None,
        )


def build_routes(settings: Mapping[str, RouteSettings], secrets: Mapping[str, Sequence[bytes]]) -> dict[str, Route]:
    """Each route of a config compiled; ``secrets`` by route name (the
    config loader reads them from the environment). Raises ``ValueError``
    (or ``ImportError`` for a module:Struct schema) for what cannot compile."""
    routes: dict[str, Route] = {}
    for name, rc in settings.items():
        route = Route(
            name=name,
            config=rc,
            template=compile_template(rc.channel),
            forward=tuple((h.lower(), h) for h in rc.forward_headers),
        )
        if rc.verify != "none":
            route.verifier = VerifySpec(
                scheme=rc.verify,
                secrets=tuple(secrets.get(name, ())),
                header=rc.signature_header or "",
                encoding=rc.signature_encoding,
                prefix=rc.signature_prefix,
            )
        if rc.schema is not None:
            route.validator = load_schema(rc.schema)
        if rc.rate is not None:
            route.bucket = TokenBucket(rc.rate, rc.burst or max(1, int(rc.rate)))
        routes[name] = route
    return routes


def find_route(routes: Mapping[str, Route], name: str) -> Route:
    route = routes.get(name)
    if route is None:
        raise NoRoute(f"no route named {name[:100]!r}; POST to /hooks/<route> for a route in the config")
    return route
