"""Direct, non-blocking writes on a connection's socket, shared by every send
path (subscriber frames, HTTP answers, TLS ciphertext): one ``os.write``
with no trip through the scheduler, queueing only what the kernel did not
take."""

from __future__ import annotations

import os

import trio


def raw_fd(stream: trio.abc.Stream) -> int | None:
    """The socket's fd when writing to it directly is safe (plain TCP)."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


def send_now(fd: int, data: bytes | memoryview) -> int:
    """One non-blocking write: the bytes the kernel took, 0 when its buffer
    is full. Any other failure (reset, broken pipe, a TCP_USER_TIMEOUT that
    expired, a closed fd) is this connection's alone: BrokenResourceError."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"the peer is gone: {exc}") from exc
