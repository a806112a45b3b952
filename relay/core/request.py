"""A request as its handler sees it, and who sent it.

``request_of`` turns the parser's head (``http1.Request``) into what routes
and handlers read: the method, the path percent-decoded, the query parsed,
the headers (lower-cased names). ``forwarded_client`` says which address a
request came from when trusted proxies stand between the relay and the
client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from . import http1


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "


def request_of(event: http1.Request) -> Request:
    raw_path, _, raw_query = event.origin.partition("?")
    return Request(
        method=event.method,
        target=event.target,
        path=unquote(raw_path) if "%" in raw_path else raw_path,
        query=parse_qs(raw_query, keep_blank_values=True) if raw_query else {},
        headers=event.headers,
    )


def forwarded_client(peer: str, forwarded_for: str | None, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """Walk X-Forwarded-For from the nearest hop while hops are trusted proxies."""
    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not forwarded_for or not is_trusted(peer):
        return peer
    client = peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        client = hop
        if not is_trusted(hop):
            break
    return client
