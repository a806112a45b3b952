"""The admin API for outbound endpoints (contract section 9): the requests'
shapes and their checks, and what each answers.

Handlers take the parsed request (body bytes, query) and the service, and
return (status, JSON-able body); the server's router maps
``/admin/endpoints...`` to them behind the admin token.
"""

from __future__ import annotations

import re
import secrets as random_secrets
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ..core import whsec
from ..core.addresses import url_problem
from ..core.channels import parse_pattern
from ..core.errors import Invalid, NotFound, RelayError
from ..core.endpoints import Attempt, Endpoint
from .service import Outbound

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
Rate = Annotated[float, Meta(gt=0)]


class Conflict(RelayError):
    status = 409
    code = "conflict"


class Create(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    channels: list[str]
    format: str = "data"
    ordered: bool = False
    rate: Rate | None = None
    headers: dict[str, str] = {}
    since: str = "now"
    secret: str | None = None
    id: str | None = None


class Change(msgspec.Struct, forbid_unknown_fields=True):
    url: str | None = None
    channels: list[str] | None = None
    format: str | None = None
    ordered: bool | None = None
    rate: Rate | None = None
    headers: dict[str, str] | None = None
    enabled: bool | None = None


class Recover(msgspec.Struct, forbid_unknown_fields=True):
    since: str = ""


def _decode(kind: type, body: bytes) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"$: the body is not JSON ({exc})") from None


# Hop-by-hop and framing headers an endpoint may not set, and the ones the
# relay signs or sets itself.
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
             "webhook-id", "webhook-timestamp", "webhook-signature", "relay-channel", "relay-attempt"}


def check(service: Outbound, url: str | None, channels: list[str] | None, fmt: str | None,
          headers: dict[str, str] | None) -> list[str]:
    """Every problem of these fields, each naming its JSON path."""
    problems: list[str] = []
    settings = service.settings
    if url is not None:
        problem = url_problem(url, settings.https_only, settings.allow_private)
        if problem:
            problems.append(f"$.url: {problem}")
    if channels is not None:
        if not channels:
            problems.append("$.channels: name at least one channel or pattern")
        for i, channel in enumerate(channels):
            try:
                parse_pattern(channel)
            except ValueError as exc:
                problems.append(f"$.channels[{i}]: {exc}")
    if fmt is not None and fmt not in ("data", "envelope"):
        problems.append(f"$.format: expected \"data\" or \"envelope\", got {fmt[:40]!r}")
    for name, value in (headers or {}).items():
        if name.lower() in _RESERVED or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            problems.append(f"$.headers.{name[:60]}: not a header an endpoint may set")
        elif "\r" in value or "\n" in value:
            problems.append(f"$.headers.{name[:60]}: a value may not hold a line break")
    return problems


def show(service: Outbound, endpoint: Endpoint, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": endpoint.id, "url": endpoint.url, "channels": endpoint.channels, "format": endpoint.format,
        "ordered": endpoint.ordered, "rate": endpoint.rate, "headers": endpoint.headers,
        "source": endpoint.source, "enabled": endpoint.enabled, "disabled_reason": endpoint.disabled_reason,
        "pending": service.pending(endpoint.id), "in_flight": service.in_flight(endpoint.id),
        "failed": endpoint.failed, "delivered": endpoint.delivered, "last_success": endpoint.last_success,
        "last_failure": endpoint.last_failure, "cursor": endpoint.cursor,
    }
    if with_secret:
        out["secret"] = endpoint.secrets[0].value if endpoint.secrets else None
    return out


def _endpoint(service: Outbound, endpoint_id: str) -> Endpoint:
    endpoint = service.known.get(endpoint_id)
    if endpoint is None:
        raise NotFound(f"no endpoint {endpoint_id[:64]!r}")
    return endpoint


def _writable(endpoint: Endpoint) -> None:
    if endpoint.source == "config":
        raise Conflict(f"endpoint {endpoint.id!r} comes from the config file ([endpoints.{endpoint.id}]); "
                       "change it there")


async def create(service: Outbound, body: bytes, random: Callable[[int], bytes] = random_secrets.token_bytes
                 ) -> tuple[int, dict[str, Any]]:
    request = _decode(Create, body)
    problems = check(service, request.url, request.channels, request.format, request.headers)
    if request.id is not None and not _ID.match(request.id):
        problems.append("$.id: 1-64 of A-Z a-z 0-9 _ . -")
    if request.secret is not None:
        try:
            whsec.decode(request.secret)
        except whsec.SecretError as exc:
            problems.append(f"$.secret: {exc}")
    if request.since not in ("now", ""):
        try:
            service.store.parse_id(request.since)
        except ValueError as exc:
            problems.append(f"$.since: {exc} (or \"now\", or \"\" for the whole stored log)")
    if problems:
        raise Invalid("; ".join(problems))
    endpoint_id = request.id or "ep_" + random(8).hex()
    if endpoint_id in service.known:
        raise Conflict(f"endpoint {endpoint_id!r} exists")
    endpoint = Endpoint(id=endpoint_id, url=request.url, channels=[parse_pattern(c) for c in request.channels],
                        secrets=[whsec.Secret(request.secret or whsec.make(random(32)))], format=request.format,
                        ordered=request.ordered, rate=request.rate, headers=request.headers, cursor=request.since)
    await service.create(endpoint)
    return 201, show(service, endpoint, with_secret=True)


async def listing(service: Outbound) -> tuple[int, Any]:
    return 200, [show(service, e) for e in sorted(service.known.values(), key=lambda e: e.id)]


async def one(service: Outbound, endpoint_id: str) -> tuple[int, Any]:
    return 200, show(service, _endpoint(service, endpoint_id))


async def change(service: Outbound, endpoint_id: str, body: bytes) -> tuple[int, Any]:
    endpoint = _endpoint(service, endpoint_id)
    _writable(endpoint)
    request = _decode(Change, body)
    problems = check(service, request.url, request.channels, request.format, request.headers)
    if problems:
        raise Invalid("; ".join(problems))
    updated = msgspec.structs.replace(endpoint)
    for name in ("url", "format", "ordered", "rate", "headers"):
        value = getattr(request, name)
        if value is not None:
            setattr(updated, name, value)
    if request.channels is not None:
        updated.channels = [parse_pattern(c) for c in request.channels]
    if request.enabled is not None:
        updated.enabled = request.enabled
        if request.enabled:
            updated.disabled_reason = None
        elif endpoint.enabled:
            updated.disabled_reason = "disabled through the API"
    updated.revision += 1
    await service.update(updated)
    return 200, show(service, updated)


async def delete(service: Outbound, endpoint_id: str) -> tuple[int, None]:
    endpoint = _endpoint(service, endpoint_id)
    _writable(endpoint)
    await service.delete(endpoint_id)
    return 204, None


async def rotate(service: Outbound, endpoint_id: str,
                 random: Callable[[int], bytes] = random_secrets.token_bytes) -> tuple[int, Any]:
    endpoint = _endpoint(service, endpoint_id)
    new = whsec.make(random(32))
    updated = msgspec.structs.replace(endpoint, secrets=whsec.rotate(endpoint.secrets, new, service.now()),
                                      revision=endpoint.revision + 1)
    await service.update(updated)
    return 200, {"id": endpoint_id, "secret": new,
                 "previous_until": min((s.expires for s in updated.secrets if s.expires is not None),
                                       default=None)}


async def attempts(service: Outbound, endpoint_id: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    _endpoint(service, endpoint_id)
    status = query.get("status", [""])[-1]
    if status not in ("", "failed"):
        raise Invalid("status: only \"failed\" filters attempts")
    try:
        limit = int(query.get("limit", ["100"])[-1])
        before = float(query["before"][-1]) if "before" in query else None
    except ValueError:
        raise Invalid("limit is a number of attempts, before a time in unix seconds") from None
    if not 1 <= limit <= 1000:
        raise Invalid("limit: 1 to 1000")
    found = await service.dlog.attempts(endpoint_id, status == "failed", limit, before)
    return 200, [_attempt(a) for a in found]


def _attempt(attempt: Attempt) -> dict[str, Any]:
    return {"event_id": attempt.event_id, "attempt": attempt.attempt, "at": attempt.at, "status": attempt.status,
            "error": attempt.error, "duration_ms": attempt.duration_ms, "response": attempt.response}


async def recover(service: Outbound, endpoint_id: str, body: bytes) -> tuple[int, Any]:
    _endpoint(service, endpoint_id)
    request = _decode(Recover, body)
    try:
        service.store.parse_id(request.since)
    except ValueError as exc:
        raise Invalid(f"$.since: {exc}") from None
    count = await service.recover(endpoint_id, request.since)
    return 202, {"id": endpoint_id, "recovered": count}
