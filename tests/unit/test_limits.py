"""domain.limits.next_slot: rate limits that defer, and hold in every sliding window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from keepword.config import LimitSettings
from keepword.domain.limits import DAY, HOUR, Book, next_slot

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LIMITS = LimitSettings(per_sender_per_hour=3, per_sender_per_day=10, global_per_hour=200)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_nothing_planned_goes_out_now() -> None:
    slot = next_slot(NOW, to_address=[], from_mailbox=[], limits=LIMITS)
    assert slot.at == NOW and not slot.deferred and slot.reason is None


def test_below_every_limit_goes_out_now() -> None:
    slot = next_slot(NOW, to_address=[ago(30), ago(10)], from_mailbox=[ago(5)], limits=LIMITS)
    assert slot.at == NOW and not slot.deferred


def test_hourly_limit_waits_for_the_oldest_to_leave_the_hour() -> None:
    slot = next_slot(NOW, to_address=[ago(50), ago(20), ago(5)], from_mailbox=[], limits=LIMITS)
    assert slot.at == ago(50) + HOUR
    assert (
        slot.deferred
        and slot.reason == "rate limit: at most 3 automatic mails to this address an hour"
    )


def test_daily_limit() -> None:
    times = [ago(60 * h) for h in (23, 20, 18, 16, 14, 12, 10, 8, 6, 4)]
    slot = next_slot(NOW, to_address=times, from_mailbox=[], limits=LIMITS)
    assert slot.at == ago(60 * 23) + DAY
    assert slot.reason is not None and "a day" in slot.reason


def test_global_limit_defers_instead_of_silencing_real_customers() -> None:
    forged = [ago(40)] * 200
    slot = next_slot(NOW, to_address=[], from_mailbox=forged, limits=LIMITS)
    assert slot.at == ago(40) + HOUR
    assert slot.reason is not None and "from this mailbox" in slot.reason


def test_mail_planned_for_later_counts_where_it_is_planned() -> None:
    # three already deferred into the next hour: the fourth must not land among them
    planned = [NOW + timedelta(minutes=m) for m in (10, 20, 30)]
    slot = next_slot(NOW, to_address=planned, from_mailbox=[], limits=LIMITS)
    assert slot.at >= planned[0] + HOUR


def _windows_hold(times: list[datetime], window: timedelta, most: int) -> bool:
    ordered = sorted(times)
    return all(sum(1 for t in ordered if end - window < t <= end) <= most for end in ordered)


@given(
    st.lists(st.integers(min_value=0, max_value=3 * 24 * 60), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=30),
)
def test_mails_placed_one_by_one_at_their_slots_never_exceed_a_limit(
    arrivals: list[int], per_hour: int, per_day: int, global_per_hour: int, global_per_day: int
) -> None:
    """Mails that want out at arbitrary moments (ties included) are each placed at
    next_slot over those placed before: every sliding hour and day stays within limits,
    and no mail goes out before it wanted to."""
    limits = LimitSettings(
        per_sender_per_hour=per_hour,
        per_sender_per_day=per_day,
        global_per_hour=global_per_hour,
        global_per_day=global_per_day,
    )
    placed_to_one: list[datetime] = []
    placed_all: list[datetime] = []
    for i, minute in enumerate(sorted(arrivals)):
        now = NOW + timedelta(minutes=minute)
        to_one = i % 2 == 0  # half to one address, the rest to others (global only)
        slot = next_slot(
            now,
            to_address=placed_to_one if to_one else [],
            from_mailbox=placed_all,
            limits=limits,
        )
        assert slot.at >= now
        assert slot.deferred == (slot.at > now)
        if to_one:
            placed_to_one.append(slot.at)
        placed_all.append(slot.at)
    assert _windows_hold(placed_to_one, HOUR, per_hour)
    assert _windows_hold(placed_to_one, DAY, per_day)
    assert _windows_hold(placed_all, HOUR, global_per_hour)
    assert _windows_hold(placed_all, DAY, global_per_day)


def test_the_global_daily_limit_defers() -> None:
    limits = LimitSettings(global_per_hour=10, global_per_day=12)
    earlier = [ago(60 * 20)] * 6 + [ago(60 * 3)] * 6  # 12 within the day, none this hour
    slot = next_slot(NOW, to_address=[], from_mailbox=earlier, limits=limits)
    assert slot.at == ago(60 * 20) + DAY
    assert slot.reason == "rate limit: at most 12 automatic mails from this mailbox a day"


def test_the_shipped_limits_acknowledge_an_outage_surge_at_once() -> None:
    """2,000 customers (each a new address) within minutes, on top of an ordinary day's
    automatic mail: every acknowledgement goes out now, none deferred."""
    shipped = LimitSettings()
    book = Book.of("support", [("support", ("x@example.org",), ago(m)) for m in range(600)], NOW)
    for n in range(2000):
        now = NOW + timedelta(seconds=n / 10)
        slot = next_slot(now, to_address=(), from_mailbox=book.from_mailbox, limits=shipped)
        assert not slot.deferred, n
        book.add(f"c{n}@example.org", slot.at)


def test_the_shipped_limits_hold_a_flood_of_forged_senders_to_a_day_of_200_an_hour() -> None:
    """Forged senders without end: the day gets no more than 200 an hour used to allow
    (4,800) plus a few percent, the burst at most an hour's cap. Simulated at 1/100 of
    the shipped figures (a deferred mail's slot costs O(n): 12,000 would take minutes)."""
    shipped = LimitSettings()
    assert shipped.global_per_day <= 1.05 * 200 * 24
    scaled = LimitSettings(
        global_per_hour=shipped.global_per_hour // 100,
        global_per_day=shipped.global_per_day // 100,
    )
    book = Book()
    for n in range(150):
        now = NOW + timedelta(minutes=n)
        slot = next_slot(now, to_address=(), from_mailbox=book.from_mailbox, limits=scaled)
        book.add(f"forged{n}@example.org", slot.at)
    first_hour = [t for t in book.from_mailbox if t < NOW + HOUR]
    first_day = [t for t in book.from_mailbox if t < NOW + DAY]
    assert len(first_hour) == scaled.global_per_hour
    assert len(first_day) == scaled.global_per_day
