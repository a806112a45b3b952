"""``relay publish URL CHANNEL FILE|-``: publish a JSON message as a
subscriber would (contract section 10); print its event id, exit 0 when it
is stored, 1 when it is refused."""

from __future__ import annotations

import argparse

from .common import read_input, token_of


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("publish", help="publish a JSON message to a channel over a WebSocket",
                            description="Publish FILE (JSON; - for stdin) to CHANNEL as a subscriber would, and "
                                        "print the stored event's id. Exit 0 when it is stored, 1 when refused.")
    p.add_argument("url", metavar="URL", help="the relay, e.g. http://127.0.0.1:8080")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("file", metavar="FILE", help="the JSON message, or - for stdin")
    p.add_argument("--key", help="idempotency key: publishing again with it stores nothing and prints the first id")
    p.add_argument("--token", help="token or JWT with a publish grant (default: $RELAY_TOKEN)")
    return p


def run(args: argparse.Namespace) -> int:
    # The client and trio load when a tool runs (relay/cli/__init__.py).
    from ..client.client import run as run_tool
    from ..client.publish import publish

    data = read_input(args.file, "publish")
    if data is None:
        return 2
    return run_tool(lambda: publish(args.url, args.channel, data, token_of(args), args.key))
