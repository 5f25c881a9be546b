from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepword.config import CalendarSettings
from keepword.domain.business_calendar import BusinessCalendar

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS_9_TO_5 = {d: [(time(9), time(17))] for d in range(5)}
ALL_DAY = {d: [(time(0), time.max)] for d in range(7)}


def at(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


def office(zone: ZoneInfo = BERLIN, **kwargs: object) -> BusinessCalendar:
    return BusinessCalendar(zone, WEEKDAYS_9_TO_5, **kwargs)  # type: ignore[arg-type]


def german(subdivision: str | None = None) -> BusinessCalendar:
    return BusinessCalendar.from_settings(
        CalendarSettings(country="DE", subdivision=subdivision), "Europe/Berlin"
    )


# -- construction ---------------------------------------------------------------------


def test_no_open_hours_is_refused() -> None:
    with pytest.raises(ValueError, match="no opening hours"):
        BusinessCalendar(BERLIN, {0: [], 3: []})


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        office().is_open(datetime(2026, 11, 23, 10))


def test_unknown_country_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="XX"):
        BusinessCalendar.from_settings(CalendarSettings(country="XX"), "UTC")


def test_settings_zone_falls_back_to_the_default() -> None:
    cal = BusinessCalendar.from_settings(CalendarSettings(), "America/New_York")
    assert cal.zone.key == "America/New_York"
    assert cal.is_open(at(NEW_YORK, 2026, 11, 23, 9, 30))
    assert not cal.is_open(at(BERLIN, 2026, 11, 23, 9, 30))


# -- the basics -----------------------------------------------------------------------


def test_open_and_closed_at_the_edges() -> None:
    cal = office()
    assert cal.is_open(at(BERLIN, 2026, 11, 23, 9, 0))
    assert cal.is_open(at(BERLIN, 2026, 11, 23, 16, 59))
    assert not cal.is_open(at(BERLIN, 2026, 11, 23, 17, 0))
    assert not cal.is_open(at(BERLIN, 2026, 11, 28, 12, 0))  # Saturday


def test_results_are_utc() -> None:
    cal = office()
    assert cal.add(at(BERLIN, 2026, 11, 23, 10), 30).tzinfo is UTC
    assert cal.next_open(at(BERLIN, 2026, 11, 23, 10)).tzinfo is UTC


def test_next_open_over_the_weekend() -> None:
    cal = office()
    friday_evening = at(BERLIN, 2026, 11, 27, 18, 0)
    assert cal.next_open(friday_evening) == at(BERLIN, 2026, 11, 30, 9, 0)
    inside = at(BERLIN, 2026, 11, 30, 11, 15)
    assert cal.next_open(inside) == inside


def test_add_rolls_over_night_and_weekend() -> None:
    cal = office()
    assert cal.add(at(BERLIN, 2026, 11, 27, 16, 0), 120) == at(BERLIN, 2026, 11, 30, 10, 0)
    # Starting at night begins counting at the next opening.
    assert cal.add(at(BERLIN, 2026, 11, 24, 3, 0), 60) == at(BERLIN, 2026, 11, 24, 10, 0)


def test_add_lands_at_the_close_not_the_next_opening() -> None:
    cal = office()
    assert cal.add(at(BERLIN, 2026, 11, 23, 9), 480) == at(BERLIN, 2026, 11, 23, 17)


def test_negative_add_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        office().add(at(BERLIN, 2026, 11, 23, 9), -1)


def test_minutes_between_is_zero_backwards() -> None:
    cal = office()
    assert cal.minutes_between(at(BERLIN, 2026, 11, 24), at(BERLIN, 2026, 11, 23)) == 0


def test_lunch_break() -> None:
    hours = {d: [(time(13), time(17)), (time(9), time(12))] for d in range(5)}
    cal = BusinessCalendar(BERLIN, hours)
    assert not cal.is_open(at(BERLIN, 2026, 11, 23, 12, 30))
    assert cal.add(at(BERLIN, 2026, 11, 23, 11, 0), 90) == at(BERLIN, 2026, 11, 23, 13, 30)
    day = cal.minutes_between(at(BERLIN, 2026, 11, 23), at(BERLIN, 2026, 11, 24))
    assert day == 7 * 60
    assert len(list(cal.open_intervals(at(BERLIN, 2026, 11, 23), at(BERLIN, 2026, 11, 24)))) == 2


def test_adding_ten_thousand_minutes_is_cheap_and_right() -> None:
    cal = office()
    start = at(BERLIN, 2026, 11, 23, 9)
    # 10,000 minutes = 20 days of 480 min + 400 min -> 4 weeks later, plus 6h40.
    assert cal.add(start, 10_000) == at(BERLIN, 2026, 12, 21, 15, 40)


# -- DST --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "switch_day"),
    [
        (BERLIN, date(2026, 3, 29)),  # Sunday: spring forward
        (BERLIN, date(2026, 10, 25)),  # Sunday: fall back
        (NEW_YORK, date(2026, 3, 8)),
        (NEW_YORK, date(2026, 11, 1)),
    ],
)
def test_office_day_is_eight_hours_on_dst_switch_days(zone: ZoneInfo, switch_day: date) -> None:
    every_day = BusinessCalendar(zone, {d: [(time(9), time(17))] for d in range(7)})
    start = datetime.combine(switch_day, time(0), zone)
    assert every_day.minutes_between(start, start + timedelta(days=1)) == 480
    assert every_day.add(datetime.combine(switch_day, time(9), zone), 480) == datetime.combine(
        switch_day, time(17), zone
    )


@pytest.mark.parametrize(
    ("zone", "switch_day", "hours"),
    [
        (BERLIN, date(2026, 3, 29), 23),
        (BERLIN, date(2026, 10, 25), 25),
        (NEW_YORK, date(2026, 3, 8), 23),
        (NEW_YORK, date(2026, 11, 1), 25),
    ],
)
def test_round_the_clock_day_counts_the_real_hours(
    zone: ZoneInfo, switch_day: date, hours: int
) -> None:
    cal = BusinessCalendar(zone, ALL_DAY)
    start = datetime.combine(switch_day, time(0), zone)
    end = datetime.combine(switch_day + timedelta(days=1), time(0), zone)
    assert cal.minutes_between(start, end) == hours * 60
    assert cal.add(start, hours * 60) == end.astimezone(UTC)


def test_night_shift_spanning_the_spring_gap() -> None:
    cal = BusinessCalendar(BERLIN, {6: [(time(1), time(4))]})
    # On 2026-03-29 the clock jumps 02:00 -> 03:00: 01:00-04:00 is two real hours.
    sunday = date(2026, 3, 29)
    day = (datetime.combine(sunday, time(0), BERLIN), datetime.combine(sunday, time(5), BERLIN))
    assert cal.minutes_between(*day) == 120
    assert cal.add(day[0], 90) == at(BERLIN, 2026, 3, 29, 3, 30)


def test_opening_inside_the_spring_gap_moves_forward() -> None:
    cal = BusinessCalendar(BERLIN, {6: [(time(2, 30), time(5))]})
    assert cal.next_open(at(BERLIN, 2026, 3, 29, 0)) == at(BERLIN, 2026, 3, 29, 3, 30)


def test_night_shift_spanning_the_repeated_autumn_hour() -> None:
    cal = BusinessCalendar(BERLIN, {6: [(time(1), time(4))]})
    sunday = date(2026, 10, 25)
    day = (datetime.combine(sunday, time(0), BERLIN), datetime.combine(sunday, time(5), BERLIN))
    assert cal.minutes_between(*day) == 240


# -- 24/7 -------------------------------------------------------------------------------


def test_round_the_clock_is_never_closed_at_midnight() -> None:
    cal = BusinessCalendar(BERLIN, ALL_DAY)
    for minute in (-1, 0, 1):
        assert cal.is_open(at(BERLIN, 2026, 11, 24) + timedelta(minutes=minute))
    week = list(cal.open_intervals(at(BERLIN, 2026, 11, 23, 12), at(BERLIN, 2026, 11, 30, 12)))
    assert week == [(at(BERLIN, 2026, 11, 23, 12), at(BERLIN, 2026, 11, 30, 12))]
    assert cal.add(at(BERLIN, 2026, 11, 23, 23, 59), 2) == at(BERLIN, 2026, 11, 24, 0, 1)


def test_round_the_clock_is_continuous_across_dst() -> None:
    cal = BusinessCalendar(NEW_YORK, ALL_DAY)
    start, end = at(NEW_YORK, 2026, 10, 30), at(NEW_YORK, 2026, 11, 3)
    assert list(cal.open_intervals(start, end)) == [(start.astimezone(UTC), end.astimezone(UTC))]
    real = end.astimezone(UTC) - start.astimezone(UTC)  # same-zone subtraction is wall time
    assert cal.minutes_between(start, end) == real.total_seconds() / 60 == 4 * 24 * 60 + 60


def test_friday_to_monday_round_the_clock_weekdays_only() -> None:
    hours = {d: [(time(0), time.max)] for d in range(5)}
    cal = BusinessCalendar(BERLIN, hours)
    spans = list(cal.open_intervals(at(BERLIN, 2026, 11, 23), at(BERLIN, 2026, 12, 5)))
    assert spans == [
        (at(BERLIN, 2026, 11, 23).astimezone(UTC), at(BERLIN, 2026, 11, 28).astimezone(UTC)),
        (at(BERLIN, 2026, 11, 30).astimezone(UTC), at(BERLIN, 2026, 12, 5).astimezone(UTC)),
    ]


# -- holidays, closed and extra open dates ----------------------------------------------


def test_christmas_is_closed_in_germany() -> None:
    cal = german()
    assert not cal.is_open(at(BERLIN, 2026, 12, 25, 10))  # Friday, Christmas Day
    assert cal.is_open(at(BERLIN, 2026, 12, 24, 10))  # Christmas Eve is a working day
    # 16:00 on the 24th + 2h: one hour that day, then Mon 28th (25th holiday, weekend).
    assert cal.add(at(BERLIN, 2026, 12, 24, 16), 120) == at(BERLIN, 2026, 12, 28, 10)


def test_berlin_subdivision_has_womens_day() -> None:
    monday = at(BERLIN, 2027, 3, 8, 10)
    assert german().is_open(monday)
    assert not german("BE").is_open(monday)
    assert german("BE").next_open(monday) == at(BERLIN, 2027, 3, 9, 9)


def test_holidays_as_plain_dates() -> None:
    cal = office(holidays={date(2026, 11, 24)})
    assert not cal.is_open(at(BERLIN, 2026, 11, 24, 10))
    assert cal.describe_hours()[-1] == "Closed on public holidays"


def test_closed_dates_and_extra_open_dates() -> None:
    cal = office(
        holidays={date(2026, 12, 25)},
        closed={date(2026, 11, 24)},
        extra_open={date(2026, 11, 28), date(2026, 12, 25)},
    )
    assert not cal.is_open(at(BERLIN, 2026, 11, 24, 10))
    # A Saturday opened explicitly gets the normal day's hours (Monday's: 09-17).
    assert cal.is_open(at(BERLIN, 2026, 11, 28, 9))
    assert not cal.is_open(at(BERLIN, 2026, 11, 28, 17))
    # An extra open date beats a holiday.
    assert cal.is_open(at(BERLIN, 2026, 12, 25, 12))


def test_closed_beats_extra_open() -> None:
    day = date(2026, 11, 28)
    cal = office(closed={day}, extra_open={day})
    assert not cal.is_open(at(BERLIN, 2026, 11, 28, 10))


def test_sparse_calendar_terminates() -> None:
    cal = BusinessCalendar(BERLIN, {6: [(time(10), time(11))]}, closed=set())
    assert cal.add(at(BERLIN, 2026, 11, 23), 120) == at(BERLIN, 2026, 12, 6, 11)
    everything_closed = {date(2026, 11, 23) + timedelta(days=i) for i in range(4 * 366)}
    hopeless = BusinessCalendar(BERLIN, {6: [(time(10), time(11))]}, closed=everything_closed)
    with pytest.raises(ValueError, match="no open business hours"):
        hopeless.add(at(BERLIN, 2026, 11, 23), 1)
    with pytest.raises(ValueError, match="no open business hours"):
        hopeless.next_open(at(BERLIN, 2026, 11, 23))


# -- describing -----------------------------------------------------------------------


def test_describe_hours_groups_days() -> None:
    hours = {
        **{d: [(time(9), time(12)), (time(13), time(17))] for d in range(4)},
        4: [(time(9), time(14))],
        6: [(time(0), time.max)],
    }
    cal = BusinessCalendar(BERLIN, hours)
    assert cal.describe_hours() == [
        "Mon–Thu 09:00–12:00, 13:00–17:00 (Europe/Berlin)",
        "Fri 09:00–14:00 (Europe/Berlin)",
        "Sun 00:00–24:00 (Europe/Berlin)",
    ]
    assert cal.describe_hours("de")[0].startswith("Mo–Do ")


# -- properties -------------------------------------------------------------------------

CALENDARS = [
    office(),
    BusinessCalendar(NEW_YORK, {d: [(time(8), time(12)), (time(13), time(18))] for d in range(5)}),
    BusinessCalendar(BERLIN, ALL_DAY),
    BusinessCalendar(NEW_YORK, {5: [(time(0), time.max)], 6: [(time(0), time(3))]}),
    BusinessCalendar(BERLIN, {6: [(time(1), time(4))]}),  # night shift over DST switches
    german("BE"),
]

calendars = st.sampled_from(CALENDARS)
instants = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2028, 12, 31),
    timezones=st.sampled_from([UTC, BERLIN, NEW_YORK]),
)
durations = st.floats(min_value=0, max_value=30_000, allow_nan=False)
TOLERANCE = 1e-6  # minutes; timedelta keeps microseconds


@settings(max_examples=300, deadline=None)
@given(calendars, instants, durations)
def test_measuring_what_was_added_gives_it_back(
    cal: BusinessCalendar, start: datetime, minutes: float
) -> None:
    assert cal.minutes_between(start, cal.add(start, minutes)) == pytest.approx(
        minutes, abs=TOLERANCE
    )


@settings(max_examples=300, deadline=None)
@given(calendars, instants, durations, durations)
def test_add_is_monotonic_in_minutes(
    cal: BusinessCalendar, start: datetime, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert cal.add(start, low) <= cal.add(start, high)


@settings(max_examples=300, deadline=None)
@given(calendars, instants, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)))
def test_add_is_monotonic_in_start(
    cal: BusinessCalendar, start: datetime, later_by: timedelta
) -> None:
    later = start.astimezone(UTC) + later_by  # real time, not wall-clock
    assert cal.add(start, 90) <= cal.add(later, 90)


@settings(max_examples=300, deadline=None)
@given(calendars, instants, st.floats(min_value=0.001, max_value=30_000))
def test_add_lands_in_open_hours_or_at_a_close(
    cal: BusinessCalendar, start: datetime, minutes: float
) -> None:
    due = cal.add(start, minutes)
    assert cal.is_open(due) or cal.is_open(due - timedelta(microseconds=1))


@settings(max_examples=300, deadline=None)
@given(calendars, instants, st.lists(st.timedeltas(timedelta(0), timedelta(days=15)), min_size=2))
def test_minutes_between_is_additive(
    cal: BusinessCalendar, start: datetime, steps: list[timedelta]
) -> None:
    a = start.astimezone(UTC)  # real-time steps, not wall-clock ones
    b = a + steps[0]
    c = b + steps[1]
    assert cal.minutes_between(a, c) == pytest.approx(
        cal.minutes_between(a, b) + cal.minutes_between(b, c), abs=TOLERANCE
    )


@settings(max_examples=200, deadline=None)
@given(calendars, instants)
def test_next_open_is_open_and_nothing_before_it(cal: BusinessCalendar, start: datetime) -> None:
    opening = cal.next_open(start)
    assert opening >= start
    assert cal.is_open(opening)
    assert cal.minutes_between(start, opening) == 0


@settings(max_examples=200, deadline=None)
@given(calendars, instants, st.timedeltas(timedelta(0), timedelta(days=10)))
def test_open_intervals_are_disjoint_ordered_and_open(
    cal: BusinessCalendar, start: datetime, span: timedelta
) -> None:
    spans = list(cal.open_intervals(start, start.astimezone(UTC) + span))
    for (s1, e1), (s2, _) in itertools.pairwise(spans):
        assert e1 < s2  # merged: touching intervals would have been joined
        assert s1 < e1
    for s, e in spans:
        assert cal.is_open(s)
        assert cal.is_open(e - timedelta(microseconds=1))
