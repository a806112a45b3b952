"""One outbound attempt: resolve, check, connect, POST, read the answer.

The host is resolved for every attempt and each address is checked by
``relay.core.addresses`` before the connection is made to that very
address (never resolved twice, so DNS rebinding cannot slip an internal
address in after the check). No redirect is followed: a 3xx is an answer
like any other. The whole attempt - resolution to the answer's last byte -
runs under ``timeout``. Of the answer's body the first 4 KiB are kept for
the attempt log; reading stops at 1 MiB.

Every failure is an ``Answer`` with an error class, never an exception:
``timeout``, ``dns``, ``forbidden_address``, ``connect``, ``tls``,
``protocol``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from ..core.addresses import Network, why_forbidden

KEEP = 4096  # bytes of the answer's body kept in the attempt log
MAX_READ = 1 << 20  # bytes of body read before the connection is dropped
USER_AGENT = "relay-webhooks"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None
    error: str | None
    seconds: float
    body: bytes = b""
    retry_after: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    secure: bool
    host: str
    port: int
    target: str  # path and query

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        return cls(secure, host, parts.port or (443 if secure else 80),
                   (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.secure else 80) else f"{host}:{self.port}"


class _Failed(Exception):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error


_tls = ssl.create_default_context()


async def post(url: str, headers: Sequence[tuple[str, str]], body: bytes, *, timeout: float,
               allow: Sequence[Network] = (), tls: ssl.SSLContext | None = None) -> Answer:
    """POST ``body`` to ``url``: the answer, or the error class it failed with."""
    started = time.monotonic()
    target = Target.of(url)
    try:
        with trio.fail_after(timeout):
            stream = await _connect(target, allow, tls or _tls)
            try:
                status, retry_after, kept = await _exchange(stream, target, headers, body)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()
    except trio.TooSlowError:
        return Answer(None, "timeout", time.monotonic() - started, detail=f"no answer within {timeout:g} s")
    except _Failed as failed:
        return Answer(None, failed.error, time.monotonic() - started, detail=str(failed))
    return Answer(status, None, time.monotonic() - started, kept, retry_after)


async def _connect(target: Target, allow: Sequence[Network], tls: ssl.SSLContext) -> trio.abc.Stream:
    try:
        infos = await trio.socket.getaddrinfo(target.host, target.port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise _Failed("dns", f"{target.host}: {exc.strerror or exc}") from None
    allowed, refused = [], []
    for family, kind, proto, _, sockaddr in infos:
        reason = why_forbidden(sockaddr[0], allow)
        (refused if reason else allowed).append((family, kind, proto, sockaddr, reason))
    if not allowed:
        address, reason = refused[0][3][0], refused[0][4]
        raise _Failed("forbidden_address", f"{target.host} resolves to {address}, a {reason} address")
    last: OSError | None = None
    for family, kind, proto, sockaddr, _ in allowed:
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        stream: trio.abc.Stream = trio.SocketStream(sock)
        if not target.secure:
            return stream
        secure = trio.SSLStream(stream, tls, server_hostname=target.host, https_compatible=True)
        try:
            await secure.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await stream.aclose()
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            raise _Failed("tls", f"{target.host}: {cause}") from None
        return secure
    raise _Failed("connect", f"{target.authority}: {(last.strerror or str(last)).lower() if last else 'no address'}")


async def _exchange(stream: trio.abc.Stream, target: Target, headers: Sequence[tuple[str, str]],
                    body: bytes) -> tuple[int, str | None, bytes]:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="POST", target=target.target, headers=[
        ("Host", target.authority), ("User-Agent", USER_AGENT), *headers,
        ("Content-Length", str(len(body))), ("Connection", "close")])
    try:
        await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status: int | None = None
        retry_after: str | None = None
        kept = bytearray()
        read = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == b"retry-after":
                        retry_after = value.decode("latin-1")
            elif isinstance(event, h11.Data):
                read += len(event.data)
                if len(kept) < KEEP:
                    kept += event.data[: KEEP - len(kept)]
                if read > MAX_READ:
                    break
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except h11.ProtocolError as exc:
        raise _Failed("protocol", f"not an HTTP answer: {exc}") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise _Failed("connect", f"{target.authority}: the connection broke: {exc}") from None
    if status is None:
        raise _Failed("protocol", "the connection closed before an answer")
    return status, retry_after, bytes(kept)
