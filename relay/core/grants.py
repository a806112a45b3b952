"""Who may subscribe to what: tokens, the channels they grant, browser
origins, and JWT subscriber tokens.

Pure. ``Authenticator.grant`` turns the presented token into a ``Grant`` (the
channel patterns it may read, and when it expires) or raises ``Unauthorized``;
``Grant.permits`` decides whether a requested channel or pattern lies wholly
inside what was granted. With no tokens configured, subscribing is open.
JWT verification (``JwtVerifier``) is one more way to produce a ``Grant``.

JWTs: ``JwtVerifier.grant(token, now)`` takes the time in, so expiry is
checked against the relay's clock, not PyJWT's. The accepted algorithms are
fixed by the configured key - HS256 for a shared secret, RS256 for an RSA
public key, ES256 for an EC one - and nothing else: ``alg: none`` and HS/RS
confusion (an RS256 public key used as an HMAC secret) are refused by
construction.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from .channels import parse_pattern
from .errors import Forbidden, Unauthorized

OPEN = None  # the grant of a relay with no auth configured


@dataclass(frozen=True, slots=True)
class Grant:
    channels: tuple[str, ...]
    expires: float | None = None  # unix time, for JWTs
    # What the connection may publish to (contract section 10): names and
    # patterns; none unless the token says so.
    publish: tuple[str, ...] = ()
    # Who publishes, for the idempotency keys: a JWT's subject, else a digest
    # of the token (a static token, or a JWT without ``sub``).
    who: str | None = None
    subject: str | None = None  # a JWT's ``sub``, shown with what it publishes

    def permits(self, requested: str) -> bool:
        return any(covers(allowed, requested) for allowed in self.channels)

    def may_publish(self, channel: str) -> bool:
        return any(covers(allowed, channel) for allowed in self.publish)

    def check(self, requested: Sequence[str]) -> None:
        for pattern in requested:
            if not self.permits(pattern):
                raise Forbidden(f"this token may not read {pattern!r}")


def covers(allowed: str, requested: str) -> bool:
    """True when every channel ``requested`` selects is also selected by ``allowed``."""
    if allowed == "*":
        return True
    if requested == "*":
        return False
    if allowed.endswith(".*"):
        prefix = allowed[:-1]  # "github."
        return requested.startswith(prefix)
    return allowed == requested


def presented_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The token from ``Authorization: Bearer`` or ``token=``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = query.get("token")
    return values[-1] if values else None


def origin_allowed(origins: Sequence[str] | None, origin: str | None) -> bool:
    """Browsers send Origin; other clients usually don't and are not limited."""
    if origins is None or origin is None:
        return True
    return "*" in origins or origin.rstrip("/") in origins


class Authenticator:
    def __init__(self, tokens: Mapping[str, Sequence[str]], jwt: JwtVerifier | None = None,
                 origins: Sequence[str] | None = None, publish: Mapping[str, Sequence[str]] | None = None) -> None:
        publish = publish or {}
        self._tokens = [(value.encode(), tuple(channels), tuple(publish.get(value, ())))
                        for value, channels in tokens.items()]
        self.jwt = jwt
        self.origins = origins  # the browser Origin allow-list (None: any)

    def admit(self, headers: Mapping[str, str], query: Mapping[str, list[str]], patterns: Sequence[str],
              now: float) -> Grant | None:
        """Check a subscription before its upgrade: the browser's Origin
        (403), the token (401), the channels it asks for (403). None: auth
        is off."""
        if not origin_allowed(self.origins, headers.get("origin")):
            raise Forbidden(f"Origin {headers.get('origin', '')[:200]!r} is not allowed")
        grant = self.grant(presented_token(headers, query), now)
        if grant is not None:
            grant.check(patterns)
        return grant

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self.jwt is not None

    def grant(self, token: str | None, now: float) -> Grant | None:
        """The grant of ``token``; None (everything) when auth is off."""
        if not self.enabled:
            return OPEN
        if not token:
            raise Unauthorized("a token is required: Authorization: Bearer <token> or ?token=")
        presented = token.encode()
        found: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        for value, channels, publish in self._tokens:
            # Compare against every token, in constant time each.
            if hmac.compare_digest(value, presented):
                found = channels, publish
        if found is not None:
            return Grant(found[0], publish=found[1], who=_digest(presented))
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.grant(token, now)
        raise Unauthorized("the token is not valid")


def _digest(token: bytes) -> str:
    """A token's name for the idempotency keys: never the token itself."""
    return "t:" + hashlib.sha256(token).hexdigest()[:32]


# -- JWTs ---------------------------------------------------------------------

LEEWAY = 5.0  # seconds of clock skew tolerated on exp and nbf


def _pyjwt():  # type: ignore[no-untyped-def]
    """PyJWT, imported on first use: the one function-level import of the
    core. Its package loads its JWKS client, and with it urllib.request,
    socket and ssl, which the core must not load; only a relay configured
    with a JWT key (or ``relay token``) needs it."""
    import jwt

    return jwt


class KeyError_(ValueError):
    pass


def load_public_key(pem: bytes) -> tuple[object, str]:
    """A PEM public key and the one algorithm it verifies."""
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyError_(f"not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, "ES256"
    raise KeyError_("only RSA (RS256) and EC P-256 (ES256) public keys are supported")


@dataclass(frozen=True, slots=True)
class JwtVerifier:
    key: object  # bytes for HS256, a public key object otherwise
    algorithm: str

    @classmethod
    def from_secret(cls, secret: bytes) -> JwtVerifier:
        return cls(secret, "HS256")

    @classmethod
    def from_public_key(cls, pem: bytes) -> JwtVerifier:
        key, algorithm = load_public_key(pem)
        return cls(key, algorithm)

    def grant(self, token: str, now: float) -> Grant:
        jwt = _pyjwt()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not a valid JWT") from None
        if header.get("alg") != self.algorithm:
            raise Unauthorized(f"JWT algorithm {str(header.get('alg'))[:20]!r} is not accepted; this relay takes {self.algorithm}")
        try:
            claims = jwt.decode(
                token,
                self.key,  # type: ignore[arg-type]
                algorithms=[self.algorithm],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized("the JWT signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the JWT is not valid: {exc}") from None
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        if exp is not None and (not isinstance(exp, (int, float)) or now > exp + LEEWAY):
            raise Unauthorized("the JWT has expired")
        if nbf is not None and (not isinstance(nbf, (int, float)) or now + LEEWAY < nbf):
            raise Unauthorized("the JWT is not valid yet (nbf)")
        channels = claims.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise Unauthorized("the JWT has no 'channels' claim (a list of channel names and patterns)")
        for pattern in channels:
            try:
                parse_pattern(pattern)
            except ValueError as exc:
                raise Unauthorized(f"the JWT's channels claim: {exc}") from None
        publish = claims.get("publish", [])
        if not isinstance(publish, list) or not all(isinstance(c, str) for c in publish):
            raise Unauthorized("the JWT's publish claim must be a list of channel names and patterns")
        for pattern in publish:
            try:
                parse_pattern(pattern)
            except ValueError as exc:
                raise Unauthorized(f"the JWT's publish claim: {exc}") from None
        sub = claims.get("sub")
        subject = sub if isinstance(sub, str) and sub else None
        return Grant(tuple(channels), float(exp) + LEEWAY if exp is not None else None, publish=tuple(publish),
                     who=("s:" + subject) if subject else _digest(token.encode()), subject=subject)


def mint(key: bytes, channels: list[str], ttl: float, now: float, private_pem: bool = False, subject: str | None = None,
         publish: list[str] | None = None) -> str:
    """A token for trying the relay: HS256 with a secret, or RS256/ES256 with a PEM private key."""
    jwt = _pyjwt()
    claims: dict[str, object] = {"channels": channels, "iat": int(now), "exp": int(now + ttl)}
    if publish:
        claims["publish"] = publish
    if subject:
        claims["sub"] = subject
    if private_pem:
        private = load_pem_private_key(key, password=None)
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, private, algorithm=algorithm)  # type: ignore[arg-type]
    return jwt.encode(claims, key, algorithm="HS256")
