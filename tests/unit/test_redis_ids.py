"""Pure pieces of the Redis engine: stream ids, the stored envelope, URLs
(the URL check lives with the config, which must not load the engine)."""

from __future__ import annotations

import json

import pytest

from relay.config.files import redacted, url_problem
from relay.config.load import parse
from relay.core.envelope import Draft, encode_envelope
from relay.core.errors import ConfigError
from relay.store.redis_ids import (
    chunks,
    envelope_rest,
    format_stream_id,
    join_envelope,
    parse_stream_id,
)


def test_stream_ids_order_by_time_then_sequence():
    assert parse_stream_id("") == (0, 0)
    ids = ["1700000000000-0", "1700000000000-1", "1700000000000-10", "1700000000001-0"]
    keys = [parse_stream_id(i) for i in ids]
    assert keys == sorted(keys)
    assert [format_stream_id(k) for k in keys] == ids


@pytest.mark.parametrize("bad", ["7", "1-", "-1", "a-1", "1-2-3", "1.5-0", " 1-0", "9" * 21 + "-0", f"{2**64}-0"])
def test_ids_that_are_not_stream_ids_are_refused(bad):
    with pytest.raises(ValueError):
        parse_stream_id(bad)


def test_the_stored_rest_and_the_id_make_the_same_envelope_as_encoding_it_whole():
    draft = Draft(channel="github.push", route="gh", ts=1_700_000_000_123, delivery="d-1",
                  headers={"Content-Type": "application/json"}, data=b'{"a": [1, 2]}')
    event_id = "1700000000124-3"
    joined = join_envelope(event_id, envelope_rest(draft))
    assert joined == encode_envelope(draft, event_id)
    assert json.loads(joined)["id"] == event_id


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://cache", "rediss://u:p@h:6380/2",
                                 "unix:///run/redis.sock"])
def test_usable_redis_urls_pass(url):
    assert url_problem(url) is None


@pytest.mark.parametrize(("url", "fragment"), [
    ("http://127.0.0.1:6379/0", "expected redis://"),
    ("redis://h:notaport/0", "port"),
    ("redis://h:70000/0", "out of range"),
    ("redis:///0", "no host"),
    ("redis://h:6379/zero", "database"),
    ("unix://", "path"),
])
def test_unusable_redis_urls_say_why(url, fragment):
    assert fragment in url_problem(url)


def test_a_password_never_appears_in_a_message():
    assert redacted("redis://user:hunter2@h:6379/0") == "redis://user:***@h:6379/0"
    assert "hunter2" not in url_problem("redis://:hunter2@h:6379/db")


def test_a_bad_store_url_is_a_config_error_naming_store_url():
    with pytest.raises(ConfigError) as caught:
        parse('[store]\nengine = "redis"\nurl = "redis://h:6379/zero"\n', env={})
    assert [key for key, _ in caught.value.problems] == ["store.url"]


def test_a_batch_is_cut_into_script_calls_by_count_and_by_size():
    def d(size):
        return Draft(channel="c", route="r", ts=0, delivery=None, headers={}, data=b"x" * size)

    assert chunks([], 3, 100) == []
    sizes = [[len(x.data) for x in c] for c in chunks([d(1)] * 7, 3, 100)]
    assert sizes == [[1, 1, 1], [1, 1, 1], [1]]
    sizes = [[len(x.data) for x in c] for c in chunks([d(60), d(60), d(200), d(10)], 10, 100)]
    assert sizes == [[60], [60], [200], [10]]
