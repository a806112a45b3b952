"""What ``relay send`` does: sign a body as a sender using a preset would
(``relay.core.verify.sign``, the same code that checks signatures) and POST
it to a route, for trying the relay.
"""

from __future__ import annotations

import sys
import uuid
from typing import IO
from urllib.parse import quote

from ..core.verify import VerifySpec, sign
from .client import ToolError, parse_url, request

EVENT_HEADERS = {"github": "X-GitHub-Event", "shopify": "X-Shopify-Topic"}


def signed_headers(preset: str, secret: str | None, body: bytes, now: float, *, event: str | None = None,
                   delivery: str | None = None, signature_header: str | None = None, prefix: str = "",
                   encoding: str = "hex", content_type: str = "application/json") -> list[tuple[str, str]]:
    """The headers a sender using ``preset`` would post ``body`` with at ``now``."""
    if preset in ("github", "shopify", "standard") and delivery is None:
        delivery = ("msg_" + uuid.uuid4().hex) if preset == "standard" else str(uuid.uuid4())
    if event is not None and preset not in EVENT_HEADERS:
        raise ToolError(f"--event sets {' or '.join(f'{h} ({p})' for p, h in EVENT_HEADERS.items())}; "
                        f"{preset} carries the event type in the body", 2)
    if preset == "github" and event is None:
        event = "push"
    try:
        spec = VerifySpec(scheme=preset, secrets=(secret.encode(),) if secret else (),
                          header=signature_header or "", encoding=encoding, prefix=prefix)
        signed = sign(spec, body, now, delivery)
    except ValueError as exc:
        raise ToolError(f"relay send: {exc}", 2) from None
    headers = [("Content-Type", content_type)]
    if event is not None:
        headers.append((EVENT_HEADERS[preset], event))
    headers.extend(signed.items())
    return headers


async def send(url: str, route: str, body: bytes, headers: list[tuple[str, str]],
               out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    base = parse_url(url)
    target = base.join("/hooks/" + quote(route, safe=""))
    response = await request("POST", target, headers, body)
    text = response.body.decode("utf-8", "replace").strip()
    out.write(f"{response.status} {response.reason} {text}".replace("  ", " ") + "\n")
    out.flush()
    return 0 if 200 <= response.status < 300 else 1
