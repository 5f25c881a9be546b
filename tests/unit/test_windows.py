from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from keepword.config import PromiseSettings
from keepword.domain.calendar import BusinessCalendar
from keepword.domain.windows import (
    Case,
    Window,
    backlog_at,
    backlog_history,
    first_response_samples,
    humanize,
    load_matched_samples,
    measured_window,
    nearest_rank,
    response_window,
    round_up_minutes,
    usual_backlog,
    writes_like_a_robot,
)

BERLIN = ZoneInfo("Europe/Berlin")
CAL = BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)})
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN)  # a Monday morning
SETTINGS = PromiseSettings(quantile=0.9)  # 90 days, 20 cases, default 8 h, maximum 40 h


def history(business_minutes: list[float], *, seed: int = 1) -> list[Case]:
    """Cases opened at random open instants of the last 80 days, answered after the
    given business time."""
    rng = random.Random(seed)
    start = NOW - timedelta(days=80)
    cases: list[Case] = []
    for minutes in business_minutes:
        opened = CAL.add(start, rng.uniform(0, 50 * 480))
        cases.append((opened, CAL.add(opened, minutes)))
    return [(o, r) for o, r in cases if r <= NOW]


def window_for(cases: list[Case], backlog_now: int = 0, backlog_usual: float = 0) -> Window:
    samples = first_response_samples(cases, CAL, NOW, SETTINGS.history_days)
    return response_window(
        NOW,
        CAL,
        samples,
        backlog_now=backlog_now,
        backlog_usual=backlog_usual,
        settings=SETTINGS,
    )


def lognormal(median: float, sigma: float, n: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(0, sigma) * median for _ in range(n)]


# -- rounding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "rounded"),
    [
        (0, 15),
        (1, 15),
        (15, 15),
        (15.01, 30),
        (59, 60),
        (60, 60),
        (60.0000000001, 60),  # float noise is not a new unit
        (61, 90),
        (200, 210),
        (240, 240),
        (241, 270),
        (246, 270),
        (421, 450),
        (480, 480),
        (481, 540),
        (533, 540),
        (960, 960),
        (961, 1200),
        (1440, 1440),
        (1441, 1680),
        (2400, 2400),
        (2401, 2880),
        (3000, 3360),
    ],
)
def test_rounding_table(raw: float, rounded: int) -> None:
    assert round_up_minutes(raw) == rounded


@given(st.floats(min_value=0, max_value=100_000))
@example(16.0)  # a quarter hour and a minute: 30, the steepest step up
@example(61.0)  # just past an hour: 90
def test_rounding_only_goes_up_and_not_by_much(minutes: float) -> None:
    """Up, by at most a quarter hour or half again (one unit of the band)."""
    rounded = round_up_minutes(minutes)
    assert rounded >= minutes - 1e-6
    assert rounded - minutes <= max(15, minutes / 2)


def test_rounding_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="cannot round"):
        round_up_minutes(-1)


# -- quantile -------------------------------------------------------------------------


def test_nearest_rank_quantile() -> None:
    ten = [float(x) for x in range(10, 0, -1)]
    assert nearest_rank(ten, 0.9) == 9
    assert nearest_rank(ten, 0.91) == 10
    assert nearest_rank(ten, 0.5) == 5
    assert nearest_rank([3.0], 0.9) == 3
    with pytest.raises(ValueError, match="no samples"):
        nearest_rank([], 0.9)


# -- samples --------------------------------------------------------------------------


def test_samples_are_business_minutes() -> None:
    friday = datetime(2026, 11, 20, 16, 0, tzinfo=BERLIN)
    monday = datetime(2026, 11, 23, 9, 30, tzinfo=BERLIN)
    assert first_response_samples([(friday, monday)], CAL, NOW, 90) == [90]


def test_samples_leave_out_old_and_future_cases() -> None:
    old = NOW - timedelta(days=100)
    cases: list[Case] = [
        (old, old + timedelta(hours=1)),
        (NOW - timedelta(hours=1), NOW + timedelta(hours=1)),  # answered after now
        (NOW + timedelta(hours=1), None),
    ]
    assert first_response_samples(cases, CAL, NOW, 90) == []


def test_long_unanswered_cases_count_with_their_age() -> None:
    cases = history([60.0] * 30)
    stuck = CAL.add(NOW - timedelta(days=10), 0)
    fresh = NOW - timedelta(minutes=5)
    with_open = [*cases, (stuck, None), (fresh, None)]
    plain = first_response_samples(with_open, CAL, NOW, 90)
    censored = first_response_samples(with_open, CAL, NOW, 90, quantile=0.9)
    assert len(plain) == 30
    assert len(censored) == 31  # the stuck one, not the five-minute-old one
    assert max(censored) == CAL.minutes_between(stuck, NOW)


# -- the window -----------------------------------------------------------------------


def test_team_answering_in_two_hours_is_not_promised_a_day() -> None:
    window = window_for(history(lognormal(120, 0.4, 200)))
    assert not window.is_default
    assert not window.behind
    assert 120 < window.minutes <= 5 * 60
    assert window.due_at == CAL.add(NOW, window.minutes)


def test_team_answering_in_three_days_is_not_promised_a_day() -> None:
    window = window_for(history(lognormal(3 * 480, 0.3, 100)))
    assert window.minutes > 3 * 480  # more than three business days, never "24 hours"
    assert window.due_at > NOW + timedelta(days=3)
    assert not window.is_default


def test_too_little_history_gives_the_default() -> None:
    window = window_for(history([30.0] * (SETTINGS.min_history_cases - 1)))
    assert window.is_default
    assert window.minutes == SETTINGS.default_window_minutes
    assert window.basis["sample_size"] == SETTINGS.min_history_cases - 1
    assert "default" in window.explain()


def test_enough_history_is_a_measurement() -> None:
    window = window_for(history([30.0] * SETTINGS.min_history_cases))
    assert not window.is_default
    assert window.minutes == 30


def test_doubled_backlog_doubles_the_window() -> None:
    cases = history(lognormal(120, 0.4, 200))
    usual = window_for(cases, backlog_now=6, backlog_usual=6)
    doubled = window_for(cases, backlog_now=12, backlog_usual=6)
    assert usual.basis["backlog_factor"] == 1
    assert doubled.basis["backlog_factor"] == 2
    assert doubled.minutes >= 2 * float(usual.basis["measured_minutes"])
    assert doubled.minutes > usual.minutes
    assert "backlog" in doubled.explain()


def test_quiet_moment_does_not_shrink_the_window() -> None:
    cases = history(lognormal(120, 0.4, 200))
    assert window_for(cases, 0, 10).minutes == window_for(cases, 10, 10).minutes


def test_small_usual_backlog_does_not_explode() -> None:
    cases = history([60.0] * 50)
    assert window_for(cases, backlog_now=2, backlog_usual=0).basis["backlog_factor"] == 2


def test_above_the_maximum_the_team_is_behind_and_the_window_stays_honest() -> None:
    window = window_for(history(lognormal(3 * 480, 0.3, 100)), backlog_now=20, backlog_usual=5)
    assert window.behind
    assert window.minutes > SETTINGS.maximum_window_minutes
    assert window.minutes >= 4 * float(window.basis["measured_minutes"])
    assert "behind" in window.explain()


def test_basis_records_every_input() -> None:
    window = window_for(history(lognormal(120, 0.4, 50)), backlog_now=9, backlog_usual=3)
    basis = window.basis
    assert basis["quantile"] == 0.9
    assert basis["sample_size"] == 50
    assert basis["backlog_now"] == 9
    assert basis["backlog_usual"] == 3
    assert basis["backlog_factor"] == 3
    assert basis["minutes"] == window.minutes
    assert basis["quantile_method"] == "nearest-rank"
    with pytest.raises(TypeError):
        basis["minutes"] = 1  # type: ignore[index]


def test_explain_is_one_sentence_with_the_numbers() -> None:
    text = window_for(history([60.0] * 40)).explain()
    assert text.startswith("Promised 1 business hour")
    assert "p90 of the 40 first responses in the last 90 days" in text
    assert text.endswith(".")


# -- backlog --------------------------------------------------------------------------


def test_backlog_at_counts_open_unanswered_cases() -> None:
    t = datetime(2026, 11, 20, 12, tzinfo=UTC)
    cases: list[Case] = [
        (t - timedelta(hours=3), t - timedelta(hours=1)),  # answered before
        (t - timedelta(hours=2), t + timedelta(hours=1)),  # still waiting then
        (t - timedelta(hours=1), None),
        (t + timedelta(hours=1), None),  # not yet arrived
    ]
    assert backlog_at(cases, t) == 2


def test_usual_backlog_is_the_median() -> None:
    assert usual_backlog([1, 9, 3, 4, 100]) == 4
    assert usual_backlog([]) == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.one_of(st.none(), st.integers(0, 5_000))),
        max_size=40,
    )
)
def test_backlog_history_agrees_with_backlog_at(raw: list[tuple[int, int | None]]) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    cases: list[Case] = [
        (base + timedelta(minutes=o), None if d is None else base + timedelta(minutes=o + d + 1))
        for o, d in raw
    ]
    now = base + timedelta(minutes=12_000)
    arrivals = sorted(o for o, _ in cases)
    expected = [backlog_at([c for c in cases if c[0] < arrival], arrival) for arrival in arrivals]
    assert backlog_history(cases, now, 90) == expected


def test_usual_backlog_at_a_quantile() -> None:
    assert usual_backlog(list(range(1, 11)), 0.9) == 9


def quiet_and_surge_history() -> list[Case]:
    """A surge 80 days ago (40 cases at once, each answered after 600 business minutes),
    then 100 quiet cases on separate days, each answered within the hour."""
    surge_start = CAL.next_open(NOW - timedelta(days=80))
    cases: list[Case] = []
    for i in range(40):
        opened = surge_start + timedelta(minutes=i)
        cases.append((opened, CAL.add(opened, 600)))
    quiet_start = CAL.next_open(NOW - timedelta(days=60))
    for i in range(100):
        opened = quiet_start + timedelta(hours=12 * i)
        cases.append((opened, CAL.add(opened, 55)))
    return cases


def test_quiet_moments_get_the_quiet_days_pace() -> None:
    window = measured_window(quiet_and_surge_history(), NOW, CAL, SETTINGS)
    assert window.basis["backlog_now"] == 0
    assert window.minutes == 60  # not the surge's 600 minutes
    assert window.basis["history_size"] == 140
    assert window.basis["sample_size"] == 35  # a quarter of the history
    assert "p90 of the 35 first responses (of 140) that met a backlog" in window.explain()


def test_a_surge_gets_the_surge_pace() -> None:
    waiting: list[Case] = [(NOW - timedelta(minutes=1 + i), None) for i in range(30)]
    window = measured_window([*quiet_and_surge_history(), *waiting], NOW, CAL, SETTINGS)
    assert window.basis["backlog_now"] == 30
    assert window.minutes == 600
    assert window.basis["backlog_factor"] == 1  # the history has seen such a backlog


def test_a_backlog_beyond_anything_seen_is_extrapolated() -> None:
    waiting: list[Case] = [(NOW - timedelta(minutes=1 + i), None) for i in range(160)]
    window = measured_window([*quiet_and_surge_history(), *waiting], NOW, CAL, SETTINGS)
    assert float(window.basis["backlog_factor"]) > 3
    assert window.minutes > 3 * 600
    assert window.behind == (window.minutes > SETTINGS.maximum_window_minutes)


def test_measured_window_does_not_peek_at_later_responses() -> None:
    cases = quiet_and_surge_history()
    known = measured_window(cases, NOW, CAL, SETTINGS)
    # A case opened before now but answered after it is still waiting at `now`.
    future: list[Case] = [(NOW - timedelta(minutes=5), NOW + timedelta(minutes=1))]
    with_future = measured_window([*cases, *future], NOW, CAL, SETTINGS)
    assert with_future.basis["backlog_now"] == 1
    assert known.basis["backlog_now"] == 0
    # Cases opened after now are not history yet.
    later: list[Case] = [(NOW + timedelta(hours=1), NOW + timedelta(hours=2))]
    assert measured_window([*cases, *later], NOW, CAL, SETTINGS).basis == known.basis


def test_load_matched_samples_keep_long_open_cases() -> None:
    cases = quiet_and_surge_history()
    stuck: list[Case] = [(NOW - timedelta(days=20), None)]
    matched = load_matched_samples([*cases, *stuck], CAL, NOW, backlog_now=0, settings=SETTINGS)
    assert matched.history_size == 141
    assert len(matched.samples) == 36


# -- humanize -------------------------------------------------------------------------


def test_humanize_short_windows_as_business_time() -> None:
    assert humanize(window_for(history([200.0] * 30)), CAL) == "3.5 business hours"
    assert humanize(window_for(history([200.0] * 30)), CAL, "de") == "3,5 Geschäftsstunden"
    assert humanize(window_for(history([40.0] * 30)), CAL) == "45 business minutes"
    assert humanize(window_for(history([240.0] * 30)), CAL) == "4 business hours"


def test_humanize_long_windows_as_a_local_due_time() -> None:
    window = window_for(history([2 * 480.0] * 30))  # Monday 10:00 + 2 business days
    assert window.due_at == datetime(2026, 11, 25, 10, tzinfo=BERLIN)
    assert humanize(window, CAL) == "by Wednesday 10:00"
    assert humanize(window, CAL, "de") == "bis Mittwoch 10:00"


def test_humanize_far_windows_with_the_date() -> None:
    window = window_for(history([12 * 480.0] * 30))
    assert humanize(window, CAL) == "by Wednesday 9 December 10:00"
    assert humanize(window, CAL, "de") == "bis Mittwoch, 9. Dezember 10:00"


# -- ties: every ordering of cases is total ------------------------------------------------


def test_two_cases_opened_the_same_second_one_answered_do_not_break_the_window() -> None:
    # Two mails without a Date in one poll open two cases at the same instant; one is
    # answered. Plain tuple order then compared a datetime with None (TypeError).
    opened = NOW - timedelta(days=1)
    cases: list[Case] = [(opened, None), (opened, opened + timedelta(hours=1))]
    window = measured_window(cases * 11, NOW, CAL, SETTINGS)
    assert window.minutes > 0


_INSTANTS = st.integers(min_value=0, max_value=40).map(
    lambda h: NOW - timedelta(days=10) + timedelta(hours=h * 6)
)


@given(
    st.lists(
        st.tuples(_INSTANTS, st.one_of(st.none(), st.integers(min_value=0, max_value=4000))),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=2**32),
)
def test_any_history_with_ties_and_unanswered_cases_gives_one_window(
    raw: list[tuple[datetime, int | None]], seed: int
) -> None:
    """Few distinct instants (so many ties), answered or not: never an exception, and the
    window does not depend on the order the store returned the cases in."""
    cases: list[Case] = [(o, None if m is None else o + timedelta(minutes=m)) for o, m in raw]
    settings = PromiseSettings(quantile=0.9, min_history_cases=3)
    window = measured_window(cases, NOW, CAL, settings)
    shuffled = list(cases)
    random.Random(seed).shuffle(shuffled)
    again = measured_window(shuffled, NOW, CAL, settings)
    assert (again.minutes, again.due_at, again.is_default) == (
        window.minutes,
        window.due_at,
        window.is_default,
    )


# -- robots: cases that are no backlog -------------------------------------------------------


def test_an_address_opening_a_days_limit_of_cases_writes_like_a_robot() -> None:
    start = NOW - timedelta(days=3)
    robot = [("tickets@vendor.example", start + timedelta(hours=2 * i)) for i in range(10)]
    person = [("ann@example.org", start + timedelta(hours=5 * i)) for i in range(10)]
    assert writes_like_a_robot(robot + person, 10) == {"tickets@vendor.example"}
    # nine in a day is still a busy person
    assert writes_like_a_robot(robot[:9], 10) == frozenset()


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    st.integers(min_value=1, max_value=12),
)
def test_robot_rule_is_a_sliding_day(minutes: list[int], per_day: int) -> None:
    times = [NOW + timedelta(minutes=m) for m in minutes]
    expected = any(
        sum(1 for t in times if start <= t < start + timedelta(days=1)) >= per_day
        for start in times
    )
    found = writes_like_a_robot([("x@example.org", t) for t in times], per_day)
    assert (found == {"x@example.org"}) == expected
