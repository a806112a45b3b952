"""Outbound webhooks (contract section 9) with a real relay and real
receivers on loopback: what is sent and how it is signed (checked with the
official ``standardwebhooks`` library), retries, 410 and disabling, failed
deliveries and ``recover``, isolation between endpoints, ``ordered``, the
admin API, and the address rules."""

from __future__ import annotations

import json

import httpx
import pytest
import standardwebhooks
import trio

from conftest import config_text, running_relay, until
from receiver import Receiver, Reply
from relay.core import whsec

SECRET = whsec.make(bytes(range(32)))


def relay_config(endpoints: str = "", outbound: str = "") -> str:
    return config_text(f"""
[outbound]
allow_private = ["127.0.0.0/8"]
retry = [0, 0.2, 0.2]
jitter = 0.0
timeout = 5.0
{outbound}
{endpoints}
""")


def endpoint(name: str, url: str, channels: str = '["pay.*"]', extra: str = "") -> str:
    return f"""
[endpoints.{name}]
url = "{url}"
channels = {channels}
secret = "{SECRET}"
{extra}
"""


async def post(http, relay, route: str, obj, **headers) -> str:
    r = await http.post(f"{relay.base}/hooks/{route}", content=json.dumps(obj), headers={
        "Content-Type": "application/json", **headers})
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def listed(http, url: str, count: int) -> list:
    """GET ``url`` until it lists ``count`` items (verdicts are written in batches)."""
    with trio.fail_after(10):
        while len(items := (await http.get(url)).json()) < count:
            await trio.sleep(0.02)
    return items


def verified(received) -> dict:
    """The official library checks the signature against the exact body."""
    return standardwebhooks.Webhook(SECRET).verify(received.body, received.headers)


async def test_each_matching_event_is_posted_once_signed_and_byte_for_byte(http):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            body = '{"type": "charge",  "amount": 12}\n'
            r = await http.post(f"{relay.base}/hooks/pay", content=body, headers={"Content-Type": "application/json"})
            first = r.json()["id"]
            await post(http, relay, "demo", {"n": 1})  # another channel: not for this endpoint
            second = await post(http, relay, "pay", {"type": "refund"})
            got = await receiver.until(2)
            await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    # Not ordered: the two may be in flight at once and arrive either way round.
    assert sorted(g.headers["webhook-id"] for g in receiver.got) == sorted([first, second])
    charge = next(g for g in got if g.headers["webhook-id"] == first)
    assert charge.body == body.encode()
    assert verified(charge) == {"type": "charge", "amount": 12}
    assert charge.headers["relay-channel"] == "pay.charge" and charge.headers["relay-attempt"] == "1"
    assert charge.headers["content-type"] == "application/json"


async def test_an_event_just_after_another_is_posted_without_waiting_for_a_batch_window(autojump_clock):
    """The relay looks for new events in windows of a couple of
    milliseconds (so a burst costs one look), not of tens: an event
    published while the previous one is being delivered reaches its
    endpoint a few milliseconds after its acknowledgement (trio's virtual
    clock: the same every run)."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=100) as http:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            await post(http, relay, "pay", {"type": "charge", "n": 1})
            await receiver.until(1)
            acknowledged = trio.current_time()
            await post(http, relay, "pay", {"type": "charge", "n": 2})
            second = (await receiver.until(2))[1]
        nursery.cancel_scope.cancel()
    assert second.at - acknowledged < 0.01


async def test_a_webhook_is_read_from_the_log_for_the_endpoints_that_take_it_not_for_every_endpoint(http):
    """With many endpoints on other channels (here 40, idle), each webhook
    costs log reads for the endpoints whose channels take it, not one per
    endpoint: the relay's work per event does not grow with endpoints that
    have nothing to do with it. Every event still arrives, and an endpoint
    added through the API, or changed to take the channel, gets the next."""
    idle = "".join(endpoint(f"idle{i}", "http://127.0.0.1:9/", channels=f'["other{i}"]') for i in range(40))
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url) + idle)) as relay:
            store = relay.app.store
            reads: list[object] = []
            read_page = store.read_page

            async def counted(after, patterns, limit):
                reads.append(patterns)
                return await read_page(after, patterns, limit)

            store.read_page = counted
            await trio.sleep(0.1)  # the first look at start, for every endpoint
            reads.clear()
            for n in range(10):
                await post(http, relay, "pay", {"type": "charge", "n": n})
                await receiver.until(n + 1)
            assert len(reads) <= 2 * 10, len(reads)  # not 41 a webhook
            assert all(patterns == ["pay.*"] for patterns in reads)
            r = await http.post(f"{relay.base}/admin/endpoints",
                                json={"url": receiver.url.replace("/hook", "/new"), "channels": ["pay.*"]})
            assert r.status_code == 201, r.text
            last = await post(http, relay, "pay", {"type": "charge", "n": 10})
            got = await receiver.until(12)
        nursery.cancel_scope.cancel()
    assert sorted(g.target for g in got if g.headers["webhook-id"] == last) == ["/hook", "/new"]


async def test_a_failed_attempt_is_retried_with_the_same_id_and_a_fresh_signature(http):
    answers = iter([Reply(500, body=b"boom"), Reply(503, [("retry-after", "0")]), Reply(200)])
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: next(answers)).serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            event_id = await post(http, relay, "pay", {"type": "x"})
            got = await receiver.until(3)
            await until(lambda: relay.app.outbound.known["billing"].delivered == 1)
            attempts = await listed(http, f"{relay.base}/admin/endpoints/billing/attempts", 3)
            failed = await listed(http, f"{relay.base}/admin/endpoints/billing/attempts?status=failed", 2)
        nursery.cancel_scope.cancel()
    assert [g.headers["webhook-id"] for g in got] == [event_id] * 3
    assert [g.headers["relay-attempt"] for g in got] == ["1", "2", "3"]
    for g in got:
        verified(g)
    assert got[1].at - got[0].at >= 0.2 - 0.05  # the schedule's delay
    assert [(a["attempt"], a["status"]) for a in attempts] == [(3, 200), (2, 503), (1, 500)]
    assert [a["attempt"] for a in failed] == [2, 1] and failed[1]["response"] == "boom"


async def test_410_disables_the_endpoint_and_enabling_it_delivers_the_backlog(http):
    gone = [True]

    def answer(_):
        return Reply(410) if gone[0] else Reply(200)

    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(answer).serve)
        text = relay_config().replace('channel = "{route}"', 'channel = "{route}"', 1)
        async with running_relay(text) as relay:
            r = await http.post(f"{relay.base}/admin/endpoints", json={
                "url": receiver.url, "channels": ["pay.*"], "secret": SECRET, "id": "app"})
            assert r.status_code == 201, r.text
            first = await post(http, relay, "pay", {"type": "a"})
            await receiver.until(1)
            await until(lambda: not relay.app.outbound.known["app"].enabled)
            shown = (await http.get(f"{relay.base}/admin/endpoints/app")).json()
            assert shown["enabled"] is False and "410" in shown["disabled_reason"]
            second = await post(http, relay, "pay", {"type": "b"})
            await trio.sleep(0.5)
            assert len(receiver.got) == 1  # disabled: nothing more is sent
            gone[0] = False
            r = await http.patch(f"{relay.base}/admin/endpoints/app", json={"enabled": True})
            assert r.status_code == 200 and r.json()["enabled"] is True
            got = await receiver.until(3)
        nursery.cancel_scope.cancel()
    assert [g.headers["webhook-id"] for g in got[1:]] == [first, second]


async def test_a_delivery_that_fails_its_schedule_is_kept_and_recover_sends_it_again(http):
    failing = [True]
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(500 if failing[0] else 204)).serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            event_id = await post(http, relay, "pay", {"type": "x"})
            await receiver.until(3)
            await until(lambda: relay.app.outbound.known["billing"].failed == 1)
            listed = (await http.get(f"{relay.base}/admin/endpoints")).json()
            assert listed[0]["failed"] == 1 and listed[0]["pending"] == 0
            failing[0] = False
            r = await http.post(f"{relay.base}/admin/endpoints/billing/recover", json={"since": ""})
            assert r.status_code == 202 and r.json()["recovered"] == 1
            got = await receiver.until(4)
            await until(lambda: relay.app.outbound.known["billing"].delivered == 1)
        nursery.cancel_scope.cancel()
    assert got[3].headers["webhook-id"] == event_id and got[3].headers["relay-attempt"] == "1"


async def test_an_endpoint_that_never_answers_does_not_delay_another(http):
    async with trio.open_nursery() as nursery:
        stuck = await nursery.start(Receiver(lambda _: Reply(hang=True)).serve)
        healthy = await nursery.start(Receiver().serve)
        config = relay_config(endpoint("stuck", stuck.url) + endpoint("healthy", healthy.url),
                              outbound="max_in_flight = 2")
        async with running_relay(config.replace("timeout = 5.0", "timeout = 30.0")) as relay:
            ids = [await post(http, relay, "pay", {"type": "t", "n": n}) for n in range(20)]
            started = trio.current_time()
            got = await healthy.until(20, timeout=10)
            took = trio.current_time() - started
            assert len(stuck.got) <= 2  # its cap, hanging
        nursery.cancel_scope.cancel()
    assert [g.headers["webhook-id"] for g in got] == ids or sorted(g.headers["webhook-id"] for g in got) == sorted(ids)
    assert took < 5, took


async def test_deliveries_to_an_endpoint_reuse_a_few_connections_all_closed_when_the_relay_stops(http):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(keep_alive=True).serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            ids = [await post(http, relay, "pay", {"type": "t", "n": n}) for n in range(40)]
            got = await receiver.until(40)
            await until(lambda: relay.app.outbound.known["billing"].delivered == 40)
            assert receiver.closed == 0  # kept open between deliveries
        await receiver.until_closed(receiver.accepted, timeout=5)  # the relay left nothing open
        nursery.cancel_scope.cancel()
    assert sorted(g.headers["webhook-id"] for g in got) == sorted(ids)
    assert 1 <= receiver.accepted <= 8  # max_in_flight, not one per delivery


async def test_a_receiver_that_hangs_up_after_each_answer_still_gets_every_event_once(http):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(close=True), keep_alive=True).serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            ids = [await post(http, relay, "pay", {"type": "t", "n": n}) for n in range(30)]
            await until(lambda: relay.app.outbound.known["billing"].delivered == 30)
            attempts = await listed(http, f"{relay.base}/admin/endpoints/billing/attempts?limit=100", 30)
        nursery.cancel_scope.cancel()
    assert sorted(receiver.ids()) == sorted(ids)  # each once: none lost, none doubled
    assert {a["status"] for a in attempts} == {200} and len(attempts) == 30


async def test_an_ordered_endpoint_gets_one_attempt_at_a_time_in_log_order(http):
    seen: list[str] = []

    def answer(r):
        seen.append(r.headers["webhook-id"])
        return Reply(500) if len(seen) == 1 else Reply(200, delay=0.02)

    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(answer).serve)
        async with running_relay(relay_config(endpoint("fifo", receiver.url, extra="ordered = true"))) as relay:
            ids = [await post(http, relay, "pay", {"type": "t", "n": n}) for n in range(6)]
            await receiver.until(7)
        nursery.cancel_scope.cancel()
    # The first failed once and was retried before anything after it went.
    assert seen == [ids[0], *ids]


async def test_the_api_creates_lists_rotates_and_deletes_endpoints_and_backfills(http):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        async with running_relay(relay_config(endpoint("conf", receiver.url))) as relay:
            old = await post(http, relay, "pay", {"type": "t", "n": 0})
            await receiver.until(1)
            r = await http.post(f"{relay.base}/admin/endpoints", json={
                "url": receiver.url + "?api=1", "channels": ["pay.*"], "since": ""})
            assert r.status_code == 201, r.text
            created = r.json()
            assert created["secret"].startswith("whsec_") and created["id"].startswith("ep_")
            got = await receiver.until(2)  # the stored event, backfilled
            assert got[1].target == "/hook?api=1" and got[1].headers["webhook-id"] == old
            standardwebhooks.Webhook(created["secret"]).verify(got[1].body, got[1].headers)
            r = await http.post(f"{relay.base}/admin/endpoints/{created['id']}/rotate")
            new_secret = r.json()["secret"]
            await post(http, relay, "pay", {"type": "t", "n": 1})
            got = await receiver.until(4)
            rotated = next(g for g in got[2:] if g.target == "/hook?api=1")
            assert len(rotated.headers["webhook-signature"].split(" ")) == 2
            for secret in (created["secret"], new_secret):
                standardwebhooks.Webhook(secret).verify(rotated.body, rotated.headers)
            ids = [e["id"] for e in (await http.get(f"{relay.base}/admin/endpoints")).json()]
            assert ids == sorted(["conf", created["id"]])
            assert (await http.patch(f"{relay.base}/admin/endpoints/conf", json={"enabled": False})).status_code == 409
            assert (await http.delete(f"{relay.base}/admin/endpoints/conf")).status_code == 409
            assert (await http.delete(f"{relay.base}/admin/endpoints/{created['id']}")).status_code == 204
            assert (await http.get(f"{relay.base}/admin/endpoints/{created['id']}")).status_code == 404
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("body, field", [
    ({"url": "http://10.0.0.5/x", "channels": ["a"]}, "$.url"),
    ({"url": "http://169.254.169.254/latest", "channels": ["a"]}, "$.url"),
    ({"url": "ftp://example.com/x", "channels": ["a"]}, "$.url"),
    ({"url": "https://example.com/x", "channels": ["bad channel"]}, "$.channels[0]"),
    ({"url": "https://example.com/x", "channels": []}, "$.channels"),
    ({"url": "https://example.com/x", "channels": ["a"], "secret": "nope"}, "$.secret"),
    ({"url": "https://example.com/x", "channels": ["a"], "format": "xml"}, "$.format"),
    ({"url": "https://example.com/x", "channels": ["a"], "headers": {"Host": "x"}}, "$.headers.Host"),
    ({"url": "https://example.com/x", "channels": ["a"], "rate": -1}, "$.rate"),
    ({"channels": ["a"]}, "url"),
])
async def test_the_api_refuses_a_bad_endpoint_with_422_naming_the_field(http, body, field):
    async with running_relay(relay_config(outbound="").replace('allow_private = ["127.0.0.0/8"]', "")) as relay:
        r = await http.post(f"{relay.base}/admin/endpoints", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


async def test_a_name_that_resolves_to_loopback_is_refused_without_allow_private(http):
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver().serve)
        text = relay_config(endpoint("local", f"http://localhost:{receiver.port}/hook"))
        text = text.replace('allow_private = ["127.0.0.0/8"]', "")
        async with running_relay(text) as relay:
            await post(http, relay, "pay", {"type": "t", "n": 1})
            await until(lambda: relay.app.outbound.known["local"].last_failure is not None)
            (attempt,) = await listed(http, f"{relay.base}/admin/endpoints/local/attempts?limit=1", 1)
        nursery.cancel_scope.cancel()
    assert attempt["error"] == "forbidden_address" and "loopback" in attempt["response"]
    assert not receiver.got


async def test_the_metrics_count_attempts_by_outcome(http):
    answers = iter([Reply(500), Reply(200)])
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: next(answers)).serve)
        async with running_relay(relay_config(endpoint("billing", receiver.url))) as relay:
            await post(http, relay, "pay", {"type": "t", "n": 1})
            await receiver.until(2)
            await until(lambda: relay.app.outbound.known["billing"].delivered == 1)
            text = (await http.get(f"{relay.base}/metrics")).text
        nursery.cancel_scope.cancel()
    assert 'relay_outbound_attempts_total{endpoint="billing",outcome="5xx"} 1.0' in text
    assert 'relay_outbound_attempts_total{endpoint="billing",outcome="2xx"} 1.0' in text
    assert "relay_outbound_delivered_seconds_count 1.0" in text
    assert 'relay_outbound_pending{endpoint="billing"} 0.0' in text


async def test_deliveries_waiting_on_retries_are_rows_not_tasks_and_fan_out_goes_on(http):
    """A thousand deliveries (an endpoint's window) failed once and wait an
    hour for their retry, and more events wait in the log behind them: the
    relay holds no task for any of them, and a subscriber still gets a new
    event at once."""
    from relay.outbound.service import WINDOW

    from trio_websocket import open_websocket_url

    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(Receiver(lambda _: Reply(500)).serve)
        config = relay_config(endpoint("down", receiver.url), outbound="max_in_flight = 64")
        config = config.replace("retry = [0, 0.2, 0.2]", "retry = [0, 3600, 3600]")
        async with running_relay(config) as relay:
            outbound = relay.app.outbound
            await until(lambda: "down" in outbound.live)
            live = outbound.live["down"]
            live.plan.cap = 64  # keep it from probing one at a time, to make the 2,000 quickly
            tasks_before = _tasks()
            for n in range(WINDOW + 200):
                await post(http, relay, "pay", {"type": "t", "n": n})
                live.plan.cap = 64
            await until(lambda: len(receiver.got) >= WINDOW and not live.plan.in_flight, 60)
            assert len(live.plan) == WINDOW  # all waiting for their second attempt; the rest in the log
            assert _tasks() - tasks_before < 10, (_tasks(), tasks_before)
            async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
                await ws.get_message()
                event_id = await post(http, relay, "demo", {"n": 1})
                with trio.fail_after(2):
                    assert json.loads(await ws.get_message())["id"] == event_id
        nursery.cancel_scope.cancel()


def _tasks() -> int:
    """Every task under the root, counted."""
    count, todo = 0, [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count
