"""The ``relay.v1`` messages, both ways: one msgspec Struct per message, one
encoder, one decoder per direction.

Server to client: ``Welcome`` (the first message), ``Envelope`` (an event,
the contract's envelope), ``Gap``, ``Error``, ``Subscribed``,
``Unsubscribed``, ``Refreshed``. Client to server: ``Subscribe``,
``Unsubscribe``, ``Refresh``. Every message is a JSON object whose ``type``
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


class Error(Message, tag="error"):
    error: str | None = None
    detail: str | None = None


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


class Unknown(msgspec.Struct):
    """A message of a type this side does not know."""

    type: str


ServerMessage = Union[Welcome, Envelope, Gap, Error, Subscribed, Unsubscribed, Refreshed]
ClientMessage = Union[Subscribe, Unsubscribe, Refresh]

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
