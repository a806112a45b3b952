"""Delivery under slow, flaky and hostile subscribers: isolation, resume,
drop-mode gaps, limits - what a subscriber and its neighbours observe."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url
from wsproto.frame_protocol import Opcode

import rawws
from conftest import config_text, running_relay, until

PAD = "x" * 4000


async def publish(http, relay, count, channel_route="demo"):
    ids = []
    for n in range(count):
        r = await http.post(f"{relay.base}/hooks/{channel_route}", json={"n": n, "pad": PAD})
        assert r.status_code == 202
        ids.append(r.json()["id"])
    return ids


async def collect(url, count, sink, task_status=trio.TASK_STATUS_IGNORED):
    async with open_websocket_url(url, max_message_size=2**20) as ws:
        await ws.get_message()
        task_status.started()
        while len(sink) < count:
            sink.append(json.loads(await ws.get_message())["id"])


async def test_one_stalled_subscriber_never_holds_back_a_hundred_others(http):
    text = config_text("[delivery]\nqueue = 16\n")
    async with running_relay(text) as relay:
        stalled = await rawws.connect(relay.port, "channel=demo", rcvbuf=4096)
        await rawws.Reader(stalled).read_head()
        count = 400
        sinks: list[list[str]] = [[] for _ in range(100)]
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for sink in sinks:
                    await nursery.start(collect, f"{relay.ws_base}/ws?channel=demo", count, sink)
                ids = await publish(http, relay, count)
        assert all(sink == ids for sink in sinks)
        # The stalled one was cut loose as a slow consumer, not waited for.
        assert relay.app.subscriber_count() == 0
        await stalled.aclose()


async def test_a_slow_consumer_is_closed_with_1013_and_resumes_without_loss(http):
    async with running_relay(config_text("[delivery]\nqueue = 8\n")) as relay:
        stream = await rawws.connect(relay.port, "channel=demo", rcvbuf=4096)
        reader = rawws.Reader(stream)
        await reader.read_head()
        welcome = await reader.json()
        ids = await publish(http, relay, 300)
        got: list[str] = []
        close = None
        with trio.fail_after(30):
            while (frame := await reader.frame()) is not None:
                if frame[0] is Opcode.CLOSE:
                    close = frame[1]
                    break
                got.append(json.loads(frame[1])["id"])
        assert got == ids[: len(got)] and len(got) < len(ids)
        assert close is None or close[0] == 1013  # the close frame, if it made it in its second
        await stream.aclose()
        # Resume from the last event it got: the rest, once, in order.
        since = got[-1] if got else welcome["id"]
        rest: list[str] = []
        with trio.fail_after(30):
            await collect(f"{relay.ws_base}/ws?channel=demo&since={since}", len(ids) - len(got), rest)
        assert got + rest == ids


async def test_in_drop_mode_the_only_holes_are_the_ones_a_gap_names(http):
    text = config_text('[delivery]\nqueue = 8\nslow_consumer = "drop"\n')
    async with running_relay(text) as relay:
        stream = await rawws.connect(relay.port, "channel=demo", rcvbuf=4096)
        reader = rawws.Reader(stream)
        await reader.read_head()
        await reader.json()
        ids = await publish(http, relay, 300)
        seen: list[str] = []
        gaps: list[dict] = []
        with trio.fail_after(30):
            while not seen or seen[-1] != ids[-1]:
                message = await reader.json()
                if message["type"] == "gap":
                    gaps.append(message)
                    assert message["after"] == (seen[-1] if seen else "")
                    seen.append(("gap", message["next"]))  # type: ignore[arg-type]
                else:
                    if seen and isinstance(seen[-1], tuple):
                        assert message["id"] == seen[-1][1]  # the gap named exactly what comes next
                        seen.pop()
                    seen.append(message["id"])
        assert gaps, "a stalled subscriber in drop mode must have lost something"
        # Order kept; every hole is covered by a gap.
        positions = [ids.index(i) for i in seen]
        assert positions == sorted(positions)
        named = {(g["after"], g["next"]) for g in gaps}
        for before, after in zip(seen, seen[1:]):
            if ids.index(after) != ids.index(before) + 1:
                assert (before, after) in named
        assert relay.app.subscriber_count() == 1  # still connected
        await stream.aclose()


async def test_a_subscriber_that_vanishes_mid_frame_is_freed_and_others_go_on(http):
    async with running_relay() as relay:
        stream = await rawws.connect(relay.port, "channel=demo")
        reader = rawws.Reader(stream)
        await reader.read_head()
        await reader.json()
        others: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, f"{relay.ws_base}/ws?channel=demo", 20, others)
            await publish(http, relay, 1)
            await stream.receive_some(100)  # part of a frame, then gone
            stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await stream.aclose()  # RST
            await publish(http, relay, 19)
        assert len(others) == 20
        await until(lambda: relay.app.subscriber_count() == 0)


async def test_max_connections_refuses_the_next_subscriber_with_503_before_the_upgrade():
    # max_connections counts every connection; one of three is kept for plain
    # HTTP (relay/limits.py), so two subscribers fit and the third is refused.
    async with running_relay(config_text().replace("shutdown_grace = 5.0", "shutdown_grace = 5.0\nmax_connections = 3")) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo"), \
                open_websocket_url(f"{relay.ws_base}/ws?channel=demo"):
            with pytest.raises(ConnectionRejected) as info:
                async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo"):
                    pass
            assert info.value.status_code == 503


async def test_a_client_flooding_subscribe_messages_is_closed(relay):
    stream = await rawws.connect(relay.port, "")
    reader = rawws.Reader(stream)
    await reader.read_head()
    from wsproto.frame_protocol import FrameProtocol

    client = FrameProtocol(client=True, extensions=[])
    flood = b"".join(bytes(client.send_data(json.dumps({"type": "subscribe", "channel": f"c{i}", "since": ""})))
                     for i in range(2000))
    with trio.move_on_after(10):
        try:
            await stream.send_all(flood)
        except trio.BrokenResourceError:
            pass
    codes = []
    with trio.fail_after(15):
        while (frame := await reader.frame()) is not None:
            if frame[0] is Opcode.CLOSE:
                codes.append(frame[1][0])
                break
    assert codes in ([1008], [])  # closed: with its close frame, or cut off
    await until(lambda: relay.app.subscriber_count() == 0)
    await stream.aclose()


async def test_ingest_answers_503_with_retry_after_only_when_the_store_falls_behind(tmp_path, http, monkeypatch):
    from relay.store import commit

    monkeypatch.setattr(commit, "MAX_BACKLOG", 5)
    text = config_text(store=f'engine = "sqlite"\npath = "{tmp_path}/r.db"')
    async with running_relay(text) as relay:
        store = relay.app.store
        gate = trio.Event()
        real_commit = store._commit

        def slow_commit(batch):
            trio.from_thread.run(gate.wait)  # a disk that stalls until the test opens the gate
            return real_commit(batch)

        monkeypatch.setattr(store, "_commit", slow_commit)
        statuses: list[int] = []
        headers: list[str] = []

        async def one():
            r = await http.post(f"{relay.base}/hooks/demo", json={"a": 1})
            statuses.append(r.status_code)
            headers.append(r.headers.get("retry-after", ""))

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(one)
            await until(lambda: 503 in statuses)
            gate.set()
        assert statuses.count(503) >= 1 and statuses.count(202) >= 5, statuses
        assert len(statuses) == 12
        assert all(h for s, h in zip(statuses, headers) if s == 503)
        # Everything acknowledged is stored, nothing refused is.
        stored = await store.read(0, ["*"], 100)
        assert len(stored) == statuses.count(202)
