"""Which stored messages still wait for triage, and the ones whose triage failed.

A message whose triage raises (a bug, a busy database, a case changed meanwhile) is
not the customer's fault and is never quarantined for it: it stays untriaged with
`triage_attempts`, `triage_retry_at` and `triage_error`, is tried again when its retry
is due (after the mail behind it), and shows in `keepword status` and the metrics
through `triage_backlog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, or_, select, update

from keepword.domain.model import Classification, MessageFacts
from keepword.domain.threads import ThreadRule
from keepword.store.deferred import deferred
from keepword.store.tables import message, message_location

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Untriaged:
    pk: int
    message_id: str
    referenced: tuple[str, ...]  # In-Reply-To and References: the mail it follows up
    attempts: int  # failed triage attempts so far


@dataclass(frozen=True, slots=True)
class TriageBacklog:
    pending: int  # stored, never tried yet
    retrying: int  # tried and failed: waiting for their next attempt
    last_error: str | None  # the reason of the most recent failure, if any waits


def _untriaged_in(mailbox: str) -> ColumnElement[bool]:
    return and_(message.c.mailbox == mailbox, message.c.triaged_at.is_(None))


def due_untriaged(
    conn: Connection,
    mailbox: str,
    now: datetime,
    limit: int,
    *,
    through: datetime | None = None,
    history_only: bool = False,
) -> list[Untriaged]:
    """Untriaged messages to try now, in the order to try them.

    First the ones never tried, in the order they were written (a follow-up after its
    first mail); then the failed ones whose retry is due, oldest first: a failing
    message is retried only after every later message had its turn. `through`: only
    mail written up to then (pipeline.history); `history_only`: only history.
    """
    when = func.coalesce(message.c.date, message.c.received_at, message.c.stored_at)
    due = or_(message.c.triage_retry_at.is_(None), message.c.triage_retry_at <= now)
    if through is not None:
        due = and_(due, when <= through)
    if history_only:
        due = and_(due, message.c.is_history.is_(True))
    query = (
        select(
            message.c.id,
            message.c.message_id,
            message.c.in_reply_to,
            message.c.references,
            message.c.triage_attempts,
        )
        .where(and_(_untriaged_in(mailbox), due))
        .order_by(message.c.triage_attempts > 0, when, message.c.id)
        .limit(limit)
    )
    return [
        Untriaged(
            pk=row.id,
            message_id=row.message_id,
            referenced=(*(row.in_reply_to or "").split(), *(row.references or "").split()),
            attempts=row.triage_attempts,
        )
        for row in conn.execute(query)
    ]


def failed_attempts(conn: Connection, mailbox: str) -> dict[str, int]:
    """Message-ID -> failed attempts of this mailbox's untriaged messages that failed."""
    query = select(message.c.message_id, message.c.triage_attempts).where(
        and_(_untriaged_in(mailbox), message.c.triage_attempts > 0)
    )
    return {row.message_id: row.triage_attempts for row in conn.execute(query)}


def record_failure(
    conn: Connection, pk: int, *, attempts: int, retry_at: datetime, error: str
) -> None:
    """The message stays untriaged; it is tried again from `retry_at`."""
    conn.execute(
        update(message)
        .where(message.c.id == pk)
        .values(
            triage_attempts=attempts,
            triage_retry_at=retry_at,
            triage_error=error[:MAX_ERROR_CHARS],
        )
    )


def triage_backlog(conn: Connection, mailbox: str) -> TriageBacklog:
    """What waits for triage in this mailbox (for `keepword status` and the metrics)."""
    failed = message.c.triage_attempts > 0
    counts = select(
        func.count().filter(~failed),
        func.count().filter(failed),
    ).where(_untriaged_in(mailbox))
    pending, retrying = conn.execute(counts).one()
    last = conn.execute(
        select(message.c.triage_error)
        .where(and_(_untriaged_in(mailbox), failed))
        .order_by(message.c.triage_retry_at.desc(), message.c.id.desc())
        .limit(1)
    ).scalar()
    return TriageBacklog(pending=int(pending), retrying=int(retrying), last_error=last)


def record_triage(
    conn: Connection,
    facts: MessageFacts,
    verdict: Classification,
    case_id: int | None,
    rule: ThreadRule,
    now: datetime,
) -> None:
    """The message is triaged: its kind and why, its case (if any), the threading rule.
    (Deferred in a batch that defers: store.deferred; later mail of the batch that
    references it finds its case there.)"""
    row = {
        "pk": facts.pk,
        "v_kind": verdict.kind.value,
        "v_reason": verdict.reason[:MAX_ERROR_CHARS],
        "v_case": case_id,
        "v_rule": rule.value,
        "v_at": now,
    }
    waiting = deferred(conn)
    if waiting is None:
        conn.execute(_TRIAGED, row)
        return
    waiting.add(_TRIAGED, [row])
    if case_id is not None:
        waiting.references[facts.message_id] = (case_id, facts)


# Run for every message: built once (construction costs more than the indexed UPDATE).
_TRIAGED = (
    update(message)
    .where(message.c.id == bindparam("pk"))
    .values(
        kind=bindparam("v_kind"),
        kind_reason=bindparam("v_reason"),
        case_id=bindparam("v_case"),
        thread_rule=bindparam("v_rule"),
        triaged_at=bindparam("v_at"),
    )
)


def unhandled_done(conn: Connection, mailbox: str) -> list[tuple[int, int | None]]:
    """(location id, case id) of triaged messages moved to the done folder and not yet
    handled: each closes its case once."""
    query = (
        select(message_location.c.id, message.c.case_id)
        .join(message, message.c.id == message_location.c.message_pk)
        .where(
            and_(
                message_location.c.mailbox == mailbox,
                message_location.c.role == "done",
                message_location.c.handled_at.is_(None),
                message.c.triaged_at.is_not(None),
            )
        )
    )
    return [(row[0], row[1]) for row in conn.execute(query).all()]


def mark_handled(conn: Connection, location_id: int, now: datetime) -> None:
    conn.execute(
        update(message_location).where(message_location.c.id == location_id).values(handled_at=now)
    )
