"""What the config names outside itself: the TLS files, the JWT public key,
the Redis and NATS URLs. Each check says what is wrong in the words of a config
problem, without starting anything: the TLS context built here is the one
the server uses, and the store URLs are read without loading the engine.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit

from cryptography import x509

from ..core.grants import load_public_key


class TLSConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        # OpenSSL does not say which file it choked on: ask the certificate.
        field = "key" if _is_certificate(cert) else "cert"
        what = "not a PEM private key that fits the certificate" if field == "key" else "not a PEM certificate chain"
        raise TLSConfigError(field, f"{(key if field == 'key' else cert)!r}: {what} ({exc.reason or exc})") from None
    except OSError as exc:
        raise TLSConfigError("cert", f"cannot read: {exc.strerror}") from None
    return context


def _is_certificate(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return False
    return True


def tls_problems(cert: str, key: str) -> list[tuple[str, str]]:
    """``server.tls``: both files there, and a context can be built of them."""
    problems = [(f"server.tls.{field}", f"{path!r}: file not found")
                for field, path in (("cert", cert), ("key", key)) if not os.path.isfile(path)]
    if not problems:
        try:
            server_context(cert, key)
        except TLSConfigError as exc:
            problems.append((f"server.tls.{exc.field}", str(exc)))
    return problems


def read_public_key(path: str) -> tuple[bytes | None, str | None]:
    """``auth.jwt_public_key``: the PEM's bytes, or why they cannot verify JWTs."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
        load_public_key(pem)
    except OSError as exc:
        return None, f"{path!r}: {exc.strerror}"
    except ValueError as exc:
        return None, f"{path!r}: {exc}"
    return pem, None


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL this engine can use, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{redacted(url)!r}: {exc}"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"{redacted(url)!r}: expected redis://HOST:PORT/DB, rediss://… or unix:///path"
    if parts.scheme == "unix":
        return None if parts.path else f"{redacted(url)!r}: unix:// needs the socket's path"
    if not parts.hostname:
        return f"{redacted(url)!r}: no host"
    if port == 0:
        return f"{redacted(url)!r}: port 0"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"{redacted(url)!r}: the path names the database, a number (got {db!r})"
    return None


NATS_URL = "nats://127.0.0.1:4222"


def nats_url_problem(url: str) -> str | None:
    """Why ``url`` is not a NATS URL the nats engine can use, or None. Several
    servers of one NATS cluster may be given, comma-separated."""
    for one in url.split(","):
        try:
            parts = urlsplit(one.strip())
            port = parts.port
        except ValueError as exc:
            return f"{redacted(one)!r}: {exc}"
        if parts.scheme not in ("nats", "tls", "ws", "wss"):
            return f"{redacted(one)!r}: expected nats://[USER:PASSWORD@]HOST:PORT or tls://…"
        if not parts.hostname:
            return f"{redacted(one)!r}: no host"
        if port == 0:
            return f"{redacted(one)!r}: port 0"
    return None


def ca_problem(path: str) -> str | None:
    """Why ``path`` is not a PEM file of CA certificates, or None."""
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return f"{path!r}: file not found"
    except ssl.SSLError as exc:  # an OSError too: first
        return f"{path!r}: not a PEM file of certificates ({exc.reason or exc})"
    except OSError as exc:
        return f"{path!r}: {exc.strerror}"
    return None
