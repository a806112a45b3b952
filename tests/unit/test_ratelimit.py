"""The per-route token bucket, driven by explicit monotonic times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.ratelimit import TokenBucket


def test_a_fresh_bucket_admits_its_whole_burst_at_once_then_refuses():
    bucket = TokenBucket(rate=50.0, burst=100)
    assert [bucket.take(1000.0) for _ in range(100)] == [0.0] * 100
    assert bucket.take(1000.0) == pytest.approx(1 / 50)


def test_sustained_traffic_is_admitted_at_the_rate():
    bucket = TokenBucket(rate=10.0, burst=1)
    admitted = sum(bucket.take(t / 100) == 0.0 for t in range(0, 1000))  # 100 tries/s for 10 s
    assert admitted == 100  # 10/s for 10 s, the first from the burst


def test_retry_after_is_the_time_until_the_next_token():
    bucket = TokenBucket(rate=2.0, burst=1)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.2) == pytest.approx(0.3)
    # Waiting exactly what it said is enough.
    assert bucket.take(0.5) == 0.0


def test_a_refusal_takes_no_token():
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(0.0)
    for t in (0.1, 0.2, 0.3, 0.9):
        assert bucket.take(t) > 0
    assert bucket.take(1.0) == 0.0


def test_float_refill_that_lands_a_hair_under_a_token_still_admits():
    bucket = TokenBucket(rate=10.0, burst=1)
    bucket.take(0.0)
    assert bucket.take(0.1) == 0.0  # 0.1 * 10.0 is not exactly 1.0 in every float path
    assert bucket.take(0.3) == 0.0


def test_a_long_idle_refills_only_up_to_the_burst():
    bucket = TokenBucket(rate=5.0, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0] * 3
    assert bucket.take(3600.0) == pytest.approx(0.2)


def test_time_going_backwards_neither_mints_tokens_nor_lengthens_the_wait():
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == 0.0
    assert bucket.take(50.0) == pytest.approx(1.0)  # no token from going back
    assert bucket.take(100.5) == pytest.approx(0.5)  # the step back cost nothing
    assert bucket.take(101.0) == 0.0


def test_a_bucket_starts_full_whatever_the_first_time_is():
    bucket = TokenBucket(rate=1.0, burst=2)
    assert bucket.take(-5.0) == 0.0
    assert bucket.take(-5.0) == 0.0
    assert bucket.take(-5.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_that_could_never_admit_is_refused_when_built(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(-1.0, 5.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    bucket = TokenBucket(rate, burst)
    now, start, latest, admitted = 0.0, None, None, 0
    for step in steps:
        now += step
        # The bucket's clock starts at the first time it is given.
        start = now if start is None else start
        latest = now if latest is None else max(latest, now)
        wait = bucket.take(now)
        assert wait >= 0.0
        if wait == 0.0:
            admitted += 1
        else:
            assert wait <= 1 / rate + 1e-9
    assert admitted <= burst + rate * (latest - start) + 1e-6
