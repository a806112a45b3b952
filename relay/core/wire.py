"""The ``relay.v1`` messages, both ways: one msgspec Struct per message, one
encoder, one decoder per direction.

Server to client: ``Welcome`` (the first message), ``Envelope`` (an event,
the contract's envelope), ``Gap``, ``Error``, ``Subscribed``,
``Unsubscribed``, ``Refreshed``, ``Published``. Client to server:
``Subscribe``, ``Unsubscribe``, ``Refresh``, ``Publish``. Every message is a JSON object whose ``type``
names it (the Struct's tag, written first).

The WebSocket session (``relay.fanout.ws``) encodes what it sends and
decodes what clients send with these; the SSE stream writes its gap with
``Gap``; the store encodes each envelope once (``core.envelope``); the CLI's
subscriber decodes what the relay sends (``relay.client``). Fields a message
may lack decode to their defaults, so a client reads any relay that speaks
``relay.v1``; a message whose type it does not know decodes to ``Unknown``
and is for the reader to ignore.
"""

from __future__ import annotations

from typing import Union

import msgspec

SUBPROTOCOL = "relay.v1"


class Message(msgspec.Struct, tag_field="type"):
    @property
    def type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


# -- server to client -------------------------------------------------------


class Welcome(Message, tag="welcome"):
    """The first message: where live delivery starts (the hub's head) and
    the subscriptions the connection opened with."""

    id: str | None = None
    channels: list[str] = []


class Envelope(Message, tag="event"):
    """One event. ``data`` is the received body, carried byte for byte."""

    id: str | None = None
    channel: str | None = None
    route: str | None = None
    ts: int | None = None
    delivery: str | None = None
    headers: dict[str, str] = {}
    data: msgspec.Raw = msgspec.Raw(b"")


class Gap(Message, tag="gap"):
    """Events after ``after`` up to ``next`` will not come."""

    after: str | None = None
    next: str | None = None


class Error(Message, tag="error", omit_defaults=True):
    """A refusal. ``key`` is the idempotency key of the publish it answers."""

    error: str | None = None
    detail: str | None = None
    key: str | None = None


class Published(Message, tag="published"):
    """A publish is stored (or was, under the same key): its event's id."""

    id: str | None = None
    channel: str | None = None
    key: str | None = None


class Subscribed(Message, tag="subscribed"):
    channel: str | None = None
    id: str | None = None


class Unsubscribed(Message, tag="unsubscribed"):
    channel: str | None = None


class Refreshed(Message, tag="refreshed"):
    expires: float | None = None


# -- client to server -------------------------------------------------------


class Subscribe(Message, tag="subscribe"):
    channel: str | None = None
    since: str | None = None


class Unsubscribe(Message, tag="unsubscribe"):
    channel: str | None = None


class Refresh(Message, tag="refresh"):
    token: str | None = None


class Publish(Message, tag="publish"):
    """Publish ``data`` (any JSON, kept byte for byte) to ``channel``.

    The fields are loosely typed so that a wrong one is answered with an
    ``invalid`` error carrying the message's key, not a ``bad_message``."""

    channel: object = None
    data: msgspec.Raw = msgspec.Raw(b"")
    key: object = None


class Unknown(msgspec.Struct):
    """A message of a type this side does not know."""

    type: str


ServerMessage = Union[Welcome, Envelope, Gap, Error, Subscribed, Unsubscribed, Refreshed, Published]
ClientMessage = Union[Subscribe, Unsubscribe, Refresh, Publish]

_encoder = msgspec.json.Encoder()
_server_decoder = msgspec.json.Decoder(ServerMessage)
_client_decoder = msgspec.json.Decoder(ClientMessage)
_kind_decoder = msgspec.json.Decoder(Unknown)
_SERVER_TYPES = frozenset(t.__struct_config__.tag for t in ServerMessage.__args__)  # type: ignore[attr-defined]
_CLIENT_TYPES = frozenset(t.__struct_config__.tag for t in ClientMessage.__args__)  # type: ignore[attr-defined]


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def _decode(decoder: msgspec.json.Decoder, known: frozenset[str], data: bytes | str):  # type: ignore[no-untyped-def]
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        # A type missing, not a string, or not one of ours: the first two
        # are the message's error, the last is a message to ignore. A known
        # type keeps the error of its own fields.
        kind = _kind_decoder.decode(data)
        if kind.type in known:
            raise exc from None
        return kind


def decode_server(data: bytes | str) -> ServerMessage | Unknown:
    """A message from the relay; ``msgspec.DecodeError`` when it is none."""
    return _decode(_server_decoder, _SERVER_TYPES, data)


def decode_client(data: bytes | str) -> ClientMessage | Unknown:
    """A message from a client; ``msgspec.DecodeError`` when it is none."""
    return _decode(_client_decoder, _CLIENT_TYPES, data)


# -- an event's body, as its sender posted it ---------------------------------

_any = msgspec.json.Decoder()
_envelope = msgspec.json.Decoder(Envelope)


def header(headers: dict[str, str], name: str) -> str | None:
    name = name.lower()
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def data_of(frame: Envelope, text: str) -> bytes:
    """The envelope's ``data`` exactly as stored, whitespace around it included.

    ``msgspec.Raw`` holds the value without the blanks a body may start or end
    with (a trailing newline is common), and a signature covers those too.
    ``data`` is the envelope's last member, so its text runs from the colon
    after the key to the closing brace.
    """
    whole = text.encode("utf-8")
    token = bytes(frame.data)
    end = whole.rstrip().rindex(b"}")
    start = whole.rindex(token, 0, end) if token else end
    colon = whole.rindex(b":", 0, start) if token else end
    if whole[colon + 1:start].strip():
        return token  # not the layout the relay writes: the value itself is the best there is
    return whole[colon + 1:end]


def body_of(frame: Envelope, text: str) -> bytes:
    """The webhook's body exactly as the sender posted it."""
    raw = data_of(frame, text)
    content_type = (header(frame.headers, "content-type") or "").split(";", 1)[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        # A form body travels as a JSON string holding it verbatim.
        return _any.decode(raw).encode("utf-8")
    return raw


def received(envelope: bytes) -> tuple[dict[str, str], bytes]:
    """What a webhook came with, from its stored envelope: its headers
    (``Content-Type`` and the route's ``forward_headers``) and its body
    byte for byte - what an outbound endpoint with ``format = "data"`` gets."""
    frame = _envelope.decode(envelope)
    text = envelope.decode("utf-8")
    return dict(frame.headers), body_of(frame, text)
