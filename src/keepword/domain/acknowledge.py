"""When to acknowledge: once per case, to a person, never to a robot (RFC 3834).

The decision is pure: the shell counts what was already sent and passes the numbers in.
Rate limits hold even if classification failed, so a loop with another robot dies quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keepword.config import LimitSettings
from keepword.domain.model import Kind, MessageFacts, OutboxKind


@dataclass(frozen=True, slots=True)
class SentCounts:
    """Automatic mails already queued: to this recipient, and from this mailbox overall."""

    to_recipient_last_hour: int = 0
    to_recipient_last_day: int = 0
    all_last_hour: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    send: OutboxKind | None
    reason: str

    @property
    def sends(self) -> bool:
        return self.send is not None


def reply_address(facts: MessageFacts) -> str | None:
    """Where an automatic answer goes: Reply-To if given, else From (RFC 3834 3.2)."""
    if facts.reply_to:
        return facts.reply_to[0].address
    return facts.sender.address if facts.sender else None


def decide(
    facts: MessageFacts,
    kind: Kind,
    *,
    new_case: bool,
    acknowledged: bool,
    note_sent_today: bool,
    follow_up_notes: bool,
    cutoff: datetime | None,
    team: frozenset[str],
    counts: SentCounts,
    limits: LimitSettings,
) -> Decision:
    """Decide whether this message earns an acknowledgement, a short note, or nothing."""
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
    if recipient in team:
        return Decision(None, "the answer would go to the team itself")
    wanted = _wanted(new_case, acknowledged, note_sent_today, follow_up_notes)
    if wanted is None:
        return Decision(None, "already acknowledged: no second canned text in a case")
    limit = _rate_limited(counts, limits)
    if limit:
        return Decision(None, limit)
    why = (
        "new case" if wanted is OutboxKind.ACKNOWLEDGEMENT else "follow-up in an acknowledged case"
    )
    return Decision(wanted, why)


def _wanted(
    new_case: bool, acknowledged: bool, note_sent_today: bool, follow_up_notes: bool
) -> OutboxKind | None:
    if not acknowledged:
        # A case opened from history or by a team forward has no acknowledgement yet: the
        # first customer message after start-up earns the one acknowledgement of the case.
        return OutboxKind.ACKNOWLEDGEMENT
    if new_case:
        return None
    if follow_up_notes and not note_sent_today:
        return OutboxKind.FOLLOW_UP_NOTE
    return None


def _rate_limited(counts: SentCounts, limits: LimitSettings) -> str | None:
    if counts.to_recipient_last_hour >= limits.per_sender_per_hour:
        return f"rate limit: {counts.to_recipient_last_hour} mails to this address in the last hour"
    if counts.to_recipient_last_day >= limits.per_sender_per_day:
        return f"rate limit: {counts.to_recipient_last_day} mails to this address in the last day"
    if counts.all_last_hour >= limits.global_per_hour:
        return (
            f"rate limit: {counts.all_last_hour} automatic mails from this mailbox in the last hour"
        )
    return None
