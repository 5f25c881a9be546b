"""`keepword run`: the daemon in the foreground (what systemd starts), or one cycle."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from keepword.config import Settings, resolve_config_path
from keepword.daemon import STOP_TIMEOUT, Daemon, Worker
from keepword.errors import KeepwordError
from keepword.logs import setup_logging

DEFAULT_WORKER = "keepword.service:make_worker"

MakeWorker = Callable[[Settings, bool], Worker]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "run",
        help="run the daemon in the foreground (systemd starts this)",
        description="Poll, triage, acknowledge and chase every configured mailbox until "
        "SIGTERM; SIGHUP reloads the configuration.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="decide and log everything, send no mail"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="one poll + triage + chase + drain cycle for every mailbox, then exit (cron, demo)",
    )
    # Not for users: tests select a worker with `--worker module:factory`.
    parser.add_argument("--worker", default=DEFAULT_WORKER, help=argparse.SUPPRESS)
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, help=argparse.SUPPRESS)
    parser.set_defaults(handler=cmd_run)


def load_worker_factory(spec: str) -> MakeWorker:
    """'module:function' -> the function; a clear error if the module is not there."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise KeepwordError(
                f"worker {spec!r} not available: module {exc.name} is missing "
                "(this build of keepword has no use-case layer yet?)"
            ) from None
        raise
    factory = getattr(module, attribute or "make_worker", None)
    if not callable(factory):
        raise KeepwordError(f"worker {spec!r}: {module_name} has no function {attribute!r}")
    return factory  # type: ignore[no-any-return]


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging("INFO")
    make_worker = load_worker_factory(args.worker)
    daemon = Daemon(
        resolve_config_path(getattr(args, "config", None)),
        lambda settings: make_worker(settings, settings.keepword.dry_run),
        dry_run=args.dry_run,
        stop_timeout=args.stop_timeout,
    )
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(daemon.run_once() if args.once else daemon.run())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        if not daemon.abandoned:
            loop.close()
    if daemon.abandoned:
        # A thread stuck in a blocking IMAP call would keep the interpreter from
        # exiting; everything it did not finish is still in the database.
        logging.shutdown()
        os._exit(code)
    return code
