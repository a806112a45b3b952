"""Standard Webhooks signing for the relay as a sender: ``whsec_`` secrets,
the ``webhook-*`` headers, and rotation.

The scheme (standardwebhooks.com, what Svix sends): the signed content is
``"{webhook-id}.{webhook-timestamp}.{body}"``, the signature is
``v1,`` + base64(HMAC-SHA256(key, content)), where the key is the base64
after ``whsec_``. A rotated endpoint signs with every secret still in its
grace period, space-separated, so a receiver holding either verifies.

Pure: the caller passes the time and, for a new secret, its random bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "whsec_"
MIN_KEY, MAX_KEY = 24, 64  # bytes of key a secret may carry
ROTATION_GRACE = 24 * 3600.0  # seconds an old secret keeps signing beside the new one


class SecretError(ValueError):
    """A secret that is not ``whsec_`` + base64 of 24 to 64 bytes."""


def decode(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; SecretError says what is wrong."""
    if not secret.startswith(PREFIX):
        raise SecretError("a secret is whsec_ followed by base64")
    try:
        key = base64.b64decode(secret[len(PREFIX):].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SecretError("the part after whsec_ is not base64") from None
    if not MIN_KEY <= len(key) <= MAX_KEY:
        raise SecretError(f"the key is {len(key)} bytes; a secret carries {MIN_KEY} to {MAX_KEY}")
    return key


def make(random: bytes) -> str:
    """A new secret from ``random`` (32 bytes from ``secrets.token_bytes``)."""
    if not MIN_KEY <= len(random) <= MAX_KEY:
        raise SecretError(f"a secret carries {MIN_KEY} to {MAX_KEY} bytes of key")
    return PREFIX + base64.b64encode(random).decode("ascii")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret of an endpoint; ``expires`` (unix seconds) once rotated out."""

    value: str
    expires: float | None = None


def active(secrets: Sequence[Secret], now: float) -> list[Secret]:
    """The secrets that still sign at ``now``, newest first."""
    return [s for s in secrets if s.expires is None or s.expires > now]


def rotate(secrets: Sequence[Secret], new: str, now: float) -> list[Secret]:
    """The endpoint's secrets after a rotation to ``new``: the current ones
    keep signing for ``ROTATION_GRACE``, those already expired are dropped."""
    kept = [Secret(s.value, s.expires if s.expires is not None else now + ROTATION_GRACE)
            for s in active(secrets, now)]
    return [Secret(new), *kept]


def headers(secrets: Sequence[Secret], msg_id: str, now: float, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt at ``now``."""
    timestamp = int(now)
    signed = active(secrets, now)
    if not signed:
        raise SecretError("the endpoint has no secret that signs now")
    value = " ".join(signature(decode(s.value), msg_id, timestamp, body) for s in signed)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": value}
