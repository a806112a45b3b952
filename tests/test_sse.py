"""``GET /sse``: the same subscription as /ws over an event stream, as an
HTTP client sees it (the browser's EventSource is in test_browser.py)."""

from __future__ import annotations

import json

import httpx
import trio

from conftest import config_text, running_relay


def lines_of(response: httpx.Response):
    """One line iterator per response: a stream can be read only once."""
    it = getattr(response, "_relay_lines", None)
    if it is None:
        it = response._relay_lines = response.aiter_lines()  # type: ignore[attr-defined]
    return it


async def sse_events(response: httpx.Response, count: int, comments: list[str] | None = None):
    """Parse an event stream until ``count`` events have arrived."""
    events: list[dict] = []
    fields: dict[str, list[str]] = {}
    async for line in lines_of(response):
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        if line == "":
            if "data" in fields:
                events.append({"id": fields.get("id", [""])[-1], "event": fields.get("event", ["message"])[-1],
                               "data": json.loads("\n".join(fields["data"]))})
                if len(events) >= count:
                    return events
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    return events


async def post(http, relay, body=b'{"n":1}'):
    r = await http.post(f"{relay.base}/hooks/demo", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 202
    return r.json()["id"]


async def test_events_stream_as_id_and_data_lines(relay, http):
    async with http.stream("GET", f"{relay.base}/sse?channel=demo") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        body = b'{\n  "pretty": true\n}'
        event_id = await post(http, relay, body)
        (event,) = await sse_events(response, 1)
    assert event["id"] == event_id
    assert event["data"]["type"] == "event" and event["data"]["id"] == event_id
    assert event["data"]["data"] == {"pretty": True}


async def test_last_event_id_resumes_with_every_missed_event_once(relay, http):
    ids = [await post(http, relay, b'{"n":%d}' % n) for n in range(5)]
    async with http.stream("GET", f"{relay.base}/sse?channel=demo", headers={"Last-Event-ID": ids[1]}) as response:
        replayed = await sse_events(response, 3)
        assert [e["id"] for e in replayed] == ids[2:]
        live = await post(http, relay)
        (event,) = await sse_events(response, 1)
        assert event["id"] == live


async def test_a_heartbeat_comment_comes_every_ping_interval(autojump_clock):
    text = config_text().replace("shutdown_grace = 5.0", "shutdown_grace = 5.0\nping_interval = 15.0")
    async with running_relay(text) as relay, httpx.AsyncClient(timeout=100) as http:
        comments: list[str] = []
        async with http.stream("GET", f"{relay.base}/sse?channel=demo") as response:
            with trio.move_on_after(50):
                await sse_events(response, 1, comments)
        assert comments.count(": ping") == 3


async def test_sse_needs_a_channel_and_get(relay, http):
    assert (await http.get(f"{relay.base}/sse")).status_code == 400
    assert (await http.post(f"{relay.base}/sse?channel=demo")).status_code == 405


async def test_shutdown_ends_the_stream(http):
    async with running_relay() as relay:
        async with http.stream("GET", f"{relay.base}/sse?channel=demo") as response:
            await post(http, relay)
            await sse_events(response, 1)
            relay.app.begin_shutdown()
            with trio.fail_after(10):
                rest = [line async for line in lines_of(response)]
        assert all(not line or line.startswith(":") for line in rest)


async def test_a_slow_sse_consumer_is_ended_and_resumes_with_last_event_id(http):
    import rawws  # noqa: F401 - same idea as the websocket test, over raw HTTP

    async with running_relay(config_text("[delivery]\nqueue = 8\n")) as relay:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", relay.port))
        stream = trio.SocketStream(sock)
        await stream.send_all(b"GET /sse?channel=demo HTTP/1.1\r\nHost: x\r\n\r\n")
        ids = [await post(http, relay, b'{"pad":"%s"}' % (b"x" * 4000)) for _ in range(200)]
        data = b""
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                data += chunk
        got = [line.split(b": ", 1)[1].decode() for line in data.split(b"\n") if line.startswith(b"id: ")]
        assert got == ids[: len(got)] and len(got) < len(ids)
        await stream.aclose()
        async with http.stream("GET", f"{relay.base}/sse?channel=demo",
                               headers={"Last-Event-ID": got[-1]}) as response:
            rest = await sse_events(response, len(ids) - len(got))
        assert got + [e["id"] for e in rest] == ids
