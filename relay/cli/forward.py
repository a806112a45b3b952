"""``relay forward URL CHANNEL --to LOCAL_URL``: re-POST each event to a
local app, resuming by itself."""

from __future__ import annotations

import argparse

from .common import subscriber_args, token_of


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("forward", help="re-POST events to a local URL",
                            description="Re-POST each event to a local URL with its forwarded headers and its body "
                                        "byte-exact, so the local app can check the sender's signature. Resumes by "
                                        "itself after a drop; prints one line per delivery.")
    subscriber_args(p)
    p.add_argument("--to", required=True, metavar="URL", help="where to POST, e.g. http://localhost:3000/hook")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the local app (default 30)")
    return p


def run(args: argparse.Namespace) -> int:
    # The client and trio load when a tool runs (relay/cli/__init__.py).
    from ..client.client import run as run_tool
    from ..client.forward import forward

    return run_tool(lambda: forward(args.url, args.channel, args.to, args.since, token_of(args), count=args.count,
                                    timeout=args.timeout))
