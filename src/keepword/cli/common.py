"""What every subcommand needs: the settings, the store, the clock, the exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, Engine

from keepword.clock import clock_from_environment
from keepword.config import Settings, load_config, resolve_config_path
from keepword.errors import SecretError, StoreBusyError, StoreError
from keepword.store.db import open_store
from keepword.store.lock import acquire_writer_lock
from keepword.store.reports import open_for_reading

# 0 ok, 1 a step failed, 2 config invalid (keepword.cli.main): and these two.
EXIT_LOCAL: Final = 3  # a local resource is missing: a secret, the database
EXIT_BUSY: Final = 4  # another keepword writes this store (the writer lock is held)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str | None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose description and epilog are printed as written (line breaks kept)."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return load_config(resolve_config_path(getattr(args, "config", None)))


def engine_from(settings: Settings) -> Engine:
    """The store for a command that writes (migrated to the newest schema)."""
    return open_store(settings.keepword.effective_database_url())


@contextmanager
def reading(settings: Settings) -> Iterator[Connection]:
    """The store for a command that only reads, let go after; StoreError says why it
    cannot be read."""
    engine = open_for_reading(settings.keepword.effective_database_url())
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def now() -> datetime:
    """The time the CLI stamps and compares with: the daemon's clock (KEEPWORD_CLOCK too)."""
    return clock_from_environment().now()


def local_failure_exit(exc: BaseException) -> int | None:
    """Print a local failure (busy store, missing secret or database); its exit code."""
    if isinstance(exc, StoreBusyError):
        print(f"keepword: {exc}", file=sys.stderr)
        return EXIT_BUSY
    if isinstance(exc, SecretError | StoreError):
        print(f"keepword: {exc}", file=sys.stderr)
        return EXIT_LOCAL
    return None


@contextmanager
def store_writer(settings: Settings) -> Iterator[None]:
    """Hold the store's writer lock (StoreBusyError if another keepword writes it)."""
    lock = acquire_writer_lock(settings.keepword.effective_database_url())
    try:
        yield
    finally:
        lock.release()
