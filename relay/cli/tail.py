"""``relay tail URL CHANNEL``: print events as they arrive, resuming by itself."""

from __future__ import annotations

import argparse

from .common import subscriber_args, token_of


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("tail", help="print events as they arrive",
                            description="Subscribe and print events: pretty on a terminal, one JSON line each "
                                        "when piped. Resumes by itself after a drop.")
    subscriber_args(p)
    p.add_argument("--format", choices=("auto", "pretty", "json"), default="auto",
                   help="auto: pretty on a terminal, JSON lines otherwise")
    return p


def run(args: argparse.Namespace) -> int:
    # The client and trio load when a tool runs (relay/cli/__init__.py).
    from ..client.client import run as run_tool
    from ..client.render import tail

    pretty = {"auto": None, "pretty": True, "json": False}[args.format]
    return run_tool(lambda: tail(args.url, args.channel, args.since, token_of(args), pretty=pretty, count=args.count))
