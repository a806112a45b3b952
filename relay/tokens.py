"""JWT subscriber tokens: verify one into a ``Grant``, or mint one.

Pure: ``JwtVerifier.grant(token, now)`` takes the time in, so expiry is
checked against the relay's clock, not PyJWT's. The accepted algorithms are
fixed by the configured key - HS256 for a shared secret, RS256 for an RSA
public key, ES256 for an EC one - and nothing else: ``alg: none`` and HS/RS
confusion (an RS256 public key used as an HMAC secret) are refused by
construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from .auth import Grant
from .errors import Unauthorized
from .route import parse_pattern

LEEWAY = 5.0  # seconds of clock skew tolerated on exp and nbf


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
        return Grant(tuple(channels), float(exp) + LEEWAY if exp is not None else None)


def mint(key: bytes, channels: list[str], ttl: float, now: float, private_pem: bool = False, subject: str | None = None) -> str:
    """A token for trying the relay: HS256 with a secret, or RS256/ES256 with a PEM private key."""
    claims: dict[str, object] = {"channels": channels, "iat": int(now), "exp": int(now + ttl)}
    if subject:
        claims["sub"] = subject
    if private_pem:
        private = load_pem_private_key(key, password=None)
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, private, algorithm=algorithm)  # type: ignore[arg-type]
    return jwt.encode(claims, key, algorithm="HS256")
