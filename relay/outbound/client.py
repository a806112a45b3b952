"""Outbound attempts over pooled keep-alive connections: resolve, check,
connect (or reuse), POST, read the answer.

A new connection resolves the host and checks every address with
``relay.core.addresses`` before connecting to that very address (never
resolved twice, so DNS rebinding cannot slip an internal address in after
the check). A reused connection goes to an address that passed that check
when it was made, and is checked again against the caller's rules.

Connections are kept per (scheme, host, port) after an answer that was read
to its end on a connection both sides left open (h11 decides: HTTP/1.1
without ``Connection: close``): at most ``IDLE_PER_HOST`` idle per host,
each for at most ``IDLE_TIMEOUT`` seconds, newest reused first, and never
one the server has closed or written to while idle. Open connections, idle
ones included, never exceed ``max_connections``: a new connection beyond it
closes the oldest idle one, or waits for one to end.

A reused connection can die under the request: the server closed it as we
sent (its idle timeout and our reuse crossed). When that happens before any
byte of an answer, the request is sent once more on a new connection,
within the same timeout. Safe for webhooks: a server that closes without
answering either never read the request (the usual race) or is seen by the
relay exactly like a failed attempt, which the schedule would repeat anyway
with the same ``webhook-id``; receivers dedupe by it (contract, section 9).
A fresh connection's failure is never retried here.

No redirect is followed: a 3xx is an answer like any other. The whole
attempt - resolution to the answer's last byte, a retry included - runs
under ``timeout``. Of the answer's body the first 4 KiB are kept for the
attempt log; reading stops at 1 MiB (and that connection is closed).

TLS is verified against ``ssl.create_default_context()``: the system's CA
store, or the file ``SSL_CERT_FILE`` names (and ``SSL_CERT_DIR``), read when
the pool is made.

Every failure is an ``Answer`` with an error class, never an exception:
``timeout``, ``dns``, ``forbidden_address``, ``connect``, ``tls``,
``protocol``.
"""

from __future__ import annotations

import functools
import select
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from ..core.addresses import Network, why_forbidden

KEEP = 4096  # bytes of the answer's body kept in the attempt log
MAX_READ = 1 << 20  # bytes of body read before the connection is dropped
USER_AGENT = "relay-webhooks"
IDLE_PER_HOST = 32  # idle connections kept per (scheme, host, port)
IDLE_TIMEOUT = 4.0  # seconds an idle connection is kept: under the 5 s many servers close at


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
    def __init__(self, error: str, detail: str, unanswered: bool = False) -> None:
        super().__init__(detail)
        self.error = error
        self.unanswered = unanswered  # broke before any byte of an answer


Key = tuple[bool, str, int]


@dataclass(slots=True, eq=False)
class _Conn:
    key: Key
    stream: trio.abc.Stream
    sock: trio.socket.SocketType
    address: str  # the checked address it went to
    http: h11.Connection
    idle_since: float = 0.0


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class Pool:
    """Keep-alive connections for outbound attempts, shared by every
    endpoint. ``run`` closes idle connections as they expire and, when it
    ends, every idle one; a connection in use is closed by its attempt."""

    def __init__(self, *, max_connections: int = 512, idle_per_host: int = IDLE_PER_HOST,
                 idle_timeout: float = IDLE_TIMEOUT, tls: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.idle_per_host = idle_per_host
        self.idle_timeout = idle_timeout
        self.tls = tls or _default_tls()
        self.open = 0  # connections open, idle ones included
        self.opened = 0  # connections made since the start
        self._idle: dict[Key, list[_Conn]] = {}
        self._room = trio.lowlevel.ParkingLot()
        self._closed = False

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes, *, timeout: float,
                   allow: Sequence[Network] = ()) -> Answer:
        """POST ``body`` to ``url``: the answer, or the error class it failed with."""
        started = time.monotonic()
        target = Target.of(url)
        try:
            with trio.fail_after(timeout):
                status, retry_after, kept = await self._attempt(target, headers, body, allow)
        except trio.TooSlowError:
            return Answer(None, "timeout", time.monotonic() - started, detail=f"no answer within {timeout:g} s")
        except _Failed as failed:
            return Answer(None, failed.error, time.monotonic() - started, detail=str(failed))
        return Answer(status, None, time.monotonic() - started, kept, retry_after)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            while True:
                await trio.sleep(self.idle_timeout / 2)
                self._expire(trio.current_time() - self.idle_timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Close every idle connection; those in use close when their attempt ends."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._drop(conn)
        self._idle.clear()

    @property
    def idle(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    # -- one attempt ---------------------------------------------------------------

    async def _attempt(self, target: Target, headers: Sequence[tuple[str, str]], body: bytes,
                       allow: Sequence[Network]) -> tuple[int, str | None, bytes]:
        conn = self._reuse((target.secure, target.host, target.port), allow)
        if conn is not None:
            try:
                return await self._exchange(conn, target, headers, body)
            except _Failed as failed:
                if not failed.unanswered:
                    raise
                # Stale: closed by the server as we reused it (see the module's docstring).
        conn = await self._connect(target, allow)
        return await self._exchange(conn, target, headers, body)

    async def _exchange(self, conn: _Conn, target: Target, headers: Sequence[tuple[str, str]],
                        body: bytes) -> tuple[int, str | None, bytes]:
        reusable = False
        try:
            answer = await _exchange(conn.stream, conn.http, target, headers, body)
            reusable = conn.http.our_state is h11.DONE and conn.http.their_state is h11.DONE
        finally:
            # Anything else - a failure, a timeout, a cancellation, an answer
            # cut short, Connection: close - ends the connection.
            if reusable and not self._closed:
                conn.http.start_next_cycle()
                self._keep(conn)
            else:
                self._drop(conn)
        return answer

    # -- the pool --------------------------------------------------------------------

    def _reuse(self, key: Key, allow: Sequence[Network]) -> _Conn | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        oldest = trio.current_time() - self.idle_timeout
        while conns:
            conn = conns.pop()
            if conn.idle_since < oldest or _readable(conn.sock) or why_forbidden(conn.address, allow):
                # Expired, closed or written to by the server while idle, or
                # not allowed for this caller.
                self._drop(conn)
                continue
            return conn
        return None

    def _keep(self, conn: _Conn) -> None:
        if self.idle_per_host <= 0:
            self._drop(conn)
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= self.idle_per_host:
            self._drop(conns.pop(0))
        conn.idle_since = trio.current_time()
        conns.append(conn)
        self._room.unpark()  # one waiting for room may close it now

    def _drop(self, conn: _Conn) -> None:
        # Closing the socket is immediate (no TLS close_notify): nothing in
        # the pool waits on a peer, and nothing is left open after a cancel.
        conn.sock.close()
        self.open -= 1
        self._room.unpark()

    def _expire(self, before: float) -> None:
        for key, conns in list(self._idle.items()):
            keep = [c for c in conns if c.idle_since >= before]
            for conn in conns:
                if conn.idle_since < before:
                    self._drop(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def _room_for_one(self) -> None:
        while self.open >= self.max_connections:
            oldest = min((conns[0] for conns in self._idle.values() if conns),
                         key=lambda c: c.idle_since, default=None)
            if oldest is None:
                await self._room.park()
                continue
            self._idle[oldest.key].remove(oldest)
            self._drop(oldest)
        self.open += 1

    async def _connect(self, target: Target, allow: Sequence[Network]) -> _Conn:
        addresses = await _resolve(target, allow)
        await self._room_for_one()
        try:
            stream, sock, address = await _dial(target, addresses, self.tls)
        except BaseException:
            self.open -= 1
            self._room.unpark()
            raise
        self.opened += 1
        return _Conn((target.secure, target.host, target.port), stream, sock, address, h11.Connection(h11.CLIENT))


async def post(url: str, headers: Sequence[tuple[str, str]], body: bytes, *, timeout: float,
               allow: Sequence[Network] = (), tls: ssl.SSLContext | None = None) -> Answer:
    """One attempt on a connection of its own, closed afterwards."""
    pool = Pool(tls=tls)
    try:
        return await pool.post(url, headers, body, timeout=timeout, allow=allow)
    finally:
        pool.close()


def _readable(sock: trio.socket.SocketType) -> bool:
    """An idle connection with something to read was closed (EOF) or is out
    of step with us (bytes nobody asked for): either way not reusable."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


async def _resolve(target: Target, allow: Sequence[Network]) -> list[tuple[Any, ...]]:
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
    return allowed


async def _dial(target: Target, allowed: list[tuple[Any, ...]],
                tls: ssl.SSLContext) -> tuple[trio.abc.Stream, trio.socket.SocketType, str]:
    last: OSError | None = None
    for family, kind, proto, sockaddr, _ in allowed:
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(sockaddr)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
            continue
        stream: trio.abc.Stream = trio.SocketStream(sock)
        if not target.secure:
            return stream, sock, sockaddr[0]
        secure = trio.SSLStream(stream, tls, server_hostname=target.host, https_compatible=True)
        try:
            await secure.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            sock.close()
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            raise _Failed("tls", f"{target.host}: {cause}") from None
        except BaseException:
            sock.close()
            raise
        return secure, sock, sockaddr[0]
    raise _Failed("connect", f"{target.authority}: {(last.strerror or str(last)).lower() if last else 'no address'}")


async def _exchange(stream: trio.abc.Stream, conn: h11.Connection, target: Target,
                    headers: Sequence[tuple[str, str]], body: bytes) -> tuple[int, str | None, bytes]:
    request = h11.Request(method="POST", target=target.target, headers=[
        ("Host", target.authority), ("User-Agent", USER_AGENT), *headers,
        ("Content-Length", str(len(body)))])
    answered = False  # a byte of the answer came
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
                if not data and not answered:
                    raise _Failed("protocol", "the connection closed before an answer", unanswered=True)
                answered = True
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
                    break  # the connection is not reused: the rest is unread
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except h11.ProtocolError as exc:
        raise _Failed("protocol", f"not an HTTP answer: {exc}") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise _Failed("connect", f"{target.authority}: the connection broke: {exc}", unanswered=not answered) from None
    if status is None:
        raise _Failed("protocol", "the connection closed before an answer", unanswered=not answered)
    return status, retry_after, bytes(kept)
