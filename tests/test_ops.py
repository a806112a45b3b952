"""Operations (contract section 7): ``/metrics`` read by a Prometheus parser,
the admin views and their token, one structured log line per webhook, and the
inspector page as a browser receives it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

import rawws
from conftest import config_text, running_relay

GITHUB_ROUTE = """
[routes.hub]
channel = "github.{header:X-GitHub-Event}"
verify = "github"
secret = "It's a Secret to Everybody"
forward_headers = ["X-GitHub-Event", "X-GitHub-Delivery"]
"""


async def scrape(http, relay) -> dict[tuple[str, frozenset], float]:
    r = await http.get(f"{relay.base}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_count_known_traffic_in_prometheus_text(http):
    async with running_relay() as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo") as ws:
            await ws.get_message()
            for n in range(3):
                assert (await http.post(f"{relay.base}/hooks/demo", json={"n": n})).status_code == 202
                await ws.get_message()
            assert (await http.post(f"{relay.base}/hooks/nope", json={})).status_code == 404
            bad = await http.post(f"{relay.base}/hooks/demo", content=b"{", headers={"Content-Type": "application/json"})
            assert bad.status_code == 400
            live = await scrape(http, relay)
        assert value(live, "relay_webhooks_total", route="demo", status="202") == 3
        assert value(live, "relay_webhooks_total", route="demo", status="400") == 1
        assert value(live, "relay_webhooks_total", route="", status="404") == 1
        assert value(live, "relay_events_stored_total") == 3
        assert value(live, "relay_frames_sent_total", transport="ws") == 3
        assert value(live, "relay_frames_sent_total", transport="sse") == 0
        assert value(live, "relay_subscribers", transport="ws") == 1
        assert value(live, "relay_subscribers", transport="sse") == 0
        assert value(live, "relay_slow_consumers_total", policy="disconnect") == 0
        assert value(live, "relay_slow_consumers_total", policy="drop") == 0
        # One observation per delivered event, each well under a second here.
        assert value(live, "relay_delivery_seconds_count") == 3
        assert 0 < value(live, "relay_delivery_seconds_sum") < 3
        assert value(live, "relay_delivery_seconds_bucket", le="1.0") == 3
        assert value(live, "relay_delivery_seconds_bucket", le="+Inf") == 3

        # The subscriber left: the gauge falls, the counters keep their counts.
        with trio.fail_after(10):
            while value(after := await scrape(http, relay), "relay_subscribers", transport="ws") != 0:
                await trio.sleep(0.01)
        assert value(after, "relay_frames_sent_total", transport="ws") == 3
        assert value(after, "relay_webhooks_total", route="demo", status="202") == 3
        # An event nobody subscribes to is stored and counted, but not timed: nothing was sent.
        assert (await http.post(f"{relay.base}/hooks/demo", json={"n": 4})).status_code == 202
        later = await scrape(http, relay)
        assert value(later, "relay_events_stored_total") == 4
        assert value(later, "relay_delivery_seconds_count") == 3


async def test_a_duplicate_delivery_counts_as_200_and_stores_nothing(http):
    async with running_relay(config_text(GITHUB_ROUTE)) as relay:
        body = b'{"zen": "Design for failure."}'
        headers = github_headers(body, "push", delivery="d-1")
        for expected in (202, 200):
            r = await http.post(f"{relay.base}/hooks/hub", content=body, headers=headers)
            assert r.status_code == expected, r.text
        samples = await scrape(http, relay)
    assert value(samples, "relay_webhooks_total", route="hub", status="202") == 1
    assert value(samples, "relay_webhooks_total", route="hub", status="200") == 1
    assert value(samples, "relay_events_stored_total") == 1


async def test_a_slow_consumer_shows_in_the_metrics_by_policy(http):
    async with running_relay(config_text("[delivery]\nqueue = 4\n")) as relay:
        stream = await rawws.connect(relay.port, "channel=demo", rcvbuf=4096)
        await rawws.Reader(stream).read_head()
        pad = "x" * 32_000
        with trio.fail_after(60):
            for n in range(400):
                await http.post(f"{relay.base}/hooks/demo", json={"n": n, "pad": pad})
                if value(await scrape(http, relay), "relay_slow_consumers_total", policy="disconnect") == 1:
                    break
            else:
                raise AssertionError("the stalled subscriber never overflowed")
        await stream.aclose()
        assert value(await scrape(http, relay), "relay_slow_consumers_total", policy="drop") == 0


async def test_metrics_speak_openmetrics_to_a_scraper_that_asks_for_it(http, relay):
    r = await http.get(f"{relay.base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


async def test_metrics_and_admin_views_refuse_other_methods(http, relay):
    for path in ("/metrics", "/admin/routes", "/admin/channels", "/"):
        r = await http.post(f"{relay.base}{path}", json={})
        assert r.status_code == 405, path
        assert r.headers["allow"] == "GET"


# -- admin --------------------------------------------------------------------

ADMIN = '[auth]\nadmin_token_env = "RELAY_ADMIN_TOKEN"\n'


async def test_admin_views_refuse_a_missing_or_wrong_token_with_401(http):
    async with running_relay(config_text(ADMIN), env={"RELAY_ADMIN_TOKEN": "let-me-in"}) as relay:
        for path in ("/admin/routes", "/admin/channels"):
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic let-me-in"},
                            {"Authorization": "Bearer"}):
                r = await http.get(f"{relay.base}{path}", headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "let-me-in" not in r.text
            r = await http.get(f"{relay.base}{path}", headers={"Authorization": "Bearer let-me-in"})
            assert r.status_code == 200, path


async def test_admin_views_are_open_when_no_admin_token_is_configured(http, relay):
    assert (await http.get(f"{relay.base}/admin/routes")).status_code == 200
    assert (await http.get(f"{relay.base}/admin/channels")).status_code == 200


async def test_admin_routes_show_each_route_with_its_counts(http, relay):
    for _ in range(2):
        assert (await http.post(f"{relay.base}/hooks/demo", json={})).status_code == 202
    assert (await http.post(f"{relay.base}/hooks/signed", json={})).status_code == 401
    assert (await http.post(f"{relay.base}/hooks/nope", json={})).status_code == 404
    view = (await http.get(f"{relay.base}/admin/routes")).json()
    routes = {r["route"]: r for r in view["routes"]}
    assert set(routes) == {"demo", "gh", "pay", "signed"}
    assert routes["demo"] | {"rate": None} == {
        "route": "demo", "path": "/hooks/demo", "channel": "demo", "verify": "none",
        "accepted": 2, "duplicates": 0, "rejected": 0, "statuses": {"202": 2}, "rate": None}
    assert routes["signed"]["rejected"] == 1 and routes["signed"]["statuses"] == {"401": 1}
    assert routes["gh"]["accepted"] == 0
    assert view["unknown_route"] == 1


async def test_admin_channels_show_subscribers_last_id_and_event_counts(http, relay):
    async with open_websocket_url(f"{relay.ws_base}/ws?channel=demo,github.*,quiet") as ws:
        await ws.get_message()
        ids = []
        for n in range(2):
            ids.append((await http.post(f"{relay.base}/hooks/demo", json={"n": n})).json()["id"])
            await ws.get_message()
        r = await http.post(f"{relay.base}/hooks/gh", json={}, headers={"X-GitHub-Event": "push"})
        await ws.get_message()
        view = (await http.get(f"{relay.base}/admin/channels")).json()
    assert view["head"] == r.json()["id"]
    channels = {c["channel"]: c for c in view["channels"]}
    assert channels["demo"] == {"channel": "demo", "subscribers": 1, "last_id": ids[-1], "events": 2}
    assert channels["github.push"] == {"channel": "github.push", "subscribers": 1, "last_id": r.json()["id"],
                                       "events": 1}
    # A channel with a subscriber and no event yet is listed too.
    assert channels["quiet"] == {"channel": "quiet", "subscribers": 1, "last_id": "", "events": 0}
    assert {"pattern": "github.*", "subscribers": 1} in view["patterns"]


# -- logs ---------------------------------------------------------------------


def github_headers(body: bytes, event: str, delivery: str, secret: bytes = b"It's a Secret to Everybody"):
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature}


async def test_json_logs_have_one_line_per_webhook_without_secrets_or_payloads(daemon, http):
    text = config_text('[log]\nformat = "json"\n' + GITHUB_ROUTE)
    relay = daemon(text)
    body = b'{"zen": "payload-marker-5f3a"}'
    ok = await http.post(f"{relay.base}/hooks/hub", content=body, headers=github_headers(body, "push", "dlv-1"))
    assert ok.status_code == 202
    forged = github_headers(body, "push", "dlv-2", secret=b"wrong")
    assert (await http.post(f"{relay.base}/hooks/hub", content=body, headers=forged)).status_code == 401
    assert (await http.post(f"{relay.base}/hooks/nope", content=body,
                            headers={"Content-Type": "application/json"})).status_code == 404
    relay.signal(signal.SIGTERM)
    # Read the pipe ourselves: Daemon.wait (communicate with a timeout, after
    # start() read the pipe with os.read) came back without the lines logged
    # after the start.
    assert await trio.to_thread.run_sync(relay.proc.wait, 15) == 0
    everything = relay.stderr.decode() + (await trio.to_thread.run_sync(relay.proc.stderr.read)).decode()
    lines = [line for line in everything.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]  # every line a JSON object
    webhooks = [r for r in records if r["msg"] == "webhook"]
    assert [(w["route"], w["status"]) for w in webhooks] == [("hub", 202), ("hub", 401), ("nope", 404)]
    first = webhooks[0]
    assert first["channel"] == "github.push"
    assert first["event_id"] == ok.json()["id"]
    assert first["delivery"] == "dlv-1"
    assert first["level"] == "info" and first["duration_ms"] >= 0
    assert webhooks[1]["event_id"] is None and webhooks[1]["channel"] is None
    assert "payload-marker-5f3a" not in everything
    assert "It's a Secret" not in everything and "Secret to Everybody" not in everything
    assert ok.request.headers["X-Hub-Signature-256"] not in everything


async def test_a_webhooks_log_line_is_written_while_the_relay_stays_quiet(daemon, http):
    # Lines are written in batches; one webhook and then silence must still
    # show up promptly, not at exit.
    relay = daemon(config_text('[log]\nformat = "json"\n'))
    r = await http.post(f"{relay.base}/hooks/demo", content=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 202
    fd = relay.proc.stderr.fileno()
    seen = b""
    with trio.fail_after(5):
        while b'"msg":"webhook"' not in seen:
            await trio.lowlevel.wait_readable(fd)
            seen += os.read(fd, 65536)
    line = next(line for line in seen.splitlines() if b'"msg":"webhook"' in line)
    assert json.loads(line)["event_id"] == r.json()["id"]


# -- the inspector page, as served --------------------------------------------


async def test_the_inspector_page_is_self_contained_html(http, relay):
    r = await http.get(f"{relay.base}/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert "<title>relay inspector</title>" in page
    # Everything ships in the page: no script, style or font from elsewhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp


# -- what clients that break HTTP cost in metrics and logs ----------------------

WEBHOOK_HEAD = b"POST /hooks/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def test_a_malformed_chunked_body_is_counted_with_the_400_it_was_answered(http, relay):
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    async with stream:
        await stream.send_all(WEBHOOK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
        with trio.fail_after(5):
            answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    samples = await scrape(http, relay)
    assert value(samples, "relay_webhooks_total", route="demo", status="400") == 1
    assert not [labels for name, labels in samples if name == "relay_webhooks_total" and ("status", "500") in labels]


async def test_clients_that_leave_after_a_413_or_mid_body_cost_one_info_line_each(daemon, http):
    relay = daemon(config_text().replace("shutdown_grace", "max_body_bytes = 100\nshutdown_grace"))
    port = int(relay.base.rsplit(":", 1)[1])
    rounds = 10

    async def leave(length: int, *, reset: bool) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if length > 100:
            await stream.send_all(WEBHOOK_HEAD + b"Content-Length: %d\r\n\r\n" % length + b"x" * 50)
            with trio.fail_after(5):
                assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 413 ")
        else:
            # Expect: 100-continue makes the relay say when it waits for the body.
            await stream.send_all(WEBHOOK_HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % length)
            with trio.fail_after(5):
                assert await stream.receive_some(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b'{"a":')  # ...and the rest never comes
        if reset:  # close with RST (SO_LINGER 0), as a killed client does
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    for _ in range(rounds):
        await leave(5000, reset=False)
        await leave(5000, reset=True)
        await leave(50, reset=False)
        await leave(50, reset=True)
    async def counted() -> float:
        return sum(v for (name, _), v in (await scrape(http, relay)).items() if name == "relay_webhooks_total")

    with trio.fail_after(10):  # until the relay has seen the last client leave
        while await counted() < 4 * rounds:
            await trio.sleep(0.01)
    relay.signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(relay.proc.wait, 15) == 0
    everything = relay.stderr.decode() + (await trio.to_thread.run_sync(relay.proc.stderr.read)).decode()
    lines = everything.splitlines()
    webhooks = [line for line in lines if "relay: webhook " in line]
    assert "Traceback" not in everything
    assert all(" INFO " in line for line in webhooks) and len(webhooks) == 4 * rounds
    statuses = sorted(re.search(r" status=(\d+) ", line).group(1) for line in webhooks)
    # A client that closes mid-body is sent a 400; one that resets was sent nothing (499).
    assert statuses == sorted(["413"] * 2 * rounds + ["400"] * rounds + ["499"] * rounds)
    assert len(lines) == len(webhooks) + 2  # besides them: "listening on" and "shutting down"
