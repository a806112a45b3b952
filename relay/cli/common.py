"""What the commands share: reading a config the way ``check`` judges it,
reporting its problems, and the arguments and token of a subscribing tool.
Nothing here loads trio."""

from __future__ import annotations

import argparse
import os
import sys

from ..config.load import load
from ..config.model import Config
from ..core.errors import ConfigError
from ..core.ingest import build_routes

DEFAULT_CONFIG = "config/relay.toml"


def report(error: ConfigError, path: str) -> None:
    print(f"relay: {path}: {len(error.problems)} problem(s) in the config", file=sys.stderr)
    for key, why in error.problems:
        print(f"  {key}: {why}", file=sys.stderr)


def load_checked(path: str) -> Config:
    config = load(path)
    # Building the routes compiles templates and schemas: errors there are
    # config errors too, so ``check`` and ``serve`` catch them before start.
    try:
        build_routes(config.routes, config.secrets)
    except (ValueError, ImportError) as exc:
        raise ConfigError([("routes", str(exc))]) from None
    return config


def subscriber_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="the relay, e.g. http://127.0.0.1:8080")
    p.add_argument("channel", metavar="CHANNEL", help="a channel, a pattern (github.*, *), or several, comma-separated")
    p.add_argument("--since", metavar="ID", help="start after this event id ('' for the whole stored log)")
    p.add_argument("--token", help="subscriber token or JWT (default: $RELAY_TOKEN)")
    p.add_argument("-n", "--count", type=int, metavar="N", help="stop after N events")


def token_of(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("RELAY_TOKEN") or None


def read_input(path: str, command: str) -> bytes | None:
    """The bytes of FILE, or of stdin for ``-``; None (said on stderr) when
    it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        print(f"relay {command}: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
