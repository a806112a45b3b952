"""Outbound webhooks across kill -9 and across relays: every acknowledged
event reaches the endpoint at least once, and a repeat only carries the id
of a delivery that was in flight at the crash; on Redis and on NATS each
endpoint is served by one relay at a time, and another takes over when it
dies."""

from __future__ import annotations

import signal

import httpx
import trio

from conftest import config_text, until
from receiver import Receiver, Reply
from relay.core import whsec
from test_cluster import cluster, relays  # noqa: F401 (fixtures)

SECRET = whsec.make(bytes(range(32)))


def outbound(url: str, extra: str = "") -> str:
    return f"""
[outbound]
allow_private = ["127.0.0.0/8"]
retry = [0, 0.2, 0.2, 0.2, 0.2]
jitter = 0.0
timeout = 2.0
max_in_flight = 4
{extra}

[endpoints.app]
url = "{url}"
channels = ["demo"]
secret = "{SECRET}"
"""


async def test_kill_9_mid_delivery_loses_nothing_and_repeats_only_what_was_in_flight(daemon, tmp_path):
    store = f'engine = "sqlite"\npath = "{tmp_path}/out.db"'
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(200, delay=0.02)).serve)
        text = config_text('[log]\nlevel = "warning"\n' + outbound(receiver.url), store=store)
        relay = daemon(text)
        acked: list[str] = []
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(300):
                r = await http.post(f"{relay.base}/hooks/demo", json={"n": n})
                assert r.status_code == 202
                acked.append(r.json()["id"])
            await receiver.until(60)
            relay.signal(signal.SIGKILL)
            killed_at = trio.current_time()
            relay.wait()
            before = len(receiver.got)
            assert before < 300, "the kill came too late to test anything"
            daemon(text)  # the same config and database
            await until(lambda: set(acked) <= set(receiver.ids()), 30)
        nursery.cancel_scope.cancel()
    ids = receiver.ids()
    assert set(ids) == set(acked)
    first_seen: dict[str, float] = {}
    for got in receiver.got:
        first_seen.setdefault(got.headers["webhook-id"], got.at)
    repeated = {i for i in ids if ids.count(i) > 1}
    # In flight at the crash: sent to the receiver, its verdict not yet written
    # (verdicts are written every 50 ms; the receiver answers in 20 ms).
    assert all(first_seen[i] >= killed_at - 1.0 for i in repeated), sorted(repeated)
    assert len(repeated) <= 4 * 10


async def test_on_a_cluster_one_relay_at_a_time_delivers_and_another_takes_over(relays, cluster, tmp_path):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        a, b = relays(2, cluster.store, outbound(receiver.url))
        async with httpx.AsyncClient(timeout=10) as http:
            first = []
            for n in range(40):
                r = await http.post(f"{(a, b)[n % 2].base}/hooks/demo", json={"n": n})
                first.append(r.json()["id"])
            await receiver.until(40)
            await trio.sleep(1.0)
            # Taken by both relays' tails, delivered by one: no event twice.
            assert sorted(receiver.ids()) == sorted(first)
            serving = [await _serving(http, r) for r in (a, b)]
            assert serving.count(True) == 1, serving
            dead, alive = (a, b) if serving[0] else (b, a)
            dead.signal(signal.SIGKILL)
            dead.wait()
            later = []
            for n in range(10):
                r = await http.post(f"{alive.base}/hooks/demo", json={"n": 100 + n})
                later.append(r.json()["id"])
            await until(lambda: set(later) <= set(receiver.ids()), 30)
        nursery.cancel_scope.cancel()
    assert set(receiver.ids()) == set(first) | set(later)


async def _serving(http, relay) -> bool:
    """Whether ``relay`` serves the endpoint now: only the lease holder
    shows it in relay_outbound_pending."""
    text = (await http.get(f"{relay.base}/metrics")).text
    return 'relay_outbound_pending{endpoint="app"}' in text
