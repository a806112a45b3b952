"""``relay check -c PATH``: name every problem of a config, or say it is ok."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import ConfigError
from .common import load_checked, report


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("check", help="validate a config file")
    p.add_argument("-c", "--config", required=True, help="config file")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        config = load_checked(args.config)
    except ConfigError as error:
        report(error, args.config)
        return 2
    print(f"relay: {args.config}: ok ({len(config.routes)} route(s), store {config.store.engine})", file=sys.stderr)
    return 0
