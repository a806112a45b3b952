"""The connection rules of relay/limits.py: shares, the oldest-idle order,
the file-limit plan, the log throttle and the accept back-off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.limits import RESERVED_FILES, Backoff, Connections, Throttle, Waiting, http_reserve, plan_files


@pytest.mark.parametrize(("max_connections", "reserve"), [
    (1, 1), (3, 1), (10, 1), (100, 10), (10_000, 1000), (100_000, 1000),
])
def test_a_tenth_of_the_slots_at_least_one_at_most_a_thousand_are_kept_for_plain_http(max_connections, reserve):
    assert http_reserve(max_connections) == reserve
    assert Connections(max_connections).subscriber_limit == max_connections - reserve


@given(st.integers(1, 200_000))
def test_subscribers_never_hold_every_slot(max_connections):
    c = Connections(max_connections)
    while c.room() and c.may_subscribe():
        c.opened()
        c.subscribed()
    assert c.subscribers == c.subscriber_limit
    assert c.room()  # a webhook (or a refused subscriber's 503) still finds a slot


def test_an_upgrade_moves_a_connection_to_the_subscribers_without_a_second_slot():
    c = Connections(10)
    c.opened()
    c.subscribed()
    assert (c.open, c.subscribers, c.http) == (1, 1, 0)
    c.opened()
    assert (c.open, c.http) == (2, 1)
    c.closed(subscriber=True)
    c.closed()
    assert (c.open, c.subscribers) == (0, 0)


def test_no_room_once_every_slot_is_taken():
    c = Connections(3)
    for _ in range(3):
        assert c.room()
        c.opened()
    assert not c.room()
    c.closed()
    assert c.room()


def test_the_oldest_waiting_connection_comes_first_and_waiting_again_makes_it_the_newest():
    joined = []
    waiting: Waiting[str] = Waiting(on_add=lambda: joined.append(1))
    for name in "abc":
        waiting.add(name)
    assert waiting.oldest() == "a"
    waiting.discard("a")  # its request came
    waiting.add("a")  # answered; idle again
    assert list(waiting) == ["b", "c", "a"]
    assert waiting.oldest(skip=lambda name: name == "b") == "c"  # b is already being closed
    assert len(joined) == 4
    for name in "abc":
        waiting.discard(name)
    assert waiting.oldest() is None and len(waiting) == 0


def test_a_repeated_warning_is_written_once_per_interval_with_the_count_held_back():
    throttle = Throttle(every=10.0)
    assert throttle.admit(100.0) == 0
    assert [throttle.admit(100.0 + t / 10) for t in range(1, 100)] == [None] * 99  # ten a second for 10 s
    assert throttle.admit(110.0) == 99
    assert throttle.admit(125.0) == 0


def test_the_accept_back_off_doubles_to_its_cap_and_starts_again_after_a_success():
    backoff = Backoff(first=0.05, cap=1.0)
    assert [backoff.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.05


def test_the_soft_file_limit_rises_to_the_hard_one_and_max_connections_fits():
    plan = plan_files(10_000, soft=1024, hard=1_048_576)
    assert plan.soft == 1_048_576 and plan.connections == 10_000 and plan.warning is None


def test_a_file_limit_too_low_for_max_connections_holds_what_fits_and_says_how_to_fix_it():
    plan = plan_files(10_000, soft=256, hard=1024)
    assert plan.soft == 1024
    assert plan.connections == 1024 - RESERVED_FILES
    assert plan.warning is not None
    assert "max_connections = 10000" in plan.warning and "1024 open files" in plan.warning
    assert f"holding at most {1024 - RESERVED_FILES} connections" in plan.warning
    assert "LimitNOFILE" in plan.warning and str(10_000 + RESERVED_FILES) in plan.warning


def test_an_unlimited_hard_limit_asks_for_what_max_connections_needs():
    plan = plan_files(10_000, soft=1024, hard=None)
    assert plan.soft == 10_000 + RESERVED_FILES and plan.warning is None
    assert plan_files(100, soft=4096, hard=None).soft == 4096  # never lowered


def test_even_a_tiny_file_limit_leaves_a_couple_of_connections():
    assert plan_files(10_000, soft=20, hard=20).connections == 2
