"""The event envelope and the bytes each transport sends for it.

Pure encoding. An envelope is encoded once, when the store gives the event
its id; the WebSocket frame and the SSE chunk are derived from those bytes at
most once per event and shared by every subscriber (server frames are not
masked, so one frame's bytes are right for every connection).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import msgspec

from .wire import Envelope


_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Draft:
    """A verified webhook on its way into the store; it has no id yet."""

    channel: str
    route: str
    ts: int  # ms since the epoch at ingest
    delivery: str | None
    headers: dict[str, str]
    data: bytes  # JSON text: the body itself, or a JSON string holding a form body
    dedupe: str | None = None  # key that names this delivery for dedupe
    received: float = 0.0  # trio clock at receipt, for latency


@dataclass(slots=True, eq=False)
class Event:
    """A stored event: its id, the key that orders it, and its envelope."""

    id: str
    key: object  # sortable: int for sqlite/memory, (ms, seq) for redis
    channel: str
    ts: int
    envelope: bytes
    received: float = 0.0
    _ws: bytes | None = field(default=None, repr=False)
    _sse: bytes | None = field(default=None, repr=False)

    @property
    def ws_frame(self) -> bytes:
        frame = self._ws
        if frame is None:
            frame = self._ws = ws_text_frame(self.envelope)
        return frame

    @property
    def sse_chunk(self) -> bytes:
        chunk = self._sse
        if chunk is None:
            chunk = self._sse = http_chunk(sse_message(self.id, self.envelope))
        return chunk


def encode_envelope(draft: Draft, event_id: str) -> bytes:
    return _encoder.encode(
        Envelope(
            id=event_id,
            channel=draft.channel,
            route=draft.route,
            ts=draft.ts,
            delivery=draft.delivery,
            headers=draft.headers,
            data=msgspec.Raw(draft.data),
        )
    )


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def sse_message(event_id: str, payload: bytes) -> bytes:
    # A body received verbatim may hold line breaks; each line of an SSE
    # field needs its own "data:" prefix or the browser would cut the event.
    if b"\n" in payload or b"\r" in payload:
        lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = b"".join(b"data: " + line + b"\n" for line in lines)
    else:
        data = b"data: " + payload + b"\n"
    return b"id: " + event_id.encode() + b"\n" + data + b"\n"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
