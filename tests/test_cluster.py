"""Cluster mode: relays sharing one log in Redis or NATS JetStream (contract
section 8).

The Redis engine in this process first; then relays as a user runs them, on
each cluster engine (``cluster``: the nats engine's own tests are in
test_nats.py). Against real servers: the shared Redis on 127.0.0.1:6379 and
NATS on 127.0.0.1:4222 for most tests, each under its own random prefix
(removed afterwards) so tests can run side by side; and a private
redis-server or nats-server on a free port for the tests that stop it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

import natsserver
from conftest import Daemon, config_text, draft, running_store, until
from relay.config.model import StoreConfig
from relay.core.errors import StoreUnavailable
from relay.store.redis import RedisStore

SHARED = ("127.0.0.1", 6379)
REDIS_SERVER = shutil.which("redis-server")


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def need_shared_redis() -> str:
    if not answers(*SHARED):
        if REDIS_SERVER is None:
            pytest.skip("no Redis answers on 127.0.0.1:6379 and there is no redis-server binary to start one")
        pytest.fail("Redis is not answering on 127.0.0.1:6379 (redis-server exists: start it, or run .ci/run)")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def shared_redis() -> str:
    return need_shared_redis()


async def delete_keys(url: str, prefix: str) -> None:
    import coredis

    async with coredis.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(keys)


@pytest.fixture
async def prefix(shared_redis):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"relaytest:{secrets.token_hex(6)}:"
    yield name
    await delete_keys(shared_redis, name)


def redis_store(url: str, prefix: str) -> str:
    return f'engine = "redis"\nurl = "{url}"\nprefix = "{prefix}"'


class RedisServer:
    """A private redis-server that a test may stop and start again.

    ``appendfsync always``: Redis writes and fsyncs each command before it
    answers, so an acknowledged event survives even ``kill -9``. This is the
    durability a relay's 202 carries in cluster mode: what Redis promises for
    an acknowledged write under its persistence settings, nothing more.
    """

    def __init__(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed; the tests that stop Redis need their own")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def relays(tmp_path):
    """Factory: relays(n, store) -> n started ``relay serve`` processes."""
    started: list[Daemon] = []

    def make(n: int, store: str, extra: str = "") -> list[Daemon]:
        out = []
        for _ in range(n):
            path = tmp_path / f"relay{len(started)}.toml"
            # Warnings only: nobody drains the pipe of a running relay's
            # stderr, and a line per webhook would fill it.
            path.write_text(config_text('[log]\nlevel = "warning"\n' + extra, store=store))
            d = Daemon(path, tmp_path)
            started.append(d)
            out.append(d.start())
        return out

    make.started = started  # type: ignore[attr-defined]
    yield make
    for d in started:
        d.kill()


class Cluster:
    """One cluster engine for the relay-level tests: the config of a shared
    log under a prefix of the test's own, how its ids sort, and a private
    server (``own``) for the tests that stop it."""

    def __init__(self, engine: str, workdir: Path) -> None:
        self.engine = engine
        self.workdir = workdir
        self.name = "Redis" if engine == "redis" else "NATS"
        if engine == "redis":
            self.url = need_shared_redis()
            self.prefix = f"relaytest:{secrets.token_hex(6)}:"
        else:
            self.url = natsserver.need_shared_nats()
            self.prefix = f"relaytest_{secrets.token_hex(6)}:"
        self._own: RedisServer | natsserver.NatsServer | None = None

    @property
    def store(self) -> str:
        return self.store_at(self.url, self.prefix)

    def store_at(self, url: str, prefix: str) -> str:
        return redis_store(url, prefix) if self.engine == "redis" else natsserver.nats_store(url, prefix)

    def key(self, event_id: str):  # type: ignore[no-untyped-def]
        return key(event_id) if self.engine == "redis" else int(event_id)

    @property
    def own(self):  # type: ignore[no-untyped-def]
        if self._own is None:
            self._own = RedisServer(self.workdir) if self.engine == "redis" else natsserver.NatsServer(self.workdir)
        return self._own

    async def clean(self) -> None:
        if self._own is not None:
            self._own.kill()
        if self.engine == "redis":
            await delete_keys(self.url, self.prefix)
        else:
            await natsserver.delete_stream(self.url, self.prefix)


@pytest.fixture(params=["redis", "nats"])
async def cluster(request, tmp_path, relays):
    engine = Cluster(request.param, tmp_path)
    yield engine
    for d in relays.started:  # first: a running relay would make its stream again
        d.kill()
    await engine.clean()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class Listener:
    """A WebSocket subscriber that collects the events it receives."""

    def __init__(self) -> None:
        self.welcome: dict = {}
        self.events: list[dict] = []
        self.frames: list[dict] = []
        self._more = trio.lowlevel.ParkingLot()

    async def run(self, url: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(url) as ws:
            self.welcome = json.loads(await ws.get_message())
            task_status.started(self)
            while True:
                frame = json.loads(await ws.get_message())
                self.frames.append(frame)
                if frame["type"] == "event":
                    self.events.append(frame)
                self._more.unpark_all()

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]

    async def until(self, n: int, timeout: float = 20) -> list[str]:
        with trio.fail_after(timeout):
            while len(self.events) < n:
                await self._more.park()
        return self.ids


def key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


# -- the engine, in this process ----------------------------------------------


def opened(url: str, prefix: str, published: list | None = None, **kw):
    return running_store(StoreConfig(engine="redis", url=url, prefix=prefix, **kw), published)


async def delivered(store: RedisStore, event_id: str) -> None:
    """Wait until the store's tail has published ``event_id``."""
    with trio.fail_after(10):
        while store.head == "" or key(store.head) < key(event_id):
            await store._moved.park()


async def test_event_ids_are_stream_ids_and_reads_resume_after_one(shared_redis, prefix):
    async with opened(shared_redis, prefix) as store:
        assert store.head == ""
        appended = await store.append([draft(n=i) for i in range(5)])
        ids = [a.event.id for a in appended]
        assert [key(i) for i in ids] == sorted(key(i) for i in ids) and len(set(ids)) == 5
        await delivered(store, ids[-1])
        assert store.head == ids[-1]
        after_second = await store.read(store.parse_id(ids[1]), ["demo"], 100)
        assert [e.id for e in after_second] == ids[2:]
        everything = await store.read(store.parse_id(""), ["*"], 100)
        assert [e.id for e in everything] == ids
        assert json.loads(everything[0].envelope) == json.loads(appended[0].event.envelope)
        assert json.loads(everything[0].envelope)["id"] == ids[0]


async def test_reads_select_channels_and_prefix_patterns(shared_redis, prefix):
    async with opened(shared_redis, prefix) as store:
        channels = ["github.push", "github.issues", "githubx", "github_push", "stripe.charge", "github"]
        await store.append([draft(c) for c in channels])

        async def read(*patterns, limit=100):
            return [e.channel for e in await store.read((0, 0), list(patterns), limit)]

        assert await read("github.*") == ["github.push", "github.issues"]
        assert await read("github") == ["github"]
        assert await read("stripe.charge", "github.push") == ["github.push", "stripe.charge"]
        assert await read("*") == channels
        assert await read("nothing") == []
        assert await read("*", limit=2) == channels[:2]


async def test_webhooks_waiting_together_cost_one_round_trip_and_publish_in_log_order(shared_redis, prefix):
    published: list = []
    async with opened(shared_redis, prefix, published) as store:
        assert isinstance(store, RedisStore)
        before = store.round_trips
        results: list = []

        async def one(n):
            results.extend(await store.append([draft(n=n)]))

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)
        assert store.round_trips - before < 10
        await delivered(store, max((a.event.id for a in results), key=key))
    keys = [e.key for e in published]
    assert len(keys) == 200 and keys == sorted(keys)
    assert {e.id for e in published} == {a.event.id for a in results}


async def test_the_tail_alone_feeds_the_hub_with_what_any_relay_stored(shared_redis, prefix):
    mine: list = []
    other: list = []
    async with opened(shared_redis, prefix, mine) as a, opened(shared_redis, prefix, other) as b:
        x = await a.append([draft(n=1)])
        y = await b.append([draft(n=2)])
        await delivered(a, y[0].event.id)
        await delivered(b, y[0].event.id)
    assert [e.id for e in mine] == [e.id for e in other] == [x[0].event.id, y[0].event.id]
    assert [e.envelope for e in mine] == [e.envelope for e in other]


async def test_a_delivery_is_a_duplicate_across_relays_within_the_window(shared_redis, prefix):
    async with opened(shared_redis, prefix) as a, opened(shared_redis, prefix) as b:
        (first,) = await a.append([draft(channel="pay.charge", dedupe="d1")])
        (again,) = await b.append([draft(channel="pay.charge", dedupe="d1")])
        assert again.duplicate and again.event.id == first.event.id and again.event.channel == "pay.charge"
        both = await b.append([draft(dedupe="d2"), draft(dedupe="d2")])
        assert [x.duplicate for x in both] == [False, True]
        assert len(await a.read((0, 0), ["*"], 100)) == 2


async def test_retention_drops_the_oldest_and_a_resume_from_before_them_learns_it(shared_redis, prefix):
    async with opened(shared_redis, prefix, retention=10) as store:
        ids: list[str] = []
        for start in range(0, 400, 100):
            ids += [a.event.id for a in await store.append([draft(n=n) for n in range(start, start + 100)])]
        await delivered(store, ids[-1])
        kept = [e.id for e in await store.read((0, 0), ["*"], 1000)]
        # MAXLEN ~ drops whole nodes of the stream: at least the newest 10
        # stay, and far fewer than all of them.
        assert 10 <= len(kept) < 400 and kept == ids[-len(kept):]
        assert store.lost_after(store.parse_id(""))
        assert store.lost_after(store.parse_id(ids[0]))
        dropped_last = ids[-len(kept) - 1]
        assert not store.lost_after(store.parse_id(dropped_last))
        assert not store.lost_after(store.parse_id(ids[-1]))


async def test_age_retention_drops_old_events_and_forgets_old_deliveries(shared_redis, prefix):
    async with opened(shared_redis, prefix, retention_age=0.3) as store:
        (old,) = await store.append([draft(n=1, dedupe="d1")])
        await trio.sleep(0.4)  # Redis's clock must move on: no event to wait for
        (new,) = await store.append([draft(n=2)])
        (again,) = await store.append([draft(n=3, dedupe="d1")])
        assert not again.duplicate
        await delivered(store, again.event.id)
        assert [e.id for e in await store.read((0, 0), ["*"], 10)] == [new.event.id, again.event.id]
        assert store.lost_after(store.parse_id(""))
        assert not store.lost_after(store.parse_id(old.event.id))


async def test_every_key_starts_with_the_prefix(shared_redis, prefix):
    import coredis

    async with opened(shared_redis, prefix) as store:
        await store.append([draft(dedupe="k1"), draft()])
    async with coredis.Redis.from_url(shared_redis) as client:
        keys = sorted([k.decode() async for k in client.scan_iter(match=prefix + "*")])
    assert keys == [prefix + "dedupe:k1", prefix + "epoch", prefix + "log"]


async def test_append_without_redis_is_unavailable_and_ping_is_false(own_redis, tmp_path):
    # own_redis is never started: nothing listens on its port.
    async with opened(own_redis.url, "p:") as store:
        assert not await store.ping()
        with pytest.raises(StoreUnavailable) as caught:
            await store.append([draft()])
        assert caught.value.retry_after and own_redis.url.split("/")[2] in caught.value.detail


# -- relays as a user runs them -------------------------------------------------


async def ready(http, relay, timeout=10):
    """Poll /readyz as an orchestrator does, until it answers 200."""
    with trio.fail_after(timeout):
        while (await http.get(f"{relay.base}/readyz")).status_code != 200:
            await trio.sleep(0.05)


async def post(http, relay, n, route="demo", **headers):
    r = await http.post(f"{relay.base}/hooks/{route}", json={"n": n}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def test_three_relays_deliver_every_webhook_to_every_subscriber_in_one_order(relays, http, cluster):
    trio_relays = relays(3, cluster.store)
    acked: list[str] = []

    async def send(n):
        acked.append(await post(http, trio_relays[n % 3], n))

    async with trio.open_nursery() as nursery:
        listeners = [await nursery.start(Listener().run, f"{r.ws_base}/ws?channel=demo") for r in trio_relays]
        async with trio.open_nursery() as senders:
            for n in range(90):  # round-robin, many at once
                senders.start_soon(send, n)
        sequences = [await lis.until(90) for lis in listeners]
        nursery.cancel_scope.cancel()
    assert sequences[0] == sequences[1] == sequences[2]
    assert sorted(sequences[0], key=cluster.key) == sequences[0]
    assert set(sequences[0]) == set(acked) and len(acked) == 90
    bodies = [[e["data"]["n"] for e in lis.events] for lis in listeners]
    assert bodies[0] == bodies[1] == bodies[2] and sorted(bodies[0]) == list(range(90))


async def test_a_subscriber_resumes_on_another_relay_with_nothing_missed_or_repeated(relays, http, cluster):
    a, b = relays(2, cluster.store)
    first = [await post(http, a if n % 2 else b, n) for n in range(5)]
    async with trio.open_nursery() as nursery:
        left = await nursery.start(Listener().run, f"{a.ws_base}/ws?channel=demo&since=")
        await left.until(5)
        nursery.cancel_scope.cancel()
    assert left.ids == first
    later = [await post(http, a if n % 2 else b, n) for n in range(5, 10)]
    async with trio.open_nursery() as nursery:
        back = await nursery.start(Listener().run, f"{b.ws_base}/ws?channel=demo&since={left.ids[-1]}")
        assert back.welcome["id"] == later[-1]
        more = [await post(http, a, n) for n in range(10, 12)]
        got = await back.until(7)
        nursery.cancel_scope.cancel()
    assert got == later + more
    assert not [f for f in back.frames if f["type"] == "gap"]


DEDUPED = """
[routes.orders]
channel = "orders"
dedupe_header = "X-Request-Id"
"""


async def test_a_sender_retrying_against_another_relay_gets_duplicate(relays, http, cluster):
    a, b, c = relays(3, cluster.store, DEDUPED)
    headers = {"X-Request-Id": f"req-{secrets.token_hex(4)}"}
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(Listener().run, f"{c.ws_base}/ws?channel=orders")
        first = await http.post(f"{a.base}/hooks/orders", json={"n": 1}, headers=headers)
        assert first.status_code == 202
        for relay in (b, c, a):
            again = await http.post(f"{relay.base}/hooks/orders", json={"n": 1}, headers=headers)
            assert again.status_code == 200, again.text
            assert again.json() == {"id": first.json()["id"], "channel": "orders", "duplicate": True}
        other = await http.post(f"{b.base}/hooks/orders", json={"n": 2}, headers={"X-Request-Id": "another"})
        # Published once: the next event on the channel is the other delivery.
        assert await listener.until(2) == [first.json()["id"], other.json()["id"]]
        nursery.cancel_scope.cancel()


async def test_a_restart_of_the_engine_mid_stream_loses_nothing_acknowledged(relays, http, cluster):
    own_redis = cluster.own  # kill -9, then started again on its files
    own_redis.start()
    a, b = relays(2, cluster.store_at(own_redis.url, "restart:"))
    acked: list[str] = []
    refused: list[int] = []
    stop = trio.Event()

    async def sender(relay, n0):
        # A sender that retries what was not acknowledged, as webhook senders do.
        n = n0
        while not stop.is_set():
            r = await http.post(f"{relay.base}/hooks/demo", json={"n": n})
            if r.status_code == 202:
                acked.append(r.json()["id"])
                n += 2
            else:
                assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
                assert float(r.headers["Retry-After"]) > 0
                refused.append(n)
                await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        on_a = await nursery.start(Listener().run, f"{a.ws_base}/ws?channel=demo")
        on_b = await nursery.start(Listener().run, f"{b.ws_base}/ws?channel=demo")
        async with trio.open_nursery() as senders:
            senders.start_soon(sender, a, 0)
            senders.start_soon(sender, b, 1)
            await until(lambda: len(acked) >= 40, 20)
            own_redis.kill()
            await until(lambda: len(refused) >= 4, 20)
            for relay in (a, b):
                assert (await http.get(f"{relay.base}/readyz")).status_code == 503
            own_redis.start()
            count = len(acked)
            await until(lambda: len(acked) >= count + 40, 20)
            stop.set()
        for relay in (a, b):
            await ready(http, relay)
        want = set(acked)
        # Events stored but refused (a reply lost in the crash) may come too.
        await until(lambda: want <= set(on_a.ids) and want <= set(on_b.ids) and len(on_a.ids) == len(on_b.ids), 20)
        nursery.cancel_scope.cancel()
    # The same connections saw everything, once, in the log's order.
    assert on_a.ids == on_b.ids
    assert sorted(on_a.ids, key=cluster.key) == on_a.ids and len(set(on_a.ids)) == len(on_a.ids)
    assert refused
    for relay in (a, b):
        relay.signal(signal.SIGTERM)
        assert relay.wait() == 0


async def test_a_relay_started_while_the_engine_is_down_says_so_and_is_ready_once_it_answers(relays, http,
                                                                                           cluster):
    own_redis = cluster.own
    (relay,) = relays(1, cluster.store_at(own_redis.url, "late:"))
    assert f"cannot reach {cluster.name}".encode() in relay.stderr and b"not ready" in relay.stderr
    assert (await http.get(f"{relay.base}/readyz")).status_code == 503
    r = await http.post(f"{relay.base}/hooks/demo", json={"n": 0})
    assert r.status_code == 503 and "Retry-After" in r.headers
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(Listener().run, f"{relay.ws_base}/ws?channel=demo")
        own_redis.start()
        await ready(http, relay)
        event_id = await post(http, relay, 1)
        assert await listener.until(1) == [event_id]
        nursery.cancel_scope.cancel()
    own_redis.kill()
    # Stopping does not wait for the engine.
    relay.signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0


def test_relay_check_names_a_bad_store_url(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(config_text(store='engine = "redis"\nurl = "redis://127.0.0.1:notaport/0"'))
    done = subprocess.run([sys.executable, "-m", "relay", "check", "-c", str(path)],
                          capture_output=True, cwd=tmp_path)
    assert done.returncode == 2
    assert b"store.url" in done.stderr
