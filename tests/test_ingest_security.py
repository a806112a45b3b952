"""What senders and security reviewers check: signature presets end to end,
replay windows, dedupe (also across a restart), rate limits, schemas, and
random input that must never store anything unsigned."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from conftest import config_text, running_relay

WHSEC = "whsec_" + base64.b64encode(b"standard-key-0123456789").decode()
WHSEC_NEW = "whsec_" + base64.b64encode(b"rotated-key-9876543210").decode()

PRESETS = f"""
[routes.github]
channel = "github.{{header:X-GitHub-Event}}"
verify = "github"
secret = "gh-secret"
forward_headers = ["X-GitHub-Event", "X-GitHub-Delivery"]

[routes.stripe]
channel = "stripe.{{json:type}}"
verify = "stripe"
secret = "whsec_stripe"

[routes.slack]
channel = "slack"
verify = "slack"
secret = "slack-signing"

[routes.shopify]
channel = "shopify.{{header:X-Shopify-Topic}}"
verify = "shopify"
secret = "shop-secret"

[routes.standard]
channel = "std"
verify = "standard"
secret = ["{WHSEC}", "{WHSEC_NEW}"]

[routes.limited]
channel = "limited"
rate = 1.0
burst = 2
"""

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_STATUSES = {200, 202, 400, 401, 404, 405, 413, 415, 422, 429, 503}


def mac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


@pytest.fixture
async def presets():
    async with running_relay(config_text(PRESETS)) as relay:
        yield relay


async def post(http, relay, route, body, headers):
    return await http.post(f"{relay.base}/hooks/{route}", content=body,
                           headers={"Content-Type": "application/json", **headers})


async def test_github_signed_webhooks_are_accepted_and_forged_ones_refused(presets, http):
    body = b'{"zen":"Keep it logically awesome."}'
    good = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "72d3162e",
            "X-Hub-Signature-256": "sha256=" + mac(b"gh-secret", body).hex()}
    r = await post(http, presets, "github", body, good)
    assert r.status_code == 202 and r.json()["channel"] == "github.ping"
    forged = {**good, "X-Hub-Signature-256": "sha256=" + mac(b"guess", body).hex()}
    r = await post(http, presets, "github", body + b" ", forged)
    assert r.status_code == 401
    detail = r.json()["detail"]
    assert "X-Hub-Signature-256" in detail
    assert "gh-secret" not in detail and mac(b"gh-secret", body + b" ").hex() not in detail


async def test_a_redelivered_github_webhook_is_a_duplicate_and_is_not_published_twice(presets, http):
    body = b'{"action":"opened"}'
    headers = {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "dup-1",
               "X-Hub-Signature-256": "sha256=" + mac(b"gh-secret", body).hex()}
    async with open_websocket_url(f"{presets.ws_base}/ws?channel=github.*") as ws:
        await ws.get_message()
        first = await post(http, presets, "github", body, headers)
        again = await post(http, presets, "github", body, headers)
        assert first.status_code == 202 and again.status_code == 200
        assert again.json() == {"id": first.json()["id"], "channel": "github.issues", "duplicate": True}
        event = json.loads(await ws.get_message())
        assert event["id"] == first.json()["id"] and event["delivery"] == "dup-1"
        with trio.move_on_after(0.3):
            raise AssertionError(f"published twice: {await ws.get_message()}")


async def test_stripe_signatures_honour_the_300_second_tolerance_from_receipt(presets, http):
    body = b'{"id":"evt_1","type":"charge.succeeded"}'

    def header(ts: int, secret: bytes = b"whsec_stripe") -> dict[str, str]:
        return {"Stripe-Signature": f"t={ts},v1={mac(secret, str(ts).encode() + b'.' + body).hex()}"}

    now = int(time.time())
    assert (await post(http, presets, "stripe", body, header(now - 400))).status_code == 401
    assert (await post(http, presets, "stripe", body, header(now + 400))).status_code == 401
    r = await post(http, presets, "stripe", body, header(now - 250))
    assert r.status_code == 202 and r.json()["channel"] == "stripe.charge.succeeded"
    # Stripe's dedupe key is the event's id: a retry with a fresh signature is a duplicate.
    r2 = await post(http, presets, "stripe", body, header(now))
    assert r2.status_code == 200 and r2.json()["duplicate"] is True and r2.json()["id"] == r.json()["id"]


async def test_slack_url_verification_is_answered_by_the_relay_once_signed(presets, http):
    body = b'{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}'
    ts = str(int(time.time()))
    sig = "v0=" + mac(b"slack-signing", b"v0:" + ts.encode() + b":" + body).hex()
    r = await post(http, presets, "slack", body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
    assert r.status_code == 200
    assert r.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert presets.app.store.head == ""  # nothing stored
    r = await post(http, presets, "slack", body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=00"})
    assert r.status_code == 401


async def test_slack_slash_command_forms_are_relayed_verbatim(presets, http):
    body = b"token=x&team_id=T1&command=%2Fweather&text=94070"
    ts = str(int(time.time()))
    sig = "v0=" + mac(b"slack-signing", b"v0:" + ts.encode() + b":" + body).hex()
    async with open_websocket_url(f"{presets.ws_base}/ws?channel=slack") as ws:
        await ws.get_message()
        r = await http.post(f"{presets.base}/hooks/slack", content=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
        assert r.status_code == 202, r.text
        assert json.loads(await ws.get_message())["data"] == body.decode()


async def test_shopify_base64_signatures(presets, http):
    body = b'{"id":820982911946154508}'
    good = {"X-Shopify-Topic": "orders.create", "X-Shopify-Webhook-Id": "b54557e4",
            "X-Shopify-Hmac-Sha256": base64.b64encode(mac(b"shop-secret", body)).decode()}
    r = await post(http, presets, "shopify", body, good)
    assert r.status_code == 202 and r.json()["channel"] == "shopify.orders.create"
    bad = {**good, "X-Shopify-Hmac-Sha256": base64.b64encode(mac(b"nope", body)).decode()}
    assert (await post(http, presets, "shopify", body, bad)).status_code == 401


async def test_standard_webhooks_accept_any_of_the_rotated_secrets(presets, http):
    body = b'{"type":"user.created"}'
    ts = str(int(time.time()))
    for n, secret in enumerate((WHSEC, WHSEC_NEW)):
        key = base64.b64decode(secret.removeprefix("whsec_"))
        msg_id = f"msg_{n}"
        sig = base64.b64encode(mac(key, f"{msg_id}.{ts}.".encode() + body)).decode()
        headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1,bogus v1,{sig}"}
        r = await post(http, presets, "standard", body, headers)
        assert r.status_code == 202, r.text
    wrong = base64.b64encode(mac(b"other", f"msg_9.{ts}.".encode() + body)).decode()
    r = await post(http, presets, "standard", body, {"webhook-id": "msg_9", "webhook-timestamp": ts,
                                                     "webhook-signature": f"v1,{wrong}"})
    assert r.status_code == 401


def official_signature(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    """The signature the Standard Webhooks library (which Svix's wraps) makes."""
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, timezone.utc), body)


async def test_svix_spelled_headers_verify_and_name_the_delivery_like_webhook_ones(presets, http):
    # Svix, and so Clerk and Resend, send svix-id / svix-timestamp / svix-signature.
    from svix.webhooks import Webhook as Svix

    body = b'{"type":"user.created","data":{"id":"user_29w83sxmDNGwOuEthce5gg56FcC"}}'
    ts = int(time.time())
    svix = {"svix-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "svix-timestamp": str(ts),
            "svix-signature": official_signature(WHSEC_NEW, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body)}
    Svix(WHSEC_NEW).verify(body, svix)  # the sender's own library takes these headers
    async with open_websocket_url(f"{presets.ws_base}/ws?channel=std") as ws:
        await ws.get_message()
        first = await post(http, presets, "standard", body, svix)
        assert first.status_code == 202, first.text
        # A redelivery is a duplicate by svix-id, and so is the same message
        # under the standard spelling: the id is one key, however it is spelled.
        again = await post(http, presets, "standard", body, svix)
        webhook = {name.replace("svix-", "webhook-"): value for name, value in svix.items()}
        spelled = await post(http, presets, "standard", body, webhook)
        for r in (again, spelled):
            assert r.status_code == 200 and r.json() == {**first.json(), "duplicate": True}, r.text
        other = {**svix, "svix-id": "msg_other",
                 "svix-signature": official_signature(WHSEC_NEW, "msg_other", ts, body)}
        assert (await post(http, presets, "standard", body, other)).status_code == 202
        events = [json.loads(await ws.get_message()) for _ in range(2)]
    assert [e["delivery"] for e in events] == ["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "msg_other"]
    assert events[0]["id"] == first.json()["id"]

    forged = {**svix, "svix-signature": official_signature(WHSEC_NEW, "msg_forged", ts, body)}
    r = await post(http, presets, "standard", body, forged)
    assert r.status_code == 401
    assert r.json()["detail"] == "svix-signature: no v1 signature matches svix-id, svix-timestamp and the body"
    stale = {**svix, "svix-timestamp": str(ts - 600),
             "svix-signature": official_signature(WHSEC_NEW, svix["svix-id"], ts - 600, body)}
    r = await post(http, presets, "standard", body, stale)
    assert r.status_code == 401 and r.json()["detail"].startswith("svix-timestamp: timestamp")


async def test_the_standard_example_config_takes_a_svix_delivery_that_the_app_can_verify_again(http):
    # config/standard.toml as shipped (on port 0, in memory): the svix-signed
    # delivery reaches a subscriber with the headers and exact body that the
    # svix library on the app's side verifies.
    from svix.webhooks import Webhook as Svix

    from relay.core.wire import decode_server
    from relay.client.render import body_of

    text = (ROOT / "config" / "standard.toml").read_text()
    text = text.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"')
    text = text.replace('engine = "sqlite"', 'engine = "memory"')
    body = b'{"type": "email.delivered", "data": {"email_id": "4ef9a417"}}\n'
    ts = int(time.time())
    headers = {"svix-id": "msg_resend_1", "svix-timestamp": str(ts),
               "svix-signature": official_signature(WHSEC, "msg_resend_1", ts, body)}
    async with running_relay(text, env={"APP_WEBHOOK_SECRET": WHSEC}) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=app.*") as ws:
            await ws.get_message()
            r = await post(http, relay, "app", body, headers)
            assert r.status_code == 202 and r.json()["channel"] == "app.email.delivered", r.text
            text = await ws.get_message()
    frame = decode_server(text)
    assert frame.delivery == "msg_resend_1"
    assert body_of(frame, text) == body
    Svix(WHSEC).verify(body_of(frame, text), frame.headers)


async def test_the_rate_limit_refuses_with_retry_after_and_recovers(autojump_clock):
    async with running_relay(config_text(PRESETS)) as relay, httpx.AsyncClient() as http:
        statuses = [(await post(http, relay, "limited", b"{}", {})).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]
        refused = await post(http, relay, "limited", b"{}", {})
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["retry-after"]) == 1
        stored = relay.app.store.head
        await trio.sleep(1.0)  # virtual time: one token refills
        assert (await post(http, relay, "limited", b"{}", {})).status_code == 202
        assert int(relay.app.store.head) == int(stored) + 1


async def test_a_json_schema_refuses_payloads_naming_the_path_and_keeps_valid_bodies_byte_exact(tmp_path, http):
    schema = tmp_path / "push.json"
    schema.write_text(json.dumps({
        "type": "object", "required": ["repository"],
        "properties": {"repository": {"type": "object", "required": ["id"],
                                      "properties": {"id": {"type": "integer"}}}},
    }))
    extra = f'[routes.typed]\nchannel = "typed"\nschema = "{schema}"\n'
    async with running_relay(config_text(extra)) as relay:
        r = await post(http, relay, "typed", b'{"repository":{"id":"seven"}}', {})
        assert r.status_code == 422
        assert r.json()["detail"].startswith("$.repository.id: expected int")
        body = b'{"repository": {"id": 7},   "extra": [1.50]}'
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=typed") as ws:
            await ws.get_message()
            assert (await post(http, relay, "typed", body, {})).status_code == 202
            assert body.decode() in await ws.get_message()


async def test_a_schema_number_takes_numbers_beyond_a_doubles_range_and_keeps_their_bytes(tmp_path, http):
    # 1e400 is valid JSON (RFC 8259 leaves range to implementations): it is a
    # number, above any finite maximum, and not an integer.
    schema = tmp_path / "amounts.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "amount": {"type": "number"}, "capped": {"type": "number", "maximum": 100},
        "count": {"type": "integer"}, "note": {"type": "string"}}}))
    extra = f'[routes.amounts]\nchannel = "amounts"\nschema = "{schema}"\n'
    async with running_relay(config_text(extra)) as relay:
        async with open_websocket_url(f"{relay.ws_base}/ws?channel=amounts") as ws:
            await ws.get_message()
            for body in (b'{"amount": 1e400, "note": "2e999"}', b'{"amount":-1.5E+400,"capped":-1e400}',
                         b'{"capped": 99.5, "amount": 12e3000}'):
                r = await post(http, relay, "amounts", body, {})
                assert r.status_code == 202, (body, r.text)
                assert f'"data":{body.decode()}}}' in await ws.get_message()
        refused = {
            b'{"capped": 1e400}': "$.capped: expected float <= 100.0",
            b'{"count": 1e400}': "$.count: expected int, got float",
            b'{"amount": 1e400, "note": 7}': "$.note: expected str, got int",
        }
        for body, detail in refused.items():
            r = await post(http, relay, "amounts", body, {})
            assert r.status_code == 422 and r.json()["detail"] == detail, (body, r.text)
        r = await post(http, relay, "amounts", b'{"amount": 1e400,}', {})
        assert r.status_code == 400 and r.json()["error"] == "bad_json"


async def test_a_msgspec_struct_schema(tmp_path, http, monkeypatch):
    (tmp_path / "hookschemas.py").write_text(
        "import msgspec\nclass Order(msgspec.Struct):\n    order_id: int\n    total: float\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = '[routes.orders]\nchannel = "orders"\nschema = "hookschemas:Order"\n'
    async with running_relay(config_text(extra)) as relay:
        assert (await post(http, relay, "orders", b'{"order_id":1,"total":9.5}', {})).status_code == 202
        r = await post(http, relay, "orders", b'{"order_id":1}', {})
        assert r.status_code == 422 and "total" in r.json()["detail"]


async def test_dedupe_survives_a_restart(daemon, http):
    text = config_text(PRESETS, store='engine = "sqlite"\npath = "var/relay.db"')
    body = b'{"n":1}'
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "restart-1",
               "X-Hub-Signature-256": "sha256=" + mac(b"gh-secret", body).hex()}
    relay = daemon(text)
    first = await post(http, relay, "github", body, headers)
    assert first.status_code == 202
    relay.kill()
    relay = daemon(text)
    again = await post(http, relay, "github", body, headers)
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["id"] == first.json()["id"]


header_names = st.sampled_from(["Content-Type", "X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery",
                                "Stripe-Signature", "X-Slack-Signature", "X-Slack-Request-Timestamp",
                                "webhook-id", "webhook-timestamp", "webhook-signature", "X-Shopify-Hmac-Sha256",
                                "svix-id", "svix-timestamp", "svix-signature"])
header_values = st.one_of(
    # Header values as HTTP clients can send them: no surrounding whitespace.
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip),
    st.sampled_from(["application/json", "sha256=", "t=1,v1=00", "v0=", "v1,AAAA", "1700000000"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300), st.builds(lambda o: json.dumps(o).encode(), st.dictionaries(
    st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=10)), max_size=4))),
       headers=st.dictionaries(header_names, header_values, max_size=6),
       route=st.sampled_from(["github", "stripe", "slack", "shopify", "standard"]))
def test_random_requests_get_a_contract_status_and_nothing_unsigned_is_stored(body, headers, route):
    async def main():
        async with running_relay(config_text(PRESETS)) as relay, httpx.AsyncClient() as http:
            r = await http.post(f"{relay.base}/hooks/{route}", content=body, headers=headers)
            assert r.status_code in CONTRACT_STATUSES
            assert r.status_code == 401, "an unsigned request got past the signature check"
            assert r.json()["error"] == "bad_signature"
            assert relay.app.store.head == ""

    trio.run(main)


@settings(max_examples=1000, deadline=None)
@given(body=st.binary(max_size=200), headers=st.dictionaries(header_names, header_values, max_size=6),
       route=st.sampled_from(["github", "stripe", "slack", "shopify", "standard", "limited"]),
       skew=st.floats(min_value=-1e6, max_value=1e6))
def test_the_pure_ingest_step_only_ever_raises_contract_errors(body, headers, route, skew):
    from relay.config.load import parse
    from relay.core.envelope import Draft
    from relay.core.errors import RelayError
    from relay.core.ingest import build_routes

    routes = _ROUTES.get("r")
    if routes is None:
        config = parse(config_text(PRESETS), env={})
        routes = _ROUTES["r"] = build_routes(config.routes, config.secrets)
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        draft = routes[route].prepare(lowered, body, time.time() + skew)
    except RelayError as error:
        assert error.status in CONTRACT_STATUSES and error.detail
        if route != "limited":
            assert error.status == 401
    else:
        assert route == "limited" and isinstance(draft, Draft)


_ROUTES: dict = {}
