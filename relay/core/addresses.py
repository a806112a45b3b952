"""Where the relay may send: the address rules that keep registered
endpoints from turning it against the network it runs in (SSRF).

An endpoint's host is resolved for each connection, and every address it
resolves to is checked here before connecting; the connection then goes to
the checked address, never to a second resolution (DNS rebinding cannot
swap it). Refused: loopback, private (RFC 1918, fc00::/7), link-local
(169.254.0.0/16 with the cloud metadata address, fe80::/10), shared
(100.64.0.0/10), multicast, unspecified, reserved and the other special
ranges Python's ``ipaddress`` knows as not global - unless the address is
inside one of ``allow_private``'s networks.

Pure: addresses and URLs in, a reason or None out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")


def networks(cidrs: Sequence[str]) -> list[Network]:
    """``allow_private`` as networks; ValueError names a bad one."""
    out: list[Network] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not a network: {exc}") from None
    return out


def why_forbidden(address: str | Address, allow: Sequence[Network] = ()) -> str | None:
    """Why the relay must not connect to ``address``, or None when it may."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip in net for net in allow):
        return None
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared address space"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not a global address"
    return None


def url_problem(url: str, https_only: bool, allow: Sequence[Network] = ()) -> str | None:
    """What is wrong with ``url`` as an endpoint, before any DNS: scheme,
    host, port, ``https_only``, and an IP literal the address rules refuse."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be https or http"
    if https_only and parts.scheme != "https":
        return "outbound.https_only is set: the URL must be https"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials (use headers)"
    if port == 0:
        return "port 0"
    if parts.fragment:
        return "the URL must not have a #fragment"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    reason = why_forbidden(literal, allow)
    return f"{host} is a {reason} address (outbound.allow_private lists the ones allowed)" if reason else None
