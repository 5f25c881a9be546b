"""SQLite's write-ahead log copied into the database by a thread of its own.

SQLite copies the WAL into the database (a checkpoint) in the connection whose commit
finds it over its limit (store.db.WAL_CHECKPOINT_BYTES): during a first import, on the
thread that stores and triages, which bounds the import. While a store is open for
writing (`keepword run`, `keepword import`), a thread with its own connection copies the
WAL every CHECKPOINT_EVERY seconds instead, in PASSIVE mode: it never waits for a
reader, and the writer goes on appending meanwhile. The writers' own checkpoint then
finds little left to copy; it stays the safety net where this thread is not running
(another process, a failure here). A store nobody writes to is looked at less and less
often, down to every IDLE_EVERY seconds (a wake-up costs ~0.5 ms of CPU here: at 4 a
second, 0.2% of a core for a daemon that waits for mail).

Elsewhere (PostgreSQL, an in-memory SQLite) there is no WAL of keepword's to copy.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from keepword.store.lock import sqlite_path

log = logging.getLogger(__name__)

# Measured on a 20,000-mail first import (docs/benchmarks.md, twenty-eighth wave): every
# 0.25 s, the import's thread copied almost nothing itself.
CHECKPOINT_EVERY = 0.25
IDLE_EVERY = 4.0


class BackgroundCheckpoints:
    """The checkpoint thread of one SQLite file store, from start() to stop()."""

    def __init__(
        self, engine: Engine, every: float = CHECKPOINT_EVERY, idle_every: float = IDLE_EVERY
    ) -> None:
        self._engine = engine
        self._every = every
        self._idle_every = idle_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # done so far (tests)

    @staticmethod
    def wanted(engine: Engine) -> bool:
        """A SQLite store in a file (the only kind with a WAL)."""
        return sqlite_path(engine.url) is not None

    def start(self) -> BackgroundCheckpoints:
        if self._thread is None and self.wanted(self._engine):
            self._thread = threading.Thread(
                target=self._run, name="kw-wal-checkpoints", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """After the checkpoint in progress, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> BackgroundCheckpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            pooled = self._engine.raw_connection()
        except SQLAlchemyError:
            log.warning("no WAL checkpoint thread: the writers checkpoint", exc_info=True)
            return
        try:
            sqlite = pooled.driver_connection
            assert sqlite is not None
            every, last = self._every, None
            while not self._stop.wait(every):
                try:
                    state = self._checkpoint(sqlite)
                except Exception:  # never fatal: the writers checkpoint too
                    log.debug("WAL checkpoint failed; tried again", exc_info=True)
                    every = min(every * 2, self._idle_every)
                    continue
                self.checkpoints += 1
                # The same as last time: nobody wrote since. Wake half as often (up to
                # IDLE_EVERY) until somebody does.
                every = min(every * 2, self._idle_every) if state == last else self._every
                last = state
        finally:
            pooled.close()

    @staticmethod
    def _checkpoint(sqlite: Any) -> tuple[int, ...]:
        """(busy, frames in the WAL, frames copied into the database)."""
        return tuple(sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
