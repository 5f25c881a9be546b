"""The state-aware predictor (domain.predict) on constructed histories."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from keepword.config import PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import (
    BusinessTimeline,
    Calibration,
    HistoryCase,
    Outcome,
    PromisePredictor,
    explain,
    km_quantile,
    predict_window,
    predictor_from_history,
    resolved_outcomes,
)
from keepword.domain.windows import BUSINESS_DAY_MINUTES

OFFICE = BusinessCalendar(ZoneInfo("Europe/Berlin"), {d: [(time(9), time(17))] for d in range(5)})
SETTINGS = PromiseSettings(quantile=0.95)
START = datetime(2026, 1, 5, 8, tzinfo=UTC)  # Monday 09:00 Berlin


def arrivals(days: int, per_day: int, start: datetime = START) -> Iterator[datetime]:
    """`per_day` arrivals spread over each business day."""
    day = start
    for _ in range(days):
        if OFFICE.is_open(day):
            for i in range(per_day):
                yield day + timedelta(minutes=i * 470 / per_day)
        day += timedelta(days=1)


def steady_team(days: int, per_day: int, minutes: float, seed: int = 1) -> list[HistoryCase]:
    """Every case answered after about `minutes` business minutes (+-30%)."""
    rng = random.Random(seed)
    return [
        HistoryCase(at, OFFICE.add(at, minutes * rng.uniform(0.7, 1.3)))
        for at in arrivals(days, per_day)
    ]


# -- business time --------------------------------------------------------------------


def test_timeline_matches_the_calendar() -> None:
    timeline = BusinessTimeline(OFFICE, date(2026, 1, 10))
    rng = random.Random(3)
    for _ in range(200):
        a = START + timedelta(minutes=rng.uniform(-20000, 40000))
        b = a + timedelta(minutes=rng.uniform(0, 20000))
        assert timeline.minutes_between(a, b) == pytest.approx(OFFICE.minutes_between(a, b))


# -- Kaplan-Meier ---------------------------------------------------------------------


def test_km_without_censoring_is_the_empirical_quantile() -> None:
    events = [float(x) for x in range(1, 101)]
    assert km_quantile(events, [], 0.5) == 50
    assert km_quantile(events, [], 0.95) == 95


def test_km_counts_censored_cases_as_at_risk() -> None:
    # 1, 2 answered; one still waiting at 2.5; 3, 4, 5 answered.
    # S: 5/6, 4/6, (2.5 censored), 4/6*2/3 = 0.44, 0.22, 0
    events = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert km_quantile(events, [2.5], 0.5) == 3.0
    assert km_quantile(events, [2.5], 0.7) == 4.0
    # Many still waiting beyond the answered ones: the tail is unknown.
    assert km_quantile([1.0, 2.0], [10.0] * 8, 0.9) is None


def test_km_residual_quantile_given_survival() -> None:
    events = [float(x) for x in range(1, 101)]
    # Given it waited past 50, p90 of the rest: S(x) <= 0.1 * S(50) = 0.05.
    assert km_quantile(events, [], 0.9, survived=50.0) == 95
    assert km_quantile(events, [], 0.9, survived=90.0) == 99


# -- calibration ----------------------------------------------------------------------


def test_calibration_raises_the_level_after_misses_and_lowers_it_when_kept() -> None:
    c = Calibration(0.8)
    for _ in range(10):
        c.record(False)
    assert c.level == pytest.approx(0.8 + 10 * 0.01 * 0.8)
    raised = c.level
    for _ in range(200):
        c.record(True)
    assert c.level < raised
    for _ in range(10_000):
        c.record(True)
    assert c.level == 0.5  # the floor


def test_calibration_keeps_the_long_run_miss_rate() -> None:
    """ACI: whatever the predictor's bias, the share missed converges to 1 - target."""
    rng = random.Random(7)
    c = Calibration(0.9)
    missed = 0
    for step in range(20_000):
        drift = 0.06 if step > 10_000 else 0.0  # the team gets slower half way
        # the predictor's own coverage at level q is q - drift (biased)
        miss = rng.random() > c.level - drift
        missed += miss
        c.record(not miss)
    assert missed / 20_000 == pytest.approx(0.1, abs=0.01)


def test_resolved_outcomes_in_resolution_order() -> None:
    t = START
    h = timedelta(hours=1)
    outcomes = [
        Outcome(t, t + 4 * h, t + 1 * h),  # kept at +1
        Outcome(t, t + 2 * h, None),  # missed at +2
        Outcome(t, t + 3 * h, t + 5 * h),  # missed at +3 (answered late)
        Outcome(t, t + 9 * h, None),  # still open at now
    ]
    assert resolved_outcomes(outcomes, t + 6 * h) == [True, False, False]


# -- the promise -------------------------------------------------------------------------


def test_a_two_hour_team_is_promised_hours() -> None:
    history = steady_team(40, 20, 120)
    now = history[-1].opened_at + timedelta(minutes=10)
    window = predict_window(history, now, OFFICE, SETTINGS)
    assert not window.is_default
    assert 120 <= window.minutes < BUSINESS_DAY_MINUTES
    assert window.basis["method"] == "queue at arrival + Kaplan-Meier residual"
    for name in ("cases_ahead", "pace_minutes", "calibrated_quantile", "residual_minutes"):
        assert name in window.basis


def test_a_three_day_team_is_promised_days() -> None:
    history = steady_team(60, 10, 3 * BUSINESS_DAY_MINUTES)
    now = history[-1].opened_at + timedelta(minutes=10)
    window = predict_window(history, now, OFFICE, SETTINGS)
    assert 2.5 * BUSINESS_DAY_MINUTES <= window.minutes <= 5 * BUSINESS_DAY_MINUTES


def test_a_surge_raises_the_promise_before_its_cases_are_answered() -> None:
    history = steady_team(40, 20, 120)
    quiet_at = history[-1].opened_at + timedelta(days=1)  # next day, nothing open
    quiet = predict_window(history, quiet_at, OFFICE, SETTINGS)
    # Next morning 60 cases arrive within an hour; none answered yet.
    morning = OFFICE.next_open(quiet_at)
    surge = [HistoryCase(morning + timedelta(minutes=i), None) for i in range(60)]
    now = morning + timedelta(hours=1)
    raised = predict_window(history + surge, now, OFFICE, SETTINGS)
    assert raised.minutes >= 2 * quiet.minutes
    assert int(raised.basis["cases_ahead"]) >= 60


def served(opened: list[datetime], gap: Callable[[datetime], float]) -> list[HistoryCase]:
    """A team that needs 60 business minutes per case before it can answer, then sends
    one first response per `gap(t)` business minutes, in order (first come, first served)."""
    out: list[HistoryCase] = []
    free = opened[0]
    for at in opened:
        ready = OFFICE.add(at, 60)
        sent = max(ready, OFFICE.add(free, gap(free)))
        out.append(HistoryCase(at, sent, key=len(out)))
        free = sent
    return out


def known_at(cases: list[HistoryCase], now: datetime) -> list[HistoryCase]:
    return [
        c._replace(first_response_at=c.first_response_at if c.first_response_at <= now else None)
        for c in cases
        if c.opened_at <= now and c.first_response_at is not None
    ]


def test_a_vacation_raises_the_promise_and_recovery_lowers_it_within_days() -> None:
    """Two of three people away for a week: the team answers at a third of its pace
    (13 cases a day for 20 arriving; 40 a day otherwise)."""
    opened = list(arrivals(63, 20))  # 9 weeks, 20 cases a business day
    away_from, away_until = START + timedelta(days=42), START + timedelta(days=49)
    history = served(opened, lambda t: 36.0 if away_from <= t < away_until else 12.0)
    before = predict_window(known_at(history, away_from), away_from, OFFICE, SETTINGS)
    during_at = away_from + timedelta(days=3, hours=4)  # Thursday of the away week
    during = predict_window(known_at(history, during_at), during_at, OFFICE, SETTINGS)
    assert during.minutes >= 3 * before.minutes
    # Back (Monday): the pile is cleared in two days; on Thursday the promise is back
    # near its old self.
    recovered_at = away_until + timedelta(days=3, hours=2)
    recovered = predict_window(known_at(history, recovered_at), recovered_at, OFFICE, SETTINGS)
    assert recovered.minutes <= 1.5 * before.minutes


def test_people_marked_away_raise_the_promise() -> None:
    history = steady_team(40, 20, 120)
    # a moment with a queue: the last hour's cases are still open
    now = history[-1].opened_at + timedelta(minutes=1)
    open_now = [HistoryCase(c.opened_at, None) for c in history[-10:]]
    base = history[:-10] + open_now
    everyone = predict_window(base, now, OFFICE, SETTINGS)
    half_away = predict_window(base, now, OFFICE, SETTINGS, away=0.5)
    assert half_away.basis["on_duty"] == 0.5
    assert half_away.minutes > everyone.minutes


def test_too_little_history_gives_the_configured_default() -> None:
    history = steady_team(1, 5, 60)
    window = predict_window(history, history[-1].opened_at, OFFICE, SETTINGS)
    assert window.is_default
    assert window.minutes == SETTINGS.default_window_minutes


def test_only_what_was_known_at_now_counts() -> None:
    history = steady_team(40, 20, 120)
    now = history[-50].opened_at
    known = [c for c in history if c.opened_at <= now]
    hidden = [HistoryCase(c.opened_at, c.first_response_at) for c in known] + [
        HistoryCase(c.opened_at + timedelta(days=999), None) for c in history[-49:]
    ]
    # Responses after `now` and cases opened after it change nothing.
    assert (
        predict_window(hidden, now, OFFICE, SETTINGS).minutes
        == predict_window(
            [
                HistoryCase(
                    c.opened_at,
                    c.first_response_at
                    if c.first_response_at and c.first_response_at <= now
                    else None,
                )
                for c in known
            ],
            now,
            OFFICE,
            SETTINGS,
        ).minutes
    )


def test_calibration_record_moves_the_promise() -> None:
    history = steady_team(40, 20, 120)
    now = history[-1].opened_at + timedelta(minutes=10)
    misses = [Outcome(START, START + timedelta(hours=1), None)] * 5
    kept = [Outcome(START, START + timedelta(hours=1), START)] * 100
    plain = predict_window(history, now, OFFICE, SETTINGS)
    after_misses = predict_window(history, now, OFFICE, SETTINGS, outcomes=misses)
    after_kept = predict_window(history, now, OFFICE, SETTINGS, outcomes=kept)
    assert after_misses.basis["calibrated_quantile"] > plain.basis["calibrated_quantile"]
    assert after_kept.basis["calibrated_quantile"] < plain.basis["calibrated_quantile"]
    assert after_misses.minutes >= plain.minutes >= after_kept.minutes


# -- residual time ----------------------------------------------------------------------


def mixed_team() -> list[HistoryCase]:
    """Nine in ten cases answered in about an hour, one in ten after about three days."""
    rng = random.Random(11)
    out = []
    for n, at in enumerate(arrivals(60, 10)):
        slow = n % 10 == 0
        minutes = (3 * BUSINESS_DAY_MINUTES if slow else 60) * rng.uniform(0.8, 1.2)
        out.append(HistoryCase(at, OFFICE.add(at, minutes), key=n))
    return out


def test_a_case_that_already_waited_is_promised_the_rest_of_the_slow_tail() -> None:
    history = mixed_team()
    now = history[-1].opened_at + timedelta(minutes=30)
    settings = PromiseSettings(quantile=0.8)
    predictor = predictor_from_history(history, now, OFFICE, settings)
    fresh = predictor.window(now)
    assert fresh.minutes <= 2 * 60  # p80 of a fresh case: the fast ones
    # A case open for a whole business day is one of the slow ones: about two more days.
    opened = OFFICE.add(now, 0) - timedelta(days=1)
    update = predictor.residual_window(now, opened)
    assert update.basis["method"] == "residual time given the wait so far"
    assert update.basis["waited_minutes"] >= BUSINESS_DAY_MINUTES * 0.9
    assert 1.2 * BUSINESS_DAY_MINUTES <= update.minutes <= 3 * BUSINESS_DAY_MINUTES
    assert update.due_at > now


def test_residual_time_shrinks_as_the_wait_goes_on() -> None:
    history = mixed_team()
    now = history[-1].opened_at + timedelta(minutes=30)
    predictor = predictor_from_history(history, now, OFFICE, PromiseSettings(quantile=0.8))
    one_day = predictor.residual_window(now, now - timedelta(days=1))
    two_days = predictor.residual_window(now, now - timedelta(days=2))
    assert two_days.minutes < one_day.minutes


def test_the_predictor_is_incremental() -> None:
    """Fed event by event it says what the one-pass rebuild says."""
    history = steady_team(30, 15, 120)
    now = history[-1].opened_at + timedelta(minutes=5)
    rebuilt = predict_window(history, now, OFFICE, SETTINGS)
    fed = PromisePredictor.start(OFFICE, SETTINGS, date(2026, 1, 1))
    events = sorted(
        [(c.opened_at, 1, i) for i, c in enumerate(history)]
        + [(c.first_response_at, 0, i) for i, c in enumerate(history) if c.first_response_at]
    )
    for at, is_arrival, i in events:
        if at > now:
            continue
        if is_arrival:
            fed.arrive(i, at)
        else:
            fed.answer(i, at)
    assert fed.window(now).minutes == rebuilt.minutes


def test_the_basis_explains_the_promise_and_the_update() -> None:
    history = mixed_team()
    now = history[-1].opened_at + timedelta(minutes=30)
    predictor = predictor_from_history(history, now, OFFICE, PromiseSettings(quantile=0.8))
    text = explain(predictor.window(now))
    assert "cases ahead" in text and "business minutes per first response" in text
    update = explain(predictor.residual_window(now, now - timedelta(days=1)))
    assert "has already waited" in update and "recent cases" in update
    default = predict_window(history[:3], history[2].opened_at, OFFICE, SETTINGS)
    assert "configured default" in explain(default)
