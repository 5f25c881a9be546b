"""`keepword` command line: one module per group of subcommands, each with `register`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from keepword.errors import ConfigError, KeepwordError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from keepword.cli import commands  # subcommand modules register in this list

    parser = argparse.ArgumentParser(
        prog="keepword", description="Shared-inbox triage daemon that keeps its word."
    )
    parser.add_argument(
        "--config", help="configuration file (default: $KEEPWORD_CONFIG or /etc/keepword/...)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in commands.registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"keepword: config: {line}", file=sys.stderr)
        return 2
    except KeepwordError as exc:
        print(f"keepword: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
