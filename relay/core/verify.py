"""Webhook signature checks: one preset per sender, plus a generic HMAC.

This module owns the question "did the configured sender really send these
bytes, recently?" and the answer to "which delivery is this?" that dedupe
needs. It is pure: headers, body and the receive time come in, a delivery id
or a ``BadSignature`` goes out. No clock, no I/O.

Two rules hold for every scheme:

- Every comparison of a signature goes through ``hmac.compare_digest`` on
  decoded digest bytes, so timing says nothing about how much of a guess was
  right.
- An error detail names the header and the check that failed, so the sender
  can fix the request, but never echoes a secret, the expected signature, or
  the signature the request carried (a correctly signed but stale request
  carries exactly the expected value).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from .errors import BadSignature

SCHEMES = ("none", "hmac-sha256", "github", "stripe", "slack", "shopify", "standard")
ENCODINGS = ("hex", "base64")

_DIGEST_SIZE = hashlib.sha256().digest_size
_PARTS = ("id", "timestamp", "signature")  # a Standard Webhooks header is webhook-<part> (or svix-<part>)


@dataclass(frozen=True, slots=True)
class VerifySpec:
    """How one route checks its senders.

    ``secrets`` holds every secret currently accepted; during a rotation the
    old and the new one are both listed and either may match. For "standard"
    each secret is the configured string (``whsec_<base64>``, prefix
    optional); it is decoded at check time so that a bad one surfaces as a
    401 naming the problem rather than a crash.
    """

    scheme: str
    secrets: tuple[bytes, ...]
    header: str = ""
    encoding: str = "hex"
    prefix: str = ""
    tolerance: float = 300.0

    def __post_init__(self) -> None:
        # These are programming or config-loader mistakes, not sender
        # mistakes, so they are ValueErrors at construction, not 401s later.
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown verify scheme {self.scheme!r}; expected one of {', '.join(SCHEMES)}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown signature encoding {self.encoding!r}; expected hex or base64")
        if self.scheme != "none" and not self.secrets:
            raise ValueError(f"verify scheme {self.scheme!r} needs at least one secret")
        if self.scheme == "hmac-sha256" and not self.header:
            raise ValueError("verify scheme 'hmac-sha256' needs the signature header name")
        if not self.tolerance > 0:
            raise ValueError("tolerance must be a positive number of seconds")


def verify(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Check one request; return its delivery id for dedupe, or None.

    ``headers`` has lower-cased names. ``now`` is the unix time the request
    arrived. Raises ``BadSignature`` on any failure.
    """
    return _VERIFIERS[spec.scheme](spec, headers, body, now)


def sign(spec: VerifySpec, body: bytes, now: float, delivery: str | None = None) -> dict[str, str]:
    """The headers a real sender would attach to ``body`` at time ``now``.

    Uses the first secret. ``delivery`` fills the scheme's delivery header
    where it has one (GitHub, Shopify, Standard Webhooks); Stripe's delivery
    id lives in the body and Slack's is derived from the signature, so it is
    ignored there.
    """
    ts = str(int(now))
    secret = spec.secrets[0] if spec.secrets else b""
    scheme = spec.scheme
    if scheme == "none":
        return {}
    if scheme == "github":
        out = {"X-Hub-Signature-256": "sha256=" + _mac(secret, body).hex()}
        if delivery is not None:
            out["X-GitHub-Delivery"] = delivery
        return out
    if scheme == "stripe":
        digest = _mac(secret, ts.encode() + b"." + body)
        return {"Stripe-Signature": f"t={ts},v1={digest.hex()}"}
    if scheme == "slack":
        digest = _mac(secret, b"v0:" + ts.encode() + b":" + body)
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + digest.hex()}
    if scheme == "shopify":
        out = {"X-Shopify-Hmac-Sha256": _b64(_mac(secret, body))}
        if delivery is not None:
            out["X-Shopify-Webhook-Id"] = delivery
        return out
    if scheme == "standard":
        key = _standard_key(secret)
        if key is None:
            raise ValueError("the secret is not a whsec_ base64 key")
        if delivery is None:
            # The id is signed and mandatory; derive a stable one so that
            # signing the same body at the same second twice is a retry.
            delivery = "msg_" + hashlib.sha256(ts.encode() + b"." + body).hexdigest()[:24]
        digest = _mac(key, f"{delivery}.{ts}.".encode() + body)
        return {"webhook-id": delivery, "webhook-timestamp": ts, "webhook-signature": "v1," + _b64(digest)}
    # hmac-sha256
    digest = _mac(secret, body)
    value = digest.hex() if spec.encoding == "hex" else _b64(digest)
    return {spec.header: spec.prefix + value}


# --- the schemes ---------------------------------------------------------


def _verify_none(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    return None


def _verify_github(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    name = "X-Hub-Signature-256"
    value = _require(headers, name)
    if not value.startswith("sha256="):
        raise BadSignature(f"{name}: expected 'sha256=' followed by 64 hex digits")
    claimed = _unhex(value[len("sha256=") :])
    if claimed is None:
        raise BadSignature(f"{name}: expected 'sha256=' followed by 64 hex digits")
    if not _any_match(spec.secrets, body, [claimed]):
        raise BadSignature(f"{name}: signature does not match the body")
    return headers.get("x-github-delivery") or None


def _verify_stripe(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    name = "Stripe-Signature"
    value = _require(headers, name)
    ts: str | None = None
    claimed: list[bytes] = []
    seen_v1 = False
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise BadSignature(f"{name}: expected comma-separated key=value pairs like 't=<unix time>,v1=<hex>'")
        if key == "t":
            ts = val
        elif key == "v1":
            seen_v1 = True
            # An unreadable v1 is a signature that cannot match; another v1
            # in the same header may still be the good one (key rolling).
            digest = _unhex(val)
            if digest is not None:
                claimed.append(digest)
        # v0 (test-mode legacy) and unknown schemes are ignored, as
        # Stripe's own libraries do.
    if ts is None:
        raise BadSignature(f"{name}: no timestamp (t=...)")
    t = _parse_ts(name, ts)
    if not seen_v1:
        raise BadSignature(f"{name}: no v1 signature (only the v1 scheme is accepted)")
    if not _any_match(spec.secrets, ts.encode() + b"." + body, claimed):
        raise BadSignature(f"{name}: no v1 signature matches the timestamp and body")
    _check_tolerance(name, t, now, spec.tolerance)
    return _json_id(body)


def _verify_slack(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    sig_name, ts_name = "X-Slack-Signature", "X-Slack-Request-Timestamp"
    ts = _require(headers, ts_name)
    value = _require(headers, sig_name)
    t = _parse_ts(ts_name, ts)
    if not value.startswith("v0="):
        raise BadSignature(f"{sig_name}: expected 'v0=' followed by 64 hex digits")
    claimed = _unhex(value[len("v0=") :])
    if claimed is None:
        raise BadSignature(f"{sig_name}: expected 'v0=' followed by 64 hex digits")
    if not _any_match(spec.secrets, b"v0:" + ts.encode() + b":" + body, [claimed]):
        raise BadSignature(f"{sig_name}: signature does not match {ts_name} and the body")
    _check_tolerance(ts_name, t, now, spec.tolerance)
    # Slack names no delivery; a retry re-sends the same timestamp and
    # signature, so together they identify it. The signature itself is
    # hashed: the delivery id goes into logs and envelopes.
    return f"{ts}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _verify_shopify(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    name = "X-Shopify-Hmac-Sha256"
    claimed = _unb64(_require(headers, name).strip())
    if claimed is None:
        raise BadSignature(f"{name}: expected the base64 of a 32-byte HMAC-SHA256")
    if not _any_match(spec.secrets, body, [claimed]):
        raise BadSignature(f"{name}: signature does not match the body")
    return headers.get("x-shopify-webhook-id") or None


def _verify_standard(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    # Svix (and so Clerk, Resend, ...) sends the same scheme under its own
    # names, svix-id, svix-timestamp and svix-signature. Like the svix
    # library's own verify, each svix- header is taken where present, else
    # its webhook- twin; the id, whichever spelling, is the delivery id. A
    # missing header is named in the spelling the request uses.
    svix = any(f"svix-{part}" in headers for part in _PARTS)
    (id_name, msg_id), (ts_name, ts), (sig_name, value) = (
        _either(headers, f"svix-{part}", f"webhook-{part}", svix) for part in _PARTS)
    t = _parse_ts(ts_name, ts)
    keys = []
    for secret in spec.secrets:
        key = _standard_key(secret)
        if key is None:
            # The operator's mistake, but the request cannot be trusted
            # either; say so without showing the secret.
            raise BadSignature(f"{sig_name}: the route's secret is not a valid whsec_<base64> key (relay configuration)")
        keys.append(key)
    claimed = []
    seen_v1 = False
    for part in value.split():
        version, sep, sig = part.partition(",")
        if not sep:
            raise BadSignature(f"{sig_name}: expected space-separated '<version>,<base64>' entries")
        if version != "v1":
            continue  # v1a (asymmetric) and future versions are not ours to check
        seen_v1 = True
        digest = _unb64(sig)
        if digest is not None:
            claimed.append(digest)
    if not seen_v1:
        raise BadSignature(f"{sig_name}: no v1 signature (only v1, HMAC-SHA256, is accepted)")
    if not _any_match(keys, f"{msg_id}.{ts}.".encode() + body, claimed):
        raise BadSignature(f"{sig_name}: no v1 signature matches {id_name}, {ts_name} and the body")
    _check_tolerance(ts_name, t, now, spec.tolerance)
    return msg_id


def _verify_hmac(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    name = spec.header
    value = _require(headers, name).strip()
    shape = f"{spec.prefix!r} followed by " if spec.prefix else ""
    shape += "64 hex digits" if spec.encoding == "hex" else "the base64 of a 32-byte HMAC-SHA256"
    if spec.prefix:
        if not value.startswith(spec.prefix):
            raise BadSignature(f"{name}: expected {shape}")
        value = value[len(spec.prefix) :]
    claimed = _unhex(value) if spec.encoding == "hex" else _unb64(value)
    if claimed is None:
        raise BadSignature(f"{name}: expected {shape}")
    if not _any_match(spec.secrets, body, [claimed]):
        raise BadSignature(f"{name}: signature does not match the body")
    return None


_VERIFIERS = {
    "none": _verify_none,
    "github": _verify_github,
    "stripe": _verify_stripe,
    "slack": _verify_slack,
    "shopify": _verify_shopify,
    "standard": _verify_standard,
    "hmac-sha256": _verify_hmac,
}


# --- helpers -------------------------------------------------------------


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _any_match(secrets: tuple[bytes, ...] | list[bytes], message: bytes, claimed: list[bytes]) -> bool:
    # Every pair is compared, with no early exit, so the time taken does not
    # reveal which secret or which listed signature matched.
    found = False
    for secret in secrets:
        expected = _mac(secret, message)
        for candidate in claimed:
            found |= hmac.compare_digest(expected, candidate)
    return found


def _require(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if value is None or not value.strip():
        raise BadSignature(f"{name}: header is missing")
    return value


def _either(headers: Mapping[str, str], alias: str, name: str, say_alias: bool) -> tuple[str, str]:
    """(the name used, its value): ``alias`` when the request has it, else
    ``name``; neither is missing ``alias`` when ``say_alias``, else ``name``."""
    for candidate in (alias, name):
        value = headers.get(candidate)
        if value is not None and value.strip():
            return candidate, value
    raise BadSignature(f"{alias if say_alias else name}: header is missing")


def _unhex(text: str) -> bytes | None:
    text = text.strip()
    if len(text) != 2 * _DIGEST_SIZE:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _unb64(text: str) -> bytes | None:
    try:
        digest = base64.b64decode(text.encode("latin-1"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return digest if len(digest) == _DIGEST_SIZE else None


def _standard_key(secret: bytes) -> bytes | None:
    raw = secret.strip()
    if raw.startswith(b"whsec_"):
        raw = raw[len(b"whsec_") :]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def _parse_ts(name: str, text: str) -> int:
    text = text.strip()
    # Digits only: int() would also take "+1_700_000_000" or " 17 ".
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise BadSignature(f"{name}: timestamp is not a unix time in whole seconds")
    return int(text)


def _check_tolerance(name: str, ts: int, now: float, tolerance: float) -> None:
    skew = now - ts
    if abs(skew) > tolerance:
        where = f"{skew:.0f} s in the past" if skew > 0 else f"{-skew:.0f} s in the future"
        raise BadSignature(f"{name}: timestamp {ts} is outside the {tolerance:g} s tolerance ({where})")


class _HasId(msgspec.Struct):
    id: str | None = None


_ID_DECODER = msgspec.json.Decoder(_HasId)


def _json_id(body: bytes) -> str | None:
    # Only the top-level "id" is read; a body that is not a JSON object with
    # a string id simply has no delivery id (the JSON check later decides
    # whether the body is acceptable at all).
    try:
        return _ID_DECODER.decode(body).id
    except msgspec.DecodeError:
        return None
