"""What a subscription request asks for, the same for ``/ws`` and ``/sse``:
its channels and patterns, and where to resume.

``channels=`` is repeatable and comma-separated; each item is a channel name
or a pattern (``core.channels.parse_pattern``), kept once, in order.
``since=`` (the last one given) resumes after an event id, and so does an
SSE request's ``Last-Event-ID`` header, which wins over the query as a
browser's EventSource sends it on every reconnect. Whether an id is one of
this relay's is the store's to say: its ``parse_id`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .channels import parse_pattern
from .errors import BadRequest


def channels_from_query(query: Mapping[str, list[str]]) -> list[str]:
    patterns: list[str] = []
    for value in query.get("channel", []):
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                pattern = parse_pattern(item)
            except ValueError as exc:
                raise BadRequest(f"channel: {exc}") from None
            if pattern not in patterns:
                patterns.append(pattern)
    return patterns


def subscription(query: Mapping[str, list[str]], headers: Mapping[str, str], parse_id: Callable[[str], object], *,
                 last_event_id: bool = False, at_least_one: str | None = None) -> tuple[list[str], str | None]:
    """The patterns and ``since`` of a subscription request, or ``BadRequest``.

    ``last_event_id``: the ``Last-Event-ID`` header counts as ``since``
    (SSE). ``at_least_one``: the detail of the 400 when no channel is named
    (where naming none is not allowed)."""
    patterns = channels_from_query(query)
    if at_least_one is not None and not patterns:
        raise BadRequest(at_least_one)
    since = query["since"][-1] if "since" in query else None
    if last_event_id:
        since = headers.get("last-event-id") or since
    if since is not None:
        try:
            parse_id(since)
        except ValueError as exc:
            raise BadRequest(f"since: {exc}") from None
    return patterns, since
