"""The relay's HTTP/1.1 server parser, held to h11.

h11 is the reference: whatever request h11's client writes, the relay's
parser must read as the same method, target, headers and body, however the
bytes are split. For arbitrary bytes, the relay may refuse more than h11 does
(it is stricter on purpose) but must never read a request h11 reads
differently: that disagreement is what request smuggling is made of.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import http1


def read_all(conn: http1.Connection, data: bytes, splits: list[int] | None = None) -> list[object]:
    """Feed ``data`` in pieces and collect events until the request ends."""
    cuts = sorted({min(max(0, c), len(data)) for c in (splits or [])} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is http1.NEED_DATA:
            conn.receive_data(pieces.pop(0) if pieces else b"")
            continue
        events.append(event)
        if event is http1.END_OF_MESSAGE or event is http1.CONNECTION_CLOSED:
            return events


def parse(data: bytes, splits: list[int] | None = None) -> tuple[http1.Request, bytes, http1.Connection]:
    conn = http1.Connection()
    events = read_all(conn, data, splits)
    request = events[0]
    assert isinstance(request, http1.Request)
    body = b"".join(e.data for e in events if isinstance(e, http1.Data))
    return request, body, conn


def h11_parse(data: bytes) -> tuple[h11.Request, bytes] | None:
    """What h11 reads from ``data`` (given at once, then EOF), or None if it refuses."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    request = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, body
            else:
                return None
    except h11.RemoteProtocolError:
        return None


def h11_headers(request: h11.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        key, text = name.lower().decode("ascii"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


WEBHOOK = (b"POST /hooks/github?x=1 HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
           b"X-GitHub-Event: push\r\nContent-Length: 11\r\n\r\n{\"a\": true}")


def test_a_webhook_is_read_whole_with_its_headers_and_body():
    request, body, conn = parse(WEBHOOK)
    assert (request.method, request.target, request.version) == ("POST", "/hooks/github?x=1", "1.1")
    assert request.headers == {"host": "relay", "content-type": "application/json", "x-github-event": "push",
                               "content-length": "11"}
    assert body == b'{"a": true}'
    assert conn.their_state == http1.DONE and conn.our_state == http1.SEND_RESPONSE


def test_a_webhook_split_into_single_bytes_reads_the_same():
    request, body, _ = parse(WEBHOOK, list(range(len(WEBHOOK))))
    assert request.headers["x-github-event"] == "push" and body == b'{"a": true}'


def test_pipelined_requests_are_read_one_after_the_other():
    conn = http1.Connection()
    conn.receive_data(WEBHOOK + WEBHOOK.replace(b"push", b"ping"))
    first = read_all(conn, b"")
    assert first[0].headers["x-github-event"] == "push"
    conn.respond(202, [("content-length", "0")])
    conn.start_next_cycle()
    second = read_all(conn, b"")
    assert second[0].headers["x-github-event"] == "ping"
    assert b"".join(e.data for e in second if isinstance(e, http1.Data)) == b'{"a": true}'


def test_a_chunked_body_with_extensions_and_trailers_is_joined():
    data = (b"POST /hooks/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n")
    request, body, conn = parse(data, [3, 40, 70, 75, 90])
    assert body == b"hello world" and conn.their_state == http1.DONE


def test_chunk_extensions_with_quoted_values_are_read_and_ignored():
    data = (b"POST /hooks/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5;a;b=c;d="x \\"y\\"; z"\r\nhello\r\n0;e=f\r\n\r\n')
    _, body, conn = parse(data)
    assert body == b"hello" and conn.their_state == http1.DONE


def test_blank_lines_before_a_request_are_skipped():
    request, body, _ = parse(b"\r\n\nPOST /hooks/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert request.headers == {"host": "h", "content-length": "2"} and body == b"hi"


SMUGGLED = (b"GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\n"
            b"GET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n")


def test_a_bare_lf_inside_a_crlf_head_is_refused_not_read_as_a_line_end():
    # h11 reads two requests here, the second a GET /admin hidden in the
    # first one's body; llhttp refuses. Refused, before any request is read.
    conn = http1.Connection()
    conn.receive_data(SMUGGLED)
    with pytest.raises(http1.ProtocolError) as caught:
        conn.next_event()
    assert caught.value.status == 400 and "bare LF" in caught.value.detail


def test_a_head_with_only_bare_lf_line_ends_is_refused():
    conn = http1.Connection()
    conn.receive_data(b"POST /hooks/x HTTP/1.1\nHost: h\nContent-Length: 2\n\nhi")
    with pytest.raises(http1.ProtocolError, match="bare LF"):
        conn.next_event()


def test_a_bad_header_line_is_refused_before_the_head_ends():
    conn = http1.Connection()
    conn.receive_data(b"POST /hooks/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n")
    with pytest.raises(http1.ProtocolError, match="Content-Length"):
        conn.next_event()


def test_an_absolute_form_target_is_routed_by_its_path():
    for target, origin in [(b"http://relay.example/hooks/x?a=1", "/hooks/x?a=1"),
                           (b"HTTPS://relay.example:8443/hooks/x", "/hooks/x"),
                           (b"http://relay.example", "/"), (b"http://relay.example?q", "/?q")]:
        request, _, _ = parse(b"POST " + target + b" HTTP/1.1\r\nHost: other\r\nContent-Length: 0\r\n\r\n")
        assert (request.target, request.origin) == (target.decode(), origin)
    request, _, _ = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request.origin == "*"


def test_http_1_0_and_connection_close_get_one_answer_then_close():
    for head in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"):
        _, _, conn = parse(head)
        answer = conn.respond(200, [("content-length", "0")])
        assert b"\r\nconnection: close\r\n" in answer and conn.our_state == http1.MUST_CLOSE


def test_a_keep_alive_answer_lets_the_next_request_in():
    _, _, conn = parse(WEBHOOK)
    answer = conn.respond(202, [("content-type", "application/json"), ("content-length", "2")], b"{}")
    assert answer == b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    conn.start_next_cycle()
    assert conn.their_state == http1.IDLE and conn.next_event() is http1.NEED_DATA


def test_our_answers_are_read_by_h11_as_we_meant_them():
    _, _, conn = parse(WEBHOOK)
    answer = conn.respond(429, [("content-length", "2"), ("retry-after", "3")], b"{}")
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "h"), ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(answer)
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 429
    assert dict(response.headers)[b"retry-after"] == b"3"
    assert client.next_event() == h11.Data(data=b"{}")


def test_a_header_value_with_a_line_break_is_never_sent():
    _, _, conn = parse(WEBHOOK)
    with pytest.raises(ValueError):
        conn.respond(200, [("x-injected", "a\r\nset-cookie: b")])


def test_a_client_that_expects_100_continue_is_asked_for_its_body():
    conn = http1.Connection()
    conn.receive_data(b"POST /hooks/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(conn.next_event(), http1.Request)
    assert conn.next_event() is http1.NEED_DATA and conn.client_waits
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n" and not conn.client_waits


def test_answering_before_an_expected_body_ends_the_connection():
    conn = http1.Connection()
    conn.receive_data(b"POST /hooks/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 9999\r\n\r\n")
    conn.next_event()
    answer = conn.respond(413, [("content-length", "0")])
    assert b"connection: close" in answer and conn.our_state == http1.MUST_CLOSE


def test_a_101_hands_over_what_followed_the_request():
    conn = http1.Connection()
    conn.receive_data(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x85abc")
    request = conn.next_event()
    assert isinstance(request, http1.Request) and conn.upgrade
    assert conn.next_event() is http1.END_OF_MESSAGE
    assert conn.switch(101, [("upgrade", "websocket")]).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.trailing_data == b"\x81\x85abc" and conn.our_state == http1.SWITCHED


def test_an_upgrade_that_is_answered_without_switching_ends_the_connection():
    # What follows a request that asks to upgrade is the new protocol to
    # llhttp; it is never read as the next request.
    conn = http1.Connection()
    conn.receive_data(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n"
                      b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(conn.next_event(), http1.Request) and conn.upgrade
    assert conn.next_event() is http1.END_OF_MESSAGE
    assert b"connection: close" in conn.respond(200, [("content-length", "0")]) and conn.our_state == http1.MUST_CLOSE


def test_connection_options_are_tokens_not_substrings():
    _, _, conn = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, notclose\r\nUpgrade: x\r\n\r\n")
    assert conn.keep_alive and not conn.upgrade
    _, _, conn = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive , CLOSE\r\n\r\n")
    assert not conn.keep_alive


def test_a_peer_that_closes_between_requests_is_a_clean_close():
    conn = http1.Connection()
    conn.receive_data(b"")
    assert conn.next_event() is http1.CONNECTION_CLOSED


REFUSED = [
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400, "folding"),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400, "control"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400, "carriage"),
    (b"GET / HTTP/1.1\r\nHost: h\nContent-Length: 1\r\r\n\r\nx", 400, "carriage"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
    (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request line"),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "not supported"),
    (b"G\xc3T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request line"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\na", 400, "Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "together"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "only chunked"),
    # RFC 9112 6.3: a final coding other than chunked leaves the length unknown: 400.
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400, "does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400, "more than once"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked\r\n\r\n", 400, "malformed Transfer"),
    (SMUGGLED, 400, "bare LF"),
    (b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400, "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400, "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\rGET /x HTTP/1.1\r\n\r\n", 400, "carriage"),
    (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400, "folding"),
    (b"FOO / HTTP/1.1\r\nHost: h\r\n\r\n", 501, "not implemented"),
    (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 501, "not implemented"),
    (b"CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\n\r\n", 501, "not implemented"),
    (b"GET hooks/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "neither a path"),
    (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, "neither a path"),
    (b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "neither a path"),
    (b"GET http://user:pw@h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "userinfo"),
    (b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "no valid host"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "several"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 400, "longer"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n", 400, "chunk size"),
    # RFC 9112 7.1: chunk-size [ ;name[=token|quoted-string] ]... CRLF, nothing looser.
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nab\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"b\r\nab\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\na \r\n0123456789\r\n0\r\n\r\n", 400,
     "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2 ;a=b\r\nab\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\x00\r\nab\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX: a\rb\r\n\r\n", 400,
     "carriage return inside a trailer"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX: a\n\r\n", 400, "bare LF"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\n", 400, "bare LF"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n" + b"X: a\r\n" * 2000, 400,
     "trailers over"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab", 400, "before the body ended"),
    (b"POST / HTTP/1.1\r\nHost: h\r\n", 400, "middle of a request head"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, "over"),
]


@pytest.mark.parametrize(("data", "status", "words"), REFUSED)
def test_ambiguous_or_broken_requests_are_refused_with_a_status(data, status, words):
    conn = http1.Connection()
    with pytest.raises(http1.ProtocolError) as caught:
        read_all(conn, data)
    assert caught.value.status == status and words in caught.value.detail
    assert conn.their_state == http1.ERROR
    answer = conn.refuse(caught.value.status, [("content-length", "0")], b"")
    assert answer.startswith(b"HTTP/1.1 %d " % status) and b"connection: close" in answer


# -- differential: h11 as the oracle -------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~", min_size=1,
                max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                max_size=30).map(lambda s: s.strip(" \t"))
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}


@st.composite
def well_formed(draw) -> tuple[bytes, str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(sorted(http1.METHODS)))
    target = "/" + draw(st.text("abcxyz019-._~%/?=&+", max_size=30))
    extra = draw(st.lists(st.tuples(TOKEN.filter(lambda t: t.lower() not in RESERVED), VALUE), max_size=6))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    headers = [("Host", "relay.example"), *extra]
    headers.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body))))
    client = h11.Connection(h11.CLIENT)
    data = client.send(h11.Request(method=method, target=target,
                                   headers=[(n, v.encode("latin-1")) for n, v in headers]))
    if body:
        for piece in draw(st.lists(st.integers(1, 100), max_size=4)) + [len(body)]:
            part, body_left = body[:piece], body[piece:]
            if part:
                data += client.send(h11.Data(data=part))
            body = body_left
            if not body:
                break
    data += client.send(h11.EndOfMessage())
    expected: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        expected[key] = f"{expected[key]}, {value}" if key in expected else value
    return data, method, target, expected, draw(st.just(b""))


@settings(max_examples=400, deadline=None)
@given(well_formed(), st.data())
def test_every_request_h11_writes_reads_the_same_however_it_is_split(case, data):
    raw, method, target, headers, _ = case
    splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=5))
    oracle = h11_parse(raw)
    assert oracle is not None
    request, body, conn = parse(raw, splits)
    assert (request.method, request.target) == (method, target)
    assert request.headers == headers == h11_headers(oracle[0])
    assert body == oracle[1]
    assert conn.their_state == http1.DONE


def mutate(raw: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for at, insert in edits:
        at %= len(raw) + 1
        raw = raw[:at] + insert + raw[at + 1:]
    return raw


NASTY = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"0", b"a", b"\r\n ",
                         b"\r\nContent-Length: 3", b"\r\nTransfer-Encoding: chunked", b"\r\nHost: x",
                         b"HTTP/1.0", b";", b"\xff", b"f", b"-1", b""])


@settings(max_examples=1500, deadline=None)
@given(well_formed(), st.lists(st.tuples(st.integers(0, 10_000), NASTY), min_size=1, max_size=4))
def test_a_mangled_request_is_refused_or_read_exactly_as_h11_reads_it(case, edits):
    raw = mutate(case[0], edits)
    conn = http1.Connection()
    try:
        events = read_all(conn, raw)
    except http1.ProtocolError:
        return  # stricter than h11 is allowed; reading it differently is not
    if events[0] is http1.CONNECTION_CLOSED:
        return
    request = events[0]
    body = b"".join(e.data for e in events if isinstance(e, http1.Data))
    consumed = len(raw) - len(conn.trailing_data)
    # Blank lines before a request line are ignored, as RFC 9112 (2.2) asks
    # of servers; h11 refuses them. They carry nothing, so the oracle reads
    # the request without them.
    oracle = h11_parse(raw[:consumed].lstrip(b"\r\n"))
    assert oracle is not None, (raw, request.headers)
    assert request.method == oracle[0].method.decode("ascii")
    assert request.target == oracle[0].target.decode("ascii")
    assert request.headers == h11_headers(oracle[0])
    assert body == oracle[1]
