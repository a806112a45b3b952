"""``relay serve`` and ``relay check``: exit 0 clean, 2 bad config or arguments, 1 otherwise."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from .config.load import load
from .config.model import Config
from .core.errors import ConfigError

DEFAULT_CONFIG = "config/relay.toml"


def _report(error: ConfigError, path: str) -> None:
    print(f"relay: {path}: {len(error.problems)} problem(s) in the config", file=sys.stderr)
    for key, why in error.problems:
        print(f"  {key}: {why}", file=sys.stderr)


def _load(path: str) -> Config:
    config = load(path)
    # Building the routes compiles templates and schemas: errors there are
    # config errors too, so ``check`` and ``serve`` catch them before start.
    from .core.ingest import build_routes

    try:
        build_routes(config.routes, config.secrets)
    except (ValueError, ImportError) as exc:
        raise ConfigError([("routes", str(exc))]) from None
    return config


async def _serve(config: Config) -> None:
    from .server.app import serve

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        nursery.start_soon(watch_signals)
        await serve(config, stop)
        nursery.cancel_scope.cancel()


def _token(args: argparse.Namespace) -> int:
    import time

    from .core.channels import parse_pattern
    from .core.grants import mint

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    try:
        for channel in channels:
            parse_pattern(channel)
    except ValueError as exc:
        print(f"relay: --channels: {exc}", file=sys.stderr)
        return 2
    if args.key:
        try:
            with open(args.key, "rb") as f:
                key = f.read()
            print(mint(key, channels, args.ttl, time.time(), private_pem=True, subject=args.sub))
        except (OSError, ValueError, TypeError) as exc:
            print(f"relay: --key: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        config = load(args.config)
    except ConfigError as error:
        _report(error, args.config)
        return 2
    if config.jwt_key is None or config.jwt_is_public:
        print("relay: the config has no auth.jwt_secret_env; pass --key PRIVATE.pem to sign RS256/ES256", file=sys.stderr)
        return 2
    print(mint(config.jwt_key, channels, args.ttl, time.time(), subject=args.sub))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="Relay webhooks to WebSocket and SSE subscribers.")
    commands = parser.add_subparsers(dest="command", required=True)
    p_serve = commands.add_parser("serve", help="run the daemon")
    p_serve.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p_check = commands.add_parser("check", help="validate a config file")
    p_check.add_argument("-c", "--config", required=True, help="config file")
    p_token = commands.add_parser("token", help="mint a JWT subscriber token for trying the relay")
    p_token.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config whose auth.jwt_secret_env signs (HS256)")
    p_token.add_argument("--key", help="PEM private key to sign with instead (RS256 or ES256)")
    p_token.add_argument("--channels", required=True, help="comma-separated channels and patterns, e.g. 'github.*,demo'")
    p_token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    p_token.add_argument("--sub", help="subject claim")
    p_token.set_defaults(tool=_token)
    from .tools import add_commands  # tail, forward, send: relay/tools.py

    add_commands(commands)
    args = parser.parse_args(argv)
    if getattr(args, "tool", None) is not None:
        return args.tool(args)

    try:
        config = _load(args.config)
    except ConfigError as error:
        _report(error, args.config)
        return 2
    if args.command == "check":
        print(f"relay: {args.config}: ok ({len(config.routes)} route(s), store {config.store.engine})", file=sys.stderr)
        return 0

    from .server.logs import configure

    configure(config.log.level, config.log.format)
    try:
        trio.run(_serve, config, strict_exception_groups=True)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        failure = _first_leaf(group)
        if isinstance(failure, KeyboardInterrupt):
            return 0
        if isinstance(failure, OSError):
            print(f"relay: cannot start: {failure}", file=sys.stderr)
            return 1
        raise
    return 0


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    sys.exit(main())
