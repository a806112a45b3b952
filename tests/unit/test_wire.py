"""The relay.v1 messages (``relay.core.wire``): what each one looks like on
the wire, and how either side reads what the other sends."""

from __future__ import annotations

import json

import msgspec
import pytest

from relay.core import wire
from relay.core.envelope import Draft, encode_envelope


@pytest.mark.parametrize("message, text", [
    (wire.Welcome(id="7", channels=["a", "b.*"]), '{"type":"welcome","id":"7","channels":["a","b.*"]}'),
    (wire.Gap(after="3", next="9"), '{"type":"gap","after":"3","next":"9"}'),
    (wire.Error(error="forbidden", detail="no"), '{"type":"error","error":"forbidden","detail":"no"}'),
    (wire.Subscribed(channel="a", id=""), '{"type":"subscribed","channel":"a","id":""}'),
    (wire.Unsubscribed(channel="a"), '{"type":"unsubscribed","channel":"a"}'),
    (wire.Refreshed(expires=None), '{"type":"refreshed","expires":null}'),
    (wire.Subscribe(channel="a", since="4"), '{"type":"subscribe","channel":"a","since":"4"}'),
])
def test_each_message_is_an_object_whose_type_comes_first(message, text):
    assert wire.encode(message) == text.encode()
    decoder = wire.decode_client if isinstance(message, (wire.Subscribe, wire.Unsubscribe, wire.Refresh)) \
        else wire.decode_server
    assert decoder(text) == message and decoder(text).type == json.loads(text)["type"]


def test_an_envelope_is_read_back_with_its_body_untouched():
    body = b'{ "n" : 1e400, "s": "\\u00e9" }'
    draft = Draft("a.b", "r", 1764412345123, "d-1", {"Content-Type": "application/json"}, body)
    text = encode_envelope(draft, "42")
    assert text.startswith(b'{"type":"event","id":"42","channel":"a.b","route":"r","ts":1764412345123,')
    event = wire.decode_server(text)
    assert isinstance(event, wire.Envelope)
    assert (event.id, event.channel, event.delivery, bytes(event.data)) == ("42", "a.b", "d-1", body)


def test_a_message_of_a_type_the_reader_does_not_know_is_left_to_it_to_ignore():
    assert wire.decode_server('{"type":"presence","who":["x"]}') == wire.Unknown("presence")
    assert wire.decode_client('{"type":"presence","channel":"a"}') == wire.Unknown("presence")


def test_a_publish_keeps_its_data_byte_for_byte_and_its_answers_carry_the_key():
    message = wire.decode_client('{"type":"publish","channel":"c.a","key":"k","data": {"x" :  1.50} }')
    assert isinstance(message, wire.Publish)
    assert (message.channel, message.key, bytes(message.data)) == ("c.a", "k", b'{"x" :  1.50}')
    assert wire.encode(wire.Published(id="7", channel="c.a", key="k")) == (
        b'{"type":"published","id":"7","channel":"c.a","key":"k"}')
    assert wire.encode(wire.Error(error="forbidden", detail="no", key="k")) == (
        b'{"type":"error","error":"forbidden","detail":"no","key":"k"}')
    assert wire.encode(wire.Error(error="bad_message", detail="no")) == (
        b'{"type":"error","error":"bad_message","detail":"no"}')
    assert isinstance(wire.decode_server(b'{"type":"published","id":"7","channel":"c.a","key":null}'), wire.Published)


@pytest.mark.parametrize("text, error", [
    ('{"channel":"a"}', "Object missing required field `type`"),
    ('{"type":5}', "Expected `str`, got `int` - at `$.type`"),
    ('{"type":"subscribe","channel":5}', "Expected `str | null`, got `int` - at `$.channel`"),
    ('[1]', "Expected `object`, got `array`"),
    ('{"type":', "truncated"),
])
def test_what_is_no_message_says_why(text, error):
    with pytest.raises(msgspec.DecodeError, match=error.replace("|", r"\|").replace("$", r"\$")):
        wire.decode_client(text)


def test_a_message_missing_fields_reads_as_their_defaults():
    # A client reads any relay.v1 server, one that leaves a field out too.
    assert wire.decode_server('{"type":"welcome"}') == wire.Welcome(id=None, channels=[])
    assert wire.decode_client('{"type":"unsubscribe"}').channel is None
