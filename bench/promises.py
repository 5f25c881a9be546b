"""Promise benchmark (not a test): are keepword's promises kept, and how tight are they?

    .venv/bin/python bench/promises.py [--shapes grid,vacation,faster,heavy]
        [--quantiles 0.97] [--matched-every 4] [--table]

Replays a synthetic but realistic shared inbox: Mon-Fri 09:00-17:00 Europe/Berlin with
the Berlin public holidays, three months of history already imported at installation,
then six evaluated months.

* Arrivals: customers write at any hour, mostly in office hours (an hourly profile
  peaking late morning, Mondays busiest, a trickle at night and on weekends), about
  25 cases a weekday. Every few weeks a surge (an outage, an invoice run) triples the
  arrival rate for 2-4 business days.
* Responses: each case needs its own lognormal time in business minutes (reading,
  looking things up) before it can be answered, and the team sends at most one first
  response per `gap` business minutes (~60 a day), in the order cases become ready. So
  Monday mornings and surges build a real queue: the backlog effect is emergent.
* Shapes: the grid (own-time spread sigma 0.25-0.9, median 90 min); "vacation" (the
  team's capacity drops to a third for two weeks in March); "faster" (own time 240 ->
  60 min and gap 12 -> 5 min, linearly over the nine months); "heavy" (85% easy cases,
  median 45 min, 15% hard ones, median 900 min: a heavy-tailed mix).

At every arrival the promise is computed by `keepword.backtest.replay` - the production
predictor (`domain.predict.PromisePredictor`) fed only what was known then, the chase's
customer updates (residual time) included. Baselines in the same run, on the same cases:
a fixed 24 h (wall clock); the best fixed promise in hindsight (the shortest fixed time
kept as often as keepword's promises were); a queue-length predictor ((cases ahead + 1) x
recent business minutes per first response, padded to the quantile by the quantile of
actual / predicted over the recent answered cases); and the previous production rule
(`domain.windows.measured_window`, load-matched p97) on every `--matched-every`-th
arrival (it recomputes from the whole history at each promise and is slow).
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
import bisect
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from zoneinfo import ZoneInfo

from keepword.backtest.replay import PromiseRecord, Replay, replay
from keepword.backtest.summary import figures, parse_fixed
from keepword.config import CalendarSettings, PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import HistoryCase, quantile_of
from keepword.domain.windows import measured_window, round_up_minutes

ZONE = ZoneInfo("Europe/Berlin")
HISTORY_START = date(2025, 10, 6)  # imported at installation
EVALUATION_START = date(2026, 1, 5)  # the first promise after installation
EVALUATION_END = date(2026, 7, 6)  # six months of promises
VACATION = (date(2026, 3, 2), date(2026, 3, 16))  # two weeks at a third of the capacity

# Share of a day's mail per local hour (customers write in their own working day).
HOUR_PROFILE = [
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 1.5, 4.0, 6.0, 6.5, 6.0,
    4.5, 5.0, 5.5, 5.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.0, 0.7, 0.4,
]  # fmt: skip
WEEKDAY_FACTOR = [1.3, 1.1, 1.0, 1.0, 0.9, 0.25, 0.2]


class CachedCalendar(BusinessCalendar):
    """The production calendar with memoised measurements. Results are identical."""

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
    name: str = "grid"
    median: float = 90.0  # business minutes of a case's own work before it can be answered
    sigma: float = 0.6
    gap: float = 8.0  # business minutes between two first responses (team throughput)
    daily: float = 25.0  # cases on an ordinary weekday
    seed: int = 42

    def label(self) -> str:
        return f"sigma {self.sigma:g}" if self.name == "grid" else self.name


def _poisson(rng: random.Random, lam: float) -> int:
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


def arrivals(scenario: Scenario, calendar: BusinessCalendar) -> list[datetime]:
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
    return sorted(out)


def _progress(at: datetime) -> float:
    """0 at the history's start, 1 at the evaluation's end."""
    span = (EVALUATION_END - HISTORY_START).days
    return min(1.0, max(0.0, (at.date() - HISTORY_START).days / span))


def own_time(scenario: Scenario, rng: random.Random, at: datetime) -> float:
    if scenario.name == "faster":
        median = 240.0 + (60.0 - 240.0) * _progress(at)
        return rng.lognormvariate(math.log(median), scenario.sigma)
    if scenario.name == "heavy":
        if rng.random() < 0.85:
            return rng.lognormvariate(math.log(45.0), 0.5)
        return rng.lognormvariate(math.log(900.0), 0.8)
    return rng.lognormvariate(math.log(scenario.median), scenario.sigma)


def gap_at(scenario: Scenario, at: datetime) -> float:
    if scenario.name == "vacation" and VACATION[0] <= at.astimezone(ZONE).date() < VACATION[1]:
        return scenario.gap * 3.0
    if scenario.name == "faster":
        return 12.0 + (5.0 - 12.0) * _progress(at)
    return scenario.gap


def responses(
    scenario: Scenario, calendar: BusinessCalendar, opened: Sequence[datetime]
) -> tuple[list[datetime], list[float]]:
    """First responses: each case is ready after its own business time, and the team
    answers ready cases in order, one per `gap_at` business minutes at most."""
    rng = random.Random(scenario.seed + 1)
    origin = opened[0]
    position, previous, positions = 0.0, origin, []
    for at in opened:
        position += calendar.minutes_between(previous, at)
        previous = at
        positions.append(position)
    own = [max(3.0, own_time(scenario, rng, at)) for at in opened]
    ready = sorted((p + own[i], i) for i, p in enumerate(positions))
    answered: list[datetime] = [origin] * len(opened)
    sent_position, sent_at = -math.inf, origin
    cursor_position = 0.0
    for ready_position, index in ready:
        sent_position = max(ready_position, sent_position + gap_at(scenario, sent_at))
        sent_at = calendar.add(sent_at, sent_position - cursor_position)
        cursor_position = sent_position
        answered[index] = sent_at
    return answered, own


# -- baselines ----------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    kept: float
    median: float  # business minutes
    median_wall: float
    promises: int


def _baseline(
    records: Sequence[PromiseRecord], minutes: Sequence[float], calendar: BusinessCalendar
) -> Baseline:
    kept = sum(
        r.actual_minutes is not None and r.actual_minutes <= m
        for r, m in zip(records, minutes, strict=True)
    )
    wall = [
        (calendar.add(r.opened_at, m) - r.opened_at).total_seconds() / 60
        for r, m in zip(records, minutes, strict=True)
    ]
    return Baseline(
        kept / len(records), statistics.median(minutes), statistics.median(wall), len(records)
    )


def queue_length_baseline(result: Replay, quantile: float, calendar: BusinessCalendar) -> Baseline:
    """(ahead + 1) x pace, padded by the quantile of actual/predicted of the cases answered
    by then among those opened in the last 28 days (seeing only what was known)."""
    answered = sorted(
        (r.answered_at, r.opened_at, r.actual_minutes / ((r.ahead + 1) * r.pace))
        for r in result.records
        if r.answered_at is not None and r.actual_minutes is not None and r.pace > 0
    )
    times = [a for a, _, _ in answered]
    chosen: list[PromiseRecord] = []
    minutes: list[float] = []
    for r in result.promised:
        if r.kept is None or r.pace <= 0:
            continue
        known = bisect.bisect_right(times, r.opened_at)
        since = r.opened_at - timedelta(days=28)
        ratios = [ratio for _, o, ratio in answered[max(0, known - 1500) : known] if o >= since]
        if len(ratios) < 20:
            continue
        pad = quantile_of(ratios, quantile)
        chosen.append(r)
        minutes.append(round_up_minutes((r.ahead + 1) * r.pace * pad))
    return _baseline(chosen, minutes, calendar)


def matched_baseline(
    result: Replay,
    cases: Sequence[HistoryCase],
    calendar: BusinessCalendar,
    settings: PromiseSettings,
    every: int,
) -> Baseline:
    """The previous rule (load-matched quantile x backlog factor) on every `every`-th."""
    opened = [c.opened_at for c in cases]
    answered = [c.first_response_at for c in cases]
    window = timedelta(days=settings.history_days)
    chosen: list[PromiseRecord] = []
    minutes: list[float] = []
    for n, r in enumerate(r for r in result.promised if r.kept is not None):
        if n % every:
            continue
        i = r.case
        first = bisect.bisect_left(opened, r.opened_at - window)
        history = list(zip(opened[first:i], answered[first:i], strict=True))
        chosen.append(r)
        minutes.append(measured_window(history, r.opened_at, calendar, settings).minutes)
    return _baseline(chosen, minutes, calendar)


# -- one run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    quantile: float
    promises: int
    kept: float
    kept_wall: float  # the same promises, judged by the customer's clock (identical)
    median_promise: float
    median_promise_wall: float
    median_actual: float
    median_actual_wall: float
    best_fixed: float
    best_fixed_wall: float
    updates: int
    updates_kept: float
    silent: int
    fixed_24h: float
    queue_length: Baseline
    matched: Baseline | None
    vacation_kept: float
    own_work: float  # the own-work quantile at the kept share: the floor of any queue model
    median_update: float
    seconds: float

    @property
    def ratio(self) -> float:
        return self.median_promise / self.best_fixed

    @property
    def ratio_wall(self) -> float:
        return self.median_promise_wall / self.best_fixed_wall


def _calendar() -> CachedCalendar:
    return CachedCalendar(
        BusinessCalendar.from_settings(
            CalendarSettings(country="DE", subdivision="BE"), "Europe/Berlin"
        )
    )


def cases_of(
    scenario: Scenario, calendar: BusinessCalendar
) -> tuple[list[HistoryCase], list[float]]:
    """The cases, and each one's own work in business minutes (the part no queue explains)."""
    opened = arrivals(scenario, calendar)
    answered, own = responses(scenario, calendar, opened)
    return [HistoryCase(o, a) for o, a in zip(opened, answered, strict=True)], own


def run(
    scenario: Scenario,
    settings: PromiseSettings,
    *,
    matched_every: int,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    began = time.perf_counter()
    calendar = _calendar()
    cases, own = cases_of(scenario, calendar)
    start = datetime.combine(EVALUATION_START, clock(0), ZONE)
    result = replay(cases, calendar, settings, start=start, progress=progress)
    fixed = parse_fixed("24h")
    overall = figures("all", result.promised, result.updates, calendar, [fixed])
    judged = [r for r in result.promised if r.kept is not None]
    in_vacation = [
        r for r in judged if VACATION[0] <= r.opened_at.astimezone(ZONE).date() < VACATION[1]
    ]
    return Result(
        scenario=scenario,
        quantile=settings.quantile,
        promises=overall.promises,
        kept=overall.kept,
        kept_wall=overall.kept,
        median_promise=overall.median_promise,
        median_promise_wall=overall.median_promise_wall,
        median_actual=overall.median_actual,
        median_actual_wall=overall.median_actual_wall,
        best_fixed=overall.best_fixed,
        best_fixed_wall=overall.best_fixed_wall,
        updates=overall.updates,
        updates_kept=overall.updates_kept,
        silent=overall.silent_breaches,
        fixed_24h=overall.fixed[0].kept,
        queue_length=queue_length_baseline(result, settings.quantile, calendar),
        matched=(
            matched_baseline(result, cases, calendar, settings, matched_every)
            if matched_every
            else None
        ),
        vacation_kept=(
            sum(bool(r.kept) for r in in_vacation) / len(in_vacation) if in_vacation else math.nan
        ),
        own_work=quantile_of([own[r.case] for r in judged], overall.kept),
        median_update=statistics.median(u.minutes for u in result.updates) if result.updates else 0,
        seconds=time.perf_counter() - began,
    )


def describe(r: Result) -> str:
    ql = r.queue_length
    text = (
        f"{r.scenario.label():<10} p{r.quantile * 100:g}: {r.promises} promises, kept "
        f"{r.kept:.1%}; median promise {r.median_promise:.0f} business min "
        f"({r.median_promise_wall:.0f} wall) vs best fixed {r.best_fixed:.0f} "
        f"({r.best_fixed_wall:.0f} wall) = {r.ratio:.2f}x ({r.ratio_wall:.2f}x wall); "
        f"median actual {r.median_actual:.0f} ({r.median_actual_wall:.0f} wall); "
        f"updates {r.updates} kept {r.updates_kept:.1%} (median {r.median_update:.0f}), "
        f"silent breaches {r.silent}; own work alone at that share {r.own_work:.0f}; "
        f"24 h kept {r.fixed_24h:.1%}; queue-length kept {ql.kept:.1%} median "
        f"{ql.median:.0f} ({ql.median_wall:.0f} wall)"
    )
    if r.matched is not None:
        m = r.matched
        text += f"; load-matched kept {m.kept:.1%} median {m.median:.0f} ({m.median_wall:.0f} wall)"
    if r.scenario.name == "vacation":
        text += f"; kept in the vacation {r.vacation_kept:.1%}"
    return text + f"  [{r.seconds:.0f}s]"


def table_row(r: Result) -> str:
    ql, m = r.queue_length, r.matched
    matched = f"{m.kept:.1%} / {m.median:.0f} / {m.median_wall:.0f}" if m else "-"
    return (
        f"| {r.scenario.label()} | p{r.quantile * 100:g} | {r.promises} | {r.kept:.1%} "
        f"| {r.median_promise:.0f} / {r.median_promise_wall:.0f} "
        f"| {r.best_fixed:.0f} / {r.best_fixed_wall:.0f} "
        f"| {r.ratio:.2f}x / {r.ratio_wall:.2f}x "
        f"| {r.median_actual:.0f} / {r.median_actual_wall:.0f} "
        f"| {ql.kept:.1%} / {ql.median:.0f} / {ql.median_wall:.0f} | {matched} "
        f"| {r.fixed_24h:.1%} | {r.updates} / {r.updates_kept:.1%} | {r.silent} "
        f"| {r.own_work:.0f} |"
    )


def scenarios(shapes: Sequence[str], sigmas: Sequence[float], seed: int) -> list[Scenario]:
    out: list[Scenario] = []
    for shape in shapes:
        if shape == "grid":
            out.extend(Scenario(sigma=s, seed=seed) for s in sigmas)
        else:
            out.append(Scenario(name=shape, sigma=0.6 if shape != "faster" else 0.5, seed=seed))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="grid,vacation,faster,heavy")
    parser.add_argument("--sigmas", default="0.25,0.4,0.6,0.9", help="for the grid")
    parser.add_argument("--quantiles", default=str(PromiseSettings().quantile))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--matched-every", type=int, default=4, help="0: leave the load-matched baseline out"
    )
    parser.add_argument("--table", action="store_true", help="also print markdown table rows")
    args = parser.parse_args()
    rows: list[str] = []
    for scenario in scenarios(
        args.shapes.split(","), [float(s) for s in args.sigmas.split(",")], args.seed
    ):
        for quantile in (float(q) for q in args.quantiles.split(",")):
            result = run(
                scenario, PromiseSettings(quantile=quantile), matched_every=args.matched_every
            )
            print(describe(result), flush=True)
            rows.append(table_row(result))
    if args.table:
        print("\n".join(rows))


if __name__ == "__main__":
    main()
