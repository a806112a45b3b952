"""Publishing on the Redis engine: an idempotency key holds across relays,
and a publish while Redis is down is answered ``unavailable`` on a
connection that stays open, then stored once Redis is back."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from test_cluster import http, own_redis, prefix, redis_store, relays, shared_redis  # noqa: F401 (fixtures)

WRITER = """
[auth]
tokens = [{ token = "writer", channels = ["chat.*"], publish = ["chat.*"] }]
"""


async def answer(ws, message: dict, events: list | None = None) -> dict:
    """The answer to ``message``; events that come first go to ``events``."""
    await ws.send_message(json.dumps(message))
    with trio.fail_after(10):
        while True:
            reply = json.loads(await ws.get_message())
            if reply["type"] != "event":
                return reply
            if events is not None:
                events.append(reply["id"])


async def test_a_key_repeated_on_another_relay_answers_the_first_id(relays, shared_redis, prefix):  # noqa: F811
    a, b = relays(2, redis_store(shared_redis, prefix), WRITER)
    message = {"type": "publish", "channel": "chat.room", "data": {"n": 1}, "key": "cross-1"}
    async with open_websocket_url(f"{a.ws_base}/ws?token=writer") as on_a, \
            open_websocket_url(f"{b.ws_base}/ws?channel=chat.room&token=writer") as on_b:
        await on_a.get_message(), await on_b.get_message()
        seen: list[str] = []
        first = await answer(on_a, message)
        again = await answer(on_b, message, seen)
        assert first["type"] == again["type"] == "published" and again["id"] == first["id"]
        other = await answer(on_b, {**message, "key": "cross-2"}, seen)
        assert other["id"] != first["id"]
        # Relay b's subscriber got the event once: the repeat stored nothing.
        with trio.fail_after(10):
            while len(seen) < 2:
                seen.append(json.loads(await on_b.get_message())["id"])
        assert seen == [first["id"], other["id"]]
        with trio.move_on_after(0.3):
            raise AssertionError(await on_b.get_message())


async def test_a_publish_while_redis_is_down_is_unavailable_and_the_connection_stays(relays, own_redis):  # noqa: F811
    own_redis.start()
    (relay,) = relays(1, redis_store(own_redis.url, "pub:"), WRITER)
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=chat.room&token=writer") as ws:
        await ws.get_message()
        assert (await answer(ws, {"type": "publish", "channel": "chat.room", "data": 1}))["type"] == "published"
        own_redis.kill()
        reply = await answer(ws, {"type": "publish", "channel": "chat.room", "data": 2, "key": "during"})
        assert (reply["type"], reply["error"], reply["key"]) == ("error", "unavailable", "during")
        own_redis.start()
        with trio.fail_after(20):
            while True:  # the client retries with its key, as it should
                reply = await answer(ws, {"type": "publish", "channel": "chat.room", "data": 2, "key": "during"})
                if reply["type"] == "published":
                    break
                assert reply["error"] == "unavailable"
                await trio.sleep(0.2)
