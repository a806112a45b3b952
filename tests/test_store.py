"""The event log: ids, reads by channel and pattern, retention, dedupe,
group commit and durability - for every embedded engine."""

from __future__ import annotations

import functools
import sqlite3
import threading

import pytest
import trio
import trio.testing

from conftest import draft, running_store
from relay.config.model import StoreConfig
from relay.store import open_store
from relay.store.sqlite import SqliteStore

ENGINES = ["memory", "sqlite"]


# Received at a fixed moment unless a test says otherwise: retention by age is tested.
draft = functools.partial(draft, ts=1_000_000)


def opened(engine: str, tmp_path, published: list | None = None, **kw):
    return running_store(StoreConfig(engine=engine, path=str(tmp_path / "log.db"), **kw), published)


@pytest.mark.parametrize("engine", ENGINES)
async def test_ids_increase_and_reads_resume_after_an_id(engine, tmp_path):
    async with opened(engine, tmp_path) as store:
        assert store.head == ""
        appended = await store.append([draft(n=i) for i in range(5)])
        ids = [a.event.id for a in appended]
        assert [int(i) for i in ids] == sorted(int(i) for i in ids) and len(set(ids)) == 5
        assert store.head == ids[-1]
        after_second = await store.read(store.parse_id(ids[1]), ["demo"], 100)
        assert [e.id for e in after_second] == ids[2:]
        everything = await store.read(store.parse_id(""), ["*"], 100)
        assert [e.id for e in everything] == ids
        assert b'"data":{"n":0}' in everything[0].envelope


@pytest.mark.parametrize("engine", ENGINES)
async def test_reads_select_channels_and_prefix_patterns(engine, tmp_path):
    async with opened(engine, tmp_path) as store:
        channels = ["github.push", "github.issues", "githubx", "github_push", "stripe.charge", "github"]
        await store.append([draft(c) for c in channels])

        async def read(*patterns):
            return [e.channel for e in await store.read(0, list(patterns), 100)]

        assert await read("github.*") == ["github.push", "github.issues"]
        assert await read("github") == ["github"]
        assert await read("stripe.charge", "github.push") == ["github.push", "stripe.charge"]
        assert await read("*") == channels
        assert await read("nothing") == []
        assert len(await store.read(0, ["*"], 2)) == 2


@pytest.mark.parametrize("engine", ENGINES)
async def test_committed_batches_are_published_in_log_order(engine, tmp_path):
    published: list = []
    async with opened(engine, tmp_path, published) as store:
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(store.append, [draft(n=i)])
    keys = [e.key for e in published]
    assert len(keys) == 50 and keys == sorted(keys)


@pytest.mark.parametrize("engine", ENGINES)
async def test_retention_keeps_the_newest_count_and_reports_the_loss(engine, tmp_path):
    async with opened(engine, tmp_path, retention=3) as store:
        ids = [a.event.id for a in await store.append([draft(n=i) for i in range(5)])]
        kept = await store.read(0, ["*"], 100)
        assert [e.id for e in kept] == ids[-3:]
        assert store.lost_after(store.parse_id(""))
        assert store.lost_after(store.parse_id(ids[0]))
        assert not store.lost_after(store.parse_id(ids[1]))


@pytest.mark.parametrize("engine", ENGINES)
async def test_retention_drops_events_older_than_retention_age(engine, tmp_path):
    async with opened(engine, tmp_path, retention_age=60.0) as store:
        await store.append([draft(ts=1_000_000, n=1)])
        await store.append([draft(ts=1_000_000 + 61_000, n=2)])
        kept = await store.read(0, ["*"], 100)
        assert [e.ts for e in kept] == [1_061_000]


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_redelivery_is_a_duplicate_of_the_first_event_within_the_window(engine, tmp_path):
    published: list = []
    async with opened(engine, tmp_path, published, retention_age=60.0) as store:
        (first,) = await store.append([draft(dedupe="d1", ts=1_000_000)])
        (again,) = await store.append([draft(dedupe="d1", ts=1_010_000)])
        assert again.duplicate and again.event.id == first.event.id and again.event.channel == "demo"
        both = await store.append([draft(dedupe="d2", ts=1_010_000), draft(dedupe="d2", ts=1_010_000)])
        assert [b.duplicate for b in both] == [False, True]
        # Outside the window the same delivery id is new again.
        (later,) = await store.append([draft(dedupe="d1", ts=1_000_000 + 120_000)])
        assert not later.duplicate
    assert len(published) == 3


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_large_batch_of_redeliveries_is_sorted_into_new_and_duplicate(engine, tmp_path):
    async with opened(engine, tmp_path, retention_age=60.0) as store:
        earlier = await store.append([draft(dedupe=f"k{i}", n=i) for i in range(0, 1200, 2)])
        # One batch: 600 seen before (even), 600 new (odd), each new one twice.
        batch = [draft(dedupe=f"k{i}", n=i, ts=1_001_000) for i in range(1200)]
        batch += [draft(dedupe=f"k{i}", n=i, ts=1_001_000) for i in range(1, 1200, 2)]
        results = await store.append(batch)
        by_key = {f"k{2 * j}": a.event.id for j, a in enumerate(earlier)}
        for i, result in enumerate(results[:1200]):
            assert result.duplicate == (i % 2 == 0)
            if i % 2 == 0:
                assert result.event.id == by_key[f"k{i}"]
        assert all(r.duplicate for r in results[1200:])
        assert [r.event.id for r in results[1200:]] == [r.event.id for r in results[1:1200:2]]
        assert len(await store.read(0, ["*"], 5000)) == 1200


async def test_sqlite_remembers_events_and_deliveries_across_a_restart(tmp_path):
    async with opened("sqlite", tmp_path) as store:
        ids = [a.event.id for a in await store.append([draft(n=i, dedupe=f"k{i}") for i in range(3)])]
    async with opened("sqlite", tmp_path) as store:
        assert store.head == ids[-1]
        assert [e.id for e in await store.read(0, ["*"], 10)] == ids
        (dup,) = await store.append([draft(dedupe="k1")])
        assert dup.duplicate and dup.event.id == ids[1]
        (new,) = await store.append([draft()])
        assert int(new.event.id) > int(ids[-1])


async def test_sqlite_group_commit_puts_concurrent_webhooks_in_shared_transactions(tmp_path):
    async with opened("sqlite", tmp_path) as store:
        assert isinstance(store, SqliteStore)
        before = store.commits
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.append, [draft(n=i)])
        assert len(await store.read(0, ["*"], 1000)) == 200
        # Appends that waited together committed together.
        assert store.commits - before < 50


async def test_sqlite_append_after_close_is_refused_as_unavailable(tmp_path):
    from relay.core.errors import StoreUnavailable

    async with opened("sqlite", tmp_path) as store:
        pass
    with pytest.raises(StoreUnavailable):
        await store.append([draft()])


async def test_sqlite_a_failed_commit_refuses_only_its_webhooks(tmp_path):
    from relay.core.errors import StoreUnavailable

    published: list = []
    async with opened("sqlite", tmp_path, published) as store:
        (first,) = await store.append([draft(n=1)])
        # The disk refuses one transaction: a trigger stands in for the fault.
        other = sqlite3.connect(tmp_path / "log.db")
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.channel = 'doomed' "
                      "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        other.close()
        with pytest.raises(StoreUnavailable, match="disk says no"):
            await store.append([draft(n=2), draft("doomed")])
        (later,) = await store.append([draft(n=3)])
        assert int(later.event.id) == int(first.event.id) + 1
        assert [e.id for e in await store.read(0, ["*"], 10)] == [first.event.id, later.event.id]
    assert [e.id for e in published] == [first.event.id, later.event.id]


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "relay sqlite writer"]


async def test_sqlite_a_commit_in_flight_when_the_store_is_cancelled_is_still_acknowledged(tmp_path):
    config = StoreConfig(engine="sqlite", path=str(tmp_path / "log.db"))
    store = open_store(config, [].extend)
    got: list = []

    async def webhook() -> None:
        got.extend(await store.append([draft(n=7)]))

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert len(writer_threads()) == 1
            # Another process holds the write lock, so the commit stays in flight.
            blocker = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            outer.start_soon(webhook)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
            blocker.execute("ROLLBACK")
            blocker.close()
    assert writer_threads() == []
    (appended,) = got
    async with opened("sqlite", tmp_path) as reopened:
        assert [e.id for e in await reopened.read(0, ["*"], 10)] == [appended.event.id]


async def test_sqlite_that_gets_no_thread_for_its_writer_fails_to_start_rather_than_hang(tmp_path, monkeypatch):
    async def no_thread(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
    store = open_store(StoreConfig(engine="sqlite", path=str(tmp_path / "log.db")), [].extend)
    with pytest.raises(BaseExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
    assert failed.value.subgroup(RuntimeError) is not None
    assert not await store.ping()


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "9" * 30])
def test_ids_that_are_not_ours_are_refused(bad):
    from relay.store.base import parse_seq

    with pytest.raises(ValueError):
        parse_seq(bad)
