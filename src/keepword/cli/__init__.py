"""`keepword` command line: one module per group of subcommands, each with `register`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from keepword.cli.collector import pace_collector
from keepword.errors import ConfigError, KeepwordError, StaleCaseError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from keepword.cli import commands  # subcommand modules register in this list

    parser = argparse.ArgumentParser(
        prog="keepword", description="Shared-inbox triage daemon that keeps its word."
    )
    parser.add_argument(
        "--config", help="configuration file (default: $KEEPWORD_CONFIG or /etc/keepword/...)"
    )
    parser.add_argument("--version", action="version", version=f"keepword {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in commands.registrars():
        register(sub)
    return parser


def version() -> str:
    try:
        return metadata.version("keepword")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    pace_collector()  # first, before the imports: see cli.collector
    from keepword.cli.common import local_failure_exit

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
        if (code := local_failure_exit(exc)) is not None and not isinstance(exc, StaleCaseError):
            return code  # the database or a secret: exit 3 as `run` does
        print(f"keepword: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
