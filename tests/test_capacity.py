"""Thousands of subscribers on one relay process, with memory bounded per
connection (the figure is recorded in BENCHMARKS.md)."""

from __future__ import annotations

import resource

import trio

import rawws
from conftest import config_text

SUBSCRIBERS = 2000
# Upper bound of the relay's resident memory per idle subscriber. Measured
# about 9.6 KB here (one trio task, its nursery, wsproto's state and the
# subscriber; see BENCHMARKS.md); the bound leaves room for allocator noise
# and fails loudly if a change makes a connection much fatter.
MAX_BYTES_PER_SUBSCRIBER = 16 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_two_thousand_subscribers_are_held_with_bounded_memory_and_all_get_the_event(daemon, http):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * SUBSCRIBERS + 200)), hard))
    relay = daemon(config_text())
    port = int(relay.base.rsplit(":", 1)[1])
    # Warm up: one subscriber and one event, so first-use allocations are not counted.
    warm = await rawws.connect(port, "channel=demo")
    await rawws.Reader(warm).read_head()
    before = rss(relay.proc.pid)

    readers: list[rawws.Reader] = []
    with trio.fail_after(120):
        for _ in range(SUBSCRIBERS):
            reader = rawws.Reader(await rawws.connect(port, "channel=demo"))
            readers.append(reader)
        for reader in readers:
            assert (await reader.read_head()).startswith(b"HTTP/1.1 101 ")
            assert (await reader.json())["type"] == "welcome"
    after = rss(relay.proc.pid)
    per_subscriber = (after - before) / SUBSCRIBERS
    print(f"relay RSS per idle subscriber: {per_subscriber:.0f} bytes")
    assert per_subscriber < MAX_BYTES_PER_SUBSCRIBER

    r = await http.post(f"{relay.base}/hooks/demo", json={"to": "everyone"})
    assert r.status_code == 202
    with trio.fail_after(60):
        for reader in readers:
            assert (await reader.json())["id"] == r.json()["id"]
    for reader in readers:
        await reader.stream.aclose()
    await warm.aclose()
