"""Can keepword still write to a customer? Addresses the relay refused for good.

When the relay answers RCPT TO for a customer's address with a 5xx ("550 5.1.1 no such
user"), or a server further on sends the mail back with a bounce that says it failed
for good (mail.bounces), every later automatic mail to it fails the same way: a
customer update a day later is a second bounce, wasted, and repeated bounces hurt the
sending domain's reputation. Zammad stops automatic mail to an address for 60 days
after it bounced; keepword stops it until the address writes to us again (the mail that
arrives proves someone reads it now, and that mail is answered as any other), and tells
the team once per refused mail, so someone reaches the customer another way.

A team member's address refused the same way (someone who left, a typo in the config)
makes that member away until they write (`member_unreachable`): their cases move and
the lead is told, by the absence rules of domain.owners. Only a refusal of the address
itself counts (`refuses_the_address`): a relay that denies relaying refuses everyone.

Pure: the shell reads the refusals and when the address last wrote.
"""

from __future__ import annotations

import re
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


# RFC 3463 enhanced status after the reply code ("550 5.1.1 ...", "550-5.1.1 ...") or
# at the start of a bounce's summary ("5.1.1 smtp; 550 ...").
_ENHANCED = re.compile(r"^(?:\d{3}[ -])?\s*([245])\.(\d{1,3})\.\d{1,3}\b")
# Without an enhanced status, words that say the refusal is the relay's policy (or about
# the message), not the address: "554 Relay access denied", "550 relay not permitted".
_POLICY = re.compile(
    r"relay|authenticat|access denied|not permitted|policy|spam|blocked|black ?list|"
    r"reputation|rate limit|too many",
    re.IGNORECASE,
)


def refuses_the_address(reply: str) -> bool:
    """A refusal for good that is about the address itself (no such user, mailbox
    disabled or full, a domain that takes no mail), not about the sender or the relay's
    policy. A relay that denies relaying ("554 5.7.1 Relay access denied": a broken
    login) refuses every recipient, and those customers must not be taken for gone.

    With an RFC 3463 enhanced status: 5.1.x (address) or 5.2.x (mailbox) only. Without
    one: any 5xx whose text names no policy."""
    about = _about_the_address(reply)
    return about if about is not None else permanent_reply(reply) and _policy_free(reply)


def bounce_about_the_address(summary: str) -> bool:
    """The same for a bounce a detector found permanent (mail.bounces' summary: its
    status and diagnostic, else its subject): 5.1.x or 5.2.x when it states a status,
    else anything that names no policy."""
    about = _about_the_address(summary)
    return about if about is not None else _policy_free(summary)


def _about_the_address(text: str) -> bool | None:
    """From the enhanced status: a permanent address or mailbox status; None: none, or
    x.0.x, which says nothing of the subject (Postfix writes 5.0.0 for a remote reply
    without one: "5.0.0 smtp; 550 Recipient does not exist")."""
    enhanced = _ENHANCED.match(text.strip())
    if enhanced is None or enhanced.group(2) == "0":
        return None
    return enhanced.group(1) == "5" and enhanced.group(2) in ("1", "2")


def _policy_free(text: str) -> bool:
    return _POLICY.search(text) is None


def refusals_of_mail(
    outbox_id: int, kind: str, case_id: int | None, replies: Mapping[str, str], at: datetime
) -> list[Refusal]:
    """The addresses the relay refused for good in its `replies` to one mail (address ->
    reply): a 4xx may clear up, a policy refusal is the relay's, not the address's."""
    return [
        Refusal(outbox_id, address.strip().lower(), kind, reply, at, case_id)
        for address, reply in replies.items()
        if address.strip() and refuses_the_address(reply)
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
