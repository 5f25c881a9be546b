"""The promise predictor's recent cases, column by column, and its Kaplan-Meier quantile
over them.

Every promise reads the whole recent sample (a month of a busy mailbox, plus a surge's
own cases as they arrive): its residuals, the share of them nearest the queue met now,
the Kaplan-Meier curve. Held as numpy columns, that is a few vector operations a
promise instead of a Python loop over thousands of cases (bench/surge_daemon.py
--history). The arithmetic is the one written case by case before, operation for
operation in the same order, so the promises are the same to the bit
(tests/unit/test_recent.py holds them to that reading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """`at` as whole microseconds since the epoch: exact, ordered as the datetimes."""
    return (at - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Sample:
    """Some recent cases, one array per attribute, row for row."""

    position: Floats  # business minutes at arrival
    pace: Floats  # business minutes per first response at arrival
    ahead: Ints  # open cases met at arrival
    response: Floats  # business minutes to the first response; NaN while waiting
    overtaken: Ints  # cases answered between its arrival and its response

    def __len__(self) -> int:
        return len(self.position)

    @property
    def answered(self) -> npt.NDArray[np.bool_]:
        return ~np.isnan(self.response)

    def order_share(self) -> float:
        """Responses sent while the answered cases waited, over the queue they met (1 =
        first come, first served; 1 as well below 50 cases ahead in all)."""
        answered = self.answered
        ahead = int(self.ahead[answered].sum())
        overtaken = int(self.overtaken[answered].sum())
        return 1.0 if ahead < 50 else min(1.5, max(0.1, overtaken / ahead))

    def residuals(
        self, position: float, share: float, matched: tuple[float, int] | None = None
    ) -> tuple[Floats, Floats]:
        """Residuals (time to response - the queue's expected wait at arrival) of the
        answered cases, and lower bounds of them for the waiting (censored at
        `position`). With `matched` (expected wait now, count): only the `count` cases
        whose expected wait was nearest it, ties to the earlier row."""
        expected = self.ahead * share * self.pace
        response, opened = self.response, self.position
        if matched is not None:
            near, count = matched
            chosen = np.argsort(np.abs(expected - near), kind="stable")[:count]
            expected, response, opened = expected[chosen], response[chosen], opened[chosen]
        waiting = np.isnan(response)
        events = response[~waiting] - expected[~waiting]
        censored = (position - opened[waiting]) - expected[waiting]
        return events, censored


def km_quantile_of(events: Floats, censored: Floats, quantile: float) -> float | None:
    """`domain.predict.km_quantile` (unconditional) over arrays: the smallest event time
    x with S(x) <= 1 - quantile, None if the curve never gets that low."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile {quantile} is not in (0, 1)")
    times = np.concatenate((events, censored))
    is_censored = np.concatenate((np.zeros(len(events), np.int8), np.ones(len(censored), np.int8)))
    order = np.lexsort((is_censored, times))  # by time, events first at equal times
    times, is_censored = times[order], is_censored[order]
    at_risk = np.arange(len(times), 0, -1)
    # The running product, event by event: cumprod multiplies in order, as the loop did.
    survival = np.cumprod(np.where(is_censored == 0, 1.0 - 1.0 / at_risk, 1.0))
    goal = 1.0 - quantile
    reached = np.flatnonzero((is_censored == 0) & (survival <= goal + 1e-12))
    return float(times[reached[0]]) if reached.size else None


class RecentCases:
    """The cases opened within the predictor's history window, in arrival order (the
    predictor is fed in time order), as growing columns; forgetting moves the start."""

    __slots__ = ("_ahead", "_end", "_gone", "_opened", "_overtaken", "_pace", "_position",
                 "_response", "_start")  # fmt: skip

    def __init__(self, capacity: int = 1024) -> None:
        self._opened: Ints = np.empty(capacity, np.int64)  # micros(opened_at)
        self._position: Floats = np.empty(capacity)
        self._pace: Floats = np.empty(capacity)
        self._ahead: Ints = np.empty(capacity, np.int64)
        self._response: Floats = np.empty(capacity)
        self._overtaken: Ints = np.empty(capacity, np.int64)
        self._start = self._end = 0  # the rows held: [start, end)
        self._gone = 0  # rows dropped from the front by compaction (row ids stay stable)

    def __len__(self) -> int:
        return self._end - self._start

    def add(
        self, opened_at: datetime, position: float, pace: float, ahead: int, overtaken: int
    ) -> int:
        """A case that just arrived; its row id (for `answered`)."""
        if self._end == len(self._opened):
            self._make_room()
        row = self._end
        self._opened[row] = micros(opened_at)
        self._position[row] = position
        self._pace[row] = pace
        self._ahead[row] = ahead
        self._response[row] = math.nan
        self._overtaken[row] = overtaken
        self._end += 1
        return row + self._gone

    def answered(self, row_id: int, response: float, overtaken: int) -> None:
        """The case of `row_id` got its first response (nothing if it was forgotten)."""
        row = row_id - self._gone
        if self._start <= row < self._end:
            self._response[row] = response
            self._overtaken[row] = overtaken

    def forget_before(self, horizon: datetime) -> None:
        """Drop the cases opened before `horizon` (the oldest come first)."""
        cutoff = micros(horizon)
        if self._start == self._end or self._opened[self._start] >= cutoff:
            return  # the common case (called on every arrival): nothing to drop
        held = self._opened[self._start : self._end]
        self._start += int(np.searchsorted(held, cutoff, side="left"))

    def newest_first(self, days: int | None = None, at_least: int = 0) -> Sample:
        """The cases opened in the `days` before the newest one, and at least `at_least`
        (if held), newest first; every case held without `days`. Views of the columns:
        read them before the predictor is fed again."""
        start = self._start
        if days is not None and self._end > self._start:
            newest = int(self._opened[self._end - 1])
            since = newest - days * 86_400_000_000
            held = self._opened[self._start : self._end]
            within = len(held) - int(np.searchsorted(held, since, side="left"))
            start = self._end - max(within, min(at_least, len(held)))

        def rows(column: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return column[start : self._end][::-1]

        return Sample(
            rows(self._position),
            rows(self._pace),
            rows(self._ahead),
            rows(self._response),
            rows(self._overtaken),
        )

    def _make_room(self) -> None:
        """Move the held rows to the front, or double the columns when they are over half
        full."""
        held = self._end - self._start
        size = len(self._opened) * 2 if held > len(self._opened) // 2 else len(self._opened)
        for name in ("_opened", "_position", "_pace", "_ahead", "_response", "_overtaken"):
            column = getattr(self, name)
            grown = np.empty(size, column.dtype)
            grown[:held] = column[self._start : self._end]
            setattr(self, name, grown)
        self._gone += self._start
        self._start, self._end = 0, held
