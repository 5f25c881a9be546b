"""What a replay says: per month and overall, keepword's promises against fixed ones.

Pure. "Kept" means the first response came by the promised due time. A fixed promise
is either business time ("2bd": two business days of 8 business hours, "4bh") or wall
clock ("24h", "3d", "90m"). The best fixed promise in hindsight is the shortest one that
would have been kept as often as keepword's promises were: the nearest-rank quantile of
the actual response times at keepword's kept share (in business and in wall-clock time).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from keepword.backtest.replay import PromiseRecord, Replay, UpdateRecord
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import quantile_of
from keepword.domain.windows import BUSINESS_DAY_MINUTES

_FIXED = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bd|bh|d|h|m|min)\s*$")


@dataclass(frozen=True, slots=True)
class FixedPromise:
    """A promise the team could have made instead: the same time for every case."""

    label: str
    minutes: float
    business: bool

    def due(self, calendar: BusinessCalendar, at: datetime) -> datetime:
        if self.business:
            return calendar.add(at, self.minutes)
        return at + timedelta(minutes=self.minutes)


def parse_fixed(text: str) -> FixedPromise:
    """ "24h", "3d", "90m" (wall clock) or "2bd", "4bh" (business days / hours)."""
    found = _FIXED.match(text.lower())
    if not found:
        raise ValueError(
            f"cannot read the fixed promise {text!r}: use e.g. 24h, 3d, 90m, 4bh or 2bd"
        )
    amount, unit = float(found.group(1)), found.group(2)
    per_unit = {"bd": BUSINESS_DAY_MINUTES, "bh": 60, "d": 1440, "h": 60, "m": 1, "min": 1}
    return FixedPromise(text.strip(), amount * per_unit[unit], unit in ("bd", "bh"))


@dataclass(frozen=True, slots=True)
class FixedFigures:
    label: str
    kept: float


@dataclass(frozen=True, slots=True)
class Figures:
    """One row of the table: a month or the whole period."""

    period: str
    promises: int
    kept: float
    median_promise: float  # business minutes
    median_promise_wall: float  # wall-clock minutes from arrival to due
    median_actual: float  # business minutes (inf if most are unanswered)
    median_actual_wall: float
    best_fixed: float  # business minutes, kept as often as keepword's promises
    best_fixed_wall: float
    fixed: tuple[FixedFigures, ...]
    updates: int
    updates_kept: float
    silent_breaches: int


def _wall(record: PromiseRecord) -> float:
    if record.answered_at is None:
        return math.inf
    return (record.answered_at - record.opened_at).total_seconds() / 60


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def figures(
    period: str,
    records: Sequence[PromiseRecord],
    updates: Sequence[UpdateRecord],
    calendar: BusinessCalendar,
    fixed: Sequence[FixedPromise] = (),
) -> Figures:
    judged = [r for r in records if r.promised and r.kept is not None]
    kept = sum(bool(r.kept) for r in judged) / len(judged) if judged else math.nan
    actual = [r.actual_minutes if r.actual_minutes is not None else math.inf for r in judged]
    actual_wall = [_wall(r) for r in judged]
    share = kept if judged else 0.0
    resolved_updates = [u for u in updates if u.kept is not None]
    return Figures(
        period=period,
        promises=len(judged),
        kept=kept,
        median_promise=_median([float(r.minutes) for r in judged]),
        median_promise_wall=_median(
            [(r.due_at - r.opened_at).total_seconds() / 60 for r in judged if r.due_at]
        ),
        median_actual=_median(actual),
        median_actual_wall=_median(actual_wall),
        best_fixed=quantile_of(actual, share) if judged and share > 0 else math.nan,
        best_fixed_wall=quantile_of(actual_wall, share) if judged and share > 0 else math.nan,
        fixed=tuple(
            FixedFigures(
                f.label,
                sum(
                    r.answered_at is not None and r.answered_at <= f.due(calendar, r.opened_at)
                    for r in judged
                )
                / len(judged)
                if judged
                else math.nan,
            )
            for f in fixed
        ),
        updates=len(resolved_updates),
        updates_kept=(
            sum(bool(u.kept) for u in resolved_updates) / len(resolved_updates)
            if resolved_updates
            else math.nan
        ),
        silent_breaches=sum(r.silent_breach for r in judged),
    )


def monthly(
    result: Replay, calendar: BusinessCalendar, fixed: Sequence[FixedPromise] = ()
) -> list[Figures]:
    """One row per local month of arrival, then the whole period ("all")."""
    by_month: dict[str, list[PromiseRecord]] = {}
    for record in result.promised:
        month = record.opened_at.astimezone(calendar.zone).strftime("%Y-%m")
        by_month.setdefault(month, []).append(record)
    updates_by_month: dict[str, list[UpdateRecord]] = {}
    for update in result.updates:
        opened = result.records[update.case].opened_at
        month = opened.astimezone(calendar.zone).strftime("%Y-%m")
        updates_by_month.setdefault(month, []).append(update)
    rows = [
        figures(month, by_month[month], updates_by_month.get(month, []), calendar, fixed)
        for month in sorted(by_month)
    ]
    rows.append(figures("all", result.promised, result.updates, calendar, fixed))
    return rows


def duration_text(minutes: float, *, business: bool = True) -> str:
    """Short human duration: "45 min", "3.5 h", "2.1 bd" (business) or "1.5 d" (wall)."""
    if math.isnan(minutes):
        return "-"
    if math.isinf(minutes):
        return "never"
    if minutes < 60:
        return f"{minutes:.0f} min"
    day = BUSINESS_DAY_MINUTES if business else 1440
    if minutes < day:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / day:.1f} {'bd' if business else 'd'}"
