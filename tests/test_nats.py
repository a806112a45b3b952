"""The nats engine in this process: the log in a JetStream stream, and the
bridge to nats-py (trio-asyncio) under cancellation, shutdown and a NATS
restart. The relays as a user runs them, on both cluster engines, are in
test_cluster.py.

Against a real NATS: the shared one on 127.0.0.1:4222 for most tests, each
under a prefix of its own (its stream deleted afterwards); a private
nats-server with its own file store for the tests that stop it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import warnings

import pytest
import trio

from conftest import config_text, draft, running_store
from natsserver import nats_prefix, own_nats, shared_nats  # noqa: F401 (fixtures)
from relay.config.model import StoreConfig
from relay.core.errors import StoreUnavailable
from relay.store.nats import NatsStore, names


def opened(url: str, prefix: str, published: list | None = None, **kw):
    return running_store(StoreConfig(engine="nats", url=url, prefix=prefix, **kw), published)


async def delivered(store: NatsStore, event_id: str) -> None:
    """Wait until the store's tail has published ``event_id``."""
    with trio.fail_after(10):
        while store.head == "" or int(store.head) < int(event_id):
            await store._moved.park()


async def test_event_ids_are_stream_sequences_and_reads_resume_after_one(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix) as store:
        assert store.head == ""
        appended = await store.append([draft(n=i) for i in range(5)])
        ids = [a.event.id for a in appended]
        assert ids == [str(n) for n in range(1, 6)]
        await delivered(store, ids[-1])
        assert store.head == ids[-1]
        after_second = await store.read(store.parse_id(ids[1]), ["demo"], 100)
        assert [e.id for e in after_second] == ids[2:]
        everything = await store.read(store.parse_id(""), ["*"], 100)
        assert [e.id for e in everything] == ids
        assert json.loads(everything[0].envelope) == json.loads(appended[0].event.envelope)
        assert json.loads(everything[0].envelope)["id"] == ids[0]
        page = await store.read_page(store.parse_id(ids[1]), ["*"], 2)
        assert [e.id for e in page.events] == ids[2:4] and page.more and page.head == 5 and page.pruned == 0


async def test_reads_select_channels_and_prefix_patterns(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix) as store:
        channels = ["github.push", "github.issues", "githubx", "github_push", "stripe.charge", "github"]
        await store.append([draft(c) for c in channels])

        async def read(*patterns, limit=100):
            return [e.channel for e in await store.read(0, list(patterns), limit)]

        assert await read("github.*") == ["github.push", "github.issues"]
        assert await read("github") == ["github"]
        assert await read("stripe.charge", "github.push") == ["github.push", "stripe.charge"]
        assert await read("*") == channels
        assert await read("nothing") == []
        assert await read("*", limit=2) == channels[:2]


async def test_short_and_long_reads_give_the_same_events(shared_nats, nats_prefix):
    # A resume of up to 16 messages asks for each by its sequence; a longer
    # one reads through a consumer of its own.
    async with opened(shared_nats, nats_prefix) as store:
        ids = [a.event.id for a in await store.append([draft("a" if n % 3 == 0 else "b", n=n) for n in range(60)])]
        wanted = [i for n, i in enumerate(ids) if n % 3 == 0]
        for after in (0, 30, 45, 50, 59, 60):
            page = await store.read_page(after, ["a"], 100)
            assert [e.id for e in page.events] == [i for i in wanted if int(i) > after], after
            assert page.head == 60 and page.pruned == 0 and not page.more
        page = await store.read_page(48, ["*"], 5)
        assert [e.id for e in page.events] == ids[48:53] and page.more
        assert json.loads(page.events[0].envelope)["data"] == {"n": 48}


async def test_webhooks_waiting_together_share_a_crossing_and_publish_in_log_order(shared_nats, nats_prefix):
    published: list = []
    async with opened(shared_nats, nats_prefix, published) as store:
        before = store.round_trips
        results: list = []

        async def one(n):
            results.extend(await store.append([draft(n=n)]))

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)
        assert store.round_trips - before < 10
        await delivered(store, max((a.event.id for a in results), key=int))
    keys = [e.key for e in published]
    assert keys == list(range(1, 201))
    assert {e.id for e in published} == {a.event.id for a in results}


async def test_the_tail_alone_feeds_the_hub_with_what_any_relay_stored(shared_nats, nats_prefix):
    mine: list = []
    other: list = []
    async with opened(shared_nats, nats_prefix, mine) as a, opened(shared_nats, nats_prefix, other) as b:
        x = await a.append([draft(n=1)])
        y = await b.append([draft(n=2)])
        await delivered(a, y[0].event.id)
        await delivered(b, y[0].event.id)
    assert [e.id for e in mine] == [e.id for e in other] == [x[0].event.id, y[0].event.id]
    assert [e.envelope for e in mine] == [e.envelope for e in other]


async def test_a_delivery_is_a_duplicate_across_relays_within_the_window(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix) as a, opened(shared_nats, nats_prefix) as b:
        (first,) = await a.append([draft(channel="pay.charge", dedupe="d1")])
        (again,) = await b.append([draft(channel="pay.charge", dedupe="d1")])
        assert again.duplicate and again.event.id == first.event.id and again.event.channel == "pay.charge"
        both = await b.append([draft(dedupe="d2"), draft(dedupe="d2")])
        assert [x.duplicate for x in both] == [False, True] and both[1].event.id == both[0].event.id
        assert len(await a.read(0, ["*"], 100)) == 2


async def test_retention_keeps_the_newest_and_a_resume_from_before_them_learns_it(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix, retention=10) as store:
        ids: list[str] = []
        for start in range(0, 40, 10):
            ids += [a.event.id for a in await store.append([draft(n=n) for n in range(start, start + 10)])]
        await delivered(store, ids[-1])
        page = await store.read_page(0, ["*"], 1000)
        assert [e.id for e in page.events] == ids[-10:]
        assert page.pruned == int(ids[-11]) and page.head == int(ids[-1])
        assert await store.ping()
        assert store.lost_after(store.parse_id(""))
        assert store.lost_after(store.parse_id(ids[0]))
        assert not store.lost_after(store.parse_id(ids[-11]))


async def test_age_retention_drops_old_events_and_forgets_old_deliveries(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix, retention_age=1.0) as store:
        (old,) = await store.append([draft(n=1, dedupe="d1")])
        await trio.sleep(1.5)  # the server's clock must move on: no event to wait for
        (new,) = await store.append([draft(n=2)])
        (again,) = await store.append([draft(n=3, dedupe="d1")])
        assert not again.duplicate
        await delivered(store, again.event.id)
        page = await store.read_page(0, ["*"], 10)
        assert [e.id for e in page.events] == [new.event.id, again.event.id]
        assert page.pruned == int(old.event.id)


async def test_the_stream_is_named_from_the_prefix_with_the_configured_limits(shared_nats, nats_prefix):
    assert names("relay:") == ("relay_log", "relay_log.events")
    assert names("a.b c>*") == ("a_b_c_log", "a_b_c_log.events")
    async with opened(shared_nats, nats_prefix, retention=500, retention_age=60.0) as store:
        await store.append([draft()])
        bridge = store._bridge

        async def config():
            info = await bridge.js.stream_info(store.stream)
            return info.config

        got = await bridge.loop.run_aio_coroutine(config())
    assert got.name == names(nats_prefix)[0] and got.subjects == [names(nats_prefix)[1]]
    assert (got.max_msgs, got.max_age, got.duplicate_window) == (500, 60.0, 60.0)
    assert got.storage == "file"


async def test_append_without_nats_is_unavailable_and_ping_is_false(own_nats):
    # own_nats is never started: nothing listens on its port.
    async with opened(own_nats.url, "p:") as store:
        assert not await store.ping()
        assert not store.readable
        with pytest.raises(StoreUnavailable) as caught:
            await store.append([draft()])
        assert caught.value.retry_after and own_nats.url.split("//")[1] in caught.value.detail
        with pytest.raises(StoreUnavailable):
            await store.read_page(0, ["*"], 10)


async def test_a_nats_restart_loses_nothing_acknowledged_and_the_tail_carries_on(own_nats):
    """kill -9 of nats-server under load, with file storage: every append
    acknowledged before or after is in the log, and the tail delivers the
    log once, in order, across the restart."""
    own_nats.start()
    published: list = []
    acked: list[str] = []
    refused: list[int] = []
    async with opened(own_nats.url, "restart:", published) as store:
        stop = trio.Event()

        async def sender(n0):
            n = n0
            while not stop.is_set():
                try:
                    (a,) = await store.append([draft(n=n)])
                    acked.append(a.event.id)
                    n += 10
                except StoreUnavailable:
                    refused.append(n)
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for n0 in range(10):
                nursery.start_soon(sender, n0)
            with trio.fail_after(20):
                while len(acked) < 300:
                    await trio.sleep(0.01)
            own_nats.stop(signal.SIGKILL)
            with trio.fail_after(20):
                while len(refused) < 5:
                    await trio.sleep(0.01)
            assert not await store.ping()
            own_nats.start()
            count = len(acked)
            with trio.fail_after(20):
                while len(acked) < count + 300:
                    await trio.sleep(0.01)
            stop.set()
        assert await store.ping()
        await delivered(store, max(acked, key=int))
        stored = [e.id for e in await store.read(0, ["*"], 100_000)]
    assert set(acked) <= set(stored)
    ids = [e.id for e in published]
    assert ids == stored  # everything once, in the log's order
    assert [int(i) for i in ids] == list(range(1, len(ids) + 1))


async def test_nats_back_without_its_store_moves_ids_past_the_old_ones_and_reports_the_gap(own_nats):
    own_nats.start()
    published: list = []
    async with opened(own_nats.url, "lost:", published) as store:
        old = [a.event.id for a in await store.append([draft(n=n) for n in range(5)])]
        await delivered(store, old[-1])
        own_nats.stop(signal.SIGKILL)
        import shutil

        shutil.rmtree(own_nats.dir)
        own_nats.dir.mkdir()
        own_nats.start()
        with trio.fail_after(20):
            while not await store.ping():
                await trio.sleep(0.05)
        (new,) = await store.append([draft(n=9)])
        assert int(new.event.id) > int(old[-1])
        await delivered(store, new.event.id)
        page = await store.read_page(store.parse_id(old[1]), ["*"], 10)
        assert page.pruned >= int(old[-1]) and [e.id for e in page.events] == [new.event.id]
    assert [e.id for e in published] == old + [new.event.id]


async def test_cancelling_a_call_crosses_the_bridge_and_the_store_goes_on(shared_nats, nats_prefix):
    async with opened(shared_nats, nats_prefix) as store:
        bridge = store._bridge
        with trio.move_on_after(0.05) as scope:
            await bridge.loop.run_aio_coroutine(asyncio.sleep(30))
        assert scope.cancelled_caught
        (a,) = await store.append([draft()])
        assert a.event.id == "1"


async def test_shutdown_leaves_no_asyncio_task_and_no_warning(shared_nats, nats_prefix, caplog):
    caplog.set_level("DEBUG", logger="relay.store")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with opened(shared_nats, nats_prefix) as store:
            await store.append([draft(n=n) for n in range(3)])
            await store.read(0, ["*"], 10)
            bridge = store._bridge
        assert store._bridge is None and bridge.nc is None
    assert [str(w.message) for w in caught] == []
    # The bridge checks, once the connection is closed, that no asyncio task
    # of nats-py's is left, and says so at WARNING if one is.
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_relay_on_nats_stops_cleanly_with_nothing_on_stderr_but_its_own_lines(tmp_path, shared_nats):
    """SIGTERM: exit 0, no asyncio warning, no traceback, no "Task was destroyed"."""
    from conftest import Daemon
    import secrets
    import httpx

    prefix = f"relaytest_{secrets.token_hex(6)}:"
    path = tmp_path / "relay.toml"
    path.write_text(config_text(store=f'engine = "nats"\nprefix = "{prefix}"'))
    relay = Daemon(path, tmp_path).start()
    try:
        r = httpx.post(f"{relay.base}/hooks/demo", json={"n": 1}, timeout=10)
        assert r.status_code == 202 and r.json()["id"] == "1"
        assert httpx.get(f"{relay.base}/readyz", timeout=10).status_code == 200
        relay.signal(signal.SIGTERM)
        assert relay.wait() == 0
    finally:
        relay.kill()
        from natsserver import delete_stream

        trio.run(delete_stream, shared_nats, prefix)
    err = relay.stderr.decode()
    for bad in ("Traceback", "Task was destroyed", "Warning", "Unclosed", "never awaited", "asyncio"):
        assert bad not in err, err


async def test_outbound_delivery_state_is_kept_in_jetstream_and_shared(shared_nats, nats_prefix):
    from relay.core.endpoints import FAILED, Attempt, Endpoint, Row

    def endpoint(eid, cursor=""):
        return Endpoint(id=eid, url="https://example.com/hook", channels=["demo"], secrets=[], cursor=cursor)

    def attempt(eid, n, status):
        return Attempt(endpoint=eid, event_id=str(n), attempt=1, at=1000.0 + n, status=status, error=None,
                       duration_ms=1.0)

    async with opened(shared_nats, nats_prefix) as a, opened(shared_nats, nats_prefix) as b:
        assert await a.deliveries.load() == ([], [])
        await a.deliveries.save_endpoint(endpoint("app.v1"))
        await a.deliveries.save_endpoint(endpoint("app"))
        await a.deliveries.take(endpoint("app.v1", cursor="3"),
                                [Row("app.v1", str(n), 1, 0.0) for n in (1, 2, 3)])
        await a.deliveries.apply([Row("app.v1", "2", 2, 5.0, FAILED)], [("app.v1", "1")],
                                 [attempt("app.v1", n, 500 if n % 2 else 200) for n in range(5)], [])
        endpoints, rows = await b.deliveries.load()  # another relay sees it all
        assert {e.id: e.cursor for e in endpoints} == {"app.v1": "3", "app": ""}
        assert sorted((r.event_id, r.attempt, r.state) for r in rows) == [("2", 2, FAILED), ("3", 1, "pending")]
        assert [x.event_id for x in await b.deliveries.attempts("app.v1", False, 3, None)] == ["4", "3", "2"]
        assert [x.event_id for x in await b.deliveries.attempts("app.v1", True, 10, None)] == ["3", "1"]
        assert await b.deliveries.attempts("app", False, 10, None) == []
        # One holder at a time; released, or expired, another takes it.
        assert await a.deliveries.lease("app", "relay-a", 30.0)
        assert not await b.deliveries.lease("app", "relay-b", 30.0)
        assert await a.deliveries.lease("app", "relay-a", 30.0)  # renewed
        await a.deliveries.release("app", "relay-a")
        assert await b.deliveries.lease("app", "relay-b", 0.2)
        await trio.sleep(0.3)
        assert await a.deliveries.lease("app", "relay-a", 30.0)
        await b.deliveries.delete_endpoint("app.v1")
        # A verdict about a deleted endpoint does not bring it back.
        await a.deliveries.apply([], [], [], [endpoint("app.v1", cursor="9")])
        endpoints, rows = await a.deliveries.load()
        assert [e.id for e in endpoints] == ["app"] and rows == []
        assert await a.deliveries.attempts("app.v1", False, 10, None) == []


async def test_a_nats_server_with_tls_is_verified_with_the_configured_ca(tmp_path, ca, tls_files):
    from natsserver import NatsServer

    server = NatsServer(tmp_path, tls=tls_files)
    server.start()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    try:
        url = f"tls://127.0.0.1:{server.port}"
        async with opened(url, "tls:", tls_ca=str(ca_path)) as store:
            assert await store.ping()
            (a,) = await store.append([draft()])
            assert [e.id for e in await store.read(0, ["*"], 10)] == [a.event.id]
        # Without the CA the server's certificate is not trusted: not ready.
        async with opened(url, "tls:") as store:
            assert not await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.append([draft()])
    finally:
        server.stop()


def test_relay_check_names_a_tls_ca_it_cannot_use(tmp_path):
    from relay.config.load import parse
    from relay.core.errors import ConfigError

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    for store, why in ((f'engine = "nats"\ntls_ca = "{tmp_path}/none.pem"', "file not found"),
                       (f'engine = "nats"\ntls_ca = "{bad}"', "not a PEM file"),
                       (f'engine = "redis"\ntls_ca = "{bad}"', "only the nats engine")):
        with pytest.raises(ConfigError) as caught:
            parse(config_text(store=store), env={})
        assert [(k, why in m) for k, m in caught.value.problems] == [("store.tls_ca", True)]


def test_relay_check_on_a_nats_config_loads_neither_nats_nor_trio(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(config_text(store='engine = "nats"\nprefix = "x:"'))
    script = ("import sys, runpy; sys.argv = ['relay', 'check', '-c', %r]\n"
              "try:\n    runpy.run_module('relay', run_name='__main__')\nexcept SystemExit as e:\n"
              "    code = e.code\n"
              "print(sorted(m for m in ('nats', 'trio', 'trio_asyncio', 'asyncio') if m in sys.modules), code)"
              % str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=tmp_path, text=True, timeout=60)
    assert "ok" in done.stderr and "store nats" in done.stderr
    assert done.stdout.strip() == "[] 0"


def test_relay_check_names_a_bad_nats_url(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(config_text(store='engine = "nats"\nurl = "redis://127.0.0.1:6379/0"'))
    done = subprocess.run([sys.executable, "-m", "relay", "check", "-c", str(path)], capture_output=True, cwd=tmp_path)
    assert done.returncode == 2 and b"store.url" in done.stderr and b"nats://" in done.stderr


def test_the_nats_url_defaults_to_the_local_server():
    from relay.config.load import parse

    assert parse(config_text(store='engine = "nats"'), env={}).store.url == "nats://127.0.0.1:4222"
    assert parse(config_text(store='engine = "nats"\nurl = "nats://a:1,nats://b:2"'), env={}).store.url == (
        "nats://a:1,nats://b:2")
    assert parse(config_text(store='engine = "redis"'), env={}).store.url == "redis://127.0.0.1:6379/0"


def test_asyncio_and_nats_py_are_imported_by_the_bridge_alone():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "relay"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] in ("asyncio", "nats") for n in names):
                found.add(str(path.relative_to(root)))
    assert found == {"store/nats_bridge.py"}
