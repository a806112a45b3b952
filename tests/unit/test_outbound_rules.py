"""The pure rules of outbound webhooks: Standard Webhooks signatures (held to
the official ``standardwebhooks`` and ``svix`` libraries, not to our own
verify code), the address rules against SSRF, the retry schedule and the
per-endpoint plan (under Hypothesis-made sequences of attempts)."""

from __future__ import annotations

import ipaddress
import time

import pytest
import standardwebhooks
import svix
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import addresses, whsec
from relay.core.delivery import DELIVERED, FAILED, RETRY, Plan, Policy, judge, outcome_class, parse_retry_after

KEY = bytes(range(32))
SECRET = whsec.make(KEY)


# -- signatures ----------------------------------------------------------------------


def test_a_signature_verifies_with_the_official_libraries():
    now = time.time()
    body = b'{"type":"invoice.paid","n":1}'
    headers = whsec.headers([whsec.Secret(SECRET)], "42", now, body)
    assert headers["webhook-id"] == "42" and headers["webhook-timestamp"] == str(int(now))
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {"type": "invoice.paid", "n": 1}
    svix.Webhook(SECRET).verify(body, headers)


def test_a_tampered_body_or_another_secret_does_not_verify():
    now = time.time()
    headers = whsec.headers([whsec.Secret(SECRET)], "42", now, b"{}")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(b'{"x":1}', headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(whsec.make(bytes(32))).verify(b"{}", headers)


def test_after_a_rotation_both_secrets_sign_for_24_hours_then_only_the_new_one():
    now = 1_800_000_000.0
    new = whsec.make(bytes(range(1, 33)))
    secrets = whsec.rotate([whsec.Secret(SECRET)], new, now)
    during = whsec.headers(secrets, "7", now + 3600, b"{}")
    assert len(during["webhook-signature"].split(" ")) == 2
    after = whsec.headers(secrets, "7", now + whsec.ROTATION_GRACE + 1, b"{}")
    assert len(after["webhook-signature"].split(" ")) == 1
    assert after["webhook-signature"] == whsec.signature(whsec.decode(new), "7", int(now + whsec.ROTATION_GRACE + 1),
                                                         b"{}")


def test_both_signatures_of_a_rotation_verify_with_the_library():
    now = time.time()
    new = whsec.make(bytes(range(1, 33)))
    headers = whsec.headers(whsec.rotate([whsec.Secret(SECRET)], new, now), "7", now, b"{}")
    for secret in (SECRET, new):
        standardwebhooks.Webhook(secret).verify(b"{}", headers)


@pytest.mark.parametrize("bad", ["", "whsec_", "sec_AAAA", "whsec_!!!!", whsec.PREFIX + "QUJD",
                                 whsec.make(bytes(24))[:-4]])
def test_a_malformed_secret_is_refused_with_a_reason(bad):
    with pytest.raises(whsec.SecretError):
        whsec.decode(bad)


# -- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared address space"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("240.0.0.1", "reserved"),
    ("192.0.2.1", "private"),  # TEST-NET-1, documentation only
])
def test_internal_addresses_are_refused(address, reason):
    assert addresses.why_forbidden(address) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert addresses.why_forbidden(address) is None


def test_allow_private_lets_exactly_its_networks_through():
    allow = addresses.networks(["127.0.0.0/8", "10.0.0.0/24"])
    assert addresses.why_forbidden("127.0.0.1", allow) is None
    assert addresses.why_forbidden("10.0.0.9", allow) is None
    assert addresses.why_forbidden("10.0.1.9", allow) == "private"
    assert addresses.why_forbidden(ipaddress.ip_address("169.254.169.254"), allow) == "link-local"


@pytest.mark.parametrize("url, https_only, problem", [
    ("https://hooks.example.com/x", True, None),
    ("http://hooks.example.com/x", False, None),
    ("http://hooks.example.com/x", True, "https_only"),
    ("ftp://hooks.example.com/x", False, "scheme"),
    ("https:///x", False, "no host"),
    ("https://user:pw@hooks.example.com/x", False, "credentials"),
    ("https://127.0.0.1/x", False, "loopback"),
    ("https://[::1]:8443/x", False, "loopback"),
    ("https://169.254.169.254/latest/meta-data", False, "link-local"),
    ("https://localhost/x", False, None),  # a name: checked once resolved, at connection time
])
def test_endpoint_urls_are_checked_before_any_dns(url, https_only, problem):
    got = addresses.url_problem(url, https_only)
    assert (got is None) if problem is None else (problem in got)


# -- the retry schedule ----------------------------------------------------------------------


def test_each_delay_is_drawn_within_the_jitter():
    policy = Policy(retry=(0, 10, 100), jitter=0.2)
    assert policy.delay(2, 0.0) == pytest.approx(8.0)
    assert policy.delay(2, 0.5) == pytest.approx(10.0)
    assert policy.delay(2, 0.999999) == pytest.approx(12.0, rel=1e-5)


def test_only_a_2xx_delivers_and_the_last_failure_is_final():
    policy = Policy(retry=(0, 10, 100), jitter=0.0)
    assert judge(policy, 1, 204, None, None, 0.0, 0.5, None).kind == DELIVERED
    for status in (301, 302, 400, 404, 500):
        verdict = judge(policy, 1, status, None, None, 0.0, 0.5, None)
        assert verdict.kind == RETRY and verdict.due == 10.0
    assert judge(policy, 2, None, "timeout", None, 50.0, 0.5, 50.0).due == 150.0
    assert judge(policy, 3, 500, None, None, 0.0, 0.5, None).kind == FAILED


def test_retry_after_moves_the_next_attempt_no_further_than_the_longest_delay():
    policy = Policy(retry=(0, 10, 100), jitter=0.0)
    assert judge(policy, 1, 429, None, 60.0, 0.0, 0.5, None).due == 60.0
    assert judge(policy, 1, 503, None, 5000.0, 0.0, 0.5, None).due == 100.0
    assert judge(policy, 1, 503, None, 1.0, 0.0, 0.5, None).due == 10.0  # never earlier than the schedule
    assert judge(policy, 1, 500, None, 60.0, 0.0, 0.5, None).due == 10.0  # only on 429 and 503


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    date = "Fri, 15 Jan 2027 08:00:00 GMT"
    from email.utils import parsedate_to_datetime

    at = parsedate_to_datetime(date).timestamp()
    assert parse_retry_after(date, at - 90.0) == pytest.approx(90.0)
    assert parse_retry_after(date, at + 90.0) == 0.0  # a date in the past: at once
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_410_disables_at_once_and_so_does_a_failure_run_longer_than_disable_after():
    policy = Policy(retry=(0, 10), disable_after=100.0)
    assert judge(policy, 1, 410, None, None, 0.0, 0.5, None).disable == "410 Gone"
    assert judge(policy, 1, 500, None, None, 99.0, 0.5, 0.0).disable is None
    assert "disable_after" in judge(policy, 1, 500, None, None, 100.0, 0.5, 0.0).disable


def test_outcome_classes_are_the_metrics_labels():
    assert [outcome_class(s, None) for s in (200, 302, 404, 503)] == ["2xx", "3xx", "4xx", "5xx"]
    assert outcome_class(None, "timeout") == "timeout" and outcome_class(None, "connect") == "error"


# -- the plan ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(ordered=st.booleans(), max_in_flight=st.integers(1, 4), n=st.integers(1, 12),
       answers=st.lists(st.sampled_from([200, 500, 503, 410, None]), min_size=1, max_size=80),
       rate=st.sampled_from([None, 1.0, 3.0]))
def test_a_plan_keeps_its_caps_and_order_and_every_delivery_ends(ordered, max_in_flight, n, answers, rate):
    policy = Policy(retry=(0, 1, 2), jitter=0.0, max_in_flight=max_in_flight, ordered=ordered, rate=rate,
                    disable_after=1e9)
    plan = Plan(policy)
    for k in range(1, n + 1):
        plan.add(str(k), k, 1, 0.0)
    now, ended, started_order = 0.0, {}, []
    answer = iter(answers * 1000)
    for _ in range(2000):
        started = plan.take(now)
        assert len(plan.in_flight) <= (1 if ordered else max_in_flight)
        started_order += [key for _, key, _ in started]
        if ordered:
            assert len(plan.in_flight) <= 1
            for event_id, key, attempt in started:
                assert all(k in ended for k in range(1, key)), f"{key} before an earlier one ended"
        for event_id, key, attempt in list((i, int(i), a) for i, a in plan.in_flight.items()):
            status = next(answer)
            verdict = plan.finished(event_id, key, attempt, status, None if status else "timeout", None, now, 0.5)
            if verdict.disable:
                plan.enable()
            if verdict.kind != RETRY:
                ended[key] = verdict.kind
        wake = plan.wake_at(now)
        if not plan.in_flight and wake is None and not len(plan):
            break
        now = max(now + 0.01, wake or now + 0.01)
    assert sorted(ended) == list(range(1, n + 1))
    assert set(ended.values()) <= {DELIVERED, FAILED}


def test_after_failures_a_plan_probes_with_one_attempt_then_opens_up_with_successes():
    plan = Plan(Policy(retry=(0, 1), jitter=0.0, max_in_flight=8))
    for k in range(20):
        plan.add(str(k), k, 1, 0.0)
    first = plan.take(0.0)
    assert len(first) == 8
    for event_id, key, attempt in first:
        plan.finished(event_id, key, attempt, 500, None, None, 0.0, 0.5)
    assert plan.cap == 1 and len(plan.take(0.0)) == 1
    started = []
    for _ in range(3):
        for event_id, attempt in list(plan.in_flight.items()):
            plan.finished(event_id, int(event_id), attempt, 200, None, None, 2.0, 0.5)
        started.append(len(plan.take(2.0)))
    assert started == [2, 8, 8]  # 1 -> 2 -> 8 (each success doubles the cap)


def test_a_rate_spaces_the_attempts():
    plan = Plan(Policy(rate=2.0, max_in_flight=100))
    for k in range(10):
        plan.add(str(k), k, 1, 0.0)
    assert len(plan.take(0.0)) == 2  # the bucket's burst
    assert plan.take(0.1) == [] and plan.wake_at(0.1) == pytest.approx(0.5)
    assert len(plan.take(0.5)) == 1
