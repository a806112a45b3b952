"""``relay send URL ROUTE FILE --preset P``: sign FILE as the sender would
and POST it; exit 0 when the relay accepts it (2xx), 1 otherwise."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..core.verify import SCHEMES
from .common import read_input


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("send", help="sign a payload as a sender would and post it",
                            description="Sign FILE as the preset's sender would and POST it to /hooks/ROUTE. "
                                        "Exit 0 when the relay accepts it (2xx), 1 otherwise.")
    p.add_argument("url", metavar="URL", help="the relay, e.g. http://127.0.0.1:8080")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("file", metavar="FILE", help="the body to send, or - for stdin")
    p.add_argument("--preset", choices=SCHEMES, default="none", help="the sender to sign as (default none)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="the signing secret (visible to ps: prefer --secret-env)")
    secret.add_argument("--secret-env", metavar="VAR", help="read the signing secret from this environment variable")
    p.add_argument("--event", help="X-GitHub-Event (github, default push) or X-Shopify-Topic (shopify)")
    p.add_argument("--delivery", metavar="ID", help="the delivery id (default: a fresh one)")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--signature-header", metavar="NAME", help="hmac-sha256: the header that carries the signature")
    p.add_argument("--signature-prefix", default="", metavar="TEXT", help="hmac-sha256: e.g. sha256=")
    p.add_argument("--signature-encoding", choices=("hex", "base64"), default="hex")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="an extra header (repeatable)")
    return p


def run(args: argparse.Namespace) -> int:
    # The client and trio load when a tool runs (relay/cli/__init__.py).
    from ..client.client import ToolError
    from ..client.client import run as run_tool
    from ..client.send import send, signed_headers

    secret = args.secret
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            print(f"relay send: environment variable {args.secret_env} is not set", file=sys.stderr)
            return 2
    body = read_input(args.file, "send")
    if body is None:
        return 2
    try:
        headers = signed_headers(args.preset, secret, body, time.time(), event=args.event, delivery=args.delivery,
                                 signature_header=args.signature_header, prefix=args.signature_prefix,
                                 encoding=args.signature_encoding, content_type=args.content_type)
    except ToolError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"relay send: -H {item!r}: expected 'Name: value'", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    return run_tool(lambda: send(args.url, args.route, body, headers))
