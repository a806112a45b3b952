"""Subscribers that publish (contract section 10), over real WebSockets to a
real relay: the answers, what other subscribers and outbound endpoints get,
grants, limits, rates, idempotency keys and metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import standardwebhooks
import trio
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay
from receiver import Receiver
from relay.core import whsec
from relay.core.grants import mint

JWT_SECRET = "j" * 40
SECRET = whsec.make(bytes(range(32)))

AUTH = """
[auth]
tokens = [
  { token = "chatter", channels = ["chat.*"], publish = ["chat.*"] },
  { token = "other-chatter", channels = ["chat.*"], publish = ["chat.*"] },
  { token = "reader", channels = ["chat.*"] },
  { token = "room1", channels = ["*"], publish = ["chat.room1"] },
]
jwt_secret_env = "JWT_SECRET"

[publish."chat.*"]
max_bytes = 256

[publish."chat.typed"]
schema = "schemas_for_publish:Typed"

[publish."chat.slow"]
rate = 2.0
burst = 2
"""


@pytest.fixture
async def chat():
    async with running_relay(config_text(AUTH), env={"JWT_SECRET": JWT_SECRET}) as relay:
        yield relay


async def receive(ws) -> dict:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def answer(ws, message: dict) -> dict:
    await ws.send_message(json.dumps(message))
    return await receive(ws)


def url(relay, channels: str = "chat.*", token: str | None = "chatter") -> str:
    return f"{relay.ws_base}/ws?channel={channels}" + (f"&token={token}" if token else "")


async def test_a_publish_is_stored_answered_and_reaches_the_other_subscribers_byte_for_byte(chat):
    async with open_websocket_url(url(chat, token="reader")) as reader, \
            open_websocket_url(url(chat), subprotocols=["relay.v1"]) as writer:
        assert (await receive(reader))["type"] == "welcome"
        assert (await receive(writer))["type"] == "welcome"
        assert writer.subprotocol == "relay.v1"
        text = '{"type": "publish", "channel": "chat.room1", "key": "m-1", "data":  {"text" : "hi",\n "n": 1.50} }'
        await writer.send_message(text)
        # The publisher subscribes to chat.* too: its answer and its event both come.
        got = [await receive(writer), await receive(writer)]
        published = next(m for m in got if m["type"] == "published")
        assert published == {"type": "published", "id": published["id"], "channel": "chat.room1", "key": "m-1"}
        raw = await reader.get_message()
        event = json.loads(raw)
        assert event["type"] == "event" and event["id"] == published["id"]
        assert (event["channel"], event["route"], event["delivery"]) == ("chat.room1", "ws", "m-1")
        assert event["data"] == {"text": "hi", "n": 1.5}
        assert '"data":{"text" : "hi",\n "n": 1.50}}' in raw  # as the publisher wrote it


async def test_publishing_works_without_the_subprotocol_and_without_a_key(chat):
    async with open_websocket_url(url(chat, "chat.other")) as ws:
        await receive(ws)
        reply = await answer(ws, {"type": "publish", "channel": "chat.room1", "data": [1, 2]})
        assert reply["type"] == "published" and reply["key"] is None and reply["id"]


async def test_published_events_can_be_resumed_like_webhooks(chat, http):
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        first = (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1}))["id"]
        second = (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 2}))["id"]
    async with open_websocket_url(f"{chat.ws_base}/ws?channel=chat.a&since={first}&token=reader") as ws:
        await receive(ws)
        event = await receive(ws)
        assert (event["id"], event["data"]) == (second, 2)


@pytest.mark.parametrize(("token", "channel"), [
    ("reader", "chat.room1"),  # subscribes to chat.*, publishes nothing
    ("room1", "chat.room2"),  # publishes to chat.room1 only
    ("room1", "chatroom1"),
    ("chatter", "other"),
])
async def test_without_a_grant_for_the_channel_a_publish_is_forbidden_and_nothing_is_stored(chat, token, channel):
    async with open_websocket_url(url(chat, "*" if token == "room1" else "chat.*", token)) as ws:
        head = (await receive(ws))["id"]
        reply = await answer(ws, {"type": "publish", "channel": channel, "data": {}, "key": "k1"})
        assert (reply["type"], reply["error"], reply["key"]) == ("error", "forbidden", "k1")
        assert channel in reply["detail"]
        # The connection is still fine, and nothing was stored.
        assert (await answer(ws, {"type": "subscribe", "channel": "chat.x"}))["id"] == head


@pytest.mark.parametrize("channel", ["chat.*", "*", "chat.room 1", "", None, 7])
async def test_a_publish_names_one_channel_never_a_pattern(chat, channel):
    async with open_websocket_url(url(chat)) as ws:
        await receive(ws)
        reply = await answer(ws, {"type": "publish", "channel": channel, "data": 1, "key": "k"})
        assert (reply["error"], reply["key"]) == ("invalid", "k")


async def test_a_jwt_publish_claim_grants_publishing_and_a_refresh_changes_it(chat):
    now = time.time()
    first = mint(JWT_SECRET.encode(), ["chat.*"], 600, now, publish=["chat.a"], subject="ann")
    second = mint(JWT_SECRET.encode(), ["chat.*"], 600, now, publish=["chat.b"], subject="ann")
    async with open_websocket_url(url(chat, "chat.none", first)) as ws:
        await receive(ws)
        reply = await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1})
        assert reply["type"] == "published"
        assert (await answer(ws, {"type": "publish", "channel": "chat.b", "data": 1}))["error"] == "forbidden"
        assert (await answer(ws, {"type": "refresh", "token": second}))["type"] == "refreshed"
        assert (await answer(ws, {"type": "publish", "channel": "chat.b", "data": 1}))["type"] == "published"
        assert (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1}))["error"] == "forbidden"
    no_claim = mint(JWT_SECRET.encode(), ["chat.*"], 600, now)
    async with open_websocket_url(url(chat, "chat.none", no_claim)) as ws:
        await receive(ws)
        assert (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1}))["error"] == "forbidden"


async def test_the_jwt_subject_travels_with_the_event(chat):
    token = mint(JWT_SECRET.encode(), ["chat.*"], 600, time.time(), publish=["chat.*"], subject="ann")
    async with open_websocket_url(url(chat, "chat.room1", token)) as ws:
        await receive(ws)
        await ws.send_message(json.dumps({"type": "publish", "channel": "chat.room1", "data": "hello"}))
        got = [await receive(ws), await receive(ws)]
        event = next(m for m in got if m["type"] == "event")
        assert event["headers"]["Relay-Publisher"] == "ann"


async def test_size_and_schema_are_checked_before_anything_is_stored(chat):
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        reply = await answer(ws, {"type": "publish", "channel": "chat.big", "data": "x" * 300, "key": "big"})
        assert (reply["error"], reply["key"]) == ("invalid", "big") and "256" in reply["detail"]
        reply = await answer(ws, {"type": "publish", "channel": "chat.typed", "data": {"n": "one"}, "key": "t"})
        assert reply["error"] == "invalid" and "$.n" in reply["detail"]
        reply = await answer(ws, {"type": "publish", "channel": "chat.typed", "data": {"n": 1}})
        assert reply["type"] == "published"
        reply = await answer(ws, {"type": "publish", "channel": "chat.a"})
        assert reply["error"] == "invalid" and "data" in reply["detail"]


async def test_over_the_rate_a_publish_is_refused_and_the_connection_stays(chat, http):
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        for n in range(2):  # the burst
            assert (await answer(ws, {"type": "publish", "channel": "chat.slow", "data": n}))["type"] == "published"
        reply = await answer(ws, {"type": "publish", "channel": "chat.slow", "data": 3, "key": "third"})
        assert (reply["error"], reply["key"]) == ("rate_limited", "third")
        # Another section's channel is not limited, and the connection still works.
        assert (await answer(ws, {"type": "publish", "channel": "chat.fast", "data": 4}))["type"] == "published"
        await trio.sleep(0.6)  # the bucket refills at 2/s
        assert (await answer(ws, {"type": "publish", "channel": "chat.slow", "data": 5}))["type"] == "published"
    # The rate is per connection: a new one starts with its burst.
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        assert (await answer(ws, {"type": "publish", "channel": "chat.slow", "data": 6}))["type"] == "published"


async def test_a_client_that_keeps_publishing_past_the_rate_is_closed_with_1008(chat):
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        message = json.dumps({"type": "publish", "channel": "chat.slow", "data": 0})
        errors = 0
        with trio.fail_after(10):
            try:
                for _ in range(500):
                    await ws.send_message(message)
                while True:
                    reply = json.loads(await ws.get_message())
                    errors += reply.get("error") == "rate_limited"
            except Exception:
                pass
        assert ws.closed is not None and ws.closed.code == 1008
        assert 10 < errors < 500


async def test_a_repeated_key_answers_the_first_id_and_stores_nothing(chat, http):
    async with open_websocket_url(url(chat, "chat.keyed", "reader")) as reader:
        await receive(reader)
        async with open_websocket_url(url(chat, "chat.none")) as ws:
            await receive(ws)
            first = await answer(ws, {"type": "publish", "channel": "chat.keyed", "data": 1, "key": "order-7"})
            again = await answer(ws, {"type": "publish", "channel": "chat.keyed", "data": 2, "key": "order-7"})
            assert again["id"] == first["id"] and again["type"] == "published"
        # After a reconnect too: what a client that lost its answer does.
        async with open_websocket_url(url(chat, "chat.none")) as ws:
            await receive(ws)
            again = await answer(ws, {"type": "publish", "channel": "chat.keyed", "data": 3, "key": "order-7"})
            assert again["id"] == first["id"]
        # Another publisher's key is its own.
        async with open_websocket_url(url(chat, "chat.none", "other-chatter")) as ws:
            await receive(ws)
            other = await answer(ws, {"type": "publish", "channel": "chat.keyed", "data": 4, "key": "order-7"})
            assert other["id"] != first["id"]
        events = [await receive(reader), await receive(reader)]
        assert [e["data"] for e in events] == [1, 4]
        with trio.move_on_after(0.3):
            raise AssertionError(await reader.get_message())
    text = (await http.get(f"{chat.base}/metrics")).text
    assert 'relay_published_total{status="published"} 2.0' in text
    assert 'relay_published_total{status="duplicate"} 2.0' in text


async def test_with_auth_off_only_channels_a_publish_section_opens_take_publishes(http):
    extra = '\n[publish."chat.*"]\nmax_bytes = 1024\n'
    async with running_relay(config_text(extra)) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
            await receive(ws)
            assert (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1}))["type"] == "published"
            reply = await answer(ws, {"type": "publish", "channel": "demo", "data": 1})
            assert reply["error"] == "forbidden" and "[publish]" in reply["detail"]
    async with running_relay(config_text()) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
            await receive(ws)
            assert (await answer(ws, {"type": "publish", "channel": "chat.a", "data": 1}))["error"] == "forbidden"


async def test_a_published_message_reaches_an_outbound_endpoint_as_a_signed_webhook():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        text = config_text(AUTH + f"""
[outbound]
allow_private = ["127.0.0.0/8"]

[endpoints.backend]
url = "{receiver.url}"
channels = ["chat.*"]
secret = "{SECRET}"
""")
        async with running_relay(text, env={"JWT_SECRET": JWT_SECRET}) as relay:
            async with open_websocket_url(url(relay, "chat.none")) as ws:
                await receive(ws)
                data = '{"ack" : "alert-9"}'
                await ws.send_message('{"type":"publish","channel":"chat.ops","key":"ack-9","data":' + data + "}")
                published = await receive(ws)
                (got,) = await receiver.until(1)
            assert got.body == data.encode()
            assert got.headers["webhook-id"] == published["id"]
            assert got.headers["relay-channel"] == "chat.ops"
            assert got.headers["content-type"] == "application/json"
            standardwebhooks.Webhook(SECRET).verify(got.body, {k: v for k, v in got.headers.items()})
        nursery.cancel_scope.cancel()


async def test_publishes_answered_in_order_when_a_refusal_comes_between(chat):
    async with open_websocket_url(url(chat, "chat.none")) as ws:
        await receive(ws)
        messages = []
        for n in range(30):
            channel = "nope" if n % 7 == 3 else "chat.order"
            messages.append({"type": "publish", "channel": channel, "data": n, "key": f"k{n}"})
        for m in messages:
            await ws.send_message(json.dumps(m))
        replies = [await receive(ws) for _ in messages]
        assert [r["key"] for r in replies] == [m["key"] for m in messages]
        assert [r["type"] for r in replies] == ["error" if m["channel"] == "nope" else "published" for m in messages]
        ids = [int(r["id"]) for r in replies if r["type"] == "published"]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_relay_publish_prints_the_id_and_a_repeat_with_its_key_prints_the_same(chat, tmp_path):
    from test_tools import run_cli

    message = tmp_path / "m.json"
    message.write_bytes(b'{"text": "from the shell",  "n": 2}\n')
    async with open_websocket_url(url(chat, "chat.cli", "reader")) as reader:
        await receive(reader)
        code, out, err = await run_cli("publish", chat.base, "chat.cli", str(message), "--key", "cli-1",
                                       env={"RELAY_TOKEN": "chatter"})
        assert code == 0, err
        raw = await reader.get_message()
        event = json.loads(raw)
        assert event["id"] == out.strip() and event["delivery"] == "cli-1"
        assert '"data":{"text": "from the shell",  "n": 2}' in raw
        code, again, err = await run_cli("publish", chat.base, "chat.cli", str(message), "--key", "cli-1",
                                         "--token", "chatter")
        assert (code, again) == (0, out)
    code, out, err = await run_cli("publish", chat.base, "chat.cli", str(message), "--token", "reader")
    assert code == 1 and "forbidden" in err and out == ""
    message.write_bytes(b"{not json")
    code, out, err = await run_cli("publish", chat.base, "chat.cli", str(message), "--token", "chatter")
    assert code == 2 and "not JSON" in err
    message.write_bytes(b"1")
    code, out, err = await run_cli("publish", chat.base, "chat.cli", str(message), "--token", "nope")
    assert code == 1 and "401" in err
