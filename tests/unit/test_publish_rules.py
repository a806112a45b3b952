"""The pure rules of publishing (``relay.core.publish``): which section
applies, what a grant lets through, limits, rates and the draft made."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.errors import Forbidden, Invalid, RateLimited
from relay.core.grants import Grant
from relay.core.publish import FLOOD, Publisher, Rule, Rules
from relay.core.schema import load_schema

GRANT = Grant(("*",), publish=("chat.*", "alerts.ack"), who="t:abc", subject="ann")


def admit(publisher: Publisher, channel: object = "chat.a", data: bytes = b"1", key: object = None,
          grant: Grant | None = GRANT, at: float = 0.0):
    return publisher.admit(grant, channel, data, key, at, 1_700_000_000.5)


def test_the_most_specific_section_applies():
    rules = Rules.of([Rule("*", max_bytes=1), Rule("chat.*", max_bytes=2), Rule("chat.room.*", max_bytes=3),
                      Rule("chat.room.1", max_bytes=4)])
    assert [rules.rule_for(c).max_bytes for c in ("x", "chat.a", "chat.room.2", "chat.room.1")] == [1, 2, 3, 4]
    assert Rules.of([Rule("chat.*")]).rule_for("other") is None


def test_the_draft_is_the_data_byte_for_byte_with_the_key_as_delivery():
    draft = admit(Publisher(Rules()), data=b'{"a" :  1}', key="k-1")
    assert (draft.channel, draft.route, draft.delivery, draft.data) == ("chat.a", "ws", "k-1", b'{"a" :  1}')
    assert draft.ts == 1_700_000_000_500
    assert draft.headers == {"Content-Type": "application/json", "Relay-Publisher": "ann"}
    # Keys are per publisher: the same key from another token is another key.
    other = admit(Publisher(Rules()), key="k-1", grant=Grant(("*",), publish=("*",), who="t:xyz"))
    assert draft.dedupe != other.dedupe and admit(Publisher(Rules()), key="k-1").dedupe == draft.dedupe
    assert admit(Publisher(Rules())).dedupe is None


def test_auth_off_publishes_only_where_a_section_opens_the_channel():
    publisher = Publisher(Rules.of([Rule("open.*")]))
    assert admit(publisher, "open.a", grant=None).channel == "open.a"
    with pytest.raises(Forbidden):
        admit(publisher, "closed", grant=None)


@pytest.mark.parametrize(("channel", "data", "key", "why"), [
    ("chat.*", b"1", None, "not a channel name"),
    ("", b"1", None, "needs a channel"),
    (None, b"1", None, "needs a channel"),
    ("chat.a", b"", None, "needs data"),
    ("chat.a", b"1", "", "key"),
    ("chat.a", b"1", 5, "key"),
    ("chat.a", b"1", "k" * 201, "key"),
])
def test_malformed_publishes_are_invalid(channel, data, key, why):
    with pytest.raises(Invalid, match=why):
        admit(Publisher(Rules()), channel, data, key)


def test_size_and_schema_of_the_section():
    rules = Rules.of([Rule("chat.*", max_bytes=10, validator=load_schema("schemas_for_publish:Typed"))])
    with pytest.raises(Invalid, match="over the limit of 10"):
        admit(Publisher(rules), data=b'{"n": 12345678}')
    with pytest.raises(Invalid, match=r"\$\.n"):
        admit(Publisher(rules), data=b'{"n": "x"}')
    assert admit(Publisher(rules), data=b'{"n": 1}')


def test_the_rate_is_per_section_and_only_refusals_in_a_row_make_a_flood():
    rules = Rules.of([Rule("chat.*", rate=1.0, burst=2), Rule("alerts.ack")])
    publisher = Publisher(rules)
    admit(publisher), admit(publisher)
    with pytest.raises(RateLimited) as info:
        admit(publisher)
    assert info.value.retry_after == pytest.approx(1.0)
    admit(publisher, "alerts.ack")  # another section, not limited
    assert admit(publisher, at=1.0)  # refilled
    for n in range(FLOOD - 1):
        with pytest.raises(RateLimited):
            admit(publisher, at=1.0)
    assert not publisher.flooding
    with pytest.raises(RateLimited):
        admit(publisher, at=1.0)
    assert publisher.flooding
    admit(publisher, at=2.0)  # an admitted publish ends the run
    assert not publisher.flooding


names = st.from_regex(r"[a-c]{1,2}(\.[a-c]{1,2}){0,2}", fullmatch=True)
patterns = st.one_of(names, names.map(lambda n: n + ".*"), st.just("*"))


@given(st.lists(patterns, max_size=4), st.one_of(names, patterns))
def test_a_grant_lets_through_exactly_the_channels_it_names_or_lies_under(allowed, channel):
    """Model: a channel may be published to when the grant lists it, lists
    ``*``, or lists a prefix pattern it lies under; a pattern never passes."""
    def model() -> bool:
        if channel.endswith("*"):
            return False
        return any(a == "*" or a == channel or (a.endswith(".*") and channel.startswith(a[:-1])) for a in allowed)

    grant = Grant(("*",), publish=tuple(allowed), who="t:x")
    try:
        admit(Publisher(Rules()), channel, grant=grant)
        ok = True
    except (Forbidden, Invalid):
        ok = False
    assert ok == model()
