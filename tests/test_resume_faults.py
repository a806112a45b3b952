"""Resume when something is wrong: the store is down, ``since`` is ahead of
the log, Redis came back without its data; and the WebSocket peers that
misbehave at the frame level (pings it never reads the answers to, pongs
instead of answers) or are still receiving when the relay stops."""

from __future__ import annotations

import json
import shutil
import signal

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wsproto.frame_protocol import Opcode

import rawws
from conftest import config_text, running_relay, until
from relay.core.errors import StoreUnavailable
from relay.core.outbox import CONTROL_LIMIT
from test_cluster import Listener, cluster, own_redis, post, ready, redis_store, relays  # noqa: F401


async def next_json(ws, timeout=10):
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


# -- since ahead of the log -------------------------------------------------------


async def test_since_ahead_of_the_log_gets_a_gap_then_the_whole_log(relay, http):
    """A memory relay restarted (ids begin again at 1), or an id from another
    cluster: the client hears that its place is unknown and gets everything."""
    ids = [(await http.post(f"{relay.base}/hooks/demo", json={"n": n})).json()["id"] for n in range(3)]
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since=500") as ws:
        assert (await next_json(ws))["type"] == "welcome"
        assert await next_json(ws) == {"type": "gap", "after": "500", "next": ids[0]}
        assert [(await next_json(ws))["id"] for _ in ids] == ids
        later = (await http.post(f"{relay.base}/hooks/demo", json={"n": 3})).json()["id"]
        assert (await next_json(ws))["id"] == later


async def test_an_sse_stream_ahead_of_the_log_gets_a_gap_event_then_the_log(relay, http):
    ids = [(await http.post(f"{relay.base}/hooks/demo", json={"n": n})).json()["id"] for n in range(2)]
    lines: list[str] = []
    with trio.fail_after(10):
        async with http.stream("GET", f"{relay.base}/sse?channel=demo", headers={"Last-Event-ID": "99"}) as r:
            async for line in r.aiter_lines():
                lines.append(line)
                if line == f"id: {ids[-1]}":
                    break
    assert "event: gap" in lines
    gap = json.loads(lines[lines.index("event: gap") + 1][len("data: "):])
    assert gap == {"type": "gap", "after": "99", "next": ids[0]}
    assert [line[4:] for line in lines if line.startswith("id: ")] == ids


# -- the store fails a resume -------------------------------------------------------


async def test_a_resume_the_store_fails_mid_replay_gets_an_error_and_a_clean_close(relay, http):
    await http.post(f"{relay.base}/hooks/demo", json={"n": 1})

    async def broken(*args, **kwargs):
        raise StoreUnavailable("the event store (test) did not answer a read")

    relay.app.store.read_page = broken
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since=") as ws:
        assert (await next_json(ws))["type"] == "welcome"
        error = await next_json(ws)
        assert error["type"] == "error" and error["error"] == "unavailable" and "did not answer" in error["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            await next_json(ws)
    assert closed.value.reason.code == 1013
    # The relay goes on: a live subscriber still gets events.
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        await next_json(ws)
        event_id = (await http.post(f"{relay.base}/hooks/demo", json={"n": 2})).json()["id"]
        assert (await next_json(ws))["id"] == event_id


async def test_a_resume_while_the_engine_is_down_is_refused_before_the_upgrade(relays, http, cluster):
    own_redis = cluster.own
    own_redis.start()
    (relay,) = relays(1, cluster.store_at(own_redis.url, "down:"))
    await ready(http, relay)
    first = await post(http, relay, 1)
    own_redis.kill()
    with trio.fail_after(15):
        while (await http.get(f"{relay.base}/readyz")).status_code != 503:
            await trio.sleep(0.05)
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since={first}"):
            pass
    assert refused.value.status_code == 503
    assert float(dict(refused.value.headers)[b"retry-after"].decode()) > 0
    r = await http.get(f"{relay.base}/sse?channel=demo", headers={"Last-Event-ID": first})
    assert r.status_code == 503 and r.json()["error"] == "unavailable" and "Retry-After" in r.headers
    # A live-only subscriber is still welcome: it waits for the engine like the others.
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
        assert (await next_json(ws))["type"] == "welcome"
    relay.signal(signal.SIGTERM)
    assert relay.wait() == 0
    assert b"Traceback" not in relay.stderr, relay.stderr.decode()


async def test_the_engine_back_without_its_data_gives_a_resume_from_before_the_loss_its_gap(relays, http,
                                                                                           cluster):
    """Redis restarted empty, and a webhook came in before the relay's tail
    noticed: the ids after the restart are later ones, so only the log's
    epoch tells the loss. NATS restarted without its store: the stream is
    made anew, its sequence moved past the ids handed out."""
    own_redis = cluster.own
    own_redis.start()
    (relay,) = relays(1, cluster.store_at(own_redis.url, "lost:"))
    await ready(http, relay)
    before = [await post(http, relay, n) for n in range(3)]
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(Listener().run, f"{relay.ws_base}/ws?channel=demo&since=")
        await listener.until(3)
        nursery.cancel_scope.cancel()
    own_redis.kill()
    shutil.rmtree(own_redis.dir)
    own_redis.dir.mkdir()
    own_redis.start()
    with trio.fail_after(15):
        while (r := await http.post(f"{relay.base}/hooks/demo", json={"n": 3})).status_code != 202:
            await trio.sleep(0.01)
    after = r.json()["id"]
    # Resume as a client does: again after Retry-After while the relay's
    # tail is still reconnecting (503 before the upgrade).
    with trio.fail_after(15):
        while True:
            try:
                async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&since={before[0]}") as ws:
                    assert (await next_json(ws))["type"] == "welcome"
                    assert await next_json(ws) == {"type": "gap", "after": before[0], "next": after}
                    assert (await next_json(ws))["id"] == after
                    break
            except ConnectionRejected as refused:
                assert refused.status_code == 503
                await trio.sleep(float(dict(refused.headers)[b"retry-after"].decode()) / 10)


# -- peers that misbehave ---------------------------------------------------------------


async def test_a_client_that_pings_and_never_reads_is_closed_not_buffered():
    """Each ping asks for a pong; a client that never reads them would have
    the relay hold them all (262 MiB in 20 s, before). Now at most a bounded
    number wait, then the connection is closed (1008)."""
    async with running_relay() as relay:
        stream = await rawws.connect(relay.port, "channel=demo", rcvbuf=4096)
        pings = rawws.control(Opcode.PING, b"p" * 125) * 64
        most = 0

        async def flood():
            try:
                for _ in range(20_000):  # 160 MB of pongs asked for, at most
                    await stream.send_all(pings)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await until(lambda: bool(relay.app.sessions), 10)
            with trio.fail_after(30):
                while relay.app.sessions:
                    for session in relay.app.sessions:
                        most = max(most, len(session.sub.pending))
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        assert most <= CONTROL_LIMIT + 2, most


async def test_unsolicited_pongs_do_not_keep_a_client_that_never_answers_alive():
    """A pong is allowed unasked (a heartbeat), but only the answer to the
    relay's own ping shows the client reads: one that only sends its own
    pongs misses two pings and is closed (1011)."""
    text = config_text().replace("shutdown_grace = 5.0", "shutdown_grace = 5.0\nping_interval = 0.2")
    async with running_relay(text) as relay:
        stream = await rawws.connect(relay.port, "channel=demo")
        reader = rawws.Reader(stream)
        await reader.read_head()
        pong = rawws.control(Opcode.PONG, b"alive")

        async def heartbeat():
            while True:
                await stream.send_all(pong)
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            with trio.fail_after(5):
                while (got := await reader.frame()) is not None and got[0] is not Opcode.CLOSE:
                    pass
            nursery.cancel_scope.cancel()
        assert got is not None and got[1][0] == 1011, got


async def test_sigterm_under_load_sends_nothing_after_the_close_frame_or_the_last_chunk(relays, cluster):
    """Two relays on one log: webhooks keep coming through the other one
    while this one stops, so events reach its hub after it said goodbye."""
    stopping, other = relays(2, cluster.store)
    port = int(stopping.base.rsplit(":", 1)[1])
    stop = trio.Event()

    async def sender(http):
        while not stop.is_set():
            await http.post(f"{other.base}/hooks/demo", json={"n": 1})

    ws = rawws.Reader(await rawws.connect(port, "channel=demo"))
    await ws.read_head()
    ws_bytes = bytearray(ws.head.partition(b"\r\n\r\n")[2])
    sse = await trio.open_tcp_stream("127.0.0.1", port)
    await sse.send_all(b"GET /sse?channel=demo HTTP/1.1\r\nHost: x\r\n\r\n")
    sse_bytes = bytearray()

    async def read(stream, into: bytearray):
        try:
            while data := await stream.receive_some(65536):
                into.extend(data)
        except trio.BrokenResourceError:
            pass

    async with httpx.AsyncClient(timeout=10) as http:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(sender, http)
            nursery.start_soon(read, ws.stream, ws_bytes)
            nursery.start_soon(read, sse, sse_bytes)
            await until(lambda: ws_bytes.count(b'"type":"event"') >= 20)  # events are flowing
            stopping.signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await trio.to_thread.run_sync(stopping.wait) == 0
            stop.set()
            nursery.cancel_scope.cancel()
    frames = rawws.server_frames(bytes(ws_bytes))
    closes = [i for i, (opcode, _) in enumerate(frames) if opcode == Opcode.CLOSE]
    assert closes, frames[-3:]
    after = frames[closes[0] + 1:]
    assert not after, f"{len(after)} frames after the close frame: {after[:2]}"
    assert int.from_bytes(frames[closes[0]][1][:2], "big") == 1001
    body = bytes(sse_bytes)
    end = body.find(b"\r\n0\r\n\r\n")
    assert end >= 0 and body[end + 7:] == b"", body[end:end + 200]


async def test_a_redis_that_refuses_writes_is_not_ready(relays, http, own_redis):
    """Out of memory with noeviction: Redis answers PING but stores nothing;
    /readyz must say what a webhook would meet."""
    import coredis

    own_redis.start()
    (relay,) = relays(1, redis_store(own_redis.url, "oom:"))
    await ready(http, relay)
    async with coredis.Redis.from_url(own_redis.url) as admin:
        await admin.config_set({"maxmemory-policy": "noeviction", "maxmemory": "1"})
        try:
            r = await http.post(f"{relay.base}/hooks/demo", json={"n": 1})
            assert r.status_code == 503 and "OOM" in r.json()["detail"]
            assert (await http.get(f"{relay.base}/readyz")).status_code == 503
        finally:
            await admin.config_set({"maxmemory": "0"})
    await ready(http, relay)
    assert (await http.post(f"{relay.base}/hooks/demo", json={"n": 2})).status_code == 202
