"""Pure pieces: channel templates, patterns, the envelope and its frames."""

from __future__ import annotations

import json

import pytest
from wsproto.frame_protocol import FrameProtocol

from relay.core.envelope import Draft, encode_envelope, sse_message, ws_text_frame
from relay.core.errors import Invalid
from relay.core.channels import TemplateError, compile_template, matches, parse_pattern, render


def test_templates_render_route_headers_and_payload_fields():
    t = compile_template("{route}.{header:X-Kind}.{json:data.object.type}")
    payload = {"data": {"object": {"type": "charge"}}}
    assert render(t, "stripe", {"x-kind": "live"}, payload) == "stripe.live.charge"
    assert render(compile_template("n.{json:items.1}"), "r", {}, {"items": [5, 7]}) == "n.7"


@pytest.mark.parametrize(
    ("template", "headers", "payload", "fragment"),
    [
        ("{header:X-Kind}", {}, None, "header"),
        ("{json:a.b}", {}, {"a": {}}, "$.a.b is missing"),
        ("{json:a}", {}, {"a": [1]}, "not a string or integer"),
        ("{json:a}", {}, {"a": True}, "not a string or integer"),
        ("x.{json:a}", {}, {"a": "has space"}, "not a valid channel name"),
        ("x.{json:a}", {}, {"a": "y" * 300}, "not a valid channel name"),
    ],
)
def test_template_failures_are_invalid_and_say_what_is_missing(template, headers, payload, fragment):
    with pytest.raises(Invalid, match=fragment.replace("$", r"\$").replace(".", r"\.")):
        render(compile_template(template), "r", headers, payload)


@pytest.mark.parametrize("bad", ["{nope}", "{header:}", "{json:a..b}", "a{b", "a b.{route}", "a}"])
def test_bad_templates_are_refused_at_start(bad):
    with pytest.raises(TemplateError):
        compile_template(bad)


def test_patterns_select_names_prefixes_and_everything():
    assert matches("github.push", "github.push")
    assert not matches("github.push", "github.pushes")
    assert matches("github.*", "github.push") and matches("github.*", "github.a.b")
    assert not matches("github.*", "github") and not matches("github.*", "githubx.push")
    assert matches("*", "anything")
    for bad in ["a b", "", "x" * 201, "a.*.b", "**"]:
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_the_envelope_carries_the_body_verbatim():
    body = b'{ "b": 2,\n  "a": [1, 2.50] }'
    draft = Draft("c", "r", 1764412345123, "d-1", {"Content-Type": "application/json"}, body)
    raw = encode_envelope(draft, "42")
    assert body in raw
    assert json.loads(raw) == {"type": "event", "id": "42", "channel": "c", "route": "r", "ts": 1764412345123,
                               "delivery": "d-1", "headers": {"Content-Type": "application/json"},
                               "data": {"b": 2, "a": [1, 2.5]}}


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_prebuilt_frames_parse_as_one_text_message_in_a_real_websocket_parser(size):
    payload = ("x" * size).encode()
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(ws_text_frame(payload))
    frames = list(client.received_frames())
    assert "".join(f.payload for f in frames) == payload.decode()
    assert frames[-1].message_finished


def test_sse_messages_prefix_every_line_of_a_multiline_body():
    msg = sse_message("7", b'{"a":\n1}')
    assert msg == b'id: 7\ndata: {"a":\ndata: 1}\n\n'


def test_the_client_address_comes_from_forwarded_for_only_through_trusted_proxies():
    import ipaddress

    from relay.core.request import forwarded_client

    trusted = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]
    assert forwarded_client("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"  # untrusted peer: header ignored
    assert forwarded_client("127.0.0.1", "198.51.100.7", trusted) == "198.51.100.7"
    assert forwarded_client("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3", trusted) == "198.51.100.7"
    assert forwarded_client("127.0.0.1", None, trusted) == "127.0.0.1"
