"""Business calendar: opening hours, holidays and business-time arithmetic.

Pure: no clock, no I/O. Inputs are aware datetimes in any zone; results are aware UTC.

How time is counted: every local day is turned into its open intervals as *real*
instants (local opening time -> UTC via zoneinfo), and business time is the elapsed
real time inside those intervals. So a 09:00-17:00 day is 8 hours on a DST switch
day too, and a night interval spanning the switch counts the hour that really
elapsed (an hour less in spring, an hour more in autumn). A close of 24:00 is the
next local midnight - exactly where the next day's 00:00 opening starts - so a 24/7
calendar has no gap at midnight.

Local times that do not exist (the spring gap) resolve forward (zoneinfo fold=0:
02:30 in Berlin becomes 03:30 CEST); repeated local times (the autumn hour) mean
their first occurrence. An interval that becomes empty that way is dropped.

Precedence per date: a closed date is closed; an extra open date is open (even on a
holiday or a weekend); a public holiday is closed; otherwise the weekly hours apply.
An extra open date uses its own weekday's hours if it has any, else the hours of the
first weekday (Monday first) that has hours - the team's "normal day".
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from keepword.config import CalendarSettings

Interval = tuple[datetime, datetime]

#: `add` and `next_open` give up after this many days without any open time.
SEARCH_LIMIT_DAYS = 3 * 366

_DAY_NAMES = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "de": ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So"),
}
_HOLIDAY_LINE = {
    "en": "Closed on public holidays",
    "de": "An Feiertagen geschlossen",
}


def _require_aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: business time needs an aware instant")
    return at.astimezone(UTC)


def _merge_local(spans: Sequence[tuple[time, time]]) -> tuple[tuple[time, time], ...]:
    """Sort and merge overlapping or touching intervals of one day."""
    merged: list[tuple[time, time]] = []
    for start, end in sorted(spans):
        if end <= start:
            raise ValueError(f"interval {start}-{end} closes before it opens")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


class BusinessCalendar:
    """Immutable weekly opening hours in one zone, minus holidays and closed dates."""

    __slots__ = (
        "_cache",
        "_closed",
        "_extra_open",
        "_fallback",
        "_has_holidays",
        "_holidays",
        "_hours",
        "_zone",
    )

    def __init__(
        self,
        zone: ZoneInfo,
        hours: Mapping[int, Sequence[tuple[time, time]]],
        holidays: Collection[date] | Any = (),
        closed: Collection[date] = (),
        extra_open: Collection[date] = (),
    ) -> None:
        for weekday in hours:
            if weekday not in range(7):
                raise ValueError(f"weekday {weekday} is not 0 (Monday) .. 6 (Sunday)")
        self._zone = zone
        self._hours: dict[int, tuple[tuple[time, time], ...]] = {
            day: _merge_local(hours.get(day, ())) for day in range(7)
        }
        if not any(self._hours.values()):
            raise ValueError("no opening hours at all: at least one day needs an interval")
        # The normal day's hours, used by extra open dates whose weekday is closed.
        self._fallback = next(spans for spans in self._hours.values() if spans)
        # A HolidayBase from the `holidays` package expands lazily per year on `in`.
        self._holidays = holidays
        self._has_holidays = bool(holidays) or hasattr(holidays, "country")
        self._closed = frozenset(closed)
        self._extra_open = frozenset(extra_open)
        self._cache: dict[date, tuple[Interval, ...]] = {}

    @classmethod
    def from_settings(cls, cal: CalendarSettings, default_zone: str) -> BusinessCalendar:
        """Build from a mailbox's [calendar] table; its zone falls back to `default_zone`."""
        public: Any = ()
        if cal.country:
            import holidays as holiday_feeds

            try:
                public = holiday_feeds.country_holidays(cal.country, subdiv=cal.subdivision)
            except NotImplementedError:
                raise ValueError(
                    f"the holidays package knows no calendar for country {cal.country!r}"
                    + (f" subdivision {cal.subdivision!r}" if cal.subdivision else "")
                ) from None
        return cls(
            ZoneInfo(cal.timezone or default_zone),
            cal.opening_hours(),
            holidays=public,
            closed=cal.closed_dates,
            extra_open=cal.open_dates,
        )

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    # -- one day -----------------------------------------------------------------

    def _local_spans(self, day: date) -> tuple[tuple[time, time], ...]:
        if day in self._closed:
            return ()
        weekly = self._hours[day.weekday()]
        if day in self._extra_open:
            return weekly or self._fallback
        if day in self._holidays:
            return ()
        return weekly

    def _instant(self, day: date, clock: time) -> datetime:
        if clock == time.max:  # 24:00 is the next local midnight
            local = datetime.combine(day + timedelta(days=1), time(0), self._zone)
        else:
            local = datetime.combine(day, clock, self._zone)
        return local.astimezone(UTC)

    def day_intervals(self, day: date) -> tuple[Interval, ...]:
        """The open intervals of one local date, as UTC instants, in order."""
        cached = self._cache.get(day)
        if cached is None:
            spans = (
                (self._instant(day, start), self._instant(day, end))
                for start, end in self._local_spans(day)
            )
            cached = tuple((s, e) for s, e in spans if s < e)
            self._cache[day] = cached
        return cached

    def _local_date(self, at_utc: datetime) -> date:
        return at_utc.astimezone(self._zone).date()

    def _intervals_after(self, at_utc: datetime, limit_days: int) -> Iterator[Interval]:
        """Unmerged intervals ending after `at_utc`, in order; ValueError after a long gap."""
        # From the day before: where midnight itself is skipped by DST, the previous
        # day's 24:00 close may lie after the first instant of the local date.
        day = self._local_date(at_utc) - timedelta(days=1)
        idle_days = -1
        while True:
            found = False
            for start, end in self.day_intervals(day):
                if end > at_utc:
                    found = True
                    yield start, end
            idle_days = 0 if found else idle_days + 1
            if idle_days > limit_days:
                raise ValueError(
                    f"no open business hours within {limit_days} days after {at_utc.isoformat()}"
                )
            day += timedelta(days=1)

    # -- queries -----------------------------------------------------------------

    def is_open(self, at: datetime) -> bool:
        at_utc = _require_aware(at)
        day = self._local_date(at_utc)
        return any(
            s <= at_utc < e
            for d in (day - timedelta(days=1), day)
            for s, e in self.day_intervals(d)
        )

    def next_open(self, at: datetime) -> datetime:
        """`at` itself (in UTC) if open, else the next opening."""
        at_utc = _require_aware(at)
        start, _ = next(self._intervals_after(at_utc, SEARCH_LIMIT_DAYS))
        return max(start, at_utc)

    def add(self, start: datetime, minutes: float) -> datetime:
        """The instant `minutes` business minutes after `start`.

        Lands inside an open interval or exactly at its close; 0 minutes returns
        `start`. Walks whole intervals, so the cost grows with days, not minutes.
        """
        if minutes < 0:
            raise ValueError(f"cannot add a negative business time ({minutes} minutes)")
        cursor = _require_aware(start)
        remaining = minutes * 60.0
        if remaining == 0:
            return cursor
        for open_at, close_at in self._intervals_after(cursor, SEARCH_LIMIT_DAYS):
            begin = max(open_at, cursor)
            available = (close_at - begin).total_seconds()
            if remaining <= available:
                return begin + timedelta(seconds=remaining)
            remaining -= available
            cursor = close_at
        raise AssertionError("unreachable: _intervals_after is endless or raises")

    def open_intervals(self, start: datetime, end: datetime) -> Iterator[Interval]:
        """Open time within [start, end) as merged UTC intervals (24/7 stays one interval)."""
        lo, hi = _require_aware(start), _require_aware(end)
        if hi <= lo:
            return
        pending: Interval | None = None
        day = self._local_date(lo) - timedelta(days=1)
        last_day = self._local_date(hi)
        while day <= last_day:
            for open_at, close_at in self.day_intervals(day):
                s, e = max(open_at, lo), min(close_at, hi)
                if s >= e:
                    continue
                if pending is not None and s <= pending[1]:
                    pending = (pending[0], max(e, pending[1]))
                else:
                    if pending is not None:
                        yield pending
                    pending = (s, e)
            day += timedelta(days=1)
        if pending is not None:
            yield pending

    def minutes_between(self, start: datetime, end: datetime) -> float:
        """Business minutes in [start, end); 0 if end <= start."""
        seconds = sum((e - s).total_seconds() for s, e in self.open_intervals(start, end))
        return seconds / 60.0

    # -- for people ----------------------------------------------------------------

    def describe_hours(self, language: str = "en") -> list[str]:
        """Human lines for templates, e.g. "Mon–Fri 09:00–17:00 (Europe/Berlin)"."""
        names = _DAY_NAMES.get(language, _DAY_NAMES["en"])
        lines: list[str] = []
        day = 0
        while day < 7:
            spans = self._hours[day]
            last = day
            while last + 1 < 7 and self._hours[last + 1] == spans:
                last += 1
            if spans:
                days = names[day] if last == day else f"{names[day]}–{names[last]}"
                times = ", ".join(f"{_clock(s)}–{_clock(e)}" for s, e in spans)
                lines.append(f"{days} {times} ({self._zone.key})")
            day = last + 1
        if self._has_holidays:
            lines.append(_HOLIDAY_LINE.get(language, _HOLIDAY_LINE["en"]))
        return lines


def _clock(value: time) -> str:
    return "24:00" if value == time.max else value.strftime("%H:%M")
