"""TLS subscribers and webhooks on the relay's own TLS stream: what a client
notices - every event, in order, to every wss subscriber, whether its socket
keeps up, backs up or vanishes; https keep-alive; close_notify; TLS 1.3
KeyUpdate; renegotiation refused."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import Opcode

import rawws
from conftest import config_text, running_relay, until
from relay.config.files import server_context
from relay.net.tls import TlsStream

PAD = "x" * 4000


def tls_config(tls_files, extra: str = "") -> str:
    cert, key = tls_files
    return config_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n' + extra)


def client_context(ca, **kw) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for name, value in kw.items():
        setattr(context, name, value)
    return context


async def tls_connect(port: int, context: ssl.SSLContext, rcvbuf: int | None = None,
                      https_compatible: bool = True) -> trio.SSLStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SSLStream(trio.SocketStream(sock), context, server_hostname="127.0.0.1",
                            https_compatible=https_compatible)
    await stream.do_handshake()
    return stream


async def wss(port: int, context: ssl.SSLContext, query: str = "channel=demo",
              rcvbuf: int | None = None) -> rawws.Reader:
    """A wss subscriber past its welcome."""
    stream = await tls_connect(port, context, rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reader = rawws.Reader(stream)
    assert (await reader.read_head()).startswith(b"HTTP/1.1 101")
    assert (await reader.json())["type"] == "welcome"
    return reader


class Https:
    """HTTP/1.1 over one TLS connection, request after request."""

    def __init__(self, stream: trio.SSLStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        assert data, "the relay closed the connection"
        self.buffer += data

    async def _head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
        return int(lines[0].split()[1]), headers

    async def request(self, method: str, path: str, body: bytes = b"", expect: bool = False) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        if expect:
            await self.stream.send_all((head + "Expect: 100-continue\r\n\r\n").encode())
            assert (await self._head())[0] == 100
            await self.stream.send_all(body)
        else:
            await self.stream.send_all(head.encode() + b"\r\n" + body)
        status, headers = await self._head()
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._fill()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, answer


async def publish(https: Https, count: int, start: int = 0, pad: str = PAD) -> list[str]:
    ids = []
    for n in range(start, start + count):
        status, body = await https.request("POST", "/hooks/demo", json.dumps({"n": n, "pad": pad}).encode())
        assert status == 202, body
        ids.append(json.loads(body)["id"])
    return ids


def session_of(relay, client: trio.SSLStream):
    """The relay's session for a client connection (found by address)."""
    mine = client.transport_stream.socket.getsockname()
    for session in relay.app.sessions:
        if session.stream.transport_stream.socket.getpeername() == mine:
            return session
    raise AssertionError("no session for this client")


async def read_ids(reader: rawws.Reader, count: int, sink: list[str]) -> None:
    while len(sink) < count:
        sink.append((await reader.json())["id"])


async def test_many_wss_subscribers_get_every_event_in_order_while_one_is_backed_up(ca, tls_files):
    async with running_relay(tls_config(tls_files, "[delivery]\nqueue = 4096\n")) as relay:
        context = client_context(ca)
        # One subscriber that does not read, with small buffers on both ends:
        # its frames back up in the relay while thirty others read theirs.
        stalled = await wss(relay.port, context, rcvbuf=4096)
        session_of(relay, stalled.stream).stream.transport_stream.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tls12 = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        readers = [await wss(relay.port, tls12 if n % 3 == 0 else context) for n in range(30)]
        assert {r.stream.version() for r in readers} == {"TLSv1.2", "TLSv1.3"}
        https = Https(await tls_connect(relay.port, context))
        count = 150
        sinks: list[list[str]] = [[] for _ in readers]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for reader, sink in zip(readers, sinks):
                    nursery.start_soon(read_ids, reader, count, sink)
                ids = await publish(https, count)
        assert all(sink == ids for sink in sinks)
        sub = session_of(relay, stalled.stream).sub
        assert sub.pending or sub.tls.backed_up, "the stalled subscriber's frames should be waiting in the relay"
        # Now it reads: all of it, whole and in order, and nothing else.
        got: list[str] = []
        with trio.fail_after(30):
            await read_ids(stalled, count, got)
        assert got == ids
        # The same connections keep working for the next events.
        sinks = [[] for _ in readers]
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for reader, sink in zip([stalled, *readers], [got, *sinks]):
                    nursery.start_soon(read_ids, reader, len(sink) + 20, sink)
                ids += await publish(https, 20, start=count, pad="y")
        assert got == ids and all(sink == ids[count:] for sink in sinks)


async def test_a_wss_subscriber_that_vanishes_mid_stream_does_not_disturb_the_others(ca, tls_files):
    async with running_relay(tls_config(tls_files)) as relay:
        context = client_context(ca)
        readers = [await wss(relay.port, context) for _ in range(10)]
        gone = await wss(relay.port, context, rcvbuf=4096)
        session_of(relay, gone.stream).stream.transport_stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        https = Https(await tls_connect(relay.port, context))
        sinks: list[list[str]] = [[] for _ in readers]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for reader, sink in zip(readers, sinks):
                    nursery.start_soon(read_ids, reader, 40, sink)
                ids = await publish(https, 20)
                assert await gone.stream.receive_some(100)  # part of a frame, then gone: a reset, no close_notify
                sock = gone.stream.transport_stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
                ids += await publish(https, 20, start=20)
        assert all(sink == ids for sink in sinks)
        await until(lambda: relay.app.subscriber_count() == len(readers))


async def test_https_webhooks_on_one_keep_alive_connection(ca, tls_files):
    async with running_relay(tls_config(tls_files)) as relay:
        context = client_context(ca)
        subscriber = await wss(relay.port, context)
        https = Https(await tls_connect(relay.port, context))
        ids = []
        big = json.dumps({"pad": "z" * 300_000}).encode()  # many TLS records each way
        with trio.fail_after(30):
            for n in range(40):
                if n % 10 == 3:
                    status, body = await https.request("POST", "/hooks/demo", big, expect=n == 13)
                else:
                    status, body = await https.request("POST", "/hooks/demo", json.dumps({"n": n}).encode())
                assert status == 202, body
                ids.append(json.loads(body)["id"])
                assert (await https.request("GET", "/healthz"))[0] == 200
                assert (await https.request("HEAD", "/healthz"))[0] == 200
            status, page = await https.request("GET", "/")  # the inspector: a larger answer
            assert status == 200 and len(page) > 1000
            got: list[str] = []
            await read_ids(subscriber, len(ids), got)
        assert got == ids


async def test_a_clients_close_notify_ends_its_session_and_is_answered(ca, tls_files):
    async with running_relay(tls_config(tls_files)) as relay:
        context = client_context(ca)
        with trio.fail_after(10):
            # An EventSource-like subscriber says goodbye with close_notify.
            stream = await tls_connect(relay.port, context, https_compatible=False)
            await stream.send_all(b"GET /sse?channel=demo HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = b""
            while b"welcome" not in seen:
                seen += await stream.receive_some(4096)
            assert relay.app.subscriber_count() == 1
            transport, trailing = await stream.unwrap()  # ours sent; returns on the relay's close_notify
            assert trailing == b"" and await transport.receive_some(100) == b""
            await transport.aclose()
            await until(lambda: relay.app.subscriber_count() == 0)
            # A wss subscriber and a keep-alive https connection likewise.
            reader = await wss(relay.port, context)
            https = Https(await tls_connect(relay.port, context, https_compatible=False))
            assert (await https.request("GET", "/healthz"))[0] == 200
            for stream in (reader.stream, https.stream):
                transport, _ = await stream.unwrap()
                assert await transport.receive_some(100) == b""
                await transport.aclose()
            await until(lambda: relay.app.subscriber_count() == 0)




class _Output:
    def __init__(self, process) -> None:
        self.process = process
        self.text = b""

    async def until(self, marker: bytes, after: int = 0) -> int:
        while self.text.find(marker, after) < 0:
            chunk = await self.process.stdout.receive_some(65536)
            assert chunk, f"s_client ended before {marker!r}: {self.text[-2000:]!r}"
            self.text += chunk
        return self.text.find(marker, after)


@asynccontextmanager
async def openssl_sse_subscriber(ca, tmp_path, port: int, version: str):
    """``openssl s_client`` (``-msg``: it prints every TLS message) subscribed
    to /sse?channel=demo and past the welcome; killed afterwards."""
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    process = await trio.lowlevel.open_process(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_path), "-crlf", version, "-msg"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = _Output(process)
    try:
        await process.stdin.send_all(b"GET /sse?channel=demo HTTP/1.1\nHost: x\n\n")
        with trio.fail_after(20):
            await out.until(b": welcome")
        yield process, out
    finally:
        process.kill()
        await process.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_a_tls13_key_update_from_the_client_is_answered_and_events_keep_flowing(ca, tls_files, tmp_path):
    async with running_relay(tls_config(tls_files)) as relay:
        https = Https(await tls_connect(relay.port, client_context(ca)))
        async with openssl_sse_subscriber(ca, tmp_path, relay.port, "-tls1_3") as (process, out):
            with trio.fail_after(20):
                first = (await publish(https, 1, pad="a"))[0]
                await out.until(f"id: {first}".encode())
                mark = len(out.text)
                await process.stdin.send_all(b"K\n")  # KeyUpdate, and ask for ours
                await out.until(b", KeyUpdate", mark)  # s_client -msg: ">>> TLS 1.3, Handshake [...], KeyUpdate"
                # The relay answers with its own KeyUpdate (in front of its
                # next write once it has read the client's), and what follows
                # is readable under the new keys.
                n = 1
                while not re.search(rb"<<< TLS 1.3, Handshake [^\n]*KeyUpdate", out.text[mark:]):
                    assert n < 50, out.text[mark:].decode(errors="replace")
                    event = (await publish(https, 1, start=n, pad="b"))[0]
                    await out.until(f"id: {event}".encode(), mark)
                    n += 1
                last = (await publish(https, 1, start=n, pad="c"))[0]
                await out.until(f"id: {last}".encode(), mark)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_renegotiation_is_refused_and_others_go_on(ca, tls_files, tmp_path):
    async with running_relay(tls_config(tls_files)) as relay:
        context = client_context(ca)
        https = Https(await tls_connect(relay.port, context))
        reader = await wss(relay.port, context)
        async with openssl_sse_subscriber(ca, tmp_path, relay.port, "-tls1_2") as (process, out):
            with trio.fail_after(20):
                mark = len(out.text)
                await process.stdin.send_all(b"R\n")
                await out.until(b"no renegotiation", mark)  # the relay's alert
                ids = await publish(https, 3, pad="r")
                got: list[str] = []
                await read_ids(reader, 3, got)
                assert got == ids


# -- the stream itself, against trio's client --------------------------------


async def _pair(tls_files, rcvbuf: int | None = None):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    accepted = await listeners[0].accept()
    await listeners[0].aclose()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return trio.SocketStream(sock), accepted, server_context(*map(str, tls_files))


async def test_try_send_and_send_all_keep_the_byte_stream_whole_under_backpressure(ca, tls_files):
    client_sock, server_sock, context = await _pair(tls_files, rcvbuf=4096)
    server = TlsStream(server_sock, context)
    client = trio.SSLStream(client_sock, client_context(ca), server_hostname="127.0.0.1")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        assert server.try_send(b"") == 0
        # Direct sends until the kernel is full: each takes all or nothing.
        sent = bytearray()
        n = 0
        while not server.backed_up:
            piece = f"[{n}:".encode() + bytes([65 + n % 26]) * 3000 + b"]"
            assert server.try_send(piece) == len(piece)
            sent += piece
            n += 1
            assert n < 10_000
        assert server.try_send(b"more") == 0  # ciphertext waits: nothing taken
        received = bytearray()
        echoed = bytearray()

        async def client_reads() -> None:
            while len(received) < len(sent):
                received.extend(await client.receive_some())

        async def server_reads() -> None:
            # The reader waits for input while the sender waits for room.
            while len(echoed) < 5 * 1000:
                data = await server.receive_some(1000)
                assert data
                echoed.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_reads)
            tail = b"tail:" + os.urandom(200_000).hex().encode()
            sent += tail

            async def sender() -> None:
                await server.send_all(tail)

            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert server.try_send(b"x") == 0  # one sender at a time: send_all is busy
            nursery.start_soon(client_reads)
            for i in range(5):
                await client.send_all(bytes([48 + i]) * 1000)
        assert received == sent
        assert echoed == b"".join(bytes([48 + i]) * 1000 for i in range(5))
        assert not server.backed_up
        # The client ends cleanly: close_notify is end of input, and ours follows.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            assert await server.receive_some() == b""
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            server.try_send(b"after")


async def test_a_peer_that_resets_breaks_the_stream_and_is_eof_without_close_notify(ca, tls_files):
    client_sock, server_sock, context = await _pair(tls_files)
    server = TlsStream(server_sock, context)
    client = trio.SSLStream(client_sock, client_context(ca), server_hostname="127.0.0.1")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        assert server.try_send(b"hello") == 5
        assert await client.receive_some() == b"hello"
        # A close without close_notify: end of input, not an error (https-compatible).
        await client.transport_stream.aclose()
        assert await server.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the reset shows on a write soon after
                server.try_send(b"x" * 10000)
                await trio.sleep(0.01)
        await server.aclose()
