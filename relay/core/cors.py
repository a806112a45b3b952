"""CORS for what a page on another origin reads over plain HTTP: ``GET /sse``
(an ``EventSource``) and the JSON admin views.

A WebSocket is not subject to CORS (the relay checks its ``Origin`` against
``auth.origins`` and that is all); an ``EventSource`` or a ``fetch`` is: the
browser reads the answer only when it names the page's origin, and sends a
preflight ``OPTIONS`` first for a request with headers of its own
(``Authorization``, or ``Last-Event-ID`` where the browser does not count it
as safe). So these answers carry, for an allowed origin only:
``Access-Control-Allow-Origin: <that origin>`` (never ``*``: credentials may
come along, and ``*`` forbids them), ``Access-Control-Allow-Credentials:
true`` and ``Vary: Origin``.

Allowed means listed in ``auth.origins`` (``"*"`` there: any). Without the
list, no origin is: as Mercure's ``cors_origins``, sharing answers with other
origins is something the operator turns on, because it lets any page a
visitor opens read what the relay answers that visitor's browser (a relay on
localhost or an intranet, reachable by the browser and by nobody else).

Pure: the server writes the answers these functions describe.
"""

from __future__ import annotations

from collections.abc import Sequence

PATHS = frozenset({"/sse", "/admin/routes", "/admin/channels"})
ALLOW_METHODS = "GET"
ALLOW_HEADERS = "Last-Event-ID, Authorization, Cache-Control"
MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


def allowed(origins: Sequence[str] | None, origin: str | None) -> bool:
    """Whether a page of ``origin`` may read the relay's answers."""
    if origins is None or not origin:
        return False
    return "*" in origins or origin.rstrip("/") in origins


def headers(origins: Sequence[str] | None, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers of an answer to ``origin``: none when it is not allowed."""
    if not allowed(origins, origin):
        return []
    assert origin is not None
    return [("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
            ("vary", "Origin")]


def preflight(origins: Sequence[str] | None, origin: str | None) -> tuple[int, list[tuple[str, str]]]:
    """The status and headers that answer ``OPTIONS`` on one of ``PATHS``.

    An allowed origin gets 204 with what it may send; an origin that is not
    allowed gets 403 with no CORS header, so its browser refuses the request
    it meant to make. Without an Origin it is no preflight, just a question
    about the methods."""
    if not origin:
        return 204, [("allow", f"{ALLOW_METHODS}, OPTIONS")]
    if not allowed(origins, origin):
        return 403, []
    return 204, [*headers(origins, origin), ("access-control-allow-methods", ALLOW_METHODS),
                 ("access-control-allow-headers", ALLOW_HEADERS), ("access-control-max-age", MAX_AGE)]
