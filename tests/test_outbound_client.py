"""One outbound attempt over real sockets: the address check after DNS, the
timeout over the whole attempt, no redirect followed, what is kept of the
answer, and the error classes an attempt fails with."""

from __future__ import annotations

import os
import socket
import ssl
import sys

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


# -- keep-alive: connections pooled per host -------------------------------------------------


async def test_many_attempts_to_one_host_go_over_few_connections():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True).serve)
        pool = client.Pool()
        nursery.start_soon(pool.run)

        async def sender(n: int) -> None:
            for i in range(n):
                got = await pool.post(receiver.url, [], b'{"n":%d}' % i, timeout=5, allow=LOOPBACK)
                assert got.status == 200

        async with trio.open_nursery() as senders:
            for _ in range(4):
                senders.start_soon(sender, 25)
        assert receiver.answered == 100 and len(receiver.got) == 100
        assert receiver.accepted == pool.opened <= 4
        nursery.cancel_scope.cancel()


async def test_connection_close_answers_are_not_reused_and_each_attempt_arrives_once():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)  # says Connection: close
        pool = client.Pool()
        for i in range(10):
            got = await pool.post(receiver.url, [("webhook-id", f"msg_{i}")], b"{}", timeout=5, allow=LOOPBACK)
            assert got.status == 200
        assert receiver.ids() == [f"msg_{i}" for i in range(10)]
        assert receiver.accepted == pool.opened == 10 and pool.idle == 0
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_connection_the_receiver_closed_while_idle_is_not_reused():
    async with trio.open_nursery() as nursery:
        # Keep-alive answers, but the receiver hangs up right after each one.
        receiver = await nursery.start(Receiver(lambda _: Reply(close=True), keep_alive=True).serve)
        pool = client.Pool()
        for i in range(10):
            got = await pool.post(receiver.url, [("webhook-id", f"msg_{i}")], b"{}", timeout=5, allow=LOOPBACK)
            assert got.status == 200
            await receiver.until_closed(i + 1)  # its FIN has arrived before the next attempt
        assert receiver.ids() == [f"msg_{i}" for i in range(10)] and receiver.answered == 10
        assert receiver.accepted == 10
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_stale_pooled_connection_is_replaced_and_the_request_sent_once_more():
    # The race a pool meets: the receiver ends an idle connection just as
    # a request goes out on it. Here it reads the second request on the
    # first connection and hangs up without an answer.
    replies = iter([Reply(), Reply(drop=True), Reply(), Reply()])
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: next(replies), keep_alive=True).serve)
        pool = client.Pool()
        first = await pool.post(receiver.url, [("webhook-id", "msg_1")], b"{}", timeout=5, allow=LOOPBACK)
        second = await pool.post(receiver.url, [("webhook-id", "msg_2")], b"{}", timeout=5, allow=LOOPBACK)
        third = await pool.post(receiver.url, [("webhook-id", "msg_3")], b"{}", timeout=5, allow=LOOPBACK)
        assert (first.status, second.status, third.status) == (200, 200, 200), second
        assert receiver.ids() == ["msg_1", "msg_2", "msg_2", "msg_3"]  # the dropped one, then once more
        assert receiver.answered == 3 and receiver.accepted == pool.opened == 2
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_new_connection_closed_without_an_answer_is_a_failed_attempt_not_retried():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(drop=True), keep_alive=True).serve)
        got = await client.Pool().post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)
        assert got.status is None and got.error == "protocol"
        assert len(receiver.got) == 1 and receiver.accepted == 1
        nursery.cancel_scope.cancel()


async def test_idle_connections_close_after_the_idle_timeout_and_all_when_the_pool_ends():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True).serve)
        other = await nursery.start(Receiver(keep_alive=True).serve)
        async with trio.open_nursery() as pools:
            pool = client.Pool(idle_timeout=0.2)
            pools.start_soon(pool.run)
            assert (await pool.post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)).status == 200
            assert pool.idle == 1
            await receiver.until_closed(1, timeout=5)  # the pool closed it: idle too long
            assert pool.idle == pool.open == 0
            assert (await pool.post(other.url, [], b"{}", timeout=5, allow=LOOPBACK)).status == 200
            assert pool.idle == 1
            pools.cancel_scope.cancel()
        await other.until_closed(1, timeout=5)  # the pool ended: nothing left open
        assert pool.open == 0
        nursery.cancel_scope.cancel()


async def test_idle_connections_count_in_max_connections_and_the_oldest_gives_way():
    async with trio.open_nursery() as nursery:
        receivers = [await nursery.start(Receiver(keep_alive=True).serve) for _ in range(3)]
        pool = client.Pool(max_connections=2)
        for r in receivers:
            assert (await pool.post(r.url, [], b"{}", timeout=5, allow=LOOPBACK)).status == 200
            assert pool.open <= 2
        await receivers[0].until_closed(1, timeout=5)  # the oldest idle one made room
        assert [r.closed for r in receivers] == [1, 0, 0] and pool.open == pool.idle == 2
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_reused_connection_is_still_checked_against_the_callers_address_rules():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True).serve)
        pool = client.Pool()
        assert (await pool.post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)).status == 200
        refused = await pool.post(receiver.url, [], b"{}", timeout=5)
        assert refused.error == "forbidden_address" and len(receiver.got) == 1
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_hostname_resolving_to_loopback_is_refused_by_the_pool_too():
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True).serve)
        pool = client.Pool()
        got = await pool.post(f"http://localhost:{receiver.port}/hook", [], b"{}", timeout=5)
        assert got.error == "forbidden_address" and "loopback" in got.detail
        assert receiver.accepted == 0 and pool.open == 0
        nursery.cancel_scope.cancel()


# -- TLS: verified against the system's CA store, or SSL_CERT_FILE ---------------------------


async def test_tls_is_verified_against_the_given_ca_and_the_connection_reused(ca):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True, tls=server).serve)
        pool = client.Pool(tls=trusting)
        for _ in range(3):
            assert (await pool.post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)).status == 200
        assert receiver.accepted == 1
        untrusting = await client.Pool().post(receiver.url, [], b"{}", timeout=5, allow=LOOPBACK)
        assert untrusting.error == "tls" and "certificate verify failed" in untrusting.detail
        pool.close()
        nursery.cancel_scope.cancel()


ATTEMPT = """
import sys, trio
from relay.core.addresses import networks
from relay.outbound import client
answer = trio.run(lambda: client.Pool().post(sys.argv[1], [], b"{}", timeout=5, allow=networks(["127.0.0.0/8"])))
print(answer.status, answer.error)
"""


async def test_tls_trusts_the_ca_file_that_ssl_cert_file_names(ca, tmp_path):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(tls=server).serve)

        async def attempt(cert_file: str) -> str:
            env = {**os.environ, "SSL_CERT_FILE": cert_file}
            done = await trio.run_process([sys.executable, "-c", ATTEMPT, receiver.url], env=env,
                                          capture_stdout=True, capture_stderr=True)
            return done.stdout.decode().strip()

        assert await attempt(str(tmp_path / "ca.pem")) == "200 None"
        # The system's store alone does not know the test CA.
        assert await attempt(ssl.get_default_verify_paths().openssl_cafile) == "None tls"
        nursery.cancel_scope.cancel()
