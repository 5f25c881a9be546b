"""Rate limits that defer, never drop: when may one more automatic mail go out?

Every automatic mail to a customer's address (acknowledgement, follow-up note, customer
update) counts against the same per-address limits, and all of them against the
mailbox's global limits (an hour and a day). A mail that would exceed a limit is not
dropped: it is planned for the earliest moment at which it fits every limit, and the
limits hold in every sliding window, including windows that contain mails already
planned for later.

Pure: the shell passes the planned send times (sent, or due to be sent) it knows of.
A triage pass reads them once into a `Book` and adds what it queues itself, so a surge
costs O(log n) per mail instead of a read of the whole day's automatic mail per mail.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keepword.config import LimitSettings

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Slot:
    at: datetime  # when the mail may go out (== now when no limit holds it back)
    reason: str | None  # why it waits; None when it goes out now

    @property
    def deferred(self) -> bool:
        return self.reason is not None


class Timeline(list[datetime]):
    """Send times kept sorted as they are added: `next_slot` takes it as it is (no sort,
    no copy), so one more mail costs O(log n), not O(n)."""

    def __init__(self, times: Iterable[datetime] = ()) -> None:
        super().__init__(sorted(times))

    def add(self, at: datetime) -> None:
        bisect.insort(self, at)


@dataclass(frozen=True, slots=True)
class PlannedMail:
    """Planned send times of automatic mail already queued or sent (see `next_slot`)."""

    to_address: Sequence[datetime] = ()
    from_mailbox: Sequence[datetime] = ()


@dataclass(slots=True)
class Book:
    """The automatic customer mail a run must count, read once: every planned send time
    of the mailbox's, and those to each address from any mailbox (exact address, as
    recorded). The run adds each mail it queues (`add`) and drops the book when a
    transaction that added to it rolls back."""

    from_mailbox: Timeline = field(default_factory=Timeline)
    to_address: dict[str, Timeline] = field(default_factory=dict)

    @classmethod
    def of(
        cls, mailbox: str, rows: Iterable[tuple[str, Sequence[str], datetime]], since: datetime
    ) -> Book:
        """From (mailbox, recipients, planned time) rows; those before `since` are out."""
        own: list[datetime] = []
        to: dict[str, list[datetime]] = {}
        for box, recipients, at in rows:
            if at < since:
                continue
            if box == mailbox:
                own.append(at)
            for address in dict.fromkeys(recipients):
                to.setdefault(address, []).append(at)
        return cls(Timeline(own), {a: Timeline(t) for a, t in to.items()})

    def planned(self, address: str | None) -> PlannedMail:
        to = self.to_address.get(address, ()) if address is not None else ()
        return PlannedMail(to, self.from_mailbox)

    def add(self, address: str, at: datetime) -> None:
        """This mailbox queued one more automatic customer mail to `address` for `at`."""
        self.from_mailbox.add(at)
        self.to_address.setdefault(address, Timeline()).add(at)


@dataclass(frozen=True, slots=True)
class _Limit:
    times: list[datetime]  # sorted
    window: timedelta
    most: int
    what: str

    def fits(self, at: datetime) -> bool:
        """Adding a mail at `at` keeps every window (t - window, t] with t in
        [at, at + window) at or below `most`."""
        times, horizon = self.times, at + self.window
        later = bisect.bisect_left(times, at)  # the ends after `at`, walked without a copy
        end = at
        while True:
            inside = bisect.bisect_right(times, end) - bisect.bisect_right(times, end - self.window)
            if inside + 1 > self.most:
                return False
            if later >= len(times) or times[later] >= horizon:
                return True
            end = times[later]
            later = bisect.bisect_right(times, end)  # mails at the same instant: one end


def next_slot(
    now: datetime,
    *,
    to_address: Sequence[datetime],
    from_mailbox: Sequence[datetime],
    limits: LimitSettings,
) -> Slot:
    """The earliest time >= now at which one more automatic mail fits every limit.

    `to_address`: planned send times of automatic mail to this address (any mailbox);
    `from_mailbox`: those of every automatic customer mail of this mailbox.
    """
    to, own = _sorted(to_address), _sorted(from_mailbox)
    checks = [
        _Limit(to, HOUR, limits.per_sender_per_hour, "to this address an hour"),
        _Limit(to, DAY, limits.per_sender_per_day, "to this address a day"),
        _Limit(own, HOUR, limits.global_per_hour, "from this mailbox an hour"),
        _Limit(own, DAY, limits.global_per_day, "from this mailbox a day"),
    ]
    if all(c.fits(now) for c in checks):  # the usual case: O(log n), no candidates
        return Slot(now, None)
    candidates = sorted(
        {now, *(t + c.window for c in checks for t in c.times if t + c.window > now)}
    )
    for at in candidates:
        held = [c for c in checks if not c.fits(at)]
        if not held:
            if at == now:
                return Slot(now, None)
            first = next(c for c in checks if not c.fits(now))
            return Slot(at, f"rate limit: at most {first.most} automatic mails {first.what}")
    raise AssertionError("the last candidate is past every planned mail")  # pragma: no cover


def _sorted(times: Sequence[datetime]) -> list[datetime]:
    return times if isinstance(times, Timeline) else sorted(times)
