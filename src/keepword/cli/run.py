"""`keepword run`: the daemon in the foreground (what systemd starts), or one pass."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from keepword.adapters.logs import set_log_zone, setup_logging
from keepword.cli.common import EXIT_BUSY, EXIT_LOCAL, add_command, local_failure_exit
from keepword.config import load_config, resolve_config_path
from keepword.errors import KeepwordError

if TYPE_CHECKING:
    from keepword.runtime.daemon import WorkerFactory

# The daemon and its use cases are imported when `run` starts, not when any command's
# parser is built: every other command starts without them (~0.3 s).
# The daemon's worker factory; None: runtime.service's. The daemon's tests put a fake here.
make_worker: WorkerFactory | None = None

EXIT_CODES: Final = f"""\
exit codes:
  0   stopped cleanly (SIGTERM), or --once: every step of every mailbox worked
  1   --once: a step failed (a server down, the relay refusing the login, ...);
      the daemon itself keeps retrying remote failures and does not exit for them
  2   the configuration is invalid or has no [[mailbox]]
  {EXIT_LOCAL}   a local resource is missing: a secret (password_file, credential,
      variable), or the database cannot be opened or migrated
  {EXIT_BUSY}   another keepword already writes this store (`run`, `run --once` or
      `import`): stop it, or let the running service do the work
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = add_command(
        sub,
        "run",
        help="run the daemon in the foreground (systemd starts this)",
        description="Poll, triage, acknowledge and chase every configured mailbox until "
        "SIGTERM; SIGHUP reloads the configuration.",
        epilog=EXIT_CODES,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide everything and log each mail as its recipient would read it; send none",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="one poll + triage + chase + drain pass for every mailbox, then exit "
        "(never beside a running service: refused, exit 4)",
    )
    # Default: runtime.daemon.STOP_TIMEOUT (Pacing's own).
    parser.add_argument("--stop-timeout", type=float, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    if make_worker is not None:
        return run_daemon(args, make_worker)
    from keepword.runtime.service import make_worker as service_worker

    return run_daemon(args, service_worker)


def _log_in_configured_zone(config: str | None) -> None:
    """Terminal log times in keepword.timezone, as the CLI shows them (the daemon reports
    a config it cannot load itself)."""
    with contextlib.suppress(KeepwordError, OSError):
        set_log_zone(ZoneInfo(load_config(resolve_config_path(config)).keepword.timezone))


def run_daemon(args: argparse.Namespace, worker_factory: WorkerFactory) -> int:
    """`run` with the given worker factory (runtime.service.make_worker; tests pass fakes)."""
    from keepword.runtime.daemon import Daemon, Pacing

    setup_logging("INFO")
    _log_in_configured_zone(getattr(args, "config", None))
    stop_timeout = getattr(args, "stop_timeout", None)
    daemon = Daemon(
        resolve_config_path(getattr(args, "config", None)),
        worker_factory,
        dry_run=args.dry_run,
        pacing=Pacing() if stop_timeout is None else Pacing(stop_timeout=stop_timeout),
    )
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(daemon.run_once() if args.once else daemon.run())
    except Exception as exc:
        if (failure := local_failure_exit(exc)) is None:
            raise
        return failure
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
