"""What outbound delivery keeps: endpoints, waiting deliveries, attempts.

Plain msgspec Structs, so one encoding serves the store (SQLite rows, Redis
values) and the admin API. The rules that change them are in
``relay.core.delivery``; the store engines persist them through
``DeliveryLog`` (``relay/store/deliveries.py``).
"""

from __future__ import annotations

import msgspec

from . import whsec

PENDING, FAILED = "pending", "failed"


class Endpoint(msgspec.Struct, kw_only=True):
    id: str
    url: str
    channels: list[str]
    secrets: list[whsec.Secret]
    format: str = "data"  # or "envelope"
    ordered: bool = False
    rate: float | None = None
    headers: dict[str, str] = {}
    enabled: bool = True
    disabled_reason: str | None = None
    source: str = "api"  # "config": defined by [endpoints.<id>], read-only through the API
    created: float = 0.0
    revision: int = 0  # counts changes made through the API (a cluster's relays adopt the newest)
    # Delivery state: every matching event up to ``cursor`` (an event id, ""
    # for the start of the log) has a row, was delivered or failed.
    cursor: str = ""
    delivered: int = 0
    failed: int = 0
    last_success: float | None = None
    last_failure: float | None = None


class Row(msgspec.Struct, array_like=True):
    """A delivery not yet done: waiting for ``attempt`` until ``due``, or failed."""

    endpoint: str
    event_id: str
    attempt: int
    due: float
    state: str = PENDING


class Attempt(msgspec.Struct, kw_only=True):
    endpoint: str
    event_id: str
    attempt: int
    at: float
    status: int | None
    error: str | None
    duration_ms: float
    response: str = ""  # the first 4 KiB of the answer's body, as text


encode = msgspec.json.Encoder().encode
decode_endpoint = msgspec.json.Decoder(Endpoint).decode
decode_row = msgspec.json.Decoder(Row).decode
decode_attempt = msgspec.json.Decoder(Attempt).decode
