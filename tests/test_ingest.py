"""``POST /hooks/{route}``: the contract's status table, as a sender sees it."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import trio
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay


async def post(http, relay, route, body=b'{"a":1}', content_type="application/json", **headers):
    hs = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if content_type is None:
        del hs["Content-Type"]
    return await http.post(f"{relay.base}/hooks/{route}", content=body, headers=hs)


async def raw_exchange(port: int, data: bytes, read_until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(15):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return out
                out += chunk
                if not read_until_close and b"\r\n\r\n" in out:
                    return out


async def test_accepted_webhooks_get_202_with_id_and_channel(relay, http):
    r = await post(http, relay, "demo")
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == {"id": body["id"], "channel": "demo", "duplicate": False}


@pytest.mark.parametrize(
    ("route", "kwargs", "status", "code"),
    [
        ("nope", {}, 404, "no_route"),
        ("demo", {"body": b'{"a":'}, 400, "bad_json"),
        ("demo", {"body": b'{"a":"\xff"}'}, 400, "bad_json"),
        ("demo", {"content_type": "text/plain"}, 415, "media_type"),
        ("demo", {"content_type": None}, 415, "media_type"),
        ("demo", {"content_type": "application/x-www-form-urlencoded", "body": b"a=1"}, 415, "media_type"),
        ("gh", {}, 422, "invalid"),
        ("pay", {"body": b'{"kind":"x"}'}, 422, "invalid"),
        ("pay", {"body": b'{"type":{"nested":1}}'}, 422, "invalid"),
        ("pay", {"body": b'{"type":"has space"}'}, 422, "invalid"),
        ("signed", {}, 401, "bad_signature"),
        ("signed", {"X_Signature": "sha256=" + "0" * 64}, 401, "bad_signature"),
    ],
)
async def test_each_refusal_has_its_status_and_error_code(relay, http, route, kwargs, status, code):
    r = await post(http, relay, route, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert r.json()["detail"]
    assert relay.app.store.head == ""  # nothing refused is ever stored


async def test_refusals_name_what_is_wrong(relay, http):
    r = await post(http, relay, "gh")
    assert "X-GitHub-Event".lower() in r.json()["detail"].lower()
    r = await post(http, relay, "pay", body=b'{"kind":"x"}')
    assert "$.type" in r.json()["detail"]


async def test_media_types_with_parameters_and_plus_json_are_json(relay, http):
    for ct in ("application/json; charset=utf-8", "application/vnd.github+json", "APPLICATION/JSON"):
        assert (await post(http, relay, "demo", content_type=ct)).status_code == 202, ct


async def test_a_correct_hmac_signature_is_accepted(relay, http):
    body = b'{"order":42}'
    sig = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    r = await post(http, relay, "signed", body=body, X_Signature=sig)
    assert r.status_code == 202, r.text
    assert r.json()["channel"] == "signed"


async def test_wrong_method_is_405_with_allow_post(relay, http):
    r = await http.get(f"{relay.base}/hooks/demo")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"] == "method"


async def test_channels_come_from_headers_and_payload_fields(relay, http):
    r = await post(http, relay, "gh", X_GitHub_Event="push")
    assert r.json()["channel"] == "github.push"
    r = await post(http, relay, "pay", body=b'{"type":"charge.succeeded"}')
    assert r.json()["channel"] == "pay.charge.succeeded"


async def test_an_oversized_body_is_refused_from_content_length_without_sending_it(relay):
    limit = relay.app.config.server.max_body_bytes
    head = (f"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n").encode()
    # Only the head is sent: the 413 must come without the body ever arriving.
    out = await raw_exchange(relay.port, head, read_until_close=False)
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b'"too_large"' in out or b"too_large" in await raw_exchange(relay.port, head)


async def test_an_oversized_chunked_body_is_refused(relay):
    limit = relay.app.config.server.max_body_bytes
    chunk = b"x" * 65536
    data = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (limit // len(chunk) + 2) + b"0\r\n\r\n"
    out = await raw_exchange(relay.port, data)
    assert out.startswith(b"HTTP/1.1 413 ")


async def test_keep_alive_serves_many_webhooks_on_one_connection(relay):
    one = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    async with stream:
        await stream.send_all(one * 3)  # pipelined
        out = b""
        with trio.fail_after(10):
            while out.count(b"HTTP/1.1 202") < 3:
                out += await stream.receive_some(65536)
    assert relay.app.store.head == "3"


async def test_malformed_http_gets_400_and_a_closed_connection(relay, http):
    out = await raw_exchange(relay.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    # ...and nothing else is affected.
    assert (await post(http, relay, "demo")).status_code == 202


async def test_huge_headers_are_refused_and_closed(relay):
    out = await raw_exchange(relay.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ") or out.startswith(b"HTTP/1.1 400 ")


async def test_a_body_shorter_than_content_length_does_not_get_stored(relay, http):
    data = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\":1}"
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    await stream.send_all(data)
    await stream.aclose()  # the client goes away mid-body
    assert (await post(http, relay, "demo")).status_code == 202
    assert relay.app.store.head == "1"


async def test_slowloris_connections_are_closed_after_the_header_timeout(autojump_clock):
    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        await stream.send_all(b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\n")  # ...and never finishes
        with trio.fail_after(60):
            rest = await stream.receive_some(1024)
        assert rest == b""  # the server hung up
        await stream.aclose()


async def test_health_and_readiness(relay, http):
    assert (await http.get(f"{relay.base}/healthz")).json() == {"status": "ok"}
    assert (await http.get(f"{relay.base}/readyz")).status_code == 200
    assert (await http.get(f"{relay.base}/nothing-here")).status_code == 404


async def test_a_store_that_cannot_commit_answers_503_with_retry_after(relay, http):
    await relay.app.store.close()
    r = await post(http, relay, "demo")
    assert r.status_code == 503
    assert r.json()["error"] == "unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert (await http.get(f"{relay.base}/readyz")).status_code == 503


async def test_a_form_body_is_carried_as_a_json_string_where_the_route_accepts_forms(http):
    extra = '[routes.slash]\nchannel = "slash"\naccept = ["json", "form"]\n'
    async with running_relay(config_text(extra)) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=slash") as ws:
            await ws.get_message()
            body = b"command=%2Fdeploy&text=now+please"
            r = await post(http, relay, "slash", body=body, content_type="application/x-www-form-urlencoded")
            assert r.status_code == 202, r.text
            event = json.loads(await ws.get_message())
            assert event["data"] == body.decode()


async def test_a_number_beyond_a_doubles_range_is_json_and_reaches_subscribers_byte_exact(relay, http):
    # RFC 8259 leaves the range of numbers to implementations: 1e400 is JSON.
    body = b'{"type": "big", "amount": 1e400, "neg": [-2.5E+999], "tiny": 1e-400, "text": "1e400"}\n'
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=pay.*") as ws:
        await ws.get_message()
        async with http.stream("GET", f"{relay.base}/sse?channel=pay.*") as sse:
            lines = sse.aiter_lines()
            while not (await lines.__anext__()).startswith(": welcome"):
                pass
            r = await post(http, relay, "pay", body=body)
            assert r.status_code == 202, r.text
            assert r.json()["channel"] == "pay.big"  # the channel template read the body too
            frame = await ws.get_message()
            data: list[str] = []  # an event's data lines, joined with "\n" as EventSource does
            while (line := await lines.__anext__()) or not data:
                if line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
    for text in (frame, "\n".join(data)):
        assert text.endswith('"data":' + body.decode() + "}")
        assert json.loads(text)["data"]["amount"] == float("inf")  # as Python's json reads it


async def test_head_requests_get_headers_without_a_body_and_keep_the_connection(relay, http):
    r = await http.head(f"{relay.base}/healthz")
    assert r.status_code == 200 and r.content == b""
    assert (await http.get(f"{relay.base}/healthz")).json() == {"status": "ok"}


async def test_a_body_longer_than_content_length_is_cut_at_the_length_and_the_rest_refused(relay):
    # The surplus is read as the next request on the connection, which is not HTTP: 400, closed.
    data = (b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
            b'{"a":1}' + b'{"surplus": true}\r\n\r\n')
    out = await raw_exchange(relay.port, data)
    assert out.startswith(b"HTTP/1.1 202 ")
    assert b"HTTP/1.1 400 " in out
    stored = await relay.app.store.read(0, ["*"], 10)
    assert len(stored) == 1 and b'"data":{"a":1}' in stored[0].envelope


async def test_a_client_that_expects_100_continue_is_asked_for_its_body_and_answered(relay):
    # curl sends "Expect: 100-continue" for bodies over 1 KiB and waits for the 100.
    body = json.dumps({"pad": "x" * 2000}).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    async with stream:
        await stream.send_all(b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        with trio.fail_after(10):
            first = await stream.receive_some(65536)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(body)
        out = b""
        with trio.fail_after(10):
            while b"}" not in out:
                out += await stream.receive_some(65536)
    assert out.startswith(b"HTTP/1.1 202 ")
    assert relay.app.store.head == "1"


@pytest.mark.parametrize("framing", [
    b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
    b"Content-Length: 7\r\nContent-Length: 8\r\n\r\n{\"a\":1} ",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
    b"X-Folded: a\r\n b\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    b"Content-Length : 7\r\n\r\n{\"a\":1}",
])
async def test_a_request_whose_body_could_be_framed_two_ways_is_refused_and_nothing_stored(relay, http, framing):
    # What a proxy in front and the relay might read differently (request
    # smuggling) is refused outright, never guessed at.
    out = await raw_exchange(relay.port, b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + framing)
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out
    assert relay.app.store.head == ""
    assert (await post(http, relay, "demo")).status_code == 202


WEBHOOK = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"


async def _answer(stream: trio.SocketStream) -> bytes:
    out = b""
    while b"\r\n\r\n" not in out or not out.endswith(b"}"):
        data = await stream.receive_some(65536)
        if not data:
            break
        out += data
    return out


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(autojump_clock):
    from relay.server.connection import IDLE_TIMEOUT

    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(WEBHOOK)
            assert (await _answer(stream)).startswith(b"HTTP/1.1 202 ")
            started = trio.current_time()
            with trio.fail_after(IDLE_TIMEOUT + 10):
                assert await stream.receive_some(1024) == b""  # the relay hung up
            assert trio.current_time() - started >= IDLE_TIMEOUT - 1.0


async def test_a_keep_alive_connection_in_use_outlives_the_idle_timeout(autojump_clock):
    from relay.server.connection import IDLE_TIMEOUT

    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            started = trio.current_time()
            for _ in range(5):  # one webhook every 0.6 idle timeouts: 3 timeouts in all
                await stream.send_all(WEBHOOK)
                assert (await _answer(stream)).startswith(b"HTTP/1.1 202 ")
                await trio.sleep(IDLE_TIMEOUT * 0.6)
            assert trio.current_time() - started > 2.5 * IDLE_TIMEOUT
        assert relay.app.store.head == "5"


# -- framing the parser refuses, as a client on a socket sees it ---------------

HEAD = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def test_a_request_hidden_behind_a_bare_lf_is_refused_not_answered(relay):
    # h11 reads this as two requests, the second a GET /admin smuggled in the
    # first one's bytes; a proxy splitting only on CRLF reads one.
    smuggled = (b"GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\n"
                b"GET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n")
    out = await raw_exchange(relay.port, smuggled)
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out and b"bare LF" in out
    assert out.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed


@pytest.mark.parametrize("chunks", [
    b"7;\r\n{\"a\":1}\r\n0\r\n\r\n",  # a ";" with no extension after it
    b"7;a=\"b\r\n{\"a\":1}\r\n0\r\n\r\n",  # an unterminated quoted extension value
    b"7 \r\n{\"a\":1}\r\n0\r\n\r\n",  # whitespace after the size
    b"7;a=\x00\r\n{\"a\":1}\r\n0\r\n\r\n",  # a NUL in an extension
    b"7\r\n{\"a\":1}\r\n0\r\nX-Trailer: a\rb\r\n\r\n",  # a bare CR in a trailer
])
async def test_loose_chunk_syntax_is_refused_and_nothing_stored(relay, http, chunks):
    out = await raw_exchange(relay.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out
    assert relay.app.store.head == ""
    assert (await post(http, relay, "demo")).status_code == 202


async def test_a_transfer_coding_that_does_not_end_in_chunked_is_a_400(relay):
    out = await raw_exchange(relay.port, HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n"
                             b"7\r\n{\"a\":1}\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out
    assert relay.app.store.head == ""


async def test_an_absolute_form_target_is_routed_by_its_path(relay):
    out = await raw_exchange(relay.port, b"POST http://relay.example/hooks/demo HTTP/1.1\r\nHost: relay.example\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
                             b"{\"a\":1}")
    assert out.startswith(b"HTTP/1.1 202 ") and b'"channel":"demo"' in out
    assert relay.app.store.head == "1"


async def _until_closed(stream: trio.SocketStream, seconds: float) -> bytes:
    out = b""
    with trio.fail_after(seconds):
        while data := await stream.receive_some(65536):
            out += data
    return out


async def test_a_413_says_connection_close_and_closes_without_waiting_for_the_body():
    async with running_relay(config_text().replace("shutdown_grace", "max_body_bytes = 100\nshutdown_grace")) as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(HEAD + b"Content-Length: 5000\r\n\r\n" + b"x" * 50)
            out = await _until_closed(stream, 5)  # the body's rest never comes; the relay hangs up anyway
        assert out.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n" in out


async def test_a_408_says_connection_close_and_closes(autojump_clock):
    from relay.server.router import BODY_TIMEOUT

    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(HEAD + b"Content-Length: 50\r\n\r\n{\"a\":")
            out = await _until_closed(stream, BODY_TIMEOUT + 5)
        assert out.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close\r\n" in out
        assert relay.app.store.head == ""


async def test_a_webhook_whose_body_is_still_arriving_when_the_grace_ends_is_answered_503(autojump_clock):
    grace = 4.0
    text = config_text().replace("shutdown_grace = 5.0", f"shutdown_grace = {grace}")
    async with trio.open_nursery() as nursery:
        async with running_relay(text) as relay:
            app = relay.app
            stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
            await stream.send_all(HEAD + b"Content-Length: 100\r\n\r\n" + b'{"half": "' + b"x" * 30)
            await trio.sleep(1)  # (autojump: until the relay waits for the rest of the body)
            answer: list[bytes] = []

            async def read_answer() -> None:
                async with stream:
                    answer.append(await _until_closed(stream, grace + 5))

            nursery.start_soon(read_answer)
            stopping = trio.current_time()
        stopped = trio.current_time()  # serve has returned
    assert stopped - stopping <= grace
    out = answer[0]
    assert out.startswith(b"HTTP/1.1 503 ")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nretry-after: " in head and b"\r\nconnection: close" in head
    assert json.loads(body)["error"] == "unavailable"
    assert app.webhooks[("demo", 503)] == 1
