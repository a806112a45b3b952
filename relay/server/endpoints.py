"""``/admin/endpoints``: the outbound endpoints' admin API, behind the admin
token as the other admin views. Paths and methods are mapped here to
``relay.outbound.api``, which checks and answers; errors are the usual
``{"error", "detail"}`` (422 naming the field, 404, 409 for an endpoint that
comes from the config file)."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import envelope
from ..core.errors import MethodNotAllowed, NotFound
from ..core.request import Request
from ..outbound import api
from ..outbound.service import Outbound
from .admin import guard
from .router import Responder

PREFIX = "/admin/endpoints"
MAX_BODY = 64 * 1024


class Endpoints:
    def __init__(self, service: Outbound, token: bytes | None, origins: Sequence[str] | None) -> None:
        self.service = service
        self.token = token
        self.origins = origins

    async def answer(self, request: Request, responder: Responder) -> None:
        shared = await guard(self.token, self.origins, request, responder)
        if shared is None:
            return
        method = request.method
        parts = request.path[len(PREFIX):].strip("/").split("/") if request.path != PREFIX else []
        service = self.service
        if not parts:
            if method == "GET":
                status, view = await api.listing(service)
            elif method == "POST":
                status, view = await api.create(service, await responder.read_body(MAX_BODY))
            else:
                raise MethodNotAllowed(f"{method} is not allowed here", "GET, POST")
        elif len(parts) == 1:
            endpoint_id = parts[0]
            if method == "GET":
                status, view = await api.one(service, endpoint_id)
            elif method == "PATCH":
                status, view = await api.change(service, endpoint_id, await responder.read_body(MAX_BODY))
            elif method == "DELETE":
                status, view = await api.delete(service, endpoint_id)
            else:
                raise MethodNotAllowed(f"{method} is not allowed here", "GET, PATCH, DELETE")
        elif len(parts) == 2 and parts[1] in ("rotate", "recover", "attempts"):
            endpoint_id, action = parts
            wanted = "GET" if action == "attempts" else "POST"
            if method != wanted:
                raise MethodNotAllowed(f"{method} is not allowed here", wanted)
            if action == "rotate":
                status, view = await api.rotate(service, endpoint_id)
            elif action == "recover":
                status, view = await api.recover(service, endpoint_id, await responder.read_body(MAX_BODY))
            else:
                status, view = await api.attempts(service, endpoint_id, request.query)
        else:
            raise NotFound(f"nothing at {request.path[:200]!r}")
        if view is None:
            await responder.send_empty(status, shared)
        else:
            await responder.send(status, envelope.encode(view), [("cache-control", "no-store"), *shared])
