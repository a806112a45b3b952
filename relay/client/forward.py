"""What ``relay forward`` does with each event: re-POST it to a local URL
with its forwarded headers and its body byte for byte (the envelope's
``data`` is read as ``msgspec.Raw``, never re-encoded), so the local app can
check the sender's signature itself. One line per delivery; no retry: the
next event goes on whatever the local app answered.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from ..core import wire
from .client import ClientError, Url, parse_url, request
from .render import body_of
from .subscriber import subscribe

# Headers that describe one hop, not the webhook: a forward sets its own.
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
              "trailer", "proxy-connection"}


async def deliver(frame: wire.Envelope, text: str, to: Url, timeout: float = 30.0) -> str:
    """POST one event (``text`` is its envelope) to ``to``; a line saying how it went."""
    headers = [(k, v) for k, v in frame.headers.items() if k.lower() not in HOP_BY_HOP]
    started = time.perf_counter()
    label = f"{frame.id} {frame.channel} -> POST {to}"
    try:
        response = await request("POST", to, headers, body_of(frame, text), timeout)
    except ClientError as exc:
        return f"{label} failed: {exc}"
    ms = (time.perf_counter() - started) * 1000
    return f"{label} {response.status} {response.reason} ({ms:.0f} ms)".replace("  (", " (")


async def forward(url: str, channels: str, to: str, since: str | None = None, token: str | None = None,
                  out: IO[str] | None = None, count: int | None = None, timeout: float = 30.0) -> None:
    target = parse_url(to)
    out = out or sys.stdout

    async def post(frame: wire.Envelope, text: str) -> None:
        out.write(await deliver(frame, text, target, timeout) + "\n")
        out.flush()

    await subscribe(parse_url(url), channels, since, token, post, count, name="relay forward")
