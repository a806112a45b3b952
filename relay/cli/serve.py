"""``relay serve [-c PATH]``: run the daemon until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from ..core.errors import ConfigError
from .common import DEFAULT_CONFIG, load_checked, report


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("serve", help="run the daemon")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        config = load_checked(args.config)
    except ConfigError as error:
        report(error, args.config)
        return 2
    # Loaded here, once the config is good: the daemon brings trio and its
    # store engine, which no other command needs (relay/cli/__init__.py).
    from ..server.app import run_daemon

    return run_daemon(config)
