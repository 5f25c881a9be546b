"""The state-aware promise: how long a case arriving now will wait for its first response.

Pure: the shell passes `now`, the calendar and the stored history; nothing here reads a
clock or the store.

Why not one quantile of past responses (`domain.windows`): a response time mixes the
case's own work (reading, looking things up - unknowable at arrival) with waiting in the
queue (knowable: how many cases are ahead, how fast the team answers right now). Delay
announcements that condition on the state at arrival are much tighter than history alone
(Whitt, "Predicting Queueing Delays", 1999; Ibrahim & Whitt). So:

1. Business minutes. Every time is counted in the team's business time
   (`BusinessTimeline`: one cumulative count per local day, so a lookup is O(1) after
   the first), so nights, weekends and holidays cost nothing; the customer's wall-clock
   due time comes from `BusinessCalendar.add`.
2. The queue at arrival: `ahead` = open cases not yet answered, and `pace` = busy
   business minutes (while some case waited) per first response over the team's last
   `PACE_RESPONSES` first responses, counted up to now (idle time between two customers
   of a quiet team is no slowness) - so a team that stops answering (a vacation, an outage) slows
   down *before* the cases it leaves are answered. With people marked away the pace is
   divided by the share still on duty. `expected` = ahead x pace x `order_share`, where
   `order_share` is how much of the queue the team really clears before a new case (1
   for first-come-first-served; measured from the recent answered cases).
3. What the queue does not explain: each recent case has a residual = its response
   time - its `expected` at arrival. Cases still open are censored (their residual is
   at least their age - expected): the residual quantile is a Kaplan-Meier quantile
   (`km_quantile`), so a slow period shows up before its cases are answered. Only the
   `MATCHED_SHARE` of recent cases whose queue was most like now's count: the queue
   explains the middle of its range better than its ends (bench/promises.py).
   The promise is `expected now + residual quantile`, rounded up to a unit people say.
4. Calibration (`Calibration`): the quantile level used is corrected online from the
   record of kept and missed promises (adaptive conformal inference, Gibbs & Candès
   2021: after a miss the level rises by rate x (1 - alpha), after a kept promise it
   falls by rate x alpha), so a team that drifts is promised accordingly within days.
5. Residual time for updates (`residual_window`): a case that has already waited t
   is promised the quantile of the *remaining* time given it waited t (Kaplan-Meier
   conditional on survival past t - expected at its arrival, over the whole history
   window; at least as long again where fewer than `TAIL_CASES` waited that long): its
   own wait is evidence.

The state is incremental (`PromisePredictor.arrive` / `answer` / `record_outcome`):
the backtest and the benchmark feed it one event at a time, and the shell builds it
once per pass from the stored history (`predictor_from_history`); a promise then costs
one Kaplan-Meier pass over the recent sample (a few hundred cases), independent of the
mailbox's history length.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import NamedTuple

from keepword.config import PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar, Interval
from keepword.domain.recent import RecentCases, Sample, km_quantile_of
from keepword.domain.windows import Window, round_up_minutes

#: First responses the team's current pace is measured over.
PACE_RESPONSES = 20
#: Residuals come from the cases opened in the last SAMPLE_DAYS (at least
#: SAMPLE_MIN_CASES of them, reaching back up to history_days): recent enough to follow
#: drift, many enough for a tail quantile.
SAMPLE_DAYS = 28
SAMPLE_MIN_CASES = 300
#: The calibration's step (ACI's gamma) and the band its level may move in.
CALIBRATION_RATE = 0.01
#: An update's residual-time quantile needs this many recent cases that waited as long.
TAIL_CASES = 20
#: Residual quantiles use this share of the sample whose expected queue was nearest now's.
MATCHED_SHARE = 0.5
CALIBRATION_FLOOR = 0.5
CALIBRATION_CEILING = 0.999


class HistoryCase(NamedTuple):
    """One case as the predictor reads it (store.history and the CSV give these)."""

    opened_at: datetime
    first_response_at: datetime | None
    kind: str = "new"  # "new" or "reopened"
    key: Hashable = None  # the case id, so updates can find the case's state


class Outcome(NamedTuple):
    """A promise made earlier and what became of it (for the calibration)."""

    made_at: datetime
    due_at: datetime
    answered_at: datetime | None


# -- business time ------------------------------------------------------------------


class BusinessTimeline:
    """Business minutes since an origin for any instant, O(1) per lookup once the days
    are known. `position(b) - position(a) == calendar.minutes_between(a, b)` for a <= b.
    """

    __slots__ = ("_calendar", "_cum", "_days", "_full", "_hi", "_lo")

    def __init__(self, calendar: BusinessCalendar, origin: date) -> None:
        self._calendar = calendar
        self._cum: dict[date, float] = {origin: 0.0}  # minutes of the days before the date
        self._full: dict[date, float] = {}
        # Per local date: the minutes before yesterday, yesterday's and the day's intervals.
        self._days: dict[date, tuple[float, tuple[Interval, ...], tuple[Interval, ...]]] = {}
        self._lo = self._hi = origin

    @property
    def calendar(self) -> BusinessCalendar:
        return self._calendar

    def _day_minutes(self, day: date) -> float:
        found = self._full.get(day)
        if found is None:
            spans = self._calendar.day_intervals(day)
            found = sum((e - s).total_seconds() for s, e in spans) / 60.0
            self._full[day] = found
        return found

    def _before(self, day: date) -> float:
        while day > self._hi:
            self._cum[self._hi + timedelta(days=1)] = self._cum[self._hi] + self._day_minutes(
                self._hi
            )
            self._hi += timedelta(days=1)
        while day < self._lo:
            self._lo -= timedelta(days=1)
            self._cum[self._lo] = self._cum[self._lo + timedelta(days=1)] - self._day_minutes(
                self._lo
            )
        return self._cum[day]

    def position(self, at: datetime) -> float:
        at = at.astimezone(UTC)
        day = at.astimezone(self._calendar.zone).date()
        found = self._days.get(day)
        if found is None:
            # Yesterday's intervals may close after local midnight (24:00, DST).
            yesterday = day - timedelta(days=1)
            cal = self._calendar
            found = (self._before(yesterday), cal.day_intervals(yesterday), cal.day_intervals(day))
            self._days[day] = found  # a day's minutes before it never change once counted
        before, spans_yesterday, spans_today = found
        return before + _partial(spans_yesterday, at) + _partial(spans_today, at)

    def minutes_between(self, start: datetime, end: datetime) -> float:
        return max(0.0, self.position(end) - self.position(start))


def _partial(spans: tuple[Interval, ...], at: datetime) -> float:
    """Business minutes of one day's `spans` before `at`."""
    seconds = 0.0
    for start, end in spans:
        if at > start:
            seconds += (min(at, end) - start).total_seconds()
    return seconds / 60.0


# -- Kaplan-Meier --------------------------------------------------------------------


def km_quantile(
    events: Iterable[float],
    censored: Iterable[float] = (),
    quantile: float = 0.5,
    *,
    survived: float | None = None,
) -> float | None:
    """Kaplan-Meier quantile: the smallest event time x with S(x) <= 1 - quantile.

    `events` are observed times, `censored` lower bounds (still waiting at that time).
    At equal times events come first (the usual convention: a case censored at t was
    still at risk at t). With `survived`, the quantile is conditional on T > survived:
    the smallest x with S(x) <= (1 - quantile) * S(survived). None if the curve never
    gets that low (too much of the sample still waiting): the caller decides.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile {quantile} is not in (0, 1)")
    timeline = sorted([(t, 0) for t in events] + [(t, 1) for t in censored])
    at_risk = len(timeline)
    survival = 1.0
    goal = 1.0 - quantile
    conditioned = survived is None
    for t, is_censored in timeline:
        if not conditioned and t > survived:  # type: ignore[operator]
            goal *= survival  # S(survived): the curve just after `survived`
            conditioned = True
        if not is_censored:
            survival *= 1.0 - 1.0 / at_risk
            if conditioned and survival <= goal + 1e-12:
                return t
        at_risk -= 1
    return None


# -- calibration ---------------------------------------------------------------------


@dataclass(slots=True)
class Calibration:
    """The quantile level actually used, corrected from kept and missed promises (ACI)."""

    target: float
    rate: float = CALIBRATION_RATE
    level: float = -1.0
    kept: int = 0
    missed: int = 0

    def __post_init__(self) -> None:
        if self.level < 0:
            self.level = self.target

    def record(self, was_kept: bool) -> None:
        alpha = 1.0 - self.target
        self.level += self.rate * ((0.0 if was_kept else 1.0) - alpha)
        self.level = min(CALIBRATION_CEILING, max(CALIBRATION_FLOOR, self.level))
        self.kept += was_kept
        self.missed += not was_kept


def resolution(outcome: Outcome, now: datetime) -> tuple[datetime, bool] | None:
    """When the promise was resolved by `now` and whether it was kept; None while open."""
    made_at, due_at, answered_at = outcome
    if answered_at is not None and answered_at <= min(due_at, now):
        return max(answered_at, made_at), True
    if due_at < now:
        return due_at, False
    return None


def resolved_outcomes(outcomes: Iterable[Outcome], now: datetime) -> list[bool]:
    """Kept (True) or missed of the promises resolved by `now`, in resolution order."""
    resolved = [r for r in (resolution(o, now) for o in outcomes) if r is not None]
    return [kept for _, kept in sorted(resolved, key=lambda r: r[0])]


# -- the predictor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A case not answered yet: what its first response needs (its row of the recent
    sample, `RecentCases`, holds the rest)."""

    row: int
    opened_position: float
    ahead: int
    pace: float
    overtaken_from: int  # answers counted before it arrived


@dataclass(frozen=True, slots=True)
class QueueState:
    """The queue a case arriving at `position` meets."""

    position: float
    ahead: int
    pace: float  # business minutes per first response, recently, for the staff on duty
    on_duty: float  # share of the staff on duty


@dataclass(frozen=True, slots=True)
class QueueModel:
    """How the queue met at arrival turns into waiting, fitted on the recent sample."""

    order_share: float  # of the cases ahead, the share the team answers first

    def expected(self, ahead: int, pace: float) -> float:
        return ahead * self.order_share * pace


@dataclass
class PromisePredictor:
    """Incremental state: feed `arrive` / `answer` in time order, then ask `window`."""

    calendar: BusinessCalendar
    settings: PromiseSettings
    timeline: BusinessTimeline
    calibration: Calibration
    _open: dict[Hashable, _Waiting] = field(default_factory=dict)
    _recent: RecentCases = field(default_factory=RecentCases)
    _responses: deque[float] = field(default_factory=lambda: deque(maxlen=PACE_RESPONSES + 1))
    _answered_count: int = 0
    # Business minutes during which some case was waiting (the team had work), and the
    # position up to which they are counted: the pace is measured in busy time only, so
    # a quiet team's idle hours between two customers are not read as slowness.
    _busy: float = 0.0
    _busy_position: float | None = None

    @classmethod
    def start(
        cls,
        calendar: BusinessCalendar,
        settings: PromiseSettings,
        origin: date,
        *,
        timeline: BusinessTimeline | None = None,
    ) -> PromisePredictor:
        return cls(
            calendar,
            settings,
            timeline or BusinessTimeline(calendar, origin),
            Calibration(settings.quantile),
        )

    # -- events ----------------------------------------------------------------------

    def _advance(self, position: float) -> None:
        """Count the busy time up to `position` (before the queue changes there)."""
        if self._busy_position is not None and self._open:
            self._busy += max(0.0, position - self._busy_position)
        self._busy_position = position

    def _busy_at(self, position: float) -> float:
        pending = position - self._busy_position if self._busy_position is not None else 0.0
        return self._busy + (max(0.0, pending) if self._open else 0.0)

    def arrive(self, key: Hashable, at: datetime, kind: str = "new") -> None:
        """A case opened at `at` (after every event fed so far)."""
        position = self.timeline.position(at)
        self._advance(position)
        state = self._queue_at(position)
        overtaken = -self._answered_count  # + the count when it is answered
        row = self._recent.add(at, state.position, state.pace, state.ahead, overtaken)
        self._open[key] = _Waiting(row, state.position, state.ahead, state.pace, overtaken)
        self._forget(at)

    def answer(self, key: Hashable, at: datetime) -> None:
        """The first response of case `key` went out at `at`."""
        position = self.timeline.position(at)
        self._advance(position)
        waiting = self._open.pop(key, None)
        self._responses.append(self._busy)
        self._answered_count += 1
        if waiting is not None:
            response = max(0.0, position - waiting.opened_position)
            overtaken = waiting.overtaken_from + self._answered_count - 1
            self._recent.answered(waiting.row, response, overtaken)

    def record_outcome(self, kept: bool) -> None:
        self.calibration.record(kept)

    def _forget(self, now: datetime) -> None:
        self._recent.forget_before(now - timedelta(days=self.settings.history_days))

    # -- state -----------------------------------------------------------------------

    def queue(self, now: datetime, *, away: float = 0.0) -> QueueState:
        return self._queue_at(self.timeline.position(now), away=away)

    def _queue_at(self, position: float, *, away: float = 0.0) -> QueueState:
        on_duty = 1.0 - min(max(away, 0.0), 0.95)
        return QueueState(
            position=position,
            ahead=len(self._open),
            pace=self._pace(position) / on_duty,
            on_duty=on_duty,
        )

    def _pace(self, position: float) -> float:
        if len(self._responses) < 2:
            return 0.0
        oldest = self._responses[0]
        return max(0.0, self._busy_at(position) - oldest) / (len(self._responses) - 1)

    def _sample(self) -> Sample:
        """The cases of the last SAMPLE_DAYS before the newest, at least
        SAMPLE_MIN_CASES of the history window, newest first."""
        return self._recent.newest_first(SAMPLE_DAYS, SAMPLE_MIN_CASES)

    def _matched(self, sample: Sample, expected: float) -> tuple[float, int] | None:
        """Residuals from the `MATCHED_SHARE` of the sample whose expected queue was
        nearest `expected` (at least min_history_cases): the queue explains the middle of
        the range better than its ends, so a quiet morning is not promised a surge's
        error."""
        if MATCHED_SHARE >= 1:
            return None
        count = max(self.settings.min_history_cases, math.ceil(MATCHED_SHARE * len(sample)))
        return expected, count

    # -- promises --------------------------------------------------------------------

    def window(self, now: datetime, *, away: float = 0.0) -> Window:
        """The first-response window to promise a case arriving `now`."""
        state = self.queue(now, away=away)
        level = self.calibration.level
        sample = self._sample()
        model = QueueModel(sample.order_share())
        expected = model.expected(state.ahead, state.pace)
        matched = self._matched(sample, expected)
        events, censored = sample.residuals(state.position, model.order_share, matched)
        basis = self._basis(now, state, model, level, len(events), len(censored))
        if len(events) < self.settings.min_history_cases:
            return self._default(now, basis)
        residual = km_quantile_of(events, censored, level)
        if residual is None:  # the tail is still waiting: at least the longest wait so far
            residual = float(max(events.max(), censored.max(initial=-math.inf)))
            basis["tail_still_waiting"] = True
        basis["residual_minutes"] = round(residual, 2)
        return self._measured(now, expected + residual, basis)

    def residual_window(
        self, now: datetime, opened_at: datetime, *, key: Hashable = None, away: float = 0.0
    ) -> Window:
        """The window to promise in an update for a case open since `opened_at`.

        The quantile of the remaining time given the case has already waited: the
        Kaplan-Meier curve of the residuals (response time - the queue met) of all
        cases in the history window, conditioned on exceeding this case's own: the
        tail is where updates live, and it is thin in a month's sample. Updates
        use at least the stated quantile: a second broken promise is worse than the
        first. Where fewer than `TAIL_CASES` recent cases waited that long, the tail is
        not known well enough: then at least as long again as the case has waited
        (long waits have long remainders in any heavy tail).
        """
        state = self.queue(now, away=away)
        level = max(self.calibration.level, self.settings.quantile)
        sample = self._recent.newest_first()  # the whole history window: the tail is rare
        model = QueueModel(sample.order_share())
        waiting = self._open.get(key) if key is not None else None
        expected = model.expected(waiting.ahead, waiting.pace) if waiting is not None else 0.0
        waited = max(0.0, state.position - self.timeline.position(opened_at))
        arrays = sample.residuals(state.position, model.order_share)
        events, censored = (values.tolist() for values in arrays)
        basis = self._basis(now, state, model, level, len(events), len(censored))
        basis["waited_minutes"] = round(waited, 2)
        basis["expected_at_arrival_minutes"] = round(expected, 2)
        basis["method"] = "residual time given the wait so far"
        if len(events) < self.settings.min_history_cases:
            return self._default(now, basis)
        survived = waited - expected
        beyond = sum(r > survived for r in events) + sum(c > survived for c in censored)
        residual = km_quantile(events, censored, level, survived=survived)
        remaining = 0.0 if residual is None else max(0.0, expected + residual - waited)
        basis["cases_that_waited_as_long"] = beyond
        if residual is None or beyond < TAIL_CASES:
            remaining = max(remaining, waited, float(self.settings.default_window_minutes))
            basis["tail_still_waiting"] = True
        else:
            basis["residual_minutes"] = round(residual, 2)
        return self._measured(now, remaining, basis)

    def _basis(
        self,
        now: datetime,
        state: QueueState,
        model: QueueModel,
        level: float,
        answered: int,
        waiting: int,
    ) -> dict[str, float | int | str | bool]:
        return {
            "method": "queue at arrival + Kaplan-Meier residual",
            "quantile": self.settings.quantile,
            "calibrated_quantile": round(level, 4),
            "calibration_kept": self.calibration.kept,
            "calibration_missed": self.calibration.missed,
            "cases_ahead": state.ahead,
            "pace_minutes": round(state.pace, 2),
            "order_share": round(model.order_share, 3),
            "on_duty": round(state.on_duty, 3),
            "expected_queue_minutes": round(model.expected(state.ahead, state.pace), 2),
            "sample_size": answered,
            "still_waiting": waiting,
            "history_days": self.settings.history_days,
            "sample_days": SAMPLE_DAYS,
            "min_history_cases": self.settings.min_history_cases,
            "maximum_minutes": self.settings.maximum_window_minutes,
            "computed_at": now.astimezone(UTC).isoformat(),
            "zone": self.calendar.zone.key,
        }

    def _default(self, now: datetime, basis: dict[str, float | int | str | bool]) -> Window:
        minutes = self.settings.default_window_minutes
        basis.update(default_minutes=minutes, minutes=minutes, behind=False)
        return self._window(now, minutes, basis, is_default=True)

    def _measured(
        self, now: datetime, raw: float, basis: dict[str, float | int | str | bool]
    ) -> Window:
        minutes = round_up_minutes(max(raw, 0.0))
        behind = minutes > self.settings.maximum_window_minutes
        basis.update(raw_minutes=round(raw, 2), minutes=minutes, behind=behind)
        return self._window(now, minutes, basis, behind=behind)

    def _window(
        self,
        now: datetime,
        minutes: int,
        basis: dict[str, float | int | str | bool],
        *,
        is_default: bool = False,
        behind: bool = False,
    ) -> Window:
        """`minutes` of business time from `now`, and why (`basis`)."""
        return Window(
            minutes=minutes,
            due_at=self.calendar.add(now, minutes),
            is_default=is_default,
            behind=behind,
            basis=MappingProxyType(basis),
        )


# -- from stored history -------------------------------------------------------------


def predictor_from_history(
    cases: Iterable[HistoryCase | tuple[datetime, datetime | None]],
    now: datetime,
    calendar: BusinessCalendar,
    settings: PromiseSettings,
    *,
    outcomes: Iterable[Outcome] = (),
    timeline: BusinessTimeline | None = None,
) -> PromisePredictor:
    """The predictor's state at `now`, rebuilt from stored history in one pass.

    Only what was known at `now` is used: cases opened by then and responses sent by
    then; `outcomes` (the mailbox's recent first-response promises) feed the calibration
    in the order they were resolved. O(n log n) in the cases given.
    """
    records = [HistoryCase(*c) if not isinstance(c, HistoryCase) else c for c in cases]
    known = [c for c in records if c.opened_at <= now]
    origin = (min((c.opened_at for c in known), default=now) - timedelta(days=1)).date()
    predictor = PromisePredictor.start(calendar, settings, origin, timeline=timeline)
    events: list[tuple[datetime, int, int]] = []  # (at, 0 answer / 1 arrival, index)
    for index, c in enumerate(known):
        events.append((c.opened_at, 1, index))
        if c.first_response_at is not None and c.first_response_at <= now:
            events.append((max(c.first_response_at, c.opened_at), 0, index))
    heapq.heapify(events)
    while events:
        at, is_arrival, index = heapq.heappop(events)
        c = known[index]
        key = c.key if c.key is not None else ("history", index)
        if is_arrival:
            predictor.arrive(key, at, c.kind)
        else:
            predictor.answer(key, at)
    for kept in resolved_outcomes(outcomes, now):
        predictor.record_outcome(kept)
    return predictor


def predict_window(
    cases: Sequence[HistoryCase | tuple[datetime, datetime | None]],
    now: datetime,
    calendar: BusinessCalendar,
    settings: PromiseSettings,
    *,
    outcomes: Iterable[Outcome] = (),
    away: float = 0.0,
) -> Window:
    """The window to promise a case arriving `now` - the drop-in for
    `windows.measured_window`, with the calibration record as an extra input."""
    predictor = predictor_from_history(cases, now, calendar, settings, outcomes=outcomes)
    return predictor.window(now, away=away)


def _minutes(value: float | int | str | bool) -> str:
    minutes = float(value)
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def explain(window: Window) -> str:
    """One sentence for the timeline and the CLI, from a predictor window's basis
    (the drop-in for `Window.explain`, which knows the older rule's basis)."""
    b: Mapping[str, float | int | str | bool] = window.basis
    promised = (
        f"Promised {_minutes(window.minutes)} of business time "
        f"(due {window.due_at:%Y-%m-%d %H:%M} UTC)"
    )
    if window.is_default:
        return (
            f"{promised}: the configured default, because only {b.get('sample_size', 0)} "
            f"answered cases were available (need {b.get('min_history_cases', '?')})."
        )
    level = f"p{float(b.get('calibrated_quantile', 0)) * 100:.1f}"
    if "waited_minutes" in b:
        text = f"{promised}: the case has already waited {_minutes(b['waited_minutes'])}"
        if b.get("tail_still_waiting"):
            text += (
                f"; only {b.get('cases_that_waited_as_long')} recent cases waited that long, "
                "so at least as long again"
            )
        else:
            text += (
                f"; of the {b.get('cases_that_waited_as_long')} recent cases that waited that "
                f"long, the {level} were answered within this much more"
            )
    else:
        residual = float(b.get("residual_minutes", 0))
        text = (
            f"{promised}: {b.get('cases_ahead')} cases ahead at "
            f"{float(b.get('pace_minutes', 0)):.0f} business minutes per first response "
            f"(queue {_minutes(b.get('expected_queue_minutes', 0))}), "
            f"{'plus' if residual >= 0 else 'minus'} {_minutes(abs(residual))}: the {level} "
            f"of what the queue did not explain in {b.get('sample_size')} answered and "
            f"{b.get('still_waiting')} still waiting recent cases"
        )
    if b.get("behind"):
        text += "; above the maximum: the team is behind"
    return text + "."


def quantile_of(values: Sequence[float], share: float) -> float:
    """Nearest-rank quantile (the smallest value with at least `share` at or below)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]
