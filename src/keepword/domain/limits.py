"""Rate limits that defer, never drop: when may one more automatic mail go out?

Every automatic mail to a customer's address (acknowledgement, follow-up note, customer
update) counts against the same per-address limits, and all of them against the
mailbox's global limit. A mail that would exceed a limit is not dropped: it is planned
for the earliest moment at which it fits every limit, and the limits hold in every
sliding window, including windows that contain mails already planned for later.

Pure: the shell passes the planned send times (sent, or due to be sent) it knows of.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class PlannedMail:
    """Planned send times of automatic mail already queued or sent (see `next_slot`)."""

    to_address: tuple[datetime, ...] = ()
    from_mailbox: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class _Limit:
    times: list[datetime]  # sorted
    window: timedelta
    most: int
    what: str

    def fits(self, at: datetime) -> bool:
        """Adding a mail at `at` keeps every window (t - window, t] with t in
        [at, at + window) at or below `most`."""
        ends = [at, *self.times[bisect.bisect_left(self.times, at) :]]
        for end in ends:
            if end >= at + self.window:
                break
            inside = bisect.bisect_right(self.times, end) - bisect.bisect_right(
                self.times, end - self.window
            )
            if inside + 1 > self.most:
                return False
        return True


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
    checks = [
        _Limit(sorted(to_address), HOUR, limits.per_sender_per_hour, "to this address an hour"),
        _Limit(sorted(to_address), DAY, limits.per_sender_per_day, "to this address a day"),
        _Limit(sorted(from_mailbox), HOUR, limits.global_per_hour, "from this mailbox an hour"),
    ]
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
