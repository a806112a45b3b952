"""Who may subscribe: tokens, channel grants, browser origins - for /ws,
/sse and subscribe messages alike."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from conftest import config_text, running_relay
from relay.core.grants import Grant, covers

AUTH = """
[auth]
tokens = [{ token = "reader-a", channels = ["a.*"] }, { token_env = "RELAY_TEST_TOKEN", channels = ["*"] }]
origins = ["https://dash.example.com"]

[routes.a]
channel = "a.{json:kind}"

[routes.b]
channel = "b.{json:kind}"
"""


@pytest.fixture
async def guarded():
    async with running_relay(config_text(AUTH), env={"RELAY_TEST_TOKEN": "root-token"}) as relay:
        yield relay


async def refused(url: str, headers: list[tuple[str, str]] | None = None) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, extra_headers=headers or []):
            pass
    return info.value.status_code


async def test_no_token_or_a_wrong_token_is_401_before_the_upgrade(guarded, http):
    assert await refused(f"{guarded.ws_base}/ws?channel=a.x") == 401
    assert await refused(f"{guarded.ws_base}/ws?channel=a.x&token=nope") == 401
    r = await http.get(f"{guarded.base}/sse?channel=a.x")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


async def test_a_token_reads_its_channels_by_query_or_bearer(guarded, http):
    async with open_websocket_url(f"{guarded.ws_base}/ws?channel=a.*&token=reader-a") as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"
    async with open_websocket_url(f"{guarded.ws_base}/ws?channel=b.x",
                                  extra_headers=[("Authorization", "Bearer root-token")]) as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"


@pytest.mark.parametrize("channel", ["b.x", "b.*", "*", "a", "ab.x"])
async def test_a_token_for_a_star_cannot_read_anything_else_by_any_route(guarded, http, channel):
    assert await refused(f"{guarded.ws_base}/ws?channel={channel}&token=reader-a") == 403
    assert await refused(f"{guarded.ws_base}/ws?channel=a.ok,{channel}&token=reader-a") == 403
    r = await http.get(f"{guarded.base}/sse?channel={channel}", headers={"Authorization": "Bearer reader-a"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    async with open_websocket_url(f"{guarded.ws_base}/ws?channel=a.ok&token=reader-a") as ws:
        await ws.get_message()
        await ws.send_message(json.dumps({"type": "subscribe", "channel": channel, "since": ""}))
        reply = json.loads(await ws.get_message())
        assert reply["type"] == "error" and reply["error"] == "forbidden"
        # ...and it really receives nothing from there.
        r = await http.post(f"{guarded.base}/hooks/b", json={"kind": "x"})
        assert r.status_code == 202
        with trio.move_on_after(0.3):
            raise AssertionError(await ws.get_message())


async def test_browsers_from_other_origins_are_refused(guarded):
    assert await refused(f"{guarded.ws_base}/ws?channel=a.x&token=reader-a", [("Origin", "https://evil.example")]) == 403
    async with open_websocket_url(f"{guarded.ws_base}/ws?channel=a.x&token=reader-a",
                                  extra_headers=[("Origin", "https://dash.example.com")]) as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"


async def test_without_auth_config_subscribing_is_open(relay):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=*") as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"


@pytest.mark.parametrize(
    ("allowed", "requested", "ok"),
    [("*", "*", True), ("*", "x.y", True), ("a.*", "a.b", True), ("a.*", "a.b.*", True), ("a.*", "a.*", True),
     ("a.*", "a", False), ("a.*", "*", False), ("a.*", "ab.c", False), ("a.b", "a.b", True), ("a.b", "a.*", False)],
)
def test_grants_cover_only_what_lies_inside_them(allowed, requested, ok):
    assert covers(allowed, requested) is ok
    assert Grant((allowed,)).permits(requested) is ok
