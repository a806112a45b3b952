"""``GET /admin/routes`` and ``GET /admin/channels``: what the relay holds, as JSON.

Guarded by the admin token when ``auth.admin_token_env`` names one: the
request must carry ``Authorization: Bearer <token>`` or gets 401. A configured
variable that is unset or empty locks the admin views rather than opening
them.

The views are built from counters the relay keeps anyway, each given to
``Admin`` by name: the webhooks answered per route and status
(``Webhooks.counts``), the hub's channel table, the sessions' patterns.
Building them costs the request, never the hot path. The token is the one
the config loader read (``Config.admin_guard``).
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..core import cors, envelope
from ..core.errors import MethodNotAllowed, NotFound, Unauthorized
from ..core.ingest import Route
from ..core.request import Request
from ..fanout.hub import Hub
from ..fanout.session import Sessions
from .router import Responder

PATHS = ("/admin/routes", "/admin/channels")


def check_token(expected: bytes | None, authorization: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the admin views need Authorization: Bearer <admin token>")
    # An unset token variable must not turn an empty guess into a match.
    if not expected or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("the admin token is wrong")


async def guard(token: bytes | None, origins: Sequence[str] | None, request: Request,
                responder: Responder) -> list[tuple[str, str]] | None:
    """The CORS headers an admin answer carries, or None once a 401 was sent.
    A page on another allowed origin may read the answer, the 401 included."""
    shared = cors.headers(origins, request.headers.get("origin"))
    try:
        check_token(token, request.headers.get("authorization"))
    except Unauthorized as error:
        body = envelope.encode({"error": error.code, "detail": error.detail})
        await responder.send(401, body, [("www-authenticate", 'Bearer realm="relay admin"'), *shared])
        return None
    return shared


class Admin:
    def __init__(self, routes: Mapping[str, Route], webhooks: Counter[tuple[str, int]], hub: Hub, sessions: Sessions,
                 token: bytes | None, origins: Sequence[str] | None) -> None:
        self.routes = routes
        self.webhooks = webhooks
        self.hub = hub
        self.sessions = sessions
        self.token = token  # None: the views are open
        self.origins = origins

    def routes_view(self) -> dict[str, Any]:
        by_route: dict[str, dict[str, int]] = {}
        for (name, status), count in self.webhooks.items():
            by_route.setdefault(name, {})[str(status)] = count
        routes = []
        for name, route in sorted(self.routes.items()):
            statuses = by_route.get(name, {})
            config = route.config
            routes.append({
                "route": name,
                "path": f"/hooks/{name}",
                "channel": config.channel,
                "verify": config.verify,
                "accepted": statuses.get("202", 0),
                "duplicates": statuses.get("200", 0),
                "rejected": sum(n for s, n in statuses.items() if int(s) >= 400),
                "statuses": dict(sorted(statuses.items())),
                "rate": config.rate,
            })
        unknown = by_route.get("", {})
        return {"routes": routes, "unknown_route": sum(unknown.values())}

    def channels_view(self) -> dict[str, Any]:
        hub = self.hub
        patterns = self.sessions.patterns()
        names = set(hub.channels)
        names.update(p for p in patterns if p != "*" and not p.endswith(".*"))
        channels = []
        for name in sorted(names):
            stats = hub.channels.get(name)
            channels.append({
                "channel": name,
                "subscribers": hub.subscriber_count(name),
                "last_id": stats.last_id if stats else "",
                "events": stats.events if stats else 0,
            })
        return {
            "head": hub.head,
            "channels": channels,
            "patterns": [{"pattern": p, "subscribers": n} for p, n in sorted(patterns.items())],
        }

    async def answer(self, request: Request, responder: Responder) -> None:
        if request.method != "GET":
            raise MethodNotAllowed(f"{request.method} is not allowed here", "GET")
        shared = await guard(self.token, self.origins, request, responder)
        if shared is None:
            return
        if request.path == "/admin/routes":
            view = self.routes_view()
        elif request.path == "/admin/channels":
            view = self.channels_view()
        else:
            raise NotFound(f"nothing at {request.path[:200]!r}; try {' or '.join(PATHS)}")
        await responder.send(200, envelope.encode(view), [("cache-control", "no-store"), *shared])
