"""One outbound attempt over real sockets: the address check after DNS, the
timeout over the whole attempt, no redirect followed, what is kept of the
answer, and the error classes an attempt fails with."""

from __future__ import annotations

import socket

import trio

from receiver import Receiver, Reply
from relay.core.addresses import networks
from relay.outbound import client

LOOPBACK = networks(["127.0.0.0/8", "::1/128"])


async def test_a_name_that_resolves_to_loopback_is_refused_after_dns():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        answer = await client.post(f"http://localhost:{receiver.port}/hook", [], b"{}", timeout=5)
        assert answer.status is None and answer.error == "forbidden_address"
        assert "loopback" in answer.detail and not receiver.got
        nursery.cancel_scope.cancel()


async def test_allow_private_lets_the_attempt_through_with_its_headers_and_body():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        answer = await client.post(f"http://localhost:{receiver.port}/hook?x=1", [("X-Team", "billing")],
                                   b'{"n":1}', timeout=5, allow=LOOPBACK)
        assert answer.status == 200 and answer.error is None and answer.body == b"ok"
        (got,) = receiver.got
        assert got.target == "/hook?x=1" and got.body == b'{"n":1}'
        assert got.headers["x-team"] == "billing" and got.headers["host"] == f"localhost:{receiver.port}"
        nursery.cancel_scope.cancel()


async def test_a_redirect_is_an_answer_not_followed():
    def answer(_):
        return Reply(302, [("location", "http://169.254.169.254/latest/meta-data/")], b"moved")

    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(answer).serve)
        got = await client.post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)
        assert got.status == 302 and len(receiver.got) == 1
        nursery.cancel_scope.cancel()


async def test_the_first_4_kib_of_the_answer_and_its_retry_after_are_kept():
    def answer(_):
        return Reply(503, [("retry-after", "120")], b"x" * 10_000)

    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(answer).serve)
        got = await client.post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)
        assert got.status == 503 and got.retry_after == "120" and got.body == b"x" * 4096
        nursery.cancel_scope.cancel()


async def test_an_endpoint_that_never_answers_costs_one_timeout():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(hang=True)).serve)
        started = trio.current_time()
        got = await client.post(receiver.url, [], b"{}", timeout=0.5, allow=LOOPBACK)
        assert got.error == "timeout" and 0.5 <= trio.current_time() - started < 2
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_a_connect_error_and_tls_to_plain_http_a_tls_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    got = await client.post(f"http://127.0.0.1:{port}/hook", [], b"{}", timeout=5, allow=LOOPBACK)
    assert got.error == "connect"
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        got = await client.post(f"https://127.0.0.1:{receiver.port}/hook", [], b"{}", timeout=5, allow=LOOPBACK)
        assert got.error == "tls"
        nursery.cancel_scope.cancel()


async def test_an_unknown_host_is_a_dns_error():
    got = await client.post("http://no-such-host.invalid/hook", [], b"{}", timeout=5)
    assert got.error in ("dns", "timeout")
