"""Worker processes that parse a big backlog's batches while this process stores.

A first import (or a long outage's backlog) is parsed in spawned worker processes, one
batch each, so mail-parser does not share a core and the GIL with fetching and storing.
A pool is started for the first folder that needs it and kept for the rest of the poll:
a first import reads the team's Sent folder, then the inbox, and a worker spawned again
for each (~0.35 s before its first batch) would leave the storing side waiting. It is
warmed up as it starts (each worker spawned and its modules imported at once), so that
cost overlaps the plan's read and the first fetch instead of following them.

The workers come from one budget per process: mailboxes that import at once share it
(their memory does not grow with their number), and a pool that finds it spent parses
in this process, losing nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from keepword.mail.parse import ParsedMessage, exit_with_parent, parse_many, parse_message

log = logging.getLogger(__name__)

# Parse workers of a backlog: parsing is the import's bottleneck where it shares a core
# with fetching and storing, so a second worker cuts the wall time where a second core
# is; more would wait for this process. Each holds one batch (docs/benchmarks.md,
# "Memory"). The budget is the process's (_WorkerBudget).
MAX_PARSE_WORKERS = 2
PARSE_WORKERS = min(MAX_PARSE_WORKERS, os.cpu_count() or 1)


class _WorkerBudget:
    """The parse workers this process may run at once, shared by its imports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    def take(self, wanted: int) -> int:
        """Up to `wanted` workers, as many as PARSE_WORKERS leaves free (maybe none)."""
        with self._lock:
            granted = max(0, min(wanted, PARSE_WORKERS - self._running))
            self._running += granted
            return granted

    def give_back(self, count: int) -> None:
        with self._lock:
            self._running -= count


_BUDGET = _WorkerBudget()


def warm_up() -> None:
    """In a worker: nothing. Submitted once per worker as a pool starts, so the executor
    spawns them all at once (it spawns one per task while none is idle) and each
    imports the parser (this module's, with the initializer) before its first batch."""


class ParsePool:
    """Spawned worker processes running parse_many, from `start()` until the context
    ends; falls back to parsing in-process (when never started, when other imports of
    the process hold every worker of the budget, or when a worker died).

    `spawn` (not fork): the daemon has threads, and a forked child could inherit a held
    lock. Entry points are `python -m keepword` and the console script, both of which
    multiprocessing knows not to re-run in the child.
    """

    def __init__(self, wanted: int | None = None) -> None:
        self._wanted = PARSE_WORKERS if wanted is None else wanted
        self._executor: ProcessPoolExecutor | None = None
        self.started = False
        self.workers = 0  # granted by the budget while the pool is started

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ParsePool:
        """Take workers from the budget and spawn them now (once; later calls keep them)."""
        if self.started:
            return self
        self.started = True
        self.workers = _BUDGET.take(self._wanted)
        if not self.workers:
            return self
        try:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
            for _ in range(self.workers):
                self._executor.submit(warm_up)
        except Exception:
            log.warning("no parse worker process; parsing in-process", exc_info=True)
            self._executor = None
        return self

    def stop(self) -> None:
        """Stop the workers (after the batch each is parsing) and give them back."""
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self._executor = None
            _BUDGET.give_back(self.workers)
            self.workers = 0
            self.started = False

    @property
    def parallel(self) -> bool:
        """Batches go to worker processes (else submit() hands back None)."""
        return self._executor is not None

    def worker_pids(self) -> set[int]:
        """The worker processes spawned so far (tests)."""
        return set() if self._executor is None else set(self._executor._processes)

    def submit(self, raws: Sequence[bytes]) -> Future[list[ParsedMessage]] | None:
        """Have a worker parse this batch; None: parsed() will parse it in-process."""
        if self._executor is None or not raws:
            return None
        try:
            return self._executor.submit(parse_many, list(raws))
        except Exception:  # BrokenProcessPool: the worker died (OOM killer ...)
            log.warning("parse worker unavailable; parsing in-process", exc_info=True)
            self._executor = None
            return None

    def parsed(
        self, raws: Sequence[bytes], future: Future[list[ParsedMessage]] | None
    ) -> list[ParsedMessage]:
        """The batch as its worker parsed it, or as parsed here if it could not."""
        if future is not None:
            try:
                parsed = future.result()
            except Exception:
                log.warning("parse worker failed; parsing this batch in-process", exc_info=True)
            else:
                if len(parsed) == len(raws):
                    return parsed
        return [parse_message(raw) for raw in raws]
