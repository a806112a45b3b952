"""The ``relay`` command: one table of commands, one module each.

- ``serve``: run the daemon; ``check``: validate a config; ``token``: mint a
  JWT subscriber token;
- ``tail``, ``forward``, ``send``, ``publish``: the tools that talk to a
  running relay.

Exit status: 0 clean, 2 bad config or arguments, 1 otherwise.

Each command module declares its arguments with nothing heavier than the
config and the core, and imports what runs it (trio, the server, the
client) in its ``run``: so ``relay check``, ``relay token`` and ``--help``
start without loading trio or a store engine.
"""

from __future__ import annotations

import argparse
import sys

from . import check, forward, publish, send, serve, tail, token

COMMANDS = (serve, check, token, tail, forward, send, publish)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="Relay webhooks to WebSocket and SSE subscribers.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
