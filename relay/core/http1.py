"""HTTP/1.1, server side, as a pure state machine: bytes in, events out, and
the bytes of our answers out. No sockets, no clock; ``relay.server.connection``
is the trio shell around it.

Why not h11 on this side: measured on our 2-core machines, h11 spends about
35 µs parsing a 1 KiB webhook and 26 µs writing its 202, more than half of
what an aiohttp relay spends on a webhook in all (its parser is C). The relay
must ingest at least that fast with a durable store, so the hot path gets a
parser built for it. It is the server half only, and stricter than its
peers, never looser: where a request could be read two ways it is refused,
never guessed (a line end other than CRLF, obs-fold, whitespace before a
colon, conflicting or malformed Content-Length, Content-Length beside
Transfer-Encoding, a final coding other than chunked, several Host headers,
control characters, a chunk line that is not exactly RFC 9112's). Each head
line is judged as soon as it has ended. h11 remains the client in
``relay.client.client``; h11 and llhttp's request corpus are the oracles that
``tests/unit/test_http1.py`` and ``tests/unit/test_http1_llhttp.py`` hold
this parser to.

The event and state names follow h11 so the shell reads the same way:
``next_event()`` returns a ``Request``, then ``Data`` and ``EndOfMessage``,
or ``NEED_DATA``; ``ConnectionClosed`` when the peer closed between requests.
"""

from __future__ import annotations

import re
from http import HTTPStatus

# Their (the client's) states, and ours. Strings read well in reprs and logs.
IDLE = "IDLE"  # waiting for a request head
SEND_BODY = "SEND_BODY"  # the head is in, the body is being read
SEND_RESPONSE = "SEND_RESPONSE"  # ours: a request is in and must be answered
DONE = "DONE"
MUST_CLOSE = "MUST_CLOSE"  # ours: answered, and the connection ends after it
SWITCHED = "SWITCHED"  # ours: the stream now speaks WebSocket or event-stream
CLOSED = "CLOSED"
ERROR = "ERROR"

MAX_HEAD = 16 * 1024
_MAX_CHUNK_LINE = 1024  # a chunk-size line with extensions; ours are 2-10 bytes
_MAX_TRAILERS = 8 * 1024


class ProtocolError(Exception):
    """The client broke HTTP/1.1; ``status`` is the answer that says so."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class _Need:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _Need()


class Request:
    __slots__ = ("method", "target", "version", "headers", "origin")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str], origin: str) -> None:
        self.method = method
        self.target = target  # as sent
        self.version = version  # "1.1" or "1.0"
        self.headers = headers  # lower-cased names; repeated headers joined with ", "
        self.origin = origin  # the path and query to route by (``origin_form``)


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    __slots__ = ()


class ConnectionClosed:
    __slots__ = ()


END_OF_MESSAGE = EndOfMessage()
CONNECTION_CLOSED = ConnectionClosed()

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# A field line: name, colon, a value of visible characters, SP, HTAB and
# obs-text (no CR, LF, NUL or other controls). The value is stripped after.
_FIELD = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_IS_TOKEN = re.compile(_TOKEN)
_DIGITS = re.compile(rb"[0-9]{1,18}")
# absolute-form (RFC 9112 3.2.2): scheme, authority, then path and query.
_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(.*)")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")
# A chunk-size line (RFC 9112 7.1): hex digits, then extensions with no
# whitespace anywhere, each a token with an optional token or quoted-string
# value, then CR (the LF was the line's end). Anything looser (a bare ";",
# a space after the size, an unterminated quote, a NUL) is refused: a chunk
# boundary read two ways is a smuggled request.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r")

# Methods the relay reads a request for; any other gets 501 (RFC 9110 9.1).
# CONNECT is not among them: after it the bytes are a tunnel, not requests.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"))

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _tokens(value: str) -> set[str]:
    return {t.strip(" \t").lower() for t in value.split(",")}


def _bad_field(line: bytes, what: str) -> ProtocolError:
    """Why a field line did not match ``_FIELD``, in words."""
    if line[:1] in (b" ", b"\t"):
        return ProtocolError(f"obsolete line folding in a {what}")
    if b"\r" in line:
        return ProtocolError(f"carriage return inside a {what}")
    name, colon, value = line.partition(b":")
    if not colon or _IS_TOKEN.fullmatch(name) is None:
        return ProtocolError(f"malformed {what} line")
    return ProtocolError(f"control character in a {what}")


def origin_form(method: str, target: bytes) -> str:
    """The path and query a request is routed by. An absolute-form target
    (``http://host/hooks/x``, RFC 9112 3.2.2) must be accepted by a server:
    its path is routed like any other, and its authority, like the Host
    header, is not used (the relay serves the same routes under any name).
    ``OPTIONS *`` is routed as ``*``. Anything else (an authority-form
    target, a relative path, a URI with userinfo) is refused."""
    if target[:1] == b"/":
        return target.decode("ascii")
    if target == b"*" and method == "OPTIONS":
        return "*"
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ProtocolError("the request target is neither a path nor an http(s) URI")
    authority, rest = m.groups()
    if b"@" in authority:
        raise ProtocolError("userinfo in the request target's URI")
    if _AUTHORITY.fullmatch(authority) is None or authority.startswith(b":"):
        raise ProtocolError("the request target's URI has no valid host")
    if rest[:1] != b"/":
        rest = b"/" + rest
    return rest.decode("ascii")


class _Head:
    """A request head read line by line (each line without its CRLF), each
    line judged as soon as it has ended: a head that cannot be read one way
    only is refused before its end, let alone its body, has arrived."""

    __slots__ = ("request", "lengths", "hosts")

    def __init__(self) -> None:
        self.request: Request | None = None
        self.lengths: bytes | None = None  # the Content-Length value, once seen
        self.hosts = 0

    def line(self, line: bytes) -> None:
        request = self.request
        if request is None:
            self.request = _request_line(line)
            return
        m = _FIELD.fullmatch(line)
        if m is None:
            raise _bad_field(line, "header")
        name, value = m.groups()
        value = value.strip(b" \t")
        key = name.decode("ascii").lower()
        headers = request.headers
        if key == "content-length":
            if _DIGITS.fullmatch(value) is None:
                raise ProtocolError("malformed Content-Length")
            if self.lengths is not None:
                if value != self.lengths:
                    raise ProtocolError("conflicting Content-Length values")
                return  # an identical repeat: keep one, as h11 does
            if "transfer-encoding" in headers:
                raise ProtocolError("Content-Length and Transfer-Encoding together")
            self.lengths = value
        elif key == "transfer-encoding":
            if key in headers:
                raise ProtocolError("several Transfer-Encoding headers")
            if self.lengths is not None:
                raise ProtocolError("Content-Length and Transfer-Encoding together")
        elif key == "host":
            self.hosts += 1
            if self.hosts > 1:
                raise ProtocolError("several Host headers; an HTTP/1.1 request needs exactly one Host header")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def end(self) -> tuple[Request, int | None, bool, bool, bool]:
        """At the blank line: the request, its body framing (Content-Length,
        or None for chunked), keep-alive, whether the client waits for
        ``100 Continue``, and whether it asks to upgrade."""
        request = self.request
        assert request is not None
        version = request.version
        headers = request.headers
        if version == "1.1" and self.hosts != 1:
            raise ProtocolError("an HTTP/1.1 request needs exactly one Host header")
        coding = headers.get("transfer-encoding")
        length: int | None = 0
        if coding is not None:
            codings = [c.strip(" \t").lower() for c in coding.split(",")]
            if not all(_IS_TOKEN.fullmatch(c.encode("latin-1")) for c in codings):
                raise ProtocolError(f"malformed Transfer-Encoding {coding[:40]!r}")
            if codings[-1] != "chunked":
                # RFC 9112 6.3: the body's length cannot be known: 400, and close.
                raise ProtocolError(f"Transfer-Encoding {coding[:40]!r} does not end in chunked")
            if "chunked" in codings[:-1]:
                raise ProtocolError("chunked applied more than once")
            if len(codings) > 1:
                raise ProtocolError(f"Transfer-Encoding {coding[:40]!r} is not supported; only chunked", 501)
            if version == "1.0":
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
            length = None
        elif self.lengths is not None:
            length = int(self.lengths)
        connection = _tokens(headers["connection"]) if "connection" in headers else set()
        upgrade = "upgrade" in headers and "upgrade" in connection
        # A request that asks to upgrade is the connection's last HTTP request:
        # either it is switched, or its answer closes it. What follows it is
        # never read as another request (llhttp reads it as the new protocol).
        keep_alive = version == "1.1" and "close" not in connection and not upgrade
        expect = headers.get("expect")
        continues = expect is not None and version == "1.1" and expect.lower() == "100-continue"
        return request, length, keep_alive, continues, upgrade


def _request_line(line: bytes) -> Request:
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise ProtocolError("malformed request line")
    method_b, target, major, minor = m.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise ProtocolError(f"HTTP/{major.decode()}.{minor.decode()} is not supported", 505)
    method = method_b.decode("ascii")
    if method not in METHODS:
        raise ProtocolError(f"method {method[:20]!r} is not implemented", 501)
    return Request(method, target.decode("ascii"), "1.1" if minor == b"1" else "1.0", {},
                   origin_form(method, target))


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    parts = [f"HTTP/1.1 {status} {_reason(status)}\r\n"]
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise ValueError(f"refusing to send header {name!r}: line break or colon in it")
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Connection:
    """One server connection's HTTP/1.1 state, for any number of requests."""

    __slots__ = ("their_state", "our_state", "version", "keep_alive", "client_waits", "upgrade",
                 "_buf", "_eof", "_left", "_chunked", "_chunk_state", "_scan", "_reading", "max_head")

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self.their_state = IDLE
        self.our_state = IDLE
        self.version = "1.1"
        self.keep_alive = True
        self.client_waits = False  # Expect: 100-continue, and no body byte yet
        self.upgrade = False
        self._buf = b""
        self._eof = False
        self._left = 0  # body bytes still due (Content-Length), or of the current chunk
        self._chunked = False
        self._chunk_state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._scan = 0  # where the head's next unread line starts: a slow client's head is not rescanned
        self._reading: _Head | None = None  # the head being read, once its first line has ended

    # -- input ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the peer; ``b""`` means it closed its side."""
        if data:
            self._buf = self._buf + data if self._buf else data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> bytes:
        """What the peer sent past the request (after a 101: WebSocket frames)."""
        return self._buf

    def next_event(self) -> Request | Data | EndOfMessage | ConnectionClosed | _Need:
        try:
            if self.their_state is IDLE:
                return self._head()
            if self.their_state is SEND_BODY:
                return self._chunk() if self._chunked else self._body()
            if self.their_state is DONE:
                return NEED_DATA if not self._eof or self._buf else CONNECTION_CLOSED
            if self.their_state is CLOSED:
                return CONNECTION_CLOSED
            raise ProtocolError("the connection is in an error state")
        except ProtocolError:
            self.their_state = ERROR
            raise

    def _head(self) -> Request | ConnectionClosed | _Need:
        buf = self._buf
        reading = self._reading
        if reading is None and buf[:1] in (b"\r", b"\n"):
            # Blank lines before a request line are ignored (RFC 9112 2.2).
            buf = self._buf = buf.lstrip(b"\r\n")
            self._scan = 0
        pos = self._scan
        limit = self.max_head
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            if end > limit:
                raise ProtocolError(f"request head over {limit} bytes", 431)
            if end == pos or buf[end - 1] != 13:  # 13: CR
                # A bare LF: llhttp (strict) refuses it, h11 takes it as a
                # line end. Read two ways, it hides one request in another.
                raise ProtocolError("a line ends in a bare LF (no carriage return before it)")
            line = buf[pos:end - 1]
            pos = end + 1
            if reading is None:
                reading = self._reading = _Head()
            elif not line:
                self._buf = buf[pos:]
                self._scan = 0
                self._reading = None
                request, length, self.keep_alive, self.client_waits, self.upgrade = reading.end()
                self.version = request.version
                self.our_state = SEND_RESPONSE
                self._chunked = length is None
                self._chunk_state = 0
                self._left = length or 0
                self.their_state = SEND_BODY
                return request
            reading.line(line)
        self._scan = pos
        if len(buf) > limit:
            raise ProtocolError(f"request head over {limit} bytes", 431)
        if self._eof:
            if buf:
                raise ProtocolError("connection closed in the middle of a request head")
            self.their_state = CLOSED
            return CONNECTION_CLOSED
        return NEED_DATA

    def _body(self) -> Data | EndOfMessage | _Need:
        left = self._left
        if left == 0:
            self.their_state = DONE
            return END_OF_MESSAGE
        buf = self._buf
        if not buf:
            if self._eof:
                raise ProtocolError("connection closed before the body ended")
            return NEED_DATA
        self.client_waits = False
        if len(buf) <= left:
            self._buf = b""
            self._left = left - len(buf)
            return Data(buf)
        self._buf = buf[left:]
        self._left = 0
        return Data(buf[:left])

    def _chunk(self) -> Data | EndOfMessage | _Need:
        while True:
            buf = self._buf
            state = self._chunk_state
            if state == 1:  # chunk data
                if not buf:
                    break
                self.client_waits = False
                left = self._left
                if len(buf) <= left:
                    self._buf = b""
                    self._left = left - len(buf)
                else:
                    self._buf = buf[left:]
                    self._left = 0
                    buf = buf[:left]
                if self._left == 0:
                    self._chunk_state = 2
                return Data(buf)
            newline = buf.find(b"\n")
            if newline < 0:
                limit = _MAX_TRAILERS if state == 3 else _MAX_CHUNK_LINE
                if len(buf) > limit:
                    raise ProtocolError("chunk framing line too long")
                break
            line, self._buf = buf[:newline], buf[newline + 1:]
            self.client_waits = False
            if state == 0:
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise ProtocolError("malformed chunk size")
                self._left = int(m.group(1), 16)
                self._chunk_state = 1 if self._left else 3
            elif state == 2:
                if line != b"\r":
                    raise ProtocolError("chunk data longer than its size")
                self._chunk_state = 0
            else:  # trailers: read and ignored, up to the blank line
                if line == b"\r":
                    self.their_state = DONE
                    return END_OF_MESSAGE
                if line[-1:] != b"\r":
                    raise ProtocolError("a trailer line ends in a bare LF (no carriage return before it)")
                if _FIELD.fullmatch(line, 0, len(line) - 1) is None:
                    raise _bad_field(line[:-1], "trailer")
                self._left += len(line) + 1
                if self._left > _MAX_TRAILERS:
                    raise ProtocolError(f"trailers over {_MAX_TRAILERS} bytes")
        if self._eof:
            raise ProtocolError("connection closed before the body ended")
        return NEED_DATA

    # -- output ---------------------------------------------------------

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        """A whole answer with a Content-Length body (the caller sets the
        length header; for HEAD it passes no body). Adds ``connection: close``
        when this is the connection's last answer."""
        if self.our_state is not SEND_RESPONSE:
            raise RuntimeError(f"no request to answer (ours: {self.our_state})")
        if self.client_waits and self.their_state is SEND_BODY:
            # Answered without asking for the body: whether the client sends
            # it anyway is anyone's guess, so this connection carries no more.
            self.keep_alive = False
        close = not self.keep_alive or ("connection", "close") in headers
        if close and ("connection", "close") not in headers:
            headers = [*headers, ("connection", "close")]
        self.our_state = MUST_CLOSE if close else DONE
        head = response_head(status, headers)
        return head + body if body else head

    def refuse(self, status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The answer to a request we could not read (a ``ProtocolError``):
        given even before a request head was whole, and the connection's last."""
        if self.our_state not in (IDLE, SEND_RESPONSE):
            raise RuntimeError(f"cannot answer now (ours: {self.our_state})")
        self.our_state = MUST_CLOSE
        return response_head(status, [*headers, ("connection", "close")]) + body

    def switch(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        """A 101, or the head of an endless chunked stream (SSE): after it the
        bytes on the connection are no longer HTTP requests and answers."""
        if self.our_state is not SEND_RESPONSE:
            raise RuntimeError(f"no request to answer (ours: {self.our_state})")
        self.our_state = SWITCHED
        return response_head(status, headers)

    def send_continue(self) -> bytes:
        """``100 Continue`` for a client that waits for it before its body."""
        self.client_waits = False
        return CONTINUE

    def start_next_cycle(self) -> None:
        if self.their_state is not DONE or self.our_state is not DONE:
            raise RuntimeError(f"not at the end of a request (theirs: {self.their_state}, ours: {self.our_state})")
        self.their_state = IDLE
        self.our_state = IDLE
        self.client_waits = False
        self.upgrade = False
