"""HTTP/1.1, server side, as a pure state machine: bytes in, events out, and
the bytes of our answers out. No sockets, no clock; ``http.py`` is the trio
shell around it.

Why not h11 on this side: measured on our 2-core machines, h11 spends about
35 µs parsing a 1 KiB webhook and 26 µs writing its 202, more than half of
what an aiohttp relay spends on a webhook in all (its parser is C). The relay
must ingest at least that fast with a durable store, so the hot path gets a
parser built for it. It is the server half only, and strict: where a request
could be read two ways it is refused, never guessed (obs-fold, whitespace
before a colon, conflicting or malformed Content-Length, Content-Length beside
Transfer-Encoding, a coding other than chunked, several Host headers, control
characters, a bad chunk size). h11 remains the client in ``client.py`` and
the oracle that ``tests/unit/test_http1.py`` holds this parser to.

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
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.version = version  # "1.1" or "1.0"
        self.headers = headers  # lower-cased names; repeated headers joined with ", "


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

_HEAD_END = re.compile(rb"\n\r?\n")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB, CR and LF; CR is checked per line.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Chunk framing lines must end in CRLF (no bare LF here, unlike the head:
# a chunk boundary read two ways is a smuggled request).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?[ \t]*\r")

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def parse_head(head: bytes) -> tuple[Request, int | None, bool, bool, bool]:
    """One request head (each line with its line end, not the blank line
    after them) -> the request, its body
    framing (Content-Length, or None for chunked), keep-alive, whether the
    client waits for ``100 Continue``, and whether it asks to upgrade."""
    if _CTL.search(head) is not None:
        raise ProtocolError("control character in the request head")
    if head.count(b"\n") == head.count(b"\r\n"):
        lines = head[:-2].split(b"\r\n")
    else:  # bare LF line ends, as h11 and most servers accept them
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head[:-1].split(b"\n")]
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise ProtocolError("malformed request line")
    method, target, major, minor = m.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise ProtocolError(f"HTTP/{major.decode()}.{minor.decode()} is not supported", 505)
    version = "1.1" if minor == b"1" else "1.0"
    headers: dict[str, str] = {}
    lengths: list[bytes] = []
    hosts = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("obsolete line folding in a header")
            raise ProtocolError("malformed header line")
        if b"\r" in value:
            raise ProtocolError("carriage return inside a header")
        value = value.strip(b" \t")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key == "content-length":
            lengths.append(value)
            if len(lengths) > 1:
                continue  # repeats must be identical (checked below); keep one, as h11 does
        elif key == "host":
            hosts += 1
        if key in headers:
            if key == "transfer-encoding":
                raise ProtocolError("several Transfer-Encoding headers")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    if version == "1.1" and hosts != 1:
        raise ProtocolError("an HTTP/1.1 request needs exactly one Host header")
    coding = headers.get("transfer-encoding")
    length: int | None = 0
    if coding is not None:
        if lengths:
            raise ProtocolError("Content-Length and Transfer-Encoding together")
        if coding.lower() != "chunked":
            raise ProtocolError(f"Transfer-Encoding {coding[:40]!r} is not supported; only chunked", 501)
        if version == "1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        length = None
    elif lengths:
        first = lengths[0]
        if _DIGITS.fullmatch(first) is None or any(v != first for v in lengths[1:]):
            raise ProtocolError("malformed or conflicting Content-Length")
        length = int(first)
    connection = headers.get("connection", "").lower()
    keep_alive = version == "1.1" and "close" not in connection
    expect = headers.get("expect")
    continues = expect is not None and version == "1.1" and expect.lower() == "100-continue"
    upgrade = "upgrade" in headers and "upgrade" in connection
    request = Request(method.decode("ascii"), target.decode("ascii"), version, headers)
    return request, length, keep_alive, continues, upgrade


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
                 "_buf", "_eof", "_left", "_chunked", "_chunk_state", "_scan", "max_head")

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
        self._scan = 0  # where to look for the head's end: a slow client's head is not rescanned

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
        if buf[:1] in (b"\r", b"\n"):  # blank lines before a request are allowed
            buf = self._buf = buf.lstrip(b"\r\n")
            self._scan = 0
        end = _HEAD_END.search(buf, self._scan, self.max_head + 4)
        if end is None:
            self._scan = max(0, len(buf) - 2)
            if len(buf) > self.max_head:
                raise ProtocolError(f"request head over {self.max_head} bytes", 431)
            if self._eof:
                if buf:
                    raise ProtocolError("connection closed in the middle of a request head")
                self.their_state = CLOSED
                return CONNECTION_CLOSED
            return NEED_DATA
        self._scan = 0
        head = buf[: end.start() + 1]  # through the last line's LF
        self._buf = buf[end.end():]
        request, length, self.keep_alive, self.client_waits, self.upgrade = parse_head(head)
        self.version = request.version
        self.our_state = SEND_RESPONSE
        self._chunked = length is None
        self._chunk_state = 0
        self._left = length or 0
        self.their_state = SEND_BODY
        return request

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
                if line in (b"", b"\r"):
                    self.their_state = DONE
                    return END_OF_MESSAGE
                if b":" not in line or _CTL.search(line) is not None or line[:1] in (b" ", b"\t"):
                    raise ProtocolError("malformed trailer")
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
