"""When to acknowledge: once per case, to a person, never to a robot (RFC 3834).

The decision is pure: the shell passes the planned send times of the automatic mail
already queued (domain.limits). Rate limits hold even if classification failed, so a
loop with another robot dies quickly; they defer an acknowledgement, never drop it,
unless the address already has more than a day of automatic mail queued (a flood).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from keepword.config import LimitSettings
from keepword.domain.limits import PlannedMail, Slot, next_slot
from keepword.domain.model import Kind, MessageFacts, OutboxKind

# How far the per-address limits may push one more mail. Beyond it the address already
# has a day of automatic mail queued: no person writes like that (a flood, a robot that
# answers every mail), and queueing more would only grow the queue without end.
MAX_DEFERRAL = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Decision:
    send: OutboxKind | None
    reason: str
    # When it may go out: now, or later when a rate limit holds it back (see `held`).
    slot: Slot | None = None

    @property
    def held(self) -> str | None:
        """Why the mail waits for its slot (None: it goes out now)."""
        return self.slot.reason if self.slot is not None else None

    @property
    def sends(self) -> bool:
        return self.send is not None


def reply_address(facts: MessageFacts) -> str | None:
    """Where an automatic answer goes: Reply-To if given, else From (RFC 3834 3.2)."""
    if facts.reply_to:
        return facts.reply_to[0].address
    return facts.sender.address if facts.sender else None


@dataclass(frozen=True, slots=True)
class Policy:
    """The mailbox's rules for automatic answers."""

    team: frozenset[str]  # never answered: the answer would go to the team itself
    follow_up_notes: bool  # a short note (at most daily) on a customer's follow-up
    limits: LimitSettings


@dataclass(frozen=True, slots=True)
class Sent:
    """What the store says was already sent in the case and to the address."""

    new_case: bool
    acknowledged: bool
    note_sent_today: bool
    cutoff: datetime | None  # mail written before this predates keepword: never answered
    planned: PlannedMail  # automatic mail to the address or from the mailbox, queued or sent


def decide(facts: MessageFacts, kind: Kind, sent: Sent, policy: Policy, now: datetime) -> Decision:
    """Decide whether this message earns an acknowledgement, a short note, or nothing,
    and when it may go out."""
    planned, limits, cutoff = sent.planned, policy.limits, sent.cutoff
    if kind is not Kind.CUSTOMER:
        return Decision(None, f"not from a customer ({kind.value})")
    if facts.is_history:
        return Decision(None, "imported as history")
    if facts.quarantined:
        return Decision(None, "quarantined message")
    stamp = facts.date
    if cutoff is not None and stamp is not None and stamp < cutoff:
        return Decision(None, f"written {stamp:%Y-%m-%d %H:%M} UTC, before keepword started")
    recipient = reply_address(facts)
    if recipient is None:
        return Decision(None, "no address to answer")
    if recipient in policy.team:
        return Decision(None, "the answer would go to the team itself")
    wanted = _wanted(sent, policy.follow_up_notes)
    if wanted is None:
        return Decision(None, "already acknowledged: no second canned text in a case")
    flood = _flooded(planned, limits, now)
    if flood:
        return Decision(None, flood)
    why = (
        "new case" if wanted is OutboxKind.ACKNOWLEDGEMENT else "follow-up in an acknowledged case"
    )
    return Decision(wanted, why, _slot(planned, limits, now))


def _wanted(sent: Sent, follow_up_notes: bool) -> OutboxKind | None:
    if not sent.acknowledged:
        # A case opened from history or by a team forward has no acknowledgement yet: the
        # first customer message after start-up earns the one acknowledgement of the case.
        return OutboxKind.ACKNOWLEDGEMENT
    if sent.new_case:
        return None
    if follow_up_notes and not sent.note_sent_today:
        return OutboxKind.FOLLOW_UP_NOTE
    return None


def _slot(planned: PlannedMail, limits: LimitSettings, now: datetime) -> Slot:
    return next_slot(
        now, to_address=planned.to_address, from_mailbox=planned.from_mailbox, limits=limits
    )


def _flooded(planned: PlannedMail, limits: LimitSettings, now: datetime) -> str | None:
    """Why not even a deferred mail: the address's own limits push it past MAX_DEFERRAL."""
    own = next_slot(now, to_address=planned.to_address, from_mailbox=(), limits=limits)
    if own.at - now <= MAX_DEFERRAL:
        return None
    return (
        f"{own.reason}, and mail to this address is already planned until "
        f"{own.at:%Y-%m-%d %H:%M} UTC: it writes like a robot"
    )
