"""Is a queued mail still true when it leaves?

Most automatic mail leaves seconds after the decision that queued it, but a rate
limit's slot, a relay outage or a daemon that was down can hold it for an hour or a
day. By then the team may have answered or the case may be closed: an acknowledgement
promising "a reply within 4 hours" after the reply came, a reminder about a case that
is done, or an update saying "we are late" to a customer who has their answer, would
each be false. Such a mail is withdrawn (recorded, never sent) instead.

Pure: the shell passes the row's kind and queue time and the case as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keepword.domain.model import CaseStatus, OutboxKind

# Mail that speaks of a case waiting for the team. Digests and lead alerts describe a
# moment ("behind at 10:00") and stay true.
ABOUT_WAITING = frozenset(
    {
        OutboxKind.ACKNOWLEDGEMENT,
        OutboxKind.FOLLOW_UP_NOTE,
        OutboxKind.CUSTOMER_UPDATE,
        OutboxKind.REMINDER,
        OutboxKind.ESCALATION,
    }
)
AWAITING_TEAM = frozenset({CaseStatus.NEW, CaseStatus.WAITING_ON_TEAM})


@dataclass(frozen=True, slots=True)
class CaseNow:
    status: CaseStatus
    last_response_at: datetime | None  # the team's latest reply


def withdrawal(kind: OutboxKind, queued_at: datetime, case: CaseNow) -> str | None:
    """Why a never-attempted mail must not go out any more; None: it is still true."""
    if kind not in ABOUT_WAITING:
        return None
    if case.last_response_at is not None and case.last_response_at > queued_at:
        return (
            f"the team replied at {case.last_response_at:%Y-%m-%d %H:%M} UTC, after it was queued"
        )
    if case.status not in AWAITING_TEAM:
        return f"the case is {case.status.value.replace('_', ' ')} now"
    return None
