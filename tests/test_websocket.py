"""``GET /ws``: welcome, channels and patterns, subscribe messages, resume
with no gap and no duplicate, limits, and liveness."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from conftest import config_text, running_relay, until


async def post_json(http, relay, route, obj, **headers):
    r = await http.post(f"{relay.base}/hooks/{route}", json=obj, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def next_json(ws, timeout=10):
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def nothing_more(ws, wait=0.2):
    with trio.move_on_after(wait):
        msg = await ws.get_message()
        raise AssertionError(f"unexpected frame {msg}")


async def test_the_welcome_names_the_head_id_and_the_channels(relay, http):
    first = await post_json(http, relay, "demo", {"n": 1})
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&channel=github.*,pay.charge") as ws:
        welcome = await next_json(ws)
    assert welcome == {"type": "welcome", "id": first, "channels": ["demo", "github.*", "pay.charge"]}


async def test_subscribers_get_exactly_the_channels_and_patterns_they_asked_for(relay, http):
    urls = {"exact": "channel=github.push", "prefix": "channel=github.*", "all": "channel=*", "other": "channel=demo"}
    got: dict[str, list[str]] = {}
    async with trio.open_nursery() as nursery:
        sockets = {}
        for name, query in urls.items():
            sockets[name] = await nursery.start(_listen, f"{relay.ws_base}/ws?{query}", got.setdefault(name, []))
        await post_json(http, relay, "gh", {"x": 1}, **{"X-GitHub-Event": "push"})
        await post_json(http, relay, "gh", {"x": 2}, **{"X-GitHub-Event": "issues"})
        await post_json(http, relay, "pay", {"type": "charge"})
        await until(lambda: len(got["all"]) >= 3 and len(got["prefix"]) >= 2 and len(got["exact"]) >= 1)
        nursery.cancel_scope.cancel()
    assert got["exact"] == ["github.push"]
    assert got["prefix"] == ["github.push", "github.issues"]
    assert got["all"] == ["github.push", "github.issues", "pay.charge"]
    assert got["other"] == []


async def _listen(url, sink, task_status=trio.TASK_STATUS_IGNORED):
    async with open_websocket_url(url) as ws:
        await ws.get_message()
        task_status.started(ws)
        while True:
            sink.append(json.loads(await ws.get_message())["channel"])


async def test_subscribe_and_unsubscribe_messages_change_what_arrives(relay, http):
    async with open_websocket_url(f"{relay.ws_base}/ws") as ws:
        assert (await next_json(ws))["channels"] == []
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "demo"}))
        assert (await next_json(ws))["type"] == "subscribed"
        event_id = await post_json(http, relay, "demo", {"n": 1})
        assert (await next_json(ws))["id"] == event_id
        await ws.send_message(json.dumps({"type": "unsubscribe", "channel": "demo"}))
        assert await next_json(ws) == {"type": "unsubscribed", "channel": "demo"}
        await post_json(http, relay, "demo", {"n": 2})
        await nothing_more(ws)


async def test_bad_client_messages_get_an_error_and_the_connection_lives_on(relay, http):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        await next_json(ws)
        for bad in ["not json", '{"type":"dance"}', '{"type":"subscribe"}', '{"type":"subscribe","channel":"a b"}',
                    '{"type":"subscribe","channel":"demo","since":"zz"}']:
            await ws.send_message(bad)
            reply = await next_json(ws)
            assert reply["type"] == "error" and reply["detail"], bad
        event_id = await post_json(http, relay, "demo", {"n": 1})
        assert (await next_json(ws))["id"] == event_id


async def test_resume_after_a_disconnect_gets_every_missed_event_once(relay, http):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        await next_json(ws)
        first = await post_json(http, relay, "demo", {"n": 0})
        assert (await next_json(ws))["id"] == first
    missed = [await post_json(http, relay, "demo", {"n": n}) for n in range(1, 6)]
    await post_json(http, relay, "pay", {"type": "other"})  # another channel: not replayed
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since={first}") as ws:
        await next_json(ws)
        got = [(await next_json(ws))["id"] for _ in missed]
        assert got == missed
        live = await post_json(http, relay, "demo", {"n": 6})
        assert (await next_json(ws))["id"] == live
        await nothing_more(ws)


async def test_resume_under_a_steady_stream_has_no_gap_and_no_duplicate(relay, http):
    """Publish continuously while clients come and go with since=: the union
    of what one client saw is exactly the published sequence."""
    published: list[str] = []
    done = trio.Event()

    async def publisher():
        for n in range(300):
            published.append(await post_json(http, relay, "demo", {"n": n}))
            if n % 10 == 0:
                await trio.sleep(0)
        done.set()

    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        since = ""
        for _ in range(200):
            async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since={since}") as ws:
                await next_json(ws)
                for _ in range(7):
                    if done.is_set() and seen and seen[-1] == published[-1]:
                        break
                    with trio.move_on_after(2):
                        seen.append((await next_json(ws))["id"])
            since = seen[-1] if seen else ""
            if done.is_set() and seen and seen[-1] == published[-1]:
                break
    assert seen == published


async def test_since_older_than_retention_is_announced_with_a_gap(http):
    async with running_relay(config_text(store='engine = "memory"\nretention = 3')) as relay:
        ids = [await post_json(http, relay, "demo", {"n": n}) for n in range(6)]
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since={ids[0]}") as ws:
            await next_json(ws)
            assert await next_json(ws) == {"type": "gap", "after": ids[0], "next": ids[3]}
            assert [(await next_json(ws))["id"] for _ in range(3)] == ids[3:]


async def test_resume_by_subscribe_message_with_since(relay, http):
    ids = [await post_json(http, relay, "demo", {"n": n}) for n in range(3)]
    async with open_websocket_url(f"{relay.ws_base}/ws") as ws:
        await next_json(ws)
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "demo", "since": ids[0]}))
        assert (await next_json(ws))["type"] == "subscribed"
        assert [(await next_json(ws))["id"] for _ in range(2)] == ids[1:]


async def test_a_client_frame_over_64_kib_closes_with_1009(relay):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        await next_json(ws)
        await ws.send_message("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as info:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
        assert info.value.reason.code == 1009


async def test_the_relay_v1_subprotocol_is_negotiated_and_others_refused(relay):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo", subprotocols=["relay.v1"]) as ws:
        assert ws.subprotocol == "relay.v1"
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo", subprotocols=["mqtt"]):
            pass
    assert info.value.status_code == 400


@pytest.mark.parametrize("query", ["channel=a%20b", "since=abc&channel=demo", "channel=" + "x" * 300])
async def test_a_bad_query_is_refused_before_the_upgrade(relay, query):
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"{relay.ws_base}/ws?{query}"):
            pass
    assert info.value.status_code == 400


async def test_a_plain_get_on_ws_is_told_to_upgrade(relay, http):
    r = await http.get(f"{relay.base}/ws")
    assert r.status_code == 426


async def test_a_client_that_answers_no_pings_is_closed(autojump_clock):
    """A raw client that never reads: after two unanswered pings it is closed."""
    import base64
    import os

    async with running_relay(config_text("", store='engine = "memory"').replace(
            "shutdown_grace = 5.0", "shutdown_grace = 5.0\nping_interval = 5.0")) as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all((f"GET /ws?channel=demo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        received = b""
        with trio.fail_after(120):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 101 ")
        assert received.count(b"\x89\x05relay") == 2  # two pings, never answered
        assert b"\x88" in received  # then a close frame
        assert relay.app.subscriber_count() == 0
        await stream.aclose()


async def test_resuming_a_pattern_that_overlaps_a_live_subscription_sends_nothing_twice(relay, http):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=pay.charge") as ws:
        await next_json(ws)
        before = await post_json(http, relay, "pay", {"type": "refund"})
        live = await post_json(http, relay, "pay", {"type": "charge"})
        assert (await next_json(ws))["id"] == live  # delivered live by pay.charge
        other = await post_json(http, relay, "pay", {"type": "refund"})
        await ws.send_message(json.dumps({"type": "subscribe", "channel": "pay.*", "since": ""}))
        assert (await next_json(ws))["type"] == "subscribed"
        # The replay brings what pay.charge did not deliver, and not `live` again.
        assert [(await next_json(ws))["id"] for _ in range(2)] == [before, other]
        after = await post_json(http, relay, "pay", {"type": "charge"})
        assert (await next_json(ws))["id"] == after
        await nothing_more(ws)
