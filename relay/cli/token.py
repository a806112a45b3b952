"""``relay token``: mint a JWT subscriber token for trying the relay, signed
with the config's HS256 secret or a PEM private key (RS256, ES256)."""

from __future__ import annotations

import argparse
import sys
import time

from ..config.load import load
from ..core.channels import parse_pattern
from ..core.errors import ConfigError
from ..core.grants import mint
from .common import DEFAULT_CONFIG, report


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = commands.add_parser("token", help="mint a JWT subscriber token for trying the relay")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config whose auth.jwt_secret_env signs (HS256)")
    p.add_argument("--key", help="PEM private key to sign with instead (RS256 or ES256)")
    p.add_argument("--channels", required=True, help="comma-separated channels and patterns, e.g. 'github.*,demo'")
    p.add_argument("--publish", default="", help="comma-separated channels and patterns it may publish to (optional)")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    p.add_argument("--sub", help="subject claim")
    return p


def run(args: argparse.Namespace) -> int:
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    publish = [c.strip() for c in args.publish.split(",") if c.strip()]
    for option, names in (("--channels", channels), ("--publish", publish)):
        try:
            for channel in names:
                parse_pattern(channel)
        except ValueError as exc:
            print(f"relay: {option}: {exc}", file=sys.stderr)
            return 2
    if args.key:
        try:
            with open(args.key, "rb") as f:
                key = f.read()
            print(mint(key, channels, args.ttl, time.time(), private_pem=True, subject=args.sub, publish=publish))
        except (OSError, ValueError, TypeError) as exc:
            print(f"relay: --key: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        config = load(args.config)
    except ConfigError as error:
        report(error, args.config)
        return 2
    if config.jwt_key is None or config.jwt_is_public:
        print("relay: the config has no auth.jwt_secret_env; pass --key PRIVATE.pem to sign RS256/ES256", file=sys.stderr)
        return 2
    print(mint(config.jwt_key, channels, args.ttl, time.time(), subject=args.sub, publish=publish))
    return 0
