"""Resume under load, over real sockets, against ``relay serve``.

While webhooks stream in, clients keep leaving and coming back with
``since`` (their last id, or some hundreds of events back, as a client that
lost its state would) over WebSocket and SSE. Every session must receive
exactly the store's log after its ``since``: in order, once, with nothing
skipped and no gap (retention keeps everything here), on frames that parse.
Each client, over all its sessions, ends up with the whole log.

Bounded: at most ``WEBHOOKS`` webhooks and ``SECONDS`` seconds of ingest (up to
``MAX_SECONDS`` on a slow machine, until ``MIN_WEBHOOKS`` were sent).
"""

from __future__ import annotations

import json
import random
import secrets

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from conftest import config_text

WEBHOOKS = 12_000
SECONDS = 8.0
# On a loaded machine ingest goes on past SECONDS until this many webhooks
# were sent (the resumes need a log to rewind into), for at most MAX_SECONDS.
MIN_WEBHOOKS = 2_000
MAX_SECONDS = 40.0
SENDERS = 8
WS_CLIENTS = 4
SSE_CLIENTS = 2
REWIND = 400  # a rewinding session starts this many events back


def order(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("-"))


class Log:
    """What the relay acknowledged, in its order (from the 202s)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.done = False

    def sorted(self) -> list[str]:
        return sorted(self.ids, key=order)

    def after(self, since: str) -> list[str]:
        ids = self.sorted()
        if since == "":
            return ids
        return [i for i in ids if order(i) > order(since)]


class Client:
    """Leaves and resumes in a loop; checks every session against the log."""

    def __init__(self, name: str, base: str, ws_base: str, transport: str, log: Log) -> None:
        self.name = name
        self.base, self.ws_base = base, ws_base
        self.transport = transport
        self.log = log
        self.last = ""  # the last id this client got
        self.sessions: list[tuple[str, list[str]]] = []  # (since, ids received)
        self.rng = random.Random(name)

    async def run(self, http: httpx.AsyncClient) -> None:
        while not self.log.done:
            since = self.last
            if self.rng.random() < 0.3 and self.log.ids:
                # A client that lost its place comes back from further behind.
                known = self.log.sorted()
                back = known[max(0, len(known) - REWIND)] if len(known) > REWIND else ""
                # Behind, never ahead of where it was: a slow client may be
                # more than REWIND events behind the newest already.
                if back == "" or not self.last or order(back) < order(self.last):
                    since = back
            await self.session(http, since, self.rng.uniform(0.05, 0.6))
        # Catch up to the end of the log once ingest has stopped.
        if self.last != self.log.sorted()[-1]:
            await self.session(http, self.last, None)

    async def session(self, http: httpx.AsyncClient, since: str, seconds: float | None) -> None:
        got: list[str] = []
        self.sessions.append((since, got))
        target = self.log.sorted()[-1] if seconds is None and self.log.ids else None
        with trio.move_on_after(seconds if seconds is not None else 30) as scope:
            if self.transport == "ws":
                await self._ws(since, got, target)
            else:
                await self._sse(http, since, got, target)
        if seconds is None:
            assert not scope.cancelled_caught, f"{self.name} did not catch up to {target}: got {got[-3:]}"
        if got:
            self.last = got[-1]

    async def _ws(self, since: str, got: list[str], target: str | None) -> None:
        try:
            async with open_websocket_url(f"{self.ws_base}/ws?channel=load.*&since={since}") as ws:
                welcome = json.loads(await ws.get_message())
                assert welcome["type"] == "welcome", welcome
                while target is None or not got or got[-1] != target:
                    frame = json.loads(await ws.get_message())
                    assert frame["type"] == "event", f"{self.name} since {since!r}: {frame}"
                    got.append(frame["id"])
        except ConnectionClosed as exc:
            raise AssertionError(f"{self.name} since {since!r}: closed by the relay: {exc.reason}") from None

    async def _sse(self, http: httpx.AsyncClient, since: str, got: list[str], target: str | None) -> None:
        headers = {"Last-Event-ID": since} if since else {}
        query = "channel=load.*" + ("" if since else "&since=")
        async with http.stream("GET", f"{self.base}/sse?{query}", headers=headers, timeout=None) as response:
            assert response.status_code == 200, await response.aread()
            event_id = None
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    raise AssertionError(f"{self.name} since {since!r}: {line}")
                elif line.startswith("data: ") and event_id is not None:
                    assert json.loads(line[6:])["id"] == event_id
                    got.append(event_id)
                    event_id = None
                    if target is not None and got[-1] == target:
                        return
            raise AssertionError(f"{self.name} since {since!r}: the relay ended the stream")

    def check(self) -> None:
        for since, got in self.sessions:
            expected = self.log.after(since)[: len(got)]
            assert got == expected, (
                f"{self.name} since {since!r}: first difference at {first_difference(got, expected)}")
        everything: set[str] = set()
        for _, got in self.sessions:
            everything.update(got)
        first_since = self.sessions[0][0]
        missing = sorted(set(self.log.after(first_since)) - everything, key=order)
        assert not missing, f"{self.name} never got some events: {missing[:10]} of {len(missing)}; sessions {[(s, g[:2], g[-2:]) for s, g in self.sessions][:12]}"


def first_difference(got: list[str], expected: list[str]) -> str:
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return f"#{i}: got {got[max(0, i - 2):i + 3]}, the log has {expected[max(0, i - 2):i + 3]}"
    return f"lengths {len(got)} and {len(expected)}"


async def ingest(http: httpx.AsyncClient, base: str, log: Log) -> None:
    count = 0
    start = trio.current_time()

    def more() -> bool:
        spent = trio.current_time() - start
        return count < WEBHOOKS and spent < MAX_SECONDS and (spent < SECONDS or count < MIN_WEBHOOKS)

    async def sender(n: int) -> None:
        nonlocal count
        while more():
            count += 1
            r = await http.post(f"{base}/hooks/load", json={"c": "ab"[count % 2], "n": count})
            assert r.status_code == 202, r.text
            log.ids.append(r.json()["id"])

    async with trio.open_nursery() as nursery:
        for n in range(SENDERS):
            nursery.start_soon(sender, n)


LOAD_ROUTE = """
[log]
level = "warning"

[routes.load]
channel = "load.{json:c}"
"""


async def run_load(daemon_base: str, ws_base: str) -> tuple[Log, list[Client]]:
    log = Log()
    limits = httpx.Limits(max_connections=SENDERS + SSE_CLIENTS + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        for n in range(REWIND):  # history to rewind into
            r = await http.post(f"{daemon_base}/hooks/load", json={"c": "a", "n": -n})
            log.ids.append(r.json()["id"])
        clients = [Client(f"ws{n}", daemon_base, ws_base, "ws", log) for n in range(WS_CLIENTS)]
        clients += [Client(f"sse{n}", daemon_base, ws_base, "sse", log) for n in range(SSE_CLIENTS)]
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.run, http)
            await ingest(http, daemon_base, log)
            log.done = True
    return log, clients


@pytest.mark.parametrize("engine", ["sqlite", "redis", "nats"])
async def test_clients_resuming_in_a_loop_under_ingest_get_exactly_the_log(engine, daemon, tmp_path):
    if engine == "nats":
        import natsserver

        natsserver.need_shared_nats()
        prefix = f"relaytest_{secrets.token_hex(6)}:"
        store = natsserver.nats_store("nats://127.0.0.1:4222", prefix)
    elif engine == "redis":
        from test_cluster import SHARED, answers

        if not answers(*SHARED):
            pytest.fail("Redis is not answering on 127.0.0.1:6379 (start it, or run .ci/run)")
        prefix = f"relaytest:{secrets.token_hex(6)}:"
        store = f'engine = "redis"\nurl = "redis://127.0.0.1:6379/0"\nprefix = "{prefix}"'
    else:
        store = f'engine = "sqlite"\npath = "{tmp_path / "load.db"}"'
    relay = daemon(config_text(LOAD_ROUTE, store=store))
    try:
        log, clients = await run_load(relay.base, relay.ws_base)
    finally:
        if engine == "nats":
            relay.kill()  # first: a running relay would make its stream again
            await natsserver.delete_stream("nats://127.0.0.1:4222", prefix)
        if engine == "redis":
            from test_cluster import delete_keys

            await delete_keys("redis://127.0.0.1:6379/0", prefix)
    sessions = sum(len(c.sessions) for c in clients)
    assert len(log.ids) > REWIND + 1000 and sessions > 6 * len(clients), (len(log.ids), sessions)
    for client in clients:
        client.check()
