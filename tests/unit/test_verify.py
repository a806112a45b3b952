"""Signature presets, held to each sender's own published vectors first.

A round trip through our own ``sign`` would pass with the base string, the
separator or the encoding all wrong; reproducing what the sender documents
is what says real deliveries will verify. The remaining tests compute
signatures independently here with hmac/hashlib, never through ``sign``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from relay.core.errors import BadSignature
from relay.core.verify import VerifySpec, sign, verify


def hexmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def b64mac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def rejected(spec: VerifySpec, headers: dict[str, str], body: bytes, now: float) -> str:
    with pytest.raises(BadSignature) as info:
        verify(spec, lower(headers), body, now)
    assert info.value.status == 401
    return info.value.detail


def signature_values(headers: dict[str, str]) -> set[str]:
    # Hex digests are 64 characters and base64 ones 43 before padding;
    # nothing else in these headers is that long.
    return {piece for v in headers.values() for piece in re.split(r"[=, ]", v) if len(piece) >= 40}


def assert_hides(detail: str, *values: str | bytes) -> None:
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        assert text not in detail, f"detail leaks {text!r}: {detail!r}"


NOW = 1_700_000_000
OTHER = b"an-old-secret-being-rotated-out"


# --- GitHub ----------------------------------------------------------------

# Source: https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
# ("Testing the webhook payload validation").
GH_SECRET = b"It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIG = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
GH = VerifySpec("github", (GH_SECRET,))


def test_github_accepts_githubs_published_test_vector_and_returns_the_delivery_id():
    headers = {"X-Hub-Signature-256": "sha256=" + GH_SIG, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert verify(GH, lower(headers), GH_BODY, NOW) == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_github_sign_reproduces_the_published_signature():
    assert sign(GH, GH_BODY, NOW, delivery="d-1") == {"X-Hub-Signature-256": "sha256=" + GH_SIG, "X-GitHub-Delivery": "d-1"}


def test_github_accepts_an_independently_computed_signature_without_a_delivery_header():
    body = b'{"zen": "Design for failure."}'
    assert verify(GH, {"x-hub-signature-256": "sha256=" + hexmac(GH_SECRET, body)}, body, NOW) is None


def test_github_accepts_uppercase_hex():
    assert verify(GH, {"x-hub-signature-256": "sha256=" + GH_SIG.upper()}, GH_BODY, NOW) is None


def test_github_refuses_a_tampered_body_without_revealing_the_expected_signature():
    detail = rejected(GH, {"X-Hub-Signature-256": "sha256=" + GH_SIG}, b"Hello, World?", NOW)
    assert detail == "X-Hub-Signature-256: signature does not match the body"
    assert_hides(detail, GH_SECRET, hexmac(GH_SECRET, b"Hello, World?"), GH_SIG)


def test_github_refuses_a_missing_header_by_name():
    assert rejected(GH, {}, GH_BODY, NOW) == "X-Hub-Signature-256: header is missing"
    assert rejected(GH, {"X-Hub-Signature-256": "  "}, GH_BODY, NOW) == "X-Hub-Signature-256: header is missing"


@pytest.mark.parametrize(
    "value",
    ["757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",  # no prefix
     "sha1=" + GH_SIG,
     "sha256=" + GH_SIG[:-2],  # truncated
     "sha256=" + GH_SIG[:-1] + "g",  # not hex
     "sha256=",
     "sha256=" + GH_SIG + "\xe9"],  # latin-1 junk must not crash compare_digest
)  # fmt: skip
def test_github_refuses_a_malformed_header_saying_what_shape_is_expected(value):
    detail = rejected(GH, {"X-Hub-Signature-256": value}, GH_BODY, NOW)
    assert detail == "X-Hub-Signature-256: expected 'sha256=' followed by 64 hex digits"


def test_github_accepts_the_second_secret_during_rotation():
    spec = VerifySpec("github", (OTHER, GH_SECRET))
    assert verify(spec, {"x-hub-signature-256": "sha256=" + GH_SIG}, GH_BODY, NOW) is None


def test_github_ignores_timestamps_since_it_signs_none():
    assert verify(GH, {"x-hub-signature-256": "sha256=" + GH_SIG}, GH_BODY, 0) is None


# --- Stripe ----------------------------------------------------------------

# Stripe publishes no fixed digest; its libraries' fixtures compute one from
# a fixed payload and secret at test time, and so do we here. Fixture source:
# https://github.com/stripe/stripe-python/blob/master/tests/test_webhook.py
# (DUMMY_WEBHOOK_PAYLOAD, DUMMY_WEBHOOK_SECRET, generate_header) and
# https://github.com/stripe/stripe-go/blob/master/webhook/client_test.go
# (rolled keys, ",v1=bad_signature" ignored, v0-only rejected). The secret is
# used as raw UTF-8 bytes: "whsec_" is not decoded, unlike Standard Webhooks.
STRIPE_SECRET = b"whsec_test_secret"
STRIPE_BODY = b"""{
  "id": "evt_test_webhook",
  "object": "event",
  "data": { "object": { "id": "rdr_123", "object": "terminal.reader" } }
}"""
STRIPE = VerifySpec("stripe", (STRIPE_SECRET,))


def stripe_header(t: int = NOW, secret: bytes = STRIPE_SECRET, body: bytes = STRIPE_BODY, scheme: str = "v1") -> str:
    return f"t={t},{scheme}={hexmac(secret, f'{t}.'.encode() + body)}"


def test_stripe_accepts_the_library_fixture_and_returns_the_event_id():
    assert verify(STRIPE, {"stripe-signature": stripe_header()}, STRIPE_BODY, NOW) == "evt_test_webhook"


def test_stripe_accepts_a_header_with_an_extra_unreadable_v1():
    header = stripe_header() + ",v1=bad_signature"
    assert verify(STRIPE, {"stripe-signature": header}, STRIPE_BODY, NOW) == "evt_test_webhook"


def test_stripe_accepts_any_of_several_v1_signatures_as_stripe_sends_while_rolling_keys():
    t = NOW
    rolled = hexmac(STRIPE_SECRET + b"_rolled_key", f"{t}.".encode() + STRIPE_BODY)
    header = f"{stripe_header(t)},v1={rolled}"
    assert verify(STRIPE, {"stripe-signature": header}, STRIPE_BODY, NOW) == "evt_test_webhook"
    new = VerifySpec("stripe", (STRIPE_SECRET + b"_rolled_key",))
    assert verify(new, {"stripe-signature": header}, STRIPE_BODY, NOW) == "evt_test_webhook"


def test_stripe_refuses_a_header_with_only_v0_signatures():
    detail = rejected(STRIPE, {"Stripe-Signature": stripe_header(scheme="v0")}, STRIPE_BODY, NOW)
    assert detail == "Stripe-Signature: no v1 signature (only the v1 scheme is accepted)"


def test_stripe_refuses_a_wrong_signature():
    header = stripe_header(secret=b"whsec_someone_else")
    detail = rejected(STRIPE, {"Stripe-Signature": header}, STRIPE_BODY, NOW)
    assert detail == "Stripe-Signature: no v1 signature matches the timestamp and body"
    assert_hides(detail, STRIPE_SECRET, hexmac(STRIPE_SECRET, f"{NOW}.".encode() + STRIPE_BODY))


def test_stripe_signature_binds_the_timestamp():
    forged = stripe_header(NOW).replace(f"t={NOW}", f"t={NOW + 1}")
    detail = rejected(STRIPE, {"Stripe-Signature": forged}, STRIPE_BODY, NOW)
    assert detail == "Stripe-Signature: no v1 signature matches the timestamp and body"


@pytest.mark.parametrize(
    "header, detail",
    [
        ("i'm not even a real signature header", "Stripe-Signature: expected comma-separated key=value pairs like 't=<unix time>,v1=<hex>'"),
        ("bad_header", "Stripe-Signature: expected comma-separated key=value pairs like 't=<unix time>,v1=<hex>'"),
        ("v1,t=1", "Stripe-Signature: expected comma-separated key=value pairs like 't=<unix time>,v1=<hex>'"),
        ("t=", "Stripe-Signature: timestamp is not a unix time in whole seconds"),
        ("t=soon,v1=" + "0" * 64, "Stripe-Signature: timestamp is not a unix time in whole seconds"),
        ("v1=" + "0" * 64, "Stripe-Signature: no timestamp (t=...)"),
        (f"t={NOW}", "Stripe-Signature: no v1 signature (only the v1 scheme is accepted)"),
    ],
)
def test_stripe_refuses_malformed_headers_naming_the_problem(header, detail):
    assert rejected(STRIPE, {"Stripe-Signature": header}, STRIPE_BODY, NOW) == detail


def test_stripe_refuses_a_missing_header():
    assert rejected(STRIPE, {}, STRIPE_BODY, NOW) == "Stripe-Signature: header is missing"


@pytest.mark.parametrize("skew", [-300, -299.5, 0, 299.9, 300])
def test_stripe_accepts_timestamps_within_tolerance_past_and_future(skew):
    header = stripe_header(NOW)
    assert verify(STRIPE, {"stripe-signature": header}, STRIPE_BODY, NOW + skew) == "evt_test_webhook"


def test_stripe_refuses_a_timestamp_just_past_the_tolerance():
    detail = rejected(STRIPE, {"Stripe-Signature": stripe_header(NOW)}, STRIPE_BODY, NOW + 301)
    assert detail == f"Stripe-Signature: timestamp {NOW} is outside the 300 s tolerance (301 s in the past)"
    assert_hides(detail, hexmac(STRIPE_SECRET, f"{NOW}.".encode() + STRIPE_BODY))


def test_stripe_refuses_a_timestamp_just_ahead_of_the_tolerance():
    detail = rejected(STRIPE, {"Stripe-Signature": stripe_header(NOW)}, STRIPE_BODY, NOW - 300.5)
    assert detail.startswith(f"Stripe-Signature: timestamp {NOW} is outside the 300 s tolerance (")
    assert "in the future" in detail


def test_stripe_honours_a_configured_tolerance():
    spec = VerifySpec("stripe", (STRIPE_SECRET,), tolerance=10)
    assert rejected(spec, {"Stripe-Signature": stripe_header(NOW - 15)}, STRIPE_BODY, NOW).endswith(
        "outside the 10 s tolerance (15 s in the past)"
    )
    assert verify(spec, {"stripe-signature": stripe_header(NOW - 10)}, STRIPE_BODY, NOW) == "evt_test_webhook"


def test_stripe_body_without_a_string_id_has_no_delivery_id():
    for body in (b'{"object": "event"}', b'{"id": 5}', b"[1]", b"not json"):
        header = stripe_header(body=body)
        assert verify(STRIPE, {"stripe-signature": header}, body, NOW) is None


def test_stripe_second_secret_matches_during_rotation():
    spec = VerifySpec("stripe", (OTHER, STRIPE_SECRET))
    assert verify(spec, {"stripe-signature": stripe_header()}, STRIPE_BODY, NOW) == "evt_test_webhook"


# --- Slack -----------------------------------------------------------------

# Source: https://api.slack.com/authentication/verifying-requests-from-slack
# (now https://docs.slack.dev/authentication/verifying-requests-from-slack):
# the example signing secret, timestamp, slash-command body and signature.
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TS = "1531420618"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
SLACK = VerifySpec("slack", (SLACK_SECRET,))


def slack_headers(ts: str = SLACK_TS, sig: str = SLACK_SIG) -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}


def test_slack_accepts_slacks_published_example_and_joins_timestamp_and_signature_for_dedupe():
    # The delivery id joins the timestamp and a hash of the signature (it is
    # logged and put in envelopes, so the signature itself stays out of it).
    assert verify(SLACK, lower(slack_headers()), SLACK_BODY, int(SLACK_TS) + 5) == \
        f"{SLACK_TS}:{hashlib.sha256(SLACK_SIG.encode()).hexdigest()[:32]}"


def test_slack_sign_reproduces_the_published_signature():
    assert sign(SLACK, SLACK_BODY, int(SLACK_TS)) == slack_headers()


def test_slack_accepts_an_independently_computed_json_event():
    body = b'{"type":"url_verification","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}'
    sig = "v0=" + hexmac(SLACK_SECRET, f"v0:{NOW}:".encode() + body)
    assert verify(SLACK, lower(slack_headers(str(NOW), sig)), body, NOW) == \
        f"{NOW}:{hashlib.sha256(sig.encode()).hexdigest()[:32]}"


def test_slack_refuses_a_tampered_body():
    detail = rejected(SLACK, slack_headers(), SLACK_BODY + b"&x=1", int(SLACK_TS))
    assert detail == "X-Slack-Signature: signature does not match X-Slack-Request-Timestamp and the body"
    assert_hides(detail, SLACK_SECRET, SLACK_SIG[3:], hexmac(SLACK_SECRET, f"v0:{SLACK_TS}:".encode() + SLACK_BODY + b"&x=1"))


def test_slack_refuses_missing_headers_by_name():
    assert rejected(SLACK, {"X-Slack-Signature": SLACK_SIG}, SLACK_BODY, 0) == "X-Slack-Request-Timestamp: header is missing"
    assert rejected(SLACK, {"X-Slack-Request-Timestamp": SLACK_TS}, SLACK_BODY, 0) == "X-Slack-Signature: header is missing"


@pytest.mark.parametrize(
    "headers, detail",
    [
        (slack_headers(sig=SLACK_SIG[3:]), "X-Slack-Signature: expected 'v0=' followed by 64 hex digits"),
        (slack_headers(sig="v1=" + SLACK_SIG[3:]), "X-Slack-Signature: expected 'v0=' followed by 64 hex digits"),
        (slack_headers(sig="v0=xyz"), "X-Slack-Signature: expected 'v0=' followed by 64 hex digits"),
        (slack_headers(ts="yesterday"), "X-Slack-Request-Timestamp: timestamp is not a unix time in whole seconds"),
        (slack_headers(ts="1531420618.5"), "X-Slack-Request-Timestamp: timestamp is not a unix time in whole seconds"),
        (slack_headers(ts="-1531420618"), "X-Slack-Request-Timestamp: timestamp is not a unix time in whole seconds"),
    ],
)
def test_slack_refuses_malformed_headers(headers, detail):
    assert rejected(SLACK, headers, SLACK_BODY, int(SLACK_TS)) == detail


@pytest.mark.parametrize("now, inside", [(1531420618 + 300, True), (1531420618 - 300, True),
                                         (1531420618 + 301, False), (1531420618 - 301, False)])  # fmt: skip
def test_slack_tolerance_is_300_seconds_both_ways(now, inside):
    if inside:
        assert verify(SLACK, lower(slack_headers()), SLACK_BODY, now) is not None
    else:
        detail = rejected(SLACK, slack_headers(), SLACK_BODY, now)
        assert detail.startswith("X-Slack-Request-Timestamp: timestamp 1531420618 is outside the 300 s tolerance")
        assert_hides(detail, SLACK_SIG[3:], SLACK_SECRET)


def test_slack_second_secret_matches_during_rotation():
    spec = VerifySpec("slack", (OTHER, SLACK_SECRET))
    assert verify(spec, lower(slack_headers()), SLACK_BODY, int(SLACK_TS)) is not None


# --- Shopify ---------------------------------------------------------------

# Source: Shopify's own library test, https://github.com/Shopify/shopify-api-js
# packages/shopify-api/lib/webhooks/__tests__/validate.test.ts: body
# '{"foo": "bar"}' signed with the test config's apiSecretKey 'test_secret_key'
# (lib/__tests__/test-config.ts) gives 'B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g='
# and webhookId '123456789' (webhooks/__tests__/utils.ts).
SHOPIFY_SECRET = b"test_secret_key"
SHOPIFY_BODY = b'{"foo": "bar"}'
SHOPIFY_SIG = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g="
SHOPIFY = VerifySpec("shopify", (SHOPIFY_SECRET,))


def test_shopify_accepts_the_shopify_library_fixture_and_returns_the_webhook_id():
    headers = {"X-Shopify-Hmac-Sha256": SHOPIFY_SIG, "X-Shopify-Webhook-Id": "123456789"}
    assert verify(SHOPIFY, lower(headers), SHOPIFY_BODY, NOW) == "123456789"


def test_shopify_sign_reproduces_the_fixture():
    assert sign(SHOPIFY, SHOPIFY_BODY, NOW, delivery="123456789") == {
        "X-Shopify-Hmac-Sha256": SHOPIFY_SIG,
        "X-Shopify-Webhook-Id": "123456789",
    }


def test_shopify_accepts_an_independently_computed_signature():
    body = b'{"id": 820982911946154508, "email": "jon@example.com"}'
    assert verify(SHOPIFY, {"x-shopify-hmac-sha256": b64mac(SHOPIFY_SECRET, body)}, body, NOW) is None


def test_shopify_refuses_a_wrong_signature_and_a_malformed_one():
    detail = rejected(SHOPIFY, {"X-Shopify-Hmac-Sha256": "fake"}, SHOPIFY_BODY, NOW)
    assert detail == "X-Shopify-Hmac-Sha256: expected the base64 of a 32-byte HMAC-SHA256"
    wrong = b64mac(b"another app", SHOPIFY_BODY)
    detail = rejected(SHOPIFY, {"X-Shopify-Hmac-Sha256": wrong}, SHOPIFY_BODY, NOW)
    assert detail == "X-Shopify-Hmac-Sha256: signature does not match the body"
    assert_hides(detail, SHOPIFY_SIG, SHOPIFY_SECRET)
    # Hex is GitHub's encoding, not Shopify's.
    hexsig = hexmac(SHOPIFY_SECRET, SHOPIFY_BODY)
    assert "expected the base64" in rejected(SHOPIFY, {"X-Shopify-Hmac-Sha256": hexsig}, SHOPIFY_BODY, NOW)


def test_shopify_refuses_a_missing_header():
    assert rejected(SHOPIFY, {"X-Shopify-Webhook-Id": "1"}, SHOPIFY_BODY, NOW) == "X-Shopify-Hmac-Sha256: header is missing"


def test_shopify_second_secret_matches_during_rotation():
    spec = VerifySpec("shopify", (OTHER, SHOPIFY_SECRET))
    assert verify(spec, {"x-shopify-hmac-sha256": SHOPIFY_SIG}, SHOPIFY_BODY, NOW) is None


# --- Standard Webhooks -----------------------------------------------------

# Source: the specification's reference libraries,
# https://github.com/standard-webhooks/standard-webhooks/blob/main/libraries/python/tests/test_webhooks.py
# (test_sign_function; the same vector is in every language's tests).
SW_SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_KEY = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
STANDARD = VerifySpec("standard", (SW_SECRET,))


def sw_headers(sig: str = SW_SIG, ts: int | str = SW_TS, msg_id: str = SW_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_standard_accepts_the_specifications_vector_and_returns_the_webhook_id():
    assert verify(STANDARD, sw_headers(), SW_BODY, SW_TS) == SW_ID


def test_standard_sign_reproduces_the_specifications_vector():
    assert sign(STANDARD, SW_BODY, SW_TS, delivery=SW_ID) == sw_headers()


def test_standard_secret_works_with_and_without_the_whsec_prefix():
    spec = VerifySpec("standard", (b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",))
    assert verify(spec, sw_headers(), SW_BODY, SW_TS) == SW_ID


def test_standard_accepts_a_valid_signature_among_others_and_ignores_other_versions():
    # Mirrors the reference test_multi_sig_payload_is_valid.
    sig = " ".join([
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v1a,bm90IGFuIGVkMjU1MTkgc2lnbmF0dXJl",
        SW_SIG,
        "v1,not-base64!!",
    ])  # fmt: skip
    assert verify(STANDARD, sw_headers(sig), SW_BODY, SW_TS) == SW_ID


def test_standard_accepts_an_independently_computed_signature():
    body, msg_id = b'{"type": "invoice.paid"}', "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    sig = "v1," + b64mac(SW_KEY, f"{msg_id}.{NOW}.".encode() + body)
    assert verify(STANDARD, sw_headers(sig, NOW, msg_id), body, NOW) == msg_id


def test_standard_refuses_the_reference_libraries_invalid_signature():
    # test_invalid_signature_raises_error: last base64 character changed.
    detail = rejected(STANDARD, sw_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), SW_BODY, SW_TS)
    assert detail == "webhook-signature: no v1 signature matches webhook-id, webhook-timestamp and the body"
    assert_hides(detail, SW_SIG[3:], SW_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_standard_signature_binds_the_id():
    detail = rejected(STANDARD, sw_headers(msg_id="msg_other"), SW_BODY, SW_TS)
    assert "no v1 signature matches" in detail


def svix_headers(sig: str = SW_SIG, ts: int | str = SW_TS, msg_id: str = SW_ID) -> dict[str, str]:
    return {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": sig}


def test_standard_accepts_the_vector_under_svix_header_names_and_returns_the_svix_id():
    assert verify(STANDARD, svix_headers(), SW_BODY, SW_TS) == SW_ID


def test_standard_takes_each_svix_header_before_its_webhook_twin_as_the_svix_library_does():
    # svix.webhooks.Webhook.verify: headers["webhook-id"] = svix-id if present, else webhook-id.
    both = {**sw_headers(msg_id="msg_ignored", sig="v1,AAAA"), **svix_headers()}
    assert verify(STANDARD, both, SW_BODY, SW_TS) == SW_ID
    mixed = {"svix-id": SW_ID, "webhook-timestamp": str(SW_TS), "webhook-signature": SW_SIG}
    assert verify(STANDARD, mixed, SW_BODY, SW_TS) == SW_ID


def test_standard_names_the_svix_headers_it_used_when_a_check_fails():
    detail = rejected(STANDARD, svix_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), SW_BODY, SW_TS)
    assert detail == "svix-signature: no v1 signature matches svix-id, svix-timestamp and the body"
    assert rejected(STANDARD, svix_headers(ts="soon"), SW_BODY, SW_TS) == (
        "svix-timestamp: timestamp is not a unix time in whole seconds")
    headers = svix_headers()
    del headers["svix-signature"]
    assert rejected(STANDARD, headers, SW_BODY, SW_TS) == "svix-signature: header is missing"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_refuses_each_missing_header_by_name(missing):
    headers = sw_headers()
    del headers[missing]
    assert rejected(STANDARD, headers, SW_BODY, SW_TS) == f"{missing}: header is missing"


@pytest.mark.parametrize(
    "headers, detail",
    [
        (sw_headers(ts="hello"), "webhook-timestamp: timestamp is not a unix time in whole seconds"),
        (sw_headers(ts="1614265330.0"), "webhook-timestamp: timestamp is not a unix time in whole seconds"),
        (sw_headers("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), "webhook-signature: expected space-separated '<version>,<base64>' entries"),
        (sw_headers("v1a,AAAA v2,BBBB"), "webhook-signature: no v1 signature (only v1, HMAC-SHA256, is accepted)"),
        (sw_headers("v1,AAAA"), "webhook-signature: no v1 signature matches webhook-id, webhook-timestamp and the body"),
    ],
)
def test_standard_refuses_malformed_headers(headers, detail):
    assert rejected(STANDARD, headers, SW_BODY, SW_TS) == detail


@pytest.mark.parametrize("skew", [-300, 300])
def test_standard_accepts_timestamps_at_the_edge_of_tolerance(skew):
    assert verify(STANDARD, sw_headers(), SW_BODY, SW_TS + skew) == SW_ID


@pytest.mark.parametrize("skew, word", [(301, "past"), (-301, "future")])
def test_standard_refuses_old_and_new_timestamps_like_the_reference_library(skew, word):
    detail = rejected(STANDARD, sw_headers(), SW_BODY, SW_TS + skew)
    assert detail == f"webhook-timestamp: timestamp {SW_TS} is outside the 300 s tolerance (301 s in the {word})"


def test_standard_second_secret_matches_during_rotation():
    spec = VerifySpec("standard", (b"whsec_" + base64.b64encode(b"retired key"), SW_SECRET))
    assert verify(spec, sw_headers(), SW_BODY, SW_TS) == SW_ID


@pytest.mark.parametrize("secret", [b"whsec_not base64!", b"whsec_", b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"])
def test_standard_undecodable_secret_is_refused_without_showing_it(secret):
    detail = rejected(VerifySpec("standard", (secret,)), sw_headers(), SW_BODY, SW_TS)
    assert detail == "webhook-signature: the route's secret is not a valid whsec_<base64> key (relay configuration)"
    assert_hides(detail, secret[len(b"whsec_") :] or b"\x00")


def test_standard_sign_derives_a_stable_id_when_none_is_given():
    first = sign(STANDARD, SW_BODY, NOW)
    assert first == sign(STANDARD, SW_BODY, NOW)
    assert first["webhook-id"].startswith("msg_")
    assert verify(STANDARD, first, SW_BODY, NOW) == first["webhook-id"]


# --- generic hmac-sha256 ----------------------------------------------------

INHOUSE_SECRET = b"inhouse secret \x00\xff bytes"


def test_hmac_hex_with_prefix_accepts_and_returns_no_delivery_id():
    spec = VerifySpec("hmac-sha256", (INHOUSE_SECRET,), header="X-Signature", prefix="sha256=")
    body = b'{"order": 1}'
    assert verify(spec, {"x-signature": "sha256=" + hexmac(INHOUSE_SECRET, body)}, body, NOW) is None


def test_hmac_base64_without_prefix_accepts():
    spec = VerifySpec("hmac-sha256", (INHOUSE_SECRET,), header="X-Sig", encoding="base64")
    body = b"[]"
    assert verify(spec, {"x-sig": b64mac(INHOUSE_SECRET, body)}, body, NOW) is None


def test_hmac_refuses_wrong_missing_and_malformed_signatures_naming_the_configured_header():
    spec = VerifySpec("hmac-sha256", (INHOUSE_SECRET,), header="X-Signature", prefix="sha256=")
    body = b'{"order": 1}'
    good = hexmac(INHOUSE_SECRET, body)
    assert rejected(spec, {}, body, NOW) == "X-Signature: header is missing"
    assert rejected(spec, {"X-Signature": good}, body, NOW) == "X-Signature: expected 'sha256=' followed by 64 hex digits"
    assert rejected(spec, {"X-Signature": "sha256=zz"}, body, NOW) == "X-Signature: expected 'sha256=' followed by 64 hex digits"
    detail = rejected(spec, {"X-Signature": "sha256=" + good}, body + b" ", NOW)
    assert detail == "X-Signature: signature does not match the body"
    assert_hides(detail, INHOUSE_SECRET, hexmac(INHOUSE_SECRET, body + b" "))


def test_hmac_base64_refuses_hex():
    spec = VerifySpec("hmac-sha256", (INHOUSE_SECRET,), header="X-Sig", encoding="base64")
    detail = rejected(spec, {"X-Sig": hexmac(INHOUSE_SECRET, b"x")}, b"x", NOW)
    assert detail == "X-Sig: expected the base64 of a 32-byte HMAC-SHA256"


def test_hmac_second_secret_matches_during_rotation():
    spec = VerifySpec("hmac-sha256", (OTHER, INHOUSE_SECRET), header="X-Signature")
    assert verify(spec, {"x-signature": hexmac(INHOUSE_SECRET, b"x")}, b"x", NOW) is None


def test_hmac_sign_round_trips_for_both_encodings():
    for encoding in ("hex", "base64"):
        spec = VerifySpec("hmac-sha256", (INHOUSE_SECRET,), header="X-Sig", encoding=encoding, prefix="v=")
        assert verify(spec, lower(sign(spec, b"{}", NOW)), b"{}", NOW) is None


# --- none, and the spec itself ---------------------------------------------


def test_none_checks_nothing():
    spec = VerifySpec("none", ())
    assert verify(spec, {}, b"anything", NOW) is None
    assert sign(spec, b"anything", NOW) == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scheme": "gitlab", "secrets": (b"s",)}, "unknown verify scheme 'gitlab'"),
        ({"scheme": "github", "secrets": ()}, "needs at least one secret"),
        ({"scheme": "hmac-sha256", "secrets": (b"s",)}, "needs the signature header name"),
        ({"scheme": "hmac-sha256", "secrets": (b"s",), "header": "X", "encoding": "base32"}, "unknown signature encoding"),
        ({"scheme": "stripe", "secrets": (b"s",), "tolerance": 0}, "tolerance must be a positive"),
    ],
)
def test_a_spec_that_cannot_work_is_refused_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VerifySpec(**kwargs)


@pytest.mark.parametrize("scheme", ["github", "stripe", "slack", "shopify", "standard", "hmac-sha256"])
def test_every_scheme_verifies_what_sign_produces_with_any_header_case(scheme):
    secret = SW_SECRET if scheme == "standard" else b"s3cret"
    spec = VerifySpec(scheme, (secret,), header="X-Sig")
    body = b'{"id": "evt_1", "n": 1}'
    headers = sign(spec, body, NOW, delivery="d-1")
    verify(spec, lower(headers), body, NOW + 1)


@pytest.mark.parametrize("scheme", ["github", "stripe", "slack", "shopify", "standard", "hmac-sha256"])
def test_no_error_detail_ever_contains_the_secret_or_the_expected_signature(scheme):
    secret = SW_SECRET if scheme == "standard" else b"s3cret-value-never-shown"
    spec = VerifySpec(scheme, (secret,), header="X-Sig")
    body = b'{"id": "evt_1"}'
    good = lower(sign(spec, body, NOW, delivery="d-1"))
    # The expected signatures for the body and for the tampered body: what a
    # leaking detail would show.
    tampered = lower(sign(spec, body + b"!", NOW, delivery="d-1"))
    expected_values = signature_values(good) | signature_values(tampered)
    assert expected_values
    secrets = {secret.decode(), secret.decode().removeprefix("whsec_")}
    details = [rejected(spec, good, body + b"!", NOW)]  # wrong body
    if scheme in ("stripe", "slack", "standard"):
        details.append(rejected(spec, good, body, NOW + 10_000))  # stale
    for name in good:
        partial = dict(good)
        del partial[name]
        try:
            verify(spec, partial, body, NOW)
        except BadSignature as exc:
            details.append(exc.detail)
        partial = dict(good, **{name: good[name] + "x"})
        try:
            verify(spec, partial, body, NOW)
        except BadSignature as exc:
            details.append(exc.detail)
    assert details
    for detail in details:
        assert_hides(detail, *secrets, *expected_values)
