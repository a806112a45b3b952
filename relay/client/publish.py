"""``relay publish``'s client: one publish over a WebSocket, answered.

The message is sent as the contract's ``publish`` (section 10) with the
``relay.v1`` subprotocol; the answer (``published`` or ``error``) is what
the command prints. Events the connection might receive are skipped: it
subscribes to nothing.
"""

from __future__ import annotations

import msgspec

from ..core import wire
from .client import ClientError, Closed, Rejected, ToolError, Url, open_websocket, parse_url


def publish_url(base: Url) -> Url:
    path = base.path[:-3] if base.path.endswith("/ws") else base.path
    return Url(base.scheme, base.host, base.port, path, "").join("/ws")


def message(channel: str, data: bytes, key: str | None) -> str:
    """The publish message, ``data`` spliced in byte for byte."""
    return wire.encode(wire.Publish(channel=channel, key=key, data=msgspec.Raw(data.strip()))).decode("utf-8")


async def publish(url: str, channel: str, data: bytes, token: str | None, key: str | None) -> int:
    """Publish ``data`` (JSON) to ``channel``; print the event id; exit status."""
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ToolError(f"relay publish: the message is not JSON: {exc}", 2) from None
    base = parse_url(url)
    headers = [("Authorization", f"Bearer {token}")] if token else []
    try:
        ws = await open_websocket(publish_url(base), headers, subprotocols=[wire.SUBPROTOCOL])
    except Rejected as exc:
        raise ToolError(f"relay publish: the relay refused the connection: {exc}") from None
    try:
        await ws.send_text(message(channel, data, key))
        while True:
            answer = wire.decode_server(await ws.receive())
            if isinstance(answer, wire.Published):
                print(answer.id, flush=True)
                return 0
            if isinstance(answer, wire.Error):
                raise ToolError(f"relay publish: {answer.error}: {answer.detail}")
    except Closed as exc:
        raise ClientError(f"{url}: the connection closed before an answer ({exc})") from None
    except msgspec.DecodeError as exc:
        raise ClientError(f"{url}: not a relay.v1 message: {exc}") from None
    finally:
        await ws.aclose()
