"""TLS on the relay's own port: https and wss, with modern defaults."""

from __future__ import annotations

import ssl

HANDSHAKE_TIMEOUT = 10.0


class TLSConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
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
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return False
    return True
