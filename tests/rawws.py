"""A bare WebSocket client over a trio socket, for clients that misbehave on
purpose (never read, vanish mid-frame) and for holding thousands cheaply."""

from __future__ import annotations

import base64
import json
import os
import socket

import trio
from wsproto.frame_protocol import FrameProtocol, Opcode


async def connect(port: int, query: str, rcvbuf: int | None = None, headers: str = "") -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the window the server sees is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
    return stream


class Reader:
    """Reads the 101 head, then frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.proto = FrameProtocol(client=True, extensions=[])
        self.head = b""
        self.buffer: list[tuple[Opcode, object]] = []

    async def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.head:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed before the handshake ended")
            self.head += chunk
        head, _, rest = self.head.partition(b"\r\n\r\n")
        self.proto.receive_bytes(rest)
        return head

    async def frame(self) -> tuple[Opcode, object] | None:
        """The next whole message (text as str, close as (code, reason)), None at EOF."""
        parts: list[str] = []
        while True:
            for frame in self.proto.received_frames():
                if frame.opcode in (Opcode.TEXT, Opcode.CONTINUATION):
                    parts.append(frame.payload)  # type: ignore[arg-type]
                    if frame.message_finished:
                        return Opcode.TEXT, "".join(parts)
                elif frame.opcode is Opcode.CLOSE:
                    return Opcode.CLOSE, frame.payload
                elif frame.opcode is Opcode.PING:
                    continue
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.proto.receive_bytes(data)

    async def json(self) -> dict:
        got = await self.frame()
        assert got is not None and got[0] is Opcode.TEXT, got
        return json.loads(got[1])  # type: ignore[arg-type]


def control(opcode: Opcode, payload: bytes = b"") -> bytes:
    """A masked control frame (ping or pong), as a client sends it."""
    proto = FrameProtocol(client=True, extensions=[])
    return proto.ping(payload) if opcode is Opcode.PING else proto.pong(payload)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) in a server's unmasked byte stream, including
    any after a close frame (wsproto stops reading at the close); a partial
    frame at the end is returned with opcode -1."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if len(data) - i < 2:
            out.append((-1, data[i:]))
            break
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j + n > len(data):
            out.append((-1, data[i:]))
            break
        out.append((opcode, data[j:j + n]))
        i = j + n
    return out
