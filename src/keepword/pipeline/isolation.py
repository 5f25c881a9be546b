"""Per-item isolation: one failing item never stops the items behind it.

A defect in keepword's own code (a bad template, unexpected data, a bug) must cost at
most the item it happened on, never the rest of a batch: every case of a chase step,
every message of a triage run, the digest beside them. `isolated` runs one unit of work
and turns an unexpected exception into a logged, counted failure; `each_isolated` does
that for every item of a batch, in order. The failed item is simply tried again on the
next run (the callers' work is idempotent and writes in its own transaction).

`expected` exceptions are the normal "not now" answers (e.g. `StaleCaseError`: the case
changed while it was being decided): logged at INFO, counted as skipped, not as failed.

`on_failure` replaces the default log line with the caller's retry policy: triage
records when the message is tried again (store.triage_state) and logs by attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Outcome(Generic[T, R]):
    """What a batch came to: results of the items that succeeded, and the others."""

    done: list[tuple[T, R]] = field(default_factory=list)
    skipped: list[T] = field(default_factory=list)
    failed: list[T] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Attempt(Generic[R]):
    """One isolated unit of work: its result, or why there is none."""

    value: R | None
    skipped: bool = False
    failed: bool = False
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return not (self.skipped or self.failed)


def isolated(
    work: Callable[[], R],
    *,
    what: str,
    log: logging.Logger,
    expected: tuple[type[BaseException], ...] = (),
    on_failure: Callable[[Exception], None] | None = None,
) -> Attempt[R]:
    """Run `work`; an exception is logged with `what` (or handed to `on_failure`) and
    reported, never raised.

    Only `Exception` is caught: KeyboardInterrupt, SystemExit and cancellation still
    stop the process as they should.
    """
    try:
        return Attempt(work())
    except expected as exc:
        log.info("%s: %s; tried again next run", what, exc)
        return Attempt(None, skipped=True, error=cast(Exception, exc))
    except Exception as exc:
        if on_failure is None:
            log.exception("%s failed; tried again next run", what)
        else:
            on_failure(exc)
        return Attempt(None, failed=True, error=exc)


def each_isolated(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    what: Callable[[T], str],
    log: logging.Logger,
    expected: tuple[type[BaseException], ...] = (),
) -> Outcome[T, R]:
    """`work(item)` for every item in order, each isolated from the others."""
    outcome: Outcome[T, R] = Outcome()
    for item in items:
        attempt = isolated(partial(work, item), what=what(item), log=log, expected=expected)
        if attempt.failed:
            outcome.failed.append(item)
        elif attempt.skipped:
            outcome.skipped.append(item)
        else:
            outcome.done.append((item, cast(R, attempt.value)))
    return outcome
