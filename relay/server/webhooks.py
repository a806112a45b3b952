"""``POST /hooks/<route>``: the shell around the webhook's pure steps.

``answer`` reads the body (within ``server.max_body_bytes``), runs the
route's steps (``core.ingest``: rate, signature, media type, schema,
channel; the times they need come from here), appends the draft to the
store and answers 202 only once the store has it (200 for a duplicate
delivery, or Slack's challenge). Every webhook, refused or not, is then
counted by route and the status actually sent (``counts``, which the
metrics and the admin views show) and logged once, the access log's line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import trio

from ..core import envelope, http1
from ..core.errors import BadRequest, MethodNotAllowed, RelayError, TooLarge
from ..core.ingest import Challenge, Route, find_route
from ..core.request import Request
from ..store.base import Appended, Store
from .router import Responder

log = logging.getLogger("relay")

# The status logged and counted for a webhook whose client went away before
# any answer could be sent (nginx's "client closed request"): none was sent.
CLIENT_GONE = 499
PREFIX = "/hooks/"


class Webhooks:
    def __init__(self, routes: Mapping[str, Route], store: Store, max_body_bytes: int) -> None:
        self.routes = routes
        self.store = store
        self.max_body_bytes = max_body_bytes
        # Webhooks answered, by (route, status); route "" for unknown routes.
        self.counts: Counter[tuple[str, int]] = Counter()

    async def answer(self, request: Request, responder: Responder) -> None:
        """Answer one webhook, refusals included, then log and count the
        status that was sent: ``CLIENT_GONE`` when the client left before any
        answer, 500 only for a failure of the relay's own."""
        started = time.perf_counter()
        received = time.time()
        monotonic = trio.current_time()
        name = request.path[len(PREFIX):]
        route = None
        status = 500
        appended = None
        delivery = None
        try:
            try:
                route = find_route(self.routes, name)
                if request.method != "POST":
                    raise MethodNotAllowed(f"{request.method} is not allowed; webhooks are POSTed", "POST")
                limit = self.max_body_bytes
                length = request.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise TooLarge(f"Content-Length {length} is over the limit of {limit} bytes")
                body = await responder.read_body(limit)
                route.admit(monotonic)
                draft = route.prepare(request.headers, body, received)
                if isinstance(draft, Challenge):
                    await responder.send(200, envelope.encode({"challenge": draft.challenge}))
                    status = 200
                    return
                draft.received = monotonic
                (appended,) = await self.store.append([draft])
                delivery = draft.delivery
                event = appended.event
                answer = 200 if appended.duplicate else 202
                await responder.send(answer, envelope.encode({"id": event.id, "channel": event.channel,
                                                              "duplicate": appended.duplicate}))
                status = answer
            except RelayError as error:
                await responder.fail(error)
                status = error.status
            except http1.ProtocolError as exc:  # a malformed body, or one cut short
                await responder.bad_http(exc)
                status = exc.status
            except trio.TooSlowError:
                await responder.fail(BadRequest("request body timed out"), status=408)
                status = 408
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            status = CLIENT_GONE
            raise
        finally:
            self.done(name, route, status, appended, delivery, time.perf_counter() - started,
                      responder.client_address(request))

    def done(self, name: str, route: Route | None, status: int, appended: Appended | None,
             delivery: str | None, seconds: float, client: str | None = None) -> None:
        self.counts[(name if route else "", status)] += 1
        level = logging.INFO if status < 500 else logging.WARNING
        if not log.isEnabledFor(level):
            return  # build the line's fields only when it is written
        event = appended.event if appended else None
        fields: dict[str, Any] = {
            "route": name[:100],
            "status": status,
            "channel": event.channel if event else None,
            "event_id": event.id if event else None,
            "delivery": delivery,
            "duration_ms": round(seconds * 1000, 3),
            "client": client,
        }
        log.log(level, "webhook", extra={"fields": fields})
