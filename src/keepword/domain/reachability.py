"""Can keepword still write to a customer? Addresses the relay refused for good.

When the relay answers RCPT TO for a customer's address with a 5xx ("550 5.1.1 no such
user"), or a server further on sends the mail back with a bounce that says it failed
for good (mail.bounces), every later automatic mail to it fails the same way: a
customer update a day later is a second bounce, wasted, and repeated bounces hurt the
sending domain's reputation. Zammad stops automatic mail to an address for 60 days
after it bounced; keepword stops it until the address writes to us again (the mail that
arrives proves someone reads it now, and that mail is answered as any other), and tells
the team once per refused mail, so someone reaches the customer another way.

Pure: the shell reads the refusals and when the address last wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from keepword.domain.outbox_keys import unreachable_key
from keepword.domain.owners import MEMBER_REFUSED, AwayPeriod


@dataclass(frozen=True, slots=True)
class Refusal:
    """The relay refused `address` for good when mail `outbox_id` (its `kind`) went out."""

    outbox_id: int
    address: str
    kind: str
    # the relay's reply ("550 5.1.1 <x@example.org>: no such user") or the bounce's
    # ("bounced: 5.1.1 smtp; 550 no such user")
    reply: str
    at: datetime
    case_id: int | None = None

    @property
    def what(self) -> str:
        return self.kind.replace("_", " ")

    def describe(self) -> str:
        return f"the {self.what} to {self.address} was refused for good: {self.reply}"


def unreachable_reason(refusal: Refusal) -> str:
    """Why no more automatic mail goes to the address (a case timeline's words)."""
    return f"{refusal.describe()}; it has not written since"


def permanent_reply(reply: str) -> bool:
    """A relay's reply ("550 ...", "452 ...") that refuses for good: a 5xx code."""
    code = reply.strip()[:3]
    return len(code) == 3 and code.isdigit() and code[0] == "5"


def refusals_of_mail(
    outbox_id: int, kind: str, case_id: int | None, replies: Mapping[str, str], at: datetime
) -> list[Refusal]:
    """The addresses the relay refused for good (5xx) in its `replies` to one mail
    (address -> reply; a 4xx may clear up and is left out)."""
    return [
        Refusal(outbox_id, address.strip().lower(), kind, reply, at, case_id)
        for address, reply in replies.items()
        if address.strip() and permanent_reply(reply)
    ]


def standing_refusal(refusals: Iterable[Refusal], last_heard_at: datetime | None) -> Refusal | None:
    """The latest refusal the address has not outlived, or None if mail may go to it.

    A refusal stands until the address writes to us again: mail that arrives after it
    (`last_heard_at`, when we last received mail from the address) is a sign of life.
    """
    latest = max(refusals, key=lambda r: (r.at, r.outbox_id), default=None)
    if latest is None:
        return None
    if last_heard_at is not None and last_heard_at > latest.at:
        return None
    return latest


def notices_due(case_id: int, refusals: Iterable[Refusal], done: frozenset[str]) -> list[Refusal]:
    """The refusals of this case's customer mail the team has not been told of yet
    (one notice per refused mail, keyed so it is queued once), oldest first."""
    due = [r for r in refusals if r.case_id == case_id and unreachable_key(r) not in done]
    return sorted(due, key=lambda r: (r.at, r.outbox_id))


def member_unreachable(
    address: str, reply: str, today: date, days: int, known: Iterable[AwayPeriod]
) -> AwayPeriod | None:
    """A team member whose address the relay refused for good (someone who left, a typo
    in the config) is away, as an out-of-office without a return date is: for `days`,
    or until they write themselves. Their cases move to others on duty, new ones go
    elsewhere and the lead is told (domain.owners), instead of reminders failing one by
    one. None when an absence of theirs already covers today."""
    member = address.strip().lower()
    if any(p.address.lower() == member and p.covers(today) for p in known):
        return None
    return AwayPeriod(member, today, today + timedelta(days=days), f"{MEMBER_REFUSED}: {reply}")
