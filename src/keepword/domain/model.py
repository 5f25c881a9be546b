"""Plain values the pure core works on. No I/O, no clock, no SQLAlchemy.

All datetimes are timezone-aware (UTC unless stated otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# The header keepword puts on every mail it sends; finding it on an incoming mail
# means the mail is ours (or a robot quoting ours) and must never be answered.
LOOP_HEADER = "X-Keepword-Loop"
# Longest address kept (the String(320) columns). RFC 5321 paths allow 254 characters,
# so anything longer is no address: it is dropped, never cut into a different one.
MAX_ADDRESS_CHARS = 320


class Origin(StrEnum):
    """Which kind of folder a message was found in."""

    INBOX = "inbox"
    SENT = "sent"
    DONE = "done"


class Kind(StrEnum):
    """Who wrote a message, as far as the headers tell."""

    CUSTOMER = "customer"
    STAFF = "staff"
    AUTOMATED = "automated"
    OWN = "own"  # keepword's own outgoing mail, seen again (Sent folder, Cc)


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    reason: str


@dataclass(frozen=True, slots=True)
class Address:
    address: str  # lower-cased addr-spec
    name: str = ""

    def __reduce__(self) -> tuple[type[Address], tuple[str, str]]:
        # As its two values: a frozen dataclass's default pickling restores field by
        # field (a parse worker sends every parsed message's addresses).
        return Address, (self.address, self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class MailFields:
    """What a mail says of itself, as the parser reads it and the store keeps it (the
    parser's `ParsedMessage` and the core's `MessageFacts` both carry these).

    `headers` maps lower-cased header names to all their (decoded) values, for the
    headers classification needs (Auto-Submitted, Precedence, List-Id, Return-Path ...).
    """

    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    date: datetime | None = None
    date_offset_minutes: int | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    content_type: str = ""
    body_text: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFacts(MailFields):
    """What the pure core may know about one stored message."""

    pk: int
    mailbox: str
    message_id: str
    sender: Address | None
    origin: Origin = Origin.INBOX
    is_history: bool = False
    quarantined: bool = False

    def header(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())

    def first_header(self, name: str) -> str | None:
        values = self.header(name)
        return values[0] if values else None


class CaseStatus(StrEnum):
    NEW = "new"
    WAITING_ON_TEAM = "waiting_on_team"
    WAITING_ON_CUSTOMER = "waiting_on_customer"
    CLOSED = "closed"


class PromiseKind(StrEnum):
    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    UPDATE = "update"


class PromiseAudience(StrEnum):
    CUSTOMER = "customer"  # told to the customer: breaking it silently is the sin
    TEAM = "team"  # internal target, never mailed to the customer


class PromiseState(StrEnum):
    OPEN = "open"
    KEPT = "kept"
    BROKEN = "broken"
    SUPERSEDED = "superseded"  # replaced by a newer one announced before this one broke
    WITHDRAWN = "withdrawn"  # no longer owed: the case closed or waits on the customer


class OutboxKind(StrEnum):
    ACKNOWLEDGEMENT = "acknowledgement"
    FOLLOW_UP_NOTE = "follow_up_note"
    CUSTOMER_UPDATE = "customer_update"
    REMINDER = "reminder"
    ESCALATION = "escalation"
    LEAD_ALERT = "lead_alert"
    DIGEST = "digest"
    AWAY_NOTICE = "away_notice"  # a member is away, their cases moved: to the lead
    COMMAND_REPLY = "command_reply"  # the confirmation (or refusal) of commands by mail
    # the relay refused a customer mail for good: to the owner (domain.reachability)
    CUSTOMER_UNREACHABLE = "customer_unreachable"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent failure, recorded on the case
    DRY_RUN = "dry_run"  # rendered and logged, deliberately not sent
    WITHDRAWN = "withdrawn"  # no longer true when it was due to leave (domain.outbox)
