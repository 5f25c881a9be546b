"""The honest response window: what the team's own history says it will keep.

Pure: the shell passes `now`, the calendar and the stored history.

The rule (`measured_window` = `load_matched_samples` + `response_window`):

1. Samples are first-response times of recent cases in *business* minutes
   (`first_response_samples`), so nights and weekends do not inflate them. Only the
   quarter of recent cases that arrived to the backlog nearest to the current one is
   used (`load_matched_samples`): a quiet Tuesday is not promised last month's outage.
2. With at least `min_history_cases` samples the measured window is their
   `quantile` (nearest-rank: the smallest sample with at least that share of samples
   at or below it - always a time the team really took, never interpolated).
   With fewer, the configured default is used and marked `is_default`.
3. Backlog: by Little's law a case waits about (queue length / throughput). If the
   queue of unanswered cases is k times its usual size and the team works at its
   usual pace, a new case waits about k times as long, so the measured window is
   multiplied by k = max(1, backlog_now / max(backlog_usual, 1)). It only ever
   raises the window: a quiet moment does not make the history less true, and the
   `max(.., 1)` keeps a team that usually has an empty queue from turning two open
   cases into a factor of infinity. "Usual" is the backlog the sampled cases met (at
   the promise quantile), so the factor only extrapolates beyond what was measured;
   with the median of all history it counted every Monday-morning pile twice.
4. The result is rounded up to a unit people say (`round_up_minutes`).
5. Above `maximum_window_minutes` the window is *not* cut: `behind` is set so
   the acknowledgement can say the team is behind and the lead is alerted.

bench/promises.py replays six months of a synthetic inbox through `measured_window`;
the figures are in docs/benchmarks.md ("Promises").
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from keepword.config import PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar

Case = tuple[datetime, datetime | None]
"""(opened_at, first_response_at or None while unanswered)"""


def arrival_order(item: Case) -> tuple[datetime, bool, datetime]:
    """A total order of cases: by arrival; among cases opened the same instant, answered
    before unanswered, then by response. (Plain tuple order compares a datetime with None
    when two cases open in the same second, and raises.)"""
    opened_at, responded_at = item
    return (opened_at, responded_at is None, responded_at or opened_at)


BUSINESS_DAY_MINUTES = 8 * 60
"""The day `round_up_minutes` and `humanize` think in (a typical office day)."""

_ROUNDING = (  # (up to this many minutes, round up to a multiple of)
    (60, 15),
    (BUSINESS_DAY_MINUTES, 30),
    (2 * BUSINESS_DAY_MINUTES, 60),
    (5 * BUSINESS_DAY_MINUTES, BUSINESS_DAY_MINUTES // 2),
)


@dataclass(frozen=True, slots=True)
class Window:
    """A promised response window and everything it was computed from."""

    minutes: int
    due_at: datetime
    is_default: bool
    behind: bool
    basis: Mapping[str, float | int | str | bool] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def explain(self) -> str:
        """One sentence for the timeline and the CLI."""
        if "cases_ahead" in self.basis or "waited_minutes" in self.basis:
            from keepword.domain.predict import explain  # the predictor's basis

            return explain(self)
        b = self.basis
        promised = f"Promised {_duration_en(self.minutes)} (due {self.due_at:%Y-%m-%d %H:%M} UTC)"
        if self.is_default:
            text = (
                f"{promised}: the configured default, because only {b.get('sample_size', 0)} "
                f"answered cases from the last {b.get('history_days', '?')} days were available "
                f"(need {b.get('min_history_cases', '?')})"
            )
        else:
            matched = (
                f" (of {b['history_size']}) that met a backlog like now's"
                if "history_size" in b
                else ""
            )
            text = (
                f"{promised}: p{_percent(b.get('quantile', 0))} of the "
                f"{b.get('sample_size', 0)} first responses{matched} in the last "
                f"{b.get('history_days', '?')} days was "
                f"{_duration_en(float(b.get('measured_minutes', 0)))}"
            )
            factor = float(b.get("backlog_factor", 1.0))
            if factor > 1:
                text += (
                    f", raised x{factor:.2f} for a backlog of {b.get('backlog_now')} "
                    f"unanswered cases (usual: {float(b.get('backlog_usual', 0)):g})"
                )
        if self.behind:
            text += (
                f"; above the maximum of {_duration_en(float(b.get('maximum_minutes', 0)))}"
                ": the team is behind"
            )
        return text + "."


def _percent(q: float | int | str | bool) -> str:
    return f"{float(q) * 100:g}"


def nearest_rank(samples: Sequence[float], quantile: float) -> float:
    """Nearest-rank quantile: the ceil(q*n)-th smallest sample (1-based)."""
    if not samples:
        raise ValueError("no samples")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile {quantile} is not in (0, 1]")
    ordered = sorted(samples)
    rank = max(1, math.ceil(quantile * len(ordered) - 1e-9))
    return ordered[rank - 1]


def round_up_minutes(minutes: float) -> int:
    """Round up to a unit people say.

    Quarter hours up to 1 h, half hours up to a business day (8 h), whole hours up to
    two business days (beyond a day the customer is told a due time such as "by Tuesday
    12:00", so hours read naturally), half days up to a week, whole days beyond. Never
    less than 15 minutes. (Coarser steps - whole hours from 4 h, half days from one day -
    added up to 50% to promises for nothing; see docs/benchmarks.md.)
    """
    if minutes < 0 or math.isnan(minutes):
        raise ValueError(f"cannot round {minutes} minutes")
    unit = BUSINESS_DAY_MINUTES
    for limit, step in _ROUNDING:
        if minutes <= limit:
            unit = step
            break
    # The tiny tolerance keeps 60.0000000001 (float noise) from becoming 90.
    return max(15, unit * math.ceil(minutes / unit - 1e-9))


def writes_like_a_robot(
    openings: Iterable[tuple[str, datetime]], cases_per_day: int
) -> frozenset[str]:
    """Addresses that opened `cases_per_day` or more cases within some 24 hours.

    The rule that keeps robots out of the measured window: a ticket system that answers
    every mail under a new subject, a notification sender or a flood opens a case per
    mail, nobody answers them, and counted as backlog they push every real customer's
    promise out by days. No person opens as many cases in a day as keepword sends one
    address automatic mails in a day (LimitSettings.per_sender_per_day): that is the
    threshold. Their cases say nothing about the team's pace and are no queue a person
    waits in.
    """
    by_address: dict[str, list[datetime]] = {}
    for address, opened_at in openings:
        by_address.setdefault(address, []).append(opened_at)
    day = timedelta(days=1)
    robots = set()
    for address, times in by_address.items():
        times.sort()
        span = cases_per_day - 1
        if any(times[i + span] - times[i] < day for i in range(len(times) - span)):
            robots.add(address)
    return frozenset(robots)


def first_response_samples(
    cases: Iterable[Case],
    calendar: BusinessCalendar,
    now: datetime,
    history_days: int,
    *,
    quantile: float | None = None,
) -> list[float]:
    """Business minutes to first response of the cases opened in the last `history_days`.

    Only cases answered by `now` have a duration. Leaving out the unanswered ones
    biases towards fast answers (the slow cases of last week are still open), so when
    `quantile` is given, an unanswered case already older than that quantile of the
    answered ones counts with its age so far - a lower bound that is enough to sit
    above the quantile (the idea of a Kaplan-Meier estimate, for one quantile).
    Younger unanswered cases say nothing yet about that quantile and are left out.
    """
    since = now - timedelta(days=history_days)
    answered: list[float] = []
    waiting: list[datetime] = []
    for opened_at, responded_at in cases:
        if not since <= opened_at <= now:
            continue
        if responded_at is not None and responded_at <= now:
            answered.append(calendar.minutes_between(opened_at, responded_at))
        else:
            waiting.append(opened_at)
    if quantile is None or not answered or not waiting:
        return answered
    threshold = nearest_rank(answered, quantile)
    ages = (calendar.minutes_between(opened_at, now) for opened_at in waiting)
    return answered + [age for age in ages if age > threshold]


def backlog_at(cases: Iterable[Case], instant: datetime) -> int:
    """How many cases were open and still unanswered at `instant`."""
    return sum(
        1
        for opened_at, responded_at in cases
        if opened_at <= instant and (responded_at is None or responded_at > instant)
    )


def usual_backlog(open_counts: Sequence[int], quantile: float = 0.5) -> float:
    """The usual backlog: a quantile (default the median) of backlog observations.

    0 without any observations. `measured_window` uses the promise's quantile (why: see
    there).
    """
    if not open_counts:
        return 0.0
    if quantile == 0.5:
        return float(statistics.median(open_counts))
    return nearest_rank([float(c) for c in open_counts], quantile)


def backlog_history(cases: Iterable[Case], now: datetime, history_days: int) -> list[int]:
    """The backlog each case of the last `history_days` found when it arrived.

    Sampled at arrivals, the same moment `backlog_now` is taken for a new case, so
    the two are comparable. Not counting the arriving case itself. O(n log n).
    """
    since = now - timedelta(days=history_days)
    known = [(o, r) for o, r in cases if o <= now]
    opened = sorted(o for o, _ in known)
    answered = sorted(r for _, r in known if r is not None and r <= now)
    counts: list[int] = []
    for arrival in opened:
        if arrival < since:
            continue
        before = bisect.bisect_left(opened, arrival)
        done = bisect.bisect_right(answered, arrival)
        counts.append(max(0, before - done))
    return counts


def response_window(
    now: datetime,
    calendar: BusinessCalendar,
    samples: Sequence[float],
    *,
    backlog_now: int,
    backlog_usual: float,
    settings: PromiseSettings,
) -> Window:
    """The window to promise a case arriving `now` (see the module docstring)."""
    basis: dict[str, float | int | str | bool] = {
        "quantile": settings.quantile,
        "quantile_method": "nearest-rank",
        "sample_size": len(samples),
        "history_days": settings.history_days,
        "min_history_cases": settings.min_history_cases,
        "backlog_now": backlog_now,
        "backlog_usual": backlog_usual,
        "maximum_minutes": settings.maximum_window_minutes,
        "computed_at": now.astimezone(UTC).isoformat(),
        "zone": calendar.zone.key,
    }
    is_default = len(samples) < settings.min_history_cases
    if is_default:
        minutes = settings.default_window_minutes
        basis["default_minutes"] = minutes
        basis["backlog_factor"] = 1.0
    else:
        measured = nearest_rank(samples, settings.quantile)
        factor = max(1.0, backlog_now / max(backlog_usual, 1.0))
        minutes = round_up_minutes(measured * factor)
        basis["measured_minutes"] = round(measured, 2)
        basis["backlog_factor"] = round(factor, 4)
        basis["raw_minutes"] = round(measured * factor, 2)
    behind = minutes > settings.maximum_window_minutes
    basis["minutes"] = minutes
    basis["behind"] = behind
    return Window(
        minutes=minutes,
        due_at=calendar.add(now, minutes),
        is_default=is_default,
        behind=behind,
        basis=MappingProxyType(basis),
    )


#: Share of the history (at least min_history_cases) whose arrival backlog is closest to
#: the current one; their responses are the samples. See `load_matched_samples`.
MATCHED_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class MatchedSamples:
    samples: list[float]  # business minutes of the matched cases
    backlog_usual: float  # the backlog those cases met (at the promise quantile)
    history_size: int  # informative cases in the whole window


def load_matched_samples(
    cases: Sequence[Case],
    calendar: BusinessCalendar,
    now: datetime,
    *,
    backlog_now: int,
    settings: PromiseSettings,
) -> MatchedSamples:
    """Samples from the recent cases that arrived to about the same backlog as now.

    Why: response times mix the team's own pace with waiting in the queue. One quantile
    over all history makes every quiet-day promise pay for last month's outage (the
    benchmark: promises 4-6x the median response and still only 93% kept, because the
    misses sit at surges the quantile cannot see). So each recent case is paired with
    the backlog it met when it arrived (`backlog_history`), and the promise uses the
    `MATCHED_SHARE` of cases whose backlog was nearest to the current one - a
    nearest-neighbour conditional quantile. Their own usual backlog (at the promise
    quantile) is returned as `backlog_usual`, so the Little's-law factor only extrapolates
    beyond backlogs the history has seen.

    Long-open unanswered cases count with their age, as in `first_response_samples`.
    """
    since = now - timedelta(days=settings.history_days)
    known = sorted(
        ((o, r if r is not None and r <= now else None) for o, r in cases if o <= now),
        key=arrival_order,
    )
    backlogs = backlog_history(known, now, settings.history_days)
    recent = [c for c in known if c[0] >= since]
    answered = [calendar.minutes_between(o, r) for o, r in recent if r is not None]
    threshold = nearest_rank(answered, settings.quantile) if answered else math.inf
    informative: list[tuple[int, float]] = []
    for (opened_at, responded_at), backlog in zip(recent, backlogs, strict=True):
        if responded_at is not None:
            informative.append((backlog, calendar.minutes_between(opened_at, responded_at)))
        elif (age := calendar.minutes_between(opened_at, now)) > threshold:
            informative.append((backlog, age))
    count = max(settings.min_history_cases, math.ceil(MATCHED_SHARE * len(informative)))
    # Nearest backlog first; among equals, the most recent case (the team's current pace).
    ranked = sorted(
        enumerate(informative), key=lambda item: (abs(item[1][0] - backlog_now), -item[0])
    )
    matched = [pair for _, pair in ranked[:count]]
    return MatchedSamples(
        samples=[minutes for _, minutes in matched],
        backlog_usual=usual_backlog([b for b, _ in matched], settings.quantile),
        history_size=len(informative),
    )


def measured_window(
    cases: Sequence[Case],
    now: datetime,
    calendar: BusinessCalendar,
    settings: PromiseSettings,
) -> Window:
    """The whole rule from stored history - what the shell (and bench/promises.py) call.

    `cases` are the mailbox's cases as (opened_at, first_response_at or None), at least
    those opened in the last `history_days` (older ones only sharpen the backlog count);
    responses after `now` are ignored. The samples are load-matched
    (`load_matched_samples`), then `response_window` applies the quantile, the backlog
    factor beyond the matched cases' backlog, rounding and the maximum.
    """
    known = [(o, r if r is not None and r <= now else None) for o, r in cases if o <= now]
    backlog_now = backlog_at(known, now)
    matched = load_matched_samples(known, calendar, now, backlog_now=backlog_now, settings=settings)
    window = response_window(
        now,
        calendar,
        matched.samples,
        backlog_now=backlog_now,
        backlog_usual=matched.backlog_usual,
        settings=settings,
    )
    basis = {
        **window.basis,
        "history_size": matched.history_size,
        "matched_on": "backlog at arrival",
        "matched_share": MATCHED_SHARE,
    }
    return replace(window, basis=MappingProxyType(basis))


# -- saying it ------------------------------------------------------------------------

_WEEKDAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "de": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
}
_MONTHS = {
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "de": [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ],
}


def _number(value: float, language: str) -> str:
    text = f"{value:g}"
    return text.replace(".", ",") if language == "de" else text


def _duration_en(minutes: float) -> str:
    return _duration(minutes, "en")


def _duration(minutes: float, language: str) -> str:
    de = language == "de"
    if minutes < 60:
        count = round(minutes)
        return f"{count} Geschäftsminuten" if de else f"{count} business minutes"
    hours = minutes / 60
    if hours == int(hours) or (hours * 2) == int(hours * 2):
        if de:
            return f"{_number(hours, 'de')} Geschäftsstunde{'' if hours == 1 else 'n'}"
        return f"{_number(hours, 'en')} business hour{'' if hours == 1 else 's'}"
    h, m = divmod(round(minutes), 60)
    return f"{h} h {m} min " + ("Geschäftszeit" if de else "business time")


def humanize(window: Window, calendar: BusinessCalendar, language: str = "en") -> str:
    """How the acknowledgement says the window.

    Less than a business day: a duration ("4 business hours"), which reads right for
    anyone. From a business day on: the local due time ("by Tuesday 12:00"), with the
    date when it is more than six days after the promise was made.
    """
    if language not in _WEEKDAYS:
        language = "en"
    if window.minutes < BUSINESS_DAY_MINUTES:
        return _duration(window.minutes, language)
    due = window.due_at.astimezone(calendar.zone)
    made = str(window.basis.get("computed_at", ""))
    far = not made or (window.due_at - datetime.fromisoformat(made)) > timedelta(days=6)
    day = _WEEKDAYS[language][due.weekday()]
    if far:
        month = _MONTHS[language][due.month - 1]
        day = f"{day}, {due.day}. {month}" if language == "de" else f"{day} {due.day} {month}"
    return f"{'bis' if language == 'de' else 'by'} {day} {due:%H:%M}"
