"""The client side, for the CLI tools: one HTTP request (h11) and a WebSocket
(wsproto), and ``run``, which runs a tool with the CLI's exit statuses.

Both protocol libraries are already the server's dependencies, so the tools
add none: h11 drives a request over a trio stream, and wsproto's
``WSConnection`` does the WebSocket handshake and framing over another. The
tools need only "POST this, tell me the answer" and "read text messages until
the connection drops", which is what this module offers; a connection is
opened per request, and the WebSocket answers pings and close frames itself.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, Message, Ping, RejectConnection, RejectData,
                            Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE = 65536
MAX_RESPONSE = 16 * 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
USER_AGENT = "relay-cli"


class ClientError(Exception):
    """A request that could not be made or answered; the message says where."""


class ToolError(Exception):
    """What went wrong, for the user; exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str  # http or https
    host: str
    port: int
    path: str  # without a trailing slash
    query: str = ""

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def target(self) -> str:
        return (self.path or "/") + (f"?{self.query}" if self.query else "")

    def join(self, path: str, query: str = "") -> Url:
        return Url(self.scheme, self.host, self.port, self.path + path, query)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_url(text: str) -> Url:
    """http(s):// or ws(s):// URL -> Url (ws maps to http, wss to https)."""
    parts = urlsplit(text if "://" in text else f"http://{text}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ClientError(f"{text!r}: expected an http://, https://, ws:// or wss:// URL")
    if not parts.hostname:
        raise ClientError(f"{text!r}: no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ClientError(f"{text!r}: the port is not a number") from None
    return Url(scheme, parts.hostname, port, parts.path.rstrip("/"), parts.query)


async def open_stream(url: Url, timeout: float = 10.0) -> trio.abc.Stream:
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(url.host, url.port)
            if url.secure:
                tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=url.host,
                                     https_compatible=True)
                await tls.do_handshake()
                stream = tls
    except trio.TooSlowError:
        raise ClientError(f"{url.authority}: no connection within {timeout:g} s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise ClientError(f"{url.authority}: {_reason(exc)}") from None
    return stream


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- HTTP ------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def request(method: str, url: Url, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                  timeout: float = 30.0) -> Response:
    """One request on its own connection; the whole answer, or ClientError."""
    conn = h11.Connection(h11.CLIENT)
    given = {name.lower() for name, _ in headers or ()}
    hs: list[tuple[str, str]] = [("Host", url.authority)]
    if "user-agent" not in given:
        hs.append(("User-Agent", USER_AGENT))
    hs.extend(headers or ())
    hs += [("Content-Length", str(len(body))), ("Connection", "close")]
    stream = await open_stream(url, timeout)
    try:
        with trio.fail_after(timeout):
            data = conn.send(h11.Request(method=method, target=url.target, headers=hs))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            response: h11.Response | None = None
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE:
                        raise ClientError(f"{url}: the answer is over {MAX_RESPONSE} bytes")
                    chunks.append(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    except trio.TooSlowError:
        raise ClientError(f"{url}: no answer within {timeout:g} s") from None
    except h11.ProtocolError as exc:
        raise ClientError(f"{url}: not an HTTP answer ({exc})") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise ClientError(f"{url}: {_reason(exc)}") from None
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()
    if response is None:
        raise ClientError(f"{url}: the connection closed before an answer")
    return Response(
        status=response.status_code,
        reason=response.reason.decode("latin-1") or _phrase(response.status_code),
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers],
        body=b"".join(chunks),
    )


def _phrase(status: int) -> str:
    # h11 and many small servers send no reason phrase; show the standard one.
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# -- WebSocket ---------------------------------------------------------------


class Rejected(ClientError):
    """The server answered the upgrade with an HTTP status."""

    def __init__(self, url: Url, status: int, body: bytes) -> None:
        detail = body.decode("utf-8", "replace").strip()[:500]
        super().__init__(f"{url}: {status}" + (f" {detail}" if detail else ""))
        self.status = status
        self.body = body


class Closed(ClientError):
    """The WebSocket ended: a close frame (its code and reason), or the stream (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class WebSocket:
    stream: trio.abc.Stream
    ws: WSConnection
    subprotocol: str | None = None
    _parts: list[str] = field(default_factory=list)
    _size: int = 0

    async def _send(self, data: bytes) -> None:
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(1006, _reason(exc)) from None

    async def receive(self) -> str:
        """The next text message; Closed when the connection ends."""
        while True:
            for event in self.ws.events():
                if isinstance(event, Message):
                    self._size += len(event.data)
                    if self._size > MAX_MESSAGE:
                        await self.aclose(1009, "message too big")
                        raise Closed(1009, "message too big")
                    if isinstance(event, TextMessage):
                        self._parts.append(event.data)
                    if event.message_finished:
                        text, self._parts, self._size = "".join(self._parts), [], 0
                        if isinstance(event, TextMessage):
                            return text
                elif isinstance(event, Ping):
                    await self._send(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        await self._send(self.ws.send(event.response()))
                    except (Closed, LocalProtocolError):
                        pass  # the peer may be gone already; we are closing anyway
                    raise Closed(event.code, event.reason or "")
            try:
                data = await self.stream.receive_some(RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(1006, _reason(exc)) from None
            if not data:
                raise Closed(1006, "connection lost")
            self.ws.receive_data(data)

    async def send_text(self, text: str) -> None:
        await self._send(self.ws.send(TextMessage(data=text)))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            if self.ws.state is ConnectionState.OPEN:
                try:
                    await self._send(self.ws.send(CloseConnection(code=code, reason=reason)))
                except Closed:
                    pass  # best effort: the stream closes next either way
            await self.stream.aclose()


async def open_websocket(url: Url, headers: list[tuple[str, str]] | None = None,
                         subprotocols: list[str] | None = None, timeout: float = 10.0) -> WebSocket:
    stream = await open_stream(url, timeout)
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in [("User-Agent", USER_AGENT), *(headers or ())]]
    try:
        with trio.fail_after(timeout):
            await stream.send_all(ws.send(Request(host=url.authority, target=url.target, extra_headers=extra,
                                                  subprotocols=subprotocols or [])))
            status, body = 0, b""
            while True:
                data = await stream.receive_some(RECEIVE)
                if not data:
                    raise ClientError(f"{url}: the connection closed during the WebSocket handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return WebSocket(stream, ws, event.subprotocol)
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise Rejected(url, status, b"")
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            raise Rejected(url, status, body)
    except BaseException as exc:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()
        if isinstance(exc, trio.TooSlowError):
            raise ClientError(f"{url}: no WebSocket handshake within {timeout:g} s") from None
        if isinstance(exc, (OSError, trio.BrokenResourceError)):
            raise ClientError(f"{url}: {_reason(exc)}") from None
        if isinstance(exc, RemoteProtocolError):
            raise ClientError(f"{url}: not a WebSocket handshake ({exc})") from None
        raise


# -- running a tool ------------------------------------------------------------


def run(main: Callable[[], Awaitable[Any]]) -> int:
    """Run a tool's main: its exit status (0 done or stopped with Ctrl-C, 1
    a failure, or what a ``ToolError`` says), its failure said on stderr."""
    try:
        result = trio.run(main)
    except KeyboardInterrupt:
        return 0
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except ClientError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `relay tail ... | head`: the reader has all it wanted.
        sys.stderr.close()
        return 0
    return result if isinstance(result, int) else 0
