"""``server.max_connections`` bounds every connection, with shares that keep
subscribers and idle sockets from starving webhooks, and the reverse; a low
file limit, or descriptors running out, costs a webhook nothing and floods no
log. Real sockets against real relays, in process and as ``relay serve``."""

from __future__ import annotations

import resource
import signal
import ssl

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionRejected, open_websocket_url

import rawws
from conftest import config_text, running_relay
from relay.core.limits import RESERVED_FILES

IDLE = 400  # idle plain TCP connections held open, as in the report
FILES = 256  # the relay's file limit in these tests: fewer than IDLE
WEBHOOK_BOUND = 2.0  # seconds a webhook may take to be answered while they are held (it took 9 s)


def limited(text: str, max_connections: int) -> str:
    return text.replace("shutdown_grace = 5.0", f"shutdown_grace = 5.0\nmax_connections = {max_connections}")


async def hold_idle(port: int, count: int) -> list[trio.SocketStream]:
    """Open ``count`` TCP connections that never send a byte."""
    held = []
    with trio.fail_after(30):
        for _ in range(count):
            held.append(await trio.open_tcp_stream("127.0.0.1", port))
    return held


async def closed_by_relay(stream: trio.SocketStream) -> bool:
    """True when the relay has closed this connection (EOF or reset waiting)."""
    with trio.move_on_after(0.05):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def timed_webhook(base: str) -> tuple[int, float]:
    """POST one webhook on a new connection: its status and how long it took."""
    async with httpx.AsyncClient(timeout=30) as client:
        started = trio.current_time()
        r = await client.post(f"{base}/hooks/demo", json={"real": "webhook"})
        return r.status_code, trio.current_time() - started


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def warnings_in(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").splitlines() if " WARNING " in line]


async def test_a_webhook_is_answered_at_once_while_hundreds_of_idle_connections_hold_a_relay_with_a_low_file_limit(daemon):
    relay = daemon(config_text(), preexec_fn=low_file_limit)
    # The start says the default max_connections does not fit, and what it holds instead.
    assert b"max_connections = 10000 does not fit the file limit of 256 open files" in relay.stderr
    assert b"holding at most %d connections" % (FILES - RESERVED_FILES) in relay.stderr
    port = int(relay.base.rsplit(":", 1)[1])
    held = await hold_idle(port, IDLE)
    status, took = await timed_webhook(relay.base)
    assert status == 202
    assert took < WEBHOOK_BOUND
    # The connections that made room were the oldest; the newest are still held.
    assert await closed_by_relay(held[0])
    assert not await closed_by_relay(held[-1])
    relay.signal(signal.SIGTERM)
    assert relay.wait() == 0
    assert b"accept failed" not in relay.stderr
    # One line for the file limit, one for the full relay (at most one per 10 s).
    assert len(warnings_in(relay.stderr)) <= 3, relay.stderr.decode()
    for stream in held:
        await stream.aclose()


async def test_when_descriptors_run_out_under_a_running_relay_it_frees_idle_ones_and_logs_the_failures_once(daemon):
    relay = daemon(config_text())
    # The limit drops below what the relay was started with (another process
    # of the same user, a lowered container limit): accept meets EMFILE.
    resource.prlimit(relay.proc.pid, resource.RLIMIT_NOFILE, (FILES, FILES))
    port = int(relay.base.rsplit(":", 1)[1])
    held = await hold_idle(port, IDLE)
    status, took = await timed_webhook(relay.base)
    assert status == 202
    assert took < WEBHOOK_BOUND
    assert await closed_by_relay(held[0])
    relay.signal(signal.SIGTERM)
    assert relay.wait() == 0
    failures = [line for line in warnings_in(relay.stderr) if "accept failed" in line]
    # Well over a hundred accepts failed (400 connections, ~240 descriptors):
    # one line says so; the next would come 10 s later with the count.
    assert len(failures) == 1, relay.stderr.decode()
    assert "Too many open files" in failures[0] and "errno=EMFILE" in failures[0]
    for stream in held:
        await stream.aclose()


async def test_subscribers_cannot_take_the_slots_kept_for_webhooks(http):
    # max_connections = 10: one slot is kept for plain HTTP, nine may subscribe.
    async with running_relay(limited(config_text(), 10)) as relay:
        readers = []
        for _ in range(5):
            reader = rawws.Reader(await rawws.connect(relay.port, "channel=demo"))
            assert (await reader.read_head()).startswith(b"HTTP/1.1 101 ")
            readers.append(reader)
        async with trio.open_nursery() as nursery:
            streams = []
            for _ in range(4):
                response = await nursery.start(_sse, http, relay.base)
                assert response.status_code == 200
                streams.append(response)
            # The tenth subscriber is refused before its upgrade, on either transport.
            with pytest.raises(ConnectionRejected) as info:
                async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo"):
                    pass
            assert info.value.status_code == 503
            assert ("retry-after", "5") in [(k.decode(), v.decode()) for k, v in info.value.headers]
            r = await http.get(f"{relay.base}/sse?channel=demo")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            # And a webhook still gets in, and reaches all nine.
            status, _ = await timed_webhook(relay.base)
            assert status == 202
            for reader in readers:
                message = await reader.json()
                message = await reader.json() if message["type"] == "welcome" else message
                assert message["data"] == {"real": "webhook"}
            nursery.cancel_scope.cancel()
        for reader in readers:
            await reader.stream.aclose()


async def _sse(http, base, task_status=trio.TASK_STATUS_IGNORED):
    async with http.stream("GET", f"{base}/sse?channel=demo") as response:
        task_status.started(response)
        await trio.sleep_forever()


async def test_idle_connections_make_room_oldest_first_for_a_subscriber_and_a_webhook():
    async with running_relay(limited(config_text(), 20)) as relay:
        held = await hold_idle(relay.port, 50)
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
            assert (await ws.get_message()).startswith('{"type":"welcome"')
            status, took = await timed_webhook(relay.base)
            assert status == 202 and took < WEBHOOK_BOUND
            with trio.fail_after(5):
                assert '"real":"webhook"' in await ws.get_message()
        closed = [await closed_by_relay(stream) for stream in held]
        # At most 20 connections at once: of the 50 idle ones, the oldest made room.
        assert closed[:30] == [True] * 30
        assert not closed[-1]
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{relay.base}/metrics")).text
        samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
        assert samples["relay_connections_max"] == 20
        assert samples["relay_idle_closed_total"] >= 30
        for stream in held:
            await stream.aclose()


async def test_when_every_slot_has_a_request_in_flight_a_new_connection_waits_in_the_backlog():
    async with running_relay(limited(config_text(), 3)) as relay:
        body = b'{"n": 12345}'
        head = (b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        busy = []
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
            await stream.send_all(head + body[:5])  # a body still arriving: a request in flight
            busy.append(stream)
        late = await trio.open_tcp_stream("127.0.0.1", relay.port)  # the kernel's backlog takes it
        await late.send_all(head + body)
        with trio.move_on_after(0.5):
            await late.receive_some(100)
            pytest.fail("answered although every slot had a request in flight")
        # No request in flight is cut off for it; once one ends, it is served.
        await busy[0].send_all(body[5:])
        with trio.fail_after(5):
            assert (await busy[0].receive_some(1000)).startswith(b"HTTP/1.1 202 ")
            await busy[0].aclose()
            assert (await late.receive_some(1000)).startswith(b"HTTP/1.1 202 ")
        for stream in busy[1:]:
            await stream.send_all(body[5:])
            with trio.fail_after(5):
                assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 202 ")
            await stream.aclose()
        await late.aclose()


async def test_tls_handshakes_never_begun_make_room_for_an_https_webhook(ca, tls_files):
    cert, key = tls_files
    text = limited(config_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n'), 10)
    async with running_relay(text) as relay:
        held = await hold_idle(relay.port, 30)  # TCP connected, no ClientHello
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context, timeout=30) as client:
            started = trio.current_time()
            r = await client.post(f"https://127.0.0.1:{relay.port}/hooks/demo", json={"real": "webhook"})
            assert r.status_code == 202
            assert trio.current_time() - started < WEBHOOK_BOUND  # not the 10 s handshake timeout
        assert await closed_by_relay(held[0])
        for stream in held:
            await stream.aclose()
