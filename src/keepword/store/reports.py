"""What the CLI reads: one case's story, a mailbox's health, the ledger's inputs, and
the mail keepword decided not to answer. Read-only queries; the CLI holds no SQL.

`open_for_reading` opens a store for a read-only command and says honestly why it
cannot (missing file, no permission, server down) instead of "cannot migrate".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from keepword.domain.cases import EventKind
from keepword.domain.ledger import CaseRecord, SentAction
from keepword.domain.model import Kind, OutboxKind, OutboxState, PromiseState
from keepword.errors import StoreError
from keepword.store.db import make_engine, migrate, stored_revision
from keepword.store.lock import sqlite_path
from keepword.store.messages import with_content
from keepword.store.tables import (
    case,
    case_event,
    folder_state,
    message,
    message_content,
    outbox,
    promise,
)

# -- opening -------------------------------------------------------------------------


def open_for_reading(url: str) -> Engine:
    """An engine for a read-only command; StoreError naming the real obstacle."""
    shown = make_url(url).render_as_string(hide_password=True)
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            hint = "" if os.access(path.parent, os.X_OK) else f" ({path.parent} is not readable)"
            raise StoreError(
                f"no database at {path}{hint}: has `keepword run` or `keepword import` run "
                "with this configuration, and may you read the service's state? "
                "(docs/operations.md: running the CLI)"
            )
        if not os.access(path, os.R_OK):
            raise StoreError(
                f"cannot read the database {path}: permission denied (it belongs to the "
                "service's user: see docs/operations.md, running the CLI)"
            )
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = stored_revision(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StoreError(
            f"cannot read the database {shown}: {reason[0] if reason else type(exc).__name__}"
        ) from exc
    if current is None:
        engine.dispose()
        raise StoreError(f"the database {shown} is empty: `keepword run` creates its tables")
    migrate(engine)  # an older schema (keepword was upgraded, the service not restarted)
    return engine


# -- one case ------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str
    actor: str | None
    detail: str | None
    message_pk: int | None


def case_timeline(conn: Connection, case_id: int) -> list[TimelineEvent]:
    """The case's events in a total order that reads as the story happened.

    keepword's own mail seen again (Sent folder, Cc) carries the Date header's time,
    which has no fraction of a second and so sorts before the acknowledgement that
    sent it: it is placed at the time its outbox row was written, after that event.
    """
    sent_at = (
        select(func.min(outbox.c.created_at))
        .where(outbox.c.message_id == message.c.message_id)
        .scalar_subquery()
    )
    query = (
        select(case_event, sent_at.label("queued_at"))
        .select_from(case_event.outerjoin(message, message.c.id == case_event.c.message_pk))
        .where(case_event.c.case_id == case_id)
    )
    rows = list(conn.execute(query))

    def order(row: Any) -> tuple[datetime, int, int]:
        own = row.kind == EventKind.OWN_MAIL_SEEN.value
        at = max(row.at, row.queued_at) if own and row.queued_at is not None else row.at
        return (at, 1 if own else 0, row.id)

    return [
        TimelineEvent(r.at, r.kind, r.actor, r.detail, r.message_pk)
        for r in sorted(rows, key=order)
    ]


def case_messages(conn: Connection, case_id: int) -> list[Any]:
    query = (
        select(
            message.c.id,
            message.c.date,
            message.c.from_addr,
            message.c.kind,
            message.c.subject,
            message_content.c.body_text,
        )
        .select_from(with_content())
        .where(message.c.case_id == case_id)
        .order_by(message.c.date, message.c.id)
    )
    return list(conn.execute(query))


def case_promises(conn: Connection, case_id: int) -> list[Any]:
    query = select(promise).where(promise.c.case_id == case_id).order_by(promise.c.made_at)
    return list(conn.execute(query))


def case_outgoing(conn: Connection, case_id: int) -> list[Any]:
    query = select(outbox).where(outbox.c.case_id == case_id).order_by(outbox.c.id)
    return list(conn.execute(query))


# -- the ledger's inputs -------------------------------------------------------------


def case_records(conn: Connection, names: Sequence[str]) -> list[CaseRecord]:
    # Every live case: a promise of the period may belong to an older case.
    query = select(case.c.id, case.c.mailbox, case.c.opened_at, case.c.first_response_at).where(
        and_(case.c.mailbox.in_(list(names)), case.c.is_history.is_(False))
    )
    return [
        CaseRecord(row.mailbox, row.id, row.opened_at, row.first_response_at)
        for row in conn.execute(query)
    ]


def sent_actions(conn: Connection, names: Sequence[str], since: datetime) -> list[SentAction]:
    # Updates revising a promise of the period are all queued after it was made.
    query = select(
        outbox.c.mailbox, outbox.c.case_id, outbox.c.kind, outbox.c.dedup_key, outbox.c.sent_at
    ).where(and_(outbox.c.mailbox.in_(list(names)), outbox.c.created_at >= since))
    return [
        SentAction(row.mailbox, row.case_id, OutboxKind(row.kind), row.dedup_key, row.sent_at)
        for row in conn.execute(query)
    ]


# -- a mailbox's health --------------------------------------------------------------


@dataclass(frozen=True)
class MailboxCounts:
    waiting_triage: int
    quarantined: int
    outbox_failed: int
    open_promises: int
    next_due: datetime | None
    overdue_promises: int


def folder_states(conn: Connection, mailbox: str) -> list[Any]:
    return list(conn.execute(select(folder_state).where(folder_state.c.mailbox == mailbox)))


def _count(conn: Connection, condition: Any) -> int:
    return int(conn.execute(select(func.count()).where(condition)).scalar() or 0)


def mailbox_counts(conn: Connection, mailbox: str, now: datetime) -> MailboxCounts:
    mine = message.c.mailbox == mailbox
    open_promise = and_(
        promise.c.state == PromiseState.OPEN.value,
        promise.c.case_id.in_(select(case.c.id).where(case.c.mailbox == mailbox)),
    )
    failed = and_(outbox.c.mailbox == mailbox, outbox.c.state == OutboxState.FAILED.value)
    return MailboxCounts(
        waiting_triage=_count(conn, and_(mine, message.c.triaged_at.is_(None))),
        quarantined=_count(conn, and_(mine, message.c.quarantined)),
        outbox_failed=_count(conn, failed),
        open_promises=_count(conn, open_promise),
        next_due=conn.execute(select(func.min(promise.c.due_at)).where(open_promise)).scalar(),
        overdue_promises=_count(conn, and_(open_promise, promise.c.due_at < now)),
    )


# -- what keepword did not answer ----------------------------------------------------


@dataclass(frozen=True)
class NotAnswered:
    """One mail keepword decided not to answer (or not yet), and why."""

    at: datetime | None
    mailbox: str
    what: str  # automated | quarantined | triage retry | not acknowledged | deferred | withdrawn
    sender: str | None
    subject: str | None
    reason: str
    case: str | None  # the case reference, if the mail belongs to one
    next_try: datetime | None = None  # a triage retry: when it is tried again


def not_answered(
    conn: Connection, mailbox: str | None, since: datetime, limit: int
) -> list[NotAnswered]:
    """Robots, lists and bounces; quarantined mail; mail whose triage waits for a retry;
    customer mail not acknowledged, or acknowledged later (a rate limit); mail withdrawn
    from the outbox. Newest first, live mail only (history is never answered)."""
    found = [
        *_unanswered_messages(conn, mailbox, since),
        *_case_decisions(conn, mailbox, since),
        *_withdrawn(conn, mailbox, since),
    ]
    found.sort(key=lambda item: (item.at is not None, item.at), reverse=True)
    return found[:limit]


def _unanswered_messages(
    conn: Connection, mailbox: str | None, since: datetime
) -> list[NotAnswered]:
    when = func.coalesce(message.c.date, message.c.received_at, message.c.stored_at)
    retrying = and_(message.c.triaged_at.is_(None), message.c.triage_attempts > 0)
    # Customer mail triaged into no case: it had no usable sender (domain.trust).
    no_case = and_(
        message.c.kind == Kind.CUSTOMER.value,
        message.c.triaged_at.is_not(None),
        message.c.case_id.is_(None),
        message.c.quarantined.is_(False),
    )
    query = (
        select(
            when.label("at"),
            message.c.mailbox,
            message.c.from_addr,
            message.c.subject,
            message.c.kind,
            message.c.kind_reason,
            message.c.quarantined,
            message.c.quarantine_reason,
            message.c.triage_error,
            message.c.triage_retry_at,
            case.c.reference,
        )
        .select_from(message.outerjoin(case, case.c.id == message.c.case_id))
        .where(
            and_(
                message.c.is_history.is_(False),
                or_(
                    message.c.kind == Kind.AUTOMATED.value,
                    message.c.quarantined,
                    retrying,
                    no_case,
                ),
                when >= since,
            )
        )
    )
    if mailbox:
        query = query.where(message.c.mailbox == mailbox)
    return [_message_item(row) for row in conn.execute(query)]


def _message_item(row: Any) -> NotAnswered:
    if row.quarantined:
        what, reason = "quarantined", row.quarantine_reason or "could not be read"
    elif row.kind == Kind.AUTOMATED.value:
        what, reason = "automated", row.kind_reason or "sent by a robot"
    elif row.kind == Kind.CUSTOMER.value and row.kind_reason:
        what, reason = "no sender", row.kind_reason
    else:
        what, reason = "triage retry", row.triage_error or "triage failed"
    return NotAnswered(
        row.at,
        row.mailbox,
        what,
        row.from_addr,
        row.subject,
        reason,
        row.reference,
        row.triage_retry_at if what == "triage retry" else None,
    )


_DECISIONS = {
    EventKind.NOT_ACKNOWLEDGED.value: "not acknowledged",
    EventKind.DEFERRED.value: "deferred",
}


def _case_decisions(conn: Connection, mailbox: str | None, since: datetime) -> list[NotAnswered]:
    query = (
        select(
            case_event.c.at,
            case_event.c.kind,
            case_event.c.detail,
            case.c.mailbox,
            case.c.reference,
            message.c.from_addr,
            func.coalesce(message.c.subject, case.c.subject).label("subject"),
        )
        .select_from(
            case_event.join(case, case.c.id == case_event.c.case_id).outerjoin(
                message, message.c.id == case_event.c.message_pk
            )
        )
        .where(and_(case_event.c.kind.in_(list(_DECISIONS)), case_event.c.at >= since))
    )
    if mailbox:
        query = query.where(case.c.mailbox == mailbox)
    return [
        NotAnswered(
            row.at,
            row.mailbox,
            _DECISIONS[row.kind],
            row.from_addr,
            row.subject,
            row.detail or "",
            row.reference,
        )
        for row in conn.execute(query)
    ]


def _withdrawn(conn: Connection, mailbox: str | None, since: datetime) -> list[NotAnswered]:
    query = (
        select(
            outbox.c.created_at,
            outbox.c.mailbox,
            outbox.c.kind,
            outbox.c.recipients,
            outbox.c.subject,
            outbox.c.last_error,
            case.c.reference,
        )
        .select_from(outbox.outerjoin(case, case.c.id == outbox.c.case_id))
        .where(
            and_(
                outbox.c.state == OutboxState.WITHDRAWN.value,
                outbox.c.created_at >= since,
            )
        )
    )
    if mailbox:
        query = query.where(outbox.c.mailbox == mailbox)
    return [
        NotAnswered(
            row.created_at,
            row.mailbox,
            "withdrawn",
            ", ".join(row.recipients or []),
            row.subject,
            f"{row.kind}: {row.last_error or 'withdrawn'}".replace("withdrawn: ", "", 1),
            row.reference,
        )
        for row in conn.execute(query)
    ]
