"""Promise benchmark (not a test): are keepword's promised windows kept, and how tight are they?

    .venv/bin/python bench/promises.py [--sigma 0.6] [--quantile 0.97] [--grid] [--table]

Replays a synthetic but realistic shared inbox: Mon-Fri 09:00-17:00 Europe/Berlin with
the Berlin public holidays, three months of history already imported at installation,
then six evaluated months.

* Arrivals: customers write at any hour, mostly in office hours (an hourly profile
  peaking late morning, Mondays busiest, a trickle at night and on weekends), about
  25 cases a weekday. Every few weeks a surge (an outage, an invoice run) triples the
  arrival rate for 2-4 business days.
* Responses: each case needs a lognormal "own" time in business minutes (reading,
  looking things up: median --median, spread --sigma) before it can be answered, and the
  team sends at most one first response per --gap business minutes (~40 a day), in the
  order cases become ready. So Monday mornings and surges build a real queue, and the
  backlog effect is emergent, not assumed.

At every arrival the promise is computed exactly as in production, by
keepword.domain.windows.measured_window (load_matched_samples - business-time first
responses of the recent cases that met the nearest backlog, long-open cases counted
with their age - backlog_at, usual_backlog, response_window), from the
cases opened before it and only the responses that had happened by then, and compared
with the actual first response. Also a fixed promise of
"24 hours" (wall clock) on the same history.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would come first on sys.path, and a bench module named
# like a stdlib one would shadow it. Use src/ instead.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent / "src"))

import argparse
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from zoneinfo import ZoneInfo

from keepword.config import CalendarSettings, PromiseSettings
from keepword.domain.calendar import BusinessCalendar
from keepword.domain.windows import measured_window

ZONE = ZoneInfo("Europe/Berlin")
HISTORY_START = date(2025, 10, 6)  # imported at installation
EVALUATION_START = date(2026, 1, 5)  # the first promise after installation
EVALUATION_END = date(2026, 7, 6)  # six months of promises

# Share of a day's mail per local hour (customers write in their own working day).
HOUR_PROFILE = [
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 1.5, 4.0, 6.0, 6.5, 6.0,
    4.5, 5.0, 5.5, 5.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.0, 0.7, 0.4,
]  # fmt: skip
WEEKDAY_FACTOR = [1.3, 1.1, 1.0, 1.0, 0.9, 0.25, 0.2]


class CachedCalendar(BusinessCalendar):
    """The production calendar with memoised measurements: the replay measures the same
    (opened, answered) pairs thousands of times. Results are identical."""

    __slots__ = ("_memo",)

    def __init__(self, base: BusinessCalendar) -> None:
        for name in BusinessCalendar.__slots__:
            object.__setattr__(self, name, getattr(base, name))
        self._memo: dict[tuple[datetime, datetime], float] = {}

    def minutes_between(self, start: datetime, end: datetime) -> float:
        key = (start, end)
        if key not in self._memo:
            self._memo[key] = super().minutes_between(start, end)
        return self._memo[key]


@dataclass(frozen=True)
class Scenario:
    median: float = 90.0  # business minutes of a case's own work before it can be answered
    sigma: float = 0.6
    gap: float = 8.0  # business minutes between two first responses (team throughput)
    daily: float = 25.0  # cases on an ordinary weekday
    seed: int = 42


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth; lam is small (cases per hour).
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def surge_days(rng: random.Random, calendar: BusinessCalendar) -> set[date]:
    days: set[date] = set()
    day = HISTORY_START
    while day < EVALUATION_END:
        day += timedelta(days=rng.randint(18, 45))
        length = rng.randint(2, 4)
        surge = day
        while length:
            if calendar.day_intervals(surge):
                days.add(surge)
                length -= 1
            surge += timedelta(days=1)
    return days


def arrivals(scenario: Scenario, calendar: BusinessCalendar) -> tuple[list[datetime], set[date]]:
    rng = random.Random(scenario.seed)
    surges = surge_days(rng, calendar)
    per_share = scenario.daily / sum(HOUR_PROFILE)
    out: list[datetime] = []
    day = HISTORY_START
    while day < EVALUATION_END:
        boost = rng.uniform(2.5, 3.5) if day in surges else 1.0
        for hour, share in enumerate(HOUR_PROFILE):
            lam = per_share * share * WEEKDAY_FACTOR[day.weekday()] * boost
            start = datetime.combine(day, clock(hour), ZONE).astimezone(UTC)
            out.extend(
                start + timedelta(seconds=rng.uniform(0, 3600)) for _ in range(_poisson(rng, lam))
            )
        day += timedelta(days=1)
    return sorted(out), surges


def responses(
    scenario: Scenario, calendar: BusinessCalendar, opened: Sequence[datetime]
) -> list[datetime]:
    """First responses: each case is ready after its own lognormal business time, and the
    team answers ready cases in order, one per `gap` business minutes at most."""
    rng = random.Random(scenario.seed + 1)
    origin = opened[0]
    # Business position (minutes since origin) of each arrival, measured incrementally.
    position, previous, positions = 0.0, origin, []
    for at in opened:
        position += calendar.minutes_between(previous, at)
        previous = at
        positions.append(position)
    ready = sorted(
        (p + max(3.0, rng.lognormvariate(math.log(scenario.median), scenario.sigma)), i)
        for i, p in enumerate(positions)
    )
    answered: list[datetime] = [origin] * len(opened)
    sent_position, sent_at = -math.inf, origin
    cursor_position = 0.0
    for ready_position, index in ready:
        sent_position = max(ready_position, sent_position + scenario.gap)
        sent_at = calendar.add(sent_at, sent_position - cursor_position)
        cursor_position = sent_position
        answered[index] = sent_at
    return answered


@dataclass(frozen=True)
class Result:
    promises: int
    kept: float
    kept_measured: float
    defaults: int
    behind: float
    median_promise: float
    median_actual: float
    p90_actual: float
    fixed_kept: float
    median_measured: float
    raised: float
    wall_ratio: float
    kept_outside_surges: float
    surge_share: float
    seconds: float

    @property
    def ratio(self) -> float:
        return self.median_promise / self.median_actual


def replay(scenario: Scenario, settings: PromiseSettings) -> Result:
    began = time.perf_counter()
    calendar = CachedCalendar(
        BusinessCalendar.from_settings(
            CalendarSettings(country="DE", subdivision="BE"), "Europe/Berlin"
        )
    )
    opened, surges = arrivals(scenario, calendar)
    answered = responses(scenario, calendar, opened)
    window = timedelta(days=settings.history_days)
    evaluation_start = datetime.combine(EVALUATION_START, clock(0), ZONE)
    kept = kept_measured = measured = defaults = behind = fixed = 0
    surge_cases = surge_misses = 0
    promised: list[float] = []
    actual: list[float] = []
    measured_minutes: list[float] = []
    factors: list[float] = []
    promised_wall: list[float] = []
    actual_wall: list[float] = []
    first = 0  # index of the oldest case inside the history window
    for i, now in enumerate(opened):
        if now < evaluation_start:
            continue
        while opened[first] < now - window:
            first += 1
        # Only cases opened before this one; measured_window ignores later responses.
        history = list(zip(opened[first:i], answered[first:i], strict=True))
        promise = measured_window(history, now, calendar, settings)
        ok = answered[i] <= promise.due_at
        kept += ok
        # "In a surge": arrived on a surge day or in the 3 days after one (the drain).
        local_day = now.astimezone(ZONE).date()
        in_surge = any(local_day - timedelta(days=d) in surges for d in range(4))
        surge_cases += in_surge
        surge_misses += in_surge and not ok
        defaults += promise.is_default
        behind += promise.behind
        if not promise.is_default:
            measured += 1
            kept_measured += ok
        fixed += answered[i] <= now + timedelta(hours=24)
        promised.append(promise.minutes)
        actual.append(calendar.minutes_between(now, answered[i]))
        promised_wall.append((promise.due_at - now).total_seconds() / 60)
        actual_wall.append((answered[i] - now).total_seconds() / 60)
        measured_minutes.append(float(promise.basis.get("measured_minutes", 0)))
        factors.append(float(promise.basis["backlog_factor"]))
    n = len(promised)
    return Result(
        promises=n,
        kept=kept / n,
        kept_measured=kept_measured / max(measured, 1),
        defaults=defaults,
        behind=behind / n,
        median_promise=statistics.median(promised),
        median_actual=statistics.median(actual),
        p90_actual=statistics.quantiles(actual, n=10)[-1],
        fixed_kept=fixed / n,
        median_measured=statistics.median(measured_minutes),
        raised=sum(f > 1 for f in factors) / n,
        wall_ratio=statistics.median(promised_wall) / statistics.median(actual_wall),
        kept_outside_surges=1 - (n - kept - surge_misses) / (n - surge_cases),
        surge_share=surge_cases / n,
        seconds=time.perf_counter() - began,
    )


def describe(scenario: Scenario, settings: PromiseSettings, r: Result) -> str:
    return (
        f"sigma={scenario.sigma:<4g} median own time={scenario.median:g} min  "
        f"p{settings.quantile * 100:g}: {r.promises} promises, kept {r.kept:.1%} "
        f"(measured {r.kept_measured:.1%}, {r.defaults} defaults, behind {r.behind:.1%}); "
        f"median promise {r.median_promise:g} / median actual {r.median_actual:.0f} business min"
        f" = {r.ratio:.2f}x (p90 actual {r.p90_actual:.0f}); fixed 24 h kept "
        f"{r.fixed_kept:.1%}; median measured quantile {r.median_measured:.0f}, raised by "
        f"backlog {r.raised:.1%}, wall-clock ratio {r.wall_ratio:.2f}x; kept away from surges "
        f"{r.kept_outside_surges:.1%} ({r.surge_share:.0%} of cases in or just after one)"
        f"  [{r.seconds:.0f}s]"
    )


def table_row(scenario: Scenario, settings: PromiseSettings, r: Result) -> str:
    return (
        f"| {scenario.sigma:g} | p{settings.quantile * 100:g} | {r.promises} | {r.kept:.1%} "
        f"| {r.median_promise:g} | {r.median_actual:.0f} | {r.ratio:.2f}x "
        f"| {r.wall_ratio:.2f}x | {r.kept_outside_surges:.1%} | {r.fixed_kept:.1%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=Scenario.sigma)
    parser.add_argument("--median", type=float, default=Scenario.median)
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    parser.add_argument("--quantile", type=float, default=PromiseSettings().quantile)
    parser.add_argument("--grid", action="store_true", help="spread x quantile table")
    parser.add_argument("--sigmas", default="0.25,0.4,0.6,0.9", help="for --grid")
    parser.add_argument("--quantiles", default="0.9,0.95", help="for --grid")
    parser.add_argument("--table", action="store_true", help="also print markdown table rows")
    args = parser.parse_args()
    scenario = Scenario(median=args.median, sigma=args.sigma, seed=args.seed)
    settings = PromiseSettings(quantile=args.quantile)
    rows: list[str] = []
    if args.grid:
        for sigma in (float(x) for x in args.sigmas.split(",")):
            for quantile in (float(x) for x in args.quantiles.split(",")):
                s = Scenario(median=args.median, sigma=sigma, seed=args.seed)
                p = PromiseSettings(quantile=quantile)
                result = replay(s, p)
                print(describe(s, p, result), flush=True)
                rows.append(table_row(s, p, result))
    else:
        result = replay(scenario, settings)
        print(describe(scenario, settings, result))
        rows.append(table_row(scenario, settings, result))
    if args.table:
        print("\n".join(rows))


if __name__ == "__main__":
    main()
