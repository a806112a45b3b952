"""The daemon as a user runs it: a real ``relay serve`` process, real HTTP,
real WebSocket clients, real signals."""

from __future__ import annotations

import json
import signal

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from conftest import config_text

SQLITE = 'engine = "sqlite"\npath = "var/relay.db"'


async def test_a_posted_webhook_reaches_a_websocket_subscriber_of_its_channel(daemon):
    relay = daemon(config_text(store=SQLITE))
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=github.*") as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome == {"type": "welcome", "id": "", "channels": ["github.*"]}
        body = b'{"action":"opened","number":7}'
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{relay.base}/hooks/gh", content=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-1"})
        assert r.status_code == 202
        ack = r.json()
        assert ack["channel"] == "github.pull_request" and ack["duplicate"] is False
        frame = await ws.get_message()
        event = json.loads(frame)
        assert event["type"] == "event"
        assert event["id"] == ack["id"]
        assert event["channel"] == "github.pull_request"
        assert event["route"] == "gh"
        assert event["headers"] == {"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                                    "X-GitHub-Delivery": "d-1"}
        # The body is carried verbatim, byte for byte, so signatures still check.
        assert body.decode() in frame


async def test_every_acknowledged_webhook_survives_kill_9(daemon, http):
    relay = daemon(config_text(store=SQLITE))
    acked: list[str] = []

    async def post(n: int) -> None:
        r = await http.post(f"{relay.base}/hooks/demo", json={"n": n})
        assert r.status_code == 202
        acked.append(r.json()["id"])

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(post, n)
    relay.kill()  # SIGKILL: no flush, no goodbye

    again = daemon(config_text(store=SQLITE))
    got: list[str] = []
    async with open_websocket_url(f"{again.ws_base}/ws?channel=demo&since=") as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome["id"] == max(acked, key=int)
        while len(got) < len(acked):
            got.append(json.loads(await ws.get_message())["id"])
    assert sorted(got, key=int) == got
    assert set(got) == set(acked)
    assert len(got) == len(set(got))


async def test_sigterm_closes_websockets_with_1001_and_exits_0(daemon, http):
    relay = daemon(config_text(store=SQLITE))
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        await ws.get_message()
        relay.signal(signal.SIGTERM)
        try:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason.code == 1001
    assert relay.wait() == 0


async def test_sigint_also_stops_cleanly(daemon):
    relay = daemon(config_text())
    relay.signal(signal.SIGINT)
    assert relay.wait() == 0


async def test_a_bad_config_stops_serve_with_exit_2_naming_the_key(daemon):
    relay = daemon(config_text("[delivery]\nqueue = 0\nslow = 1\n"), start=False)
    relay.start = None  # type: ignore[assignment]
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "relay", "serve", "-c", str(relay.config_path)],
                          capture_output=True, cwd=relay.cwd, timeout=30)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "delivery.queue" in err or "delivery.slow" in err
