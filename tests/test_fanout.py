"""The broadcast send path on real sockets: runs of events written at once,
partial writes, backed-up queues - every frame arrives whole and in order."""

from __future__ import annotations

import json
import socket

import pytest
import trio
from conftest import until
from wsproto.frame_protocol import FrameProtocol, Opcode

from relay.core.envelope import Draft, Event, encode_envelope
from relay.fanout.hub import Hub
from relay.fanout.subscriber import Subscriber
from relay.fanout.ws import gap_frame


def event(n: int, channel: str = "c", size: int = 4000) -> Event:
    draft = Draft(channel, "r", n, None, {"Content-Type": "application/json"}, json.dumps({"n": n, "pad": "x" * size}).encode())
    return Event(str(n), n, channel, n, encode_envelope(draft, str(n)))


async def pair(rcvbuf: int = 4096):
    a, b = trio.socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return trio.SocketStream(a), trio.SocketStream(b)


async def read_messages(stream: trio.SocketStream, until_id: str) -> list[dict]:
    proto = FrameProtocol(client=True, extensions=[])
    out: list[dict] = []
    parts: list[str] = []
    with trio.fail_after(20):
        while not out or out[-1].get("id") != until_id:
            proto.receive_bytes(await stream.receive_some(65536))
            for frame in proto.received_frames():
                assert frame.opcode in (Opcode.TEXT, Opcode.CONTINUATION)
                parts.append(frame.payload)
                if frame.message_finished:
                    out.append(json.loads("".join(parts)))
                    parts = []
    return out


@pytest.mark.parametrize("policy", ["disconnect", "drop"])
async def test_runs_written_through_a_tiny_socket_buffer_arrive_whole_and_in_order(policy):
    hub = Hub()
    server, client = await pair()
    sub = Subscriber(server, "ws", lambda e: e.ws_frame, gap_frame, limit=10_000, policy=policy)
    sub.subscribe(hub, ["c"], resuming=False, start=0)
    events = [event(n) for n in range(1, 201)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        nursery.start_soon(sub.run_writer)
        hub.publish(events[:100])  # one run after another, partial writes all the way
        await trio.sleep(0)
        hub.publish(events[100:])
        got = await read_messages(client, "200")
        nursery.cancel_scope.cancel()
    assert [m["id"] for m in got] == [e.id for e in events]
    assert hub.head == "200"


async def test_a_backed_up_subscriber_in_drop_mode_gets_gaps_and_its_neighbour_everything():
    hub = Hub()
    slow_server, slow_client = await pair()
    fast_server, fast_client = await pair(rcvbuf=1 << 20)
    slow = Subscriber(slow_server, "ws", lambda e: e.ws_frame, gap_frame, limit=8, policy="drop")
    fast = Subscriber(fast_server, "ws", lambda e: e.ws_frame, gap_frame, limit=10_000)
    for sub in (slow, fast):
        sub.subscribe(hub, ["c"], resuming=False, start=0)
    events = [event(n) for n in range(1, 301)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        for sub in (slow, fast):
            nursery.start_soon(sub.run_writer)
        received: list[dict] = []

        async def read_fast():
            received.extend(await read_messages(fast_client, "300"))

        nursery.start_soon(read_fast)
        for n in range(0, 300, 20):
            hub.publish(events[n : n + 20])
            await trio.sleep(0)
        slow_got = await read_messages(slow_client, "300")
        await until(lambda: bool(received), 20)
        nursery.cancel_scope.cancel()
    assert [m["id"] for m in received] == [e.id for e in events]
    ids = [m["id"] for m in slow_got if m.get("type") == "event"]
    gaps = [m for m in slow_got if m.get("type") == "gap"]
    assert gaps and len(ids) < 300
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    # Every hole is named by the gap right before the next event.
    for before, msg, after in zip(slow_got, slow_got[1:], slow_got[2:]):
        if msg.get("type") == "gap":
            assert msg["next"] == after["id"]
            assert msg["after"] == before.get("id", before.get("after"))
