"""The case life cycle: how each message, assignment or close changes a case.

Statuses: NEW (opened by a customer, no team reply yet) -> WAITING_ON_CUSTOMER (the team
replied last) -> WAITING_ON_TEAM (the customer wrote again) -> ... -> CLOSED, and a closed
case reopens when the customer writes again. Automated mail (out-of-office, bounces) joins
the timeline but never changes the status: an out-of-office must not reopen a case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from keepword.domain.model import Address, CaseStatus, Kind, MessageFacts
from keepword.domain.threads import subject_key

OPEN_STATUSES = frozenset({CaseStatus.NEW, CaseStatus.WAITING_ON_TEAM})


class EventKind(StrEnum):
    OPENED = "opened"
    MESSAGE_IN = "message_in"
    STAFF_REPLY = "staff_reply"
    AUTOMATED_IN = "automated_in"
    OWN_MAIL_SEEN = "own_mail_seen"
    ACKNOWLEDGEMENT = "acknowledgement"
    FOLLOW_UP_NOTE = "follow_up_note"
    OWNER_CHANGED = "owner_changed"
    CLOSED = "closed"
    REOPENED = "reopened"
    PROMISE_MADE = "promise_made"
    PROMISE_KEPT = "promise_kept"
    PROMISE_BROKEN = "promise_broken"
    PROMISE_SUPERSEDED = "promise_superseded"
    PROMISE_WITHDRAWN = "promise_withdrawn"
    CUSTOMER_UPDATE = "customer_update"
    REMINDER = "reminder"
    ESCALATION = "escalation"
    DELIVERY_FAILED = "delivery_failed"
    NOT_ACKNOWLEDGED = "not_acknowledged"
    WITHDRAWN = "withdrawn"  # a queued mail that was no longer true when due: not sent
    DEFERRED = "deferred"  # an automatic mail waits for a rate limit: sent at its slot
    # issue 12 (domain.trust, domain.commands, domain.owners): the team's work by mail
    REFUSED = "refused"  # trust refused a join, a command or a claim: who, what, why
    NOTE = "note"  # internal note by a team member: never mailed to the customer
    COMMAND = "command"  # a command by mail was carried out (its confirmation)
    WAITING = "waiting"  # waiting on a third party until a date, with the reason
    AWAY = "away"  # a team member is away (out-of-office) until a date
    UNREACHABLE = "unreachable"  # the relay refused the customer's address: team told


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: datetime
    actor: str | None
    detail: str
    message_pk: int | None = None


@dataclass(frozen=True, slots=True)
class CaseState:
    id: int | None
    mailbox: str
    reference: str
    status: CaseStatus
    opened_at: datetime
    updated_at: datetime
    customer: str | None = None
    customer_name: str | None = None
    subject: str = ""
    subject_key: str = ""
    owner: str | None = None
    owner_changes: int = 0
    customer_contacts: int = 0
    unanswered_contacts: int = 0
    last_customer_at: datetime | None = None
    first_response_at: datetime | None = None
    last_response_at: datetime | None = None
    closed_at: datetime | None = None
    is_history: bool = False
    version: int = 0  # the stored row's version this state was read at

    @property
    def awaiting_team(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True, slots=True)
class Change:
    """A case after a step, and what the timeline should say about it."""

    case: CaseState
    events: tuple[Event, ...]


def open_case(
    first: MessageFacts, *, reference: str, at: datetime, customer: Address | None, why: str
) -> Change:
    """A new case for the message `first`, in its mailbox, about its subject."""
    case = CaseState(
        id=None,
        mailbox=first.mailbox,
        reference=reference,
        status=CaseStatus.NEW,
        opened_at=at,
        updated_at=at,
        customer=customer.address if customer else None,
        customer_name=(customer.name or None) if customer else None,
        subject=first.subject,
        subject_key=subject_key(first.subject),
        is_history=first.is_history,
    )
    actor = customer.address if customer else None
    return Change(case, (Event(EventKind.OPENED, at, actor, why),))


def apply_message(
    case: CaseState,
    *,
    kind: Kind,
    sender: str | None,
    at: datetime,
    message_pk: int,
    why: str,
) -> Change:
    """Fold one message (already threaded into `case`) into the case."""
    if kind is Kind.CUSTOMER:
        return _customer_wrote(case, sender, at, message_pk, why)
    if kind is Kind.STAFF:
        return _team_replied(case, sender, at, message_pk, why)
    event_kind = EventKind.OWN_MAIL_SEEN if kind is Kind.OWN else EventKind.AUTOMATED_IN
    return Change(case, (Event(event_kind, at, sender, why, message_pk),))


def _customer_wrote(
    case: CaseState, sender: str | None, at: datetime, message_pk: int, why: str
) -> Change:
    events = [Event(EventKind.MESSAGE_IN, at, sender, why, message_pk)]
    status = case.status
    if status is CaseStatus.CLOSED:
        events.append(Event(EventKind.REOPENED, at, sender, "the customer wrote again"))
        status = CaseStatus.WAITING_ON_TEAM
    elif status is CaseStatus.WAITING_ON_CUSTOMER:
        status = CaseStatus.WAITING_ON_TEAM
    updated = replace(
        case,
        status=status,
        customer_contacts=case.customer_contacts + 1,
        unanswered_contacts=case.unanswered_contacts + 1,
        last_customer_at=_latest(case.last_customer_at, at),
        closed_at=None if status is not CaseStatus.CLOSED else case.closed_at,
        updated_at=_latest(case.updated_at, at),
        customer=case.customer or sender,
    )
    return Change(updated, tuple(events))


def _team_replied(
    case: CaseState, sender: str | None, at: datetime, message_pk: int, why: str
) -> Change:
    events = [Event(EventKind.STAFF_REPLY, at, sender, why, message_pk)]
    updated = replace(
        case,
        status=CaseStatus.WAITING_ON_CUSTOMER
        if case.status is not CaseStatus.CLOSED
        else CaseStatus.CLOSED,
        unanswered_contacts=0,
        first_response_at=case.first_response_at or at,
        last_response_at=_latest(case.last_response_at, at),
        updated_at=_latest(case.updated_at, at),
    )
    if updated.owner is None and sender:
        owner_change = assign(updated, sender, at=at, actor=sender, why="first team reply")
        updated = owner_change.case
        events.extend(owner_change.events)
    return Change(updated, tuple(events))


def assign(case: CaseState, owner: str, *, at: datetime, actor: str | None, why: str) -> Change:
    owner = owner.lower()
    if case.owner == owner:
        return Change(case, ())
    updated = replace(
        case,
        owner=owner,
        owner_changes=case.owner_changes + 1,
        updated_at=_latest(case.updated_at, at),
    )
    detail = f"owner {case.owner or '(none)'} -> {owner}: {why}"
    return Change(updated, (Event(EventKind.OWNER_CHANGED, at, actor, detail),))


def close(case: CaseState, *, at: datetime, actor: str | None, why: str) -> Change:
    if case.status is CaseStatus.CLOSED:
        return Change(case, ())
    updated = replace(
        case, status=CaseStatus.CLOSED, closed_at=at, updated_at=_latest(case.updated_at, at)
    )
    return Change(updated, (Event(EventKind.CLOSED, at, actor, why),))


def reopen(case: CaseState, *, at: datetime, actor: str | None, why: str) -> Change:
    if case.status is not CaseStatus.CLOSED:
        return Change(case, ())
    status = (
        CaseStatus.WAITING_ON_TEAM if case.unanswered_contacts else CaseStatus.WAITING_ON_CUSTOMER
    )
    updated = replace(case, status=status, closed_at=None, updated_at=_latest(case.updated_at, at))
    return Change(updated, (Event(EventKind.REOPENED, at, actor, why),))


def _latest(current: datetime | None, at: datetime) -> datetime:
    return at if current is None or at > current else current


def format_reference(prefix: str, number: int) -> str:
    return f"{prefix}-{number}"
