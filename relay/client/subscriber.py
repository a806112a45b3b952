"""The resumable subscriber behind ``relay tail`` and ``relay forward``.

``subscribe`` calls its handler for each event on the channels, in order,
and resumes by itself: it remembers the last event id (or, before the first
event, the head id of the welcome, which is exactly where live delivery
started) and reconnects with ``since=`` after any drop, so nothing is missed
and nothing comes twice. Only answers that another attempt cannot change
(400, 401, 403, 404, 405, 426; close 4001) end it. What the relay sends is
read with ``relay.core.wire``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import msgspec
import trio

from ..core import wire
from .client import ClientError, Closed, Rejected, ToolError, Url, open_websocket

# Retrying cannot change these answers to the upgrade or these close codes.
FATAL_STATUSES = {400, 401, 403, 404, 405, 426}
FATAL_CLOSES = {4001: "the token expired"}
RETRY_FIRST, RETRY_MAX = 0.5, 15.0


def ws_url(base: Url, channels: str, since: str | None) -> Url:
    path = base.path[:-3] if base.path.endswith("/ws") else base.path
    query = [("channel", channels)] + ([("since", since)] if since is not None else [])
    return Url(base.scheme, base.host, base.port, path, "").join("/ws", urlencode(query))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def subscribe(base: Url, channels: str, since: str | None, token: str | None,
                    handle: Callable[[wire.Envelope, str], Awaitable[None]], count: int | None = None,
                    say: Callable[[str], None] = _say, name: str = "relay") -> None:
    """Call ``handle`` for each event on ``channels``, resuming after every
    drop, until ``count`` events were handled (forever when None)."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    last = since
    handled = 0
    delay = RETRY_FIRST
    connected_once = False
    while True:
        url = ws_url(base, channels, last)
        try:
            ws = await open_websocket(url, headers, subprotocols=[wire.SUBPROTOCOL])
        except Rejected as exc:
            if exc.status in FATAL_STATUSES:
                raise ToolError(f"{name}: the relay refused the subscription: {exc}") from None
            say(f"{name}: {exc}; retrying in {delay:g} s")
        except ClientError as exc:
            say(f"{name}: cannot connect: {exc}; retrying in {delay:g} s")
        else:
            try:
                while True:
                    text = await ws.receive()
                    try:
                        frame = wire.decode_server(text)
                    except msgspec.DecodeError:
                        say(f"{name}: skipped an unreadable frame: {text[:200]!r}")
                        continue
                    if isinstance(frame, wire.Envelope) and frame.id is not None:
                        await handle(frame, text)
                        last = frame.id
                        handled += 1
                        if count is not None and handled >= count:
                            await ws.aclose()
                            return
                    elif isinstance(frame, wire.Welcome):
                        delay = RETRY_FIRST
                        if last is None:
                            last = frame.id or ""
                        if connected_once:
                            say(f"{name}: resumed after {last or 'the start'}")
                        else:
                            say(f"{name}: subscribed to {', '.join(frame.channels)} on {base}")
                        connected_once = True
                    elif isinstance(frame, wire.Gap):
                        say(f"{name}: gap: events after {frame.after or 'the start'} up to {frame.next} "
                            "are no longer in the relay's store")
                    elif isinstance(frame, wire.Error):
                        say(f"{name}: the relay says {frame.error}: {frame.detail}")
            except Closed as exc:
                if exc.code in FATAL_CLOSES:
                    raise ToolError(f"{name}: {FATAL_CLOSES[exc.code]} ({exc})") from None
                say(f"{name}: connection {exc}; resuming after {last or 'the start'} in {delay:g} s")
            finally:
                await ws.aclose()
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
