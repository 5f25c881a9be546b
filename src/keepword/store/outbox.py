"""The outbox: every mail keepword will send, recorded before it is sent.

A row is written in the same transaction as the decision that caused it; its
`dedup_key` makes the decision idempotent (deciding twice enqueues once) and its
`message_id` (deterministic, see mail.compose) lets a retry after a crash look for the
mail in the Sent folder. `attempts` is counted and committed *before* each SMTP
transaction, together with `sent_copy = "unknown"` (`claim_attempts`: a few rows at a
time; rows claimed and then not handed to the relay are released as they were).

`sent_copy` says what is known about the mail's way out and its copy in Sent.
While the row is pending:
- "pending": no attempt can have gone out (never tried, or every attempt was refused
  before the relay took it);
- "unknown": an attempt began and its outcome was never recorded (a crash);
- "held": an attempt's outcome is unknown (no reply to the final dot, or a crash) and
  the row waits until `next_attempt_at` for its Message-ID to show in the Sent folder.
Once sent: "done" (APPENDed to the Sent folder), "skipped" (not configured), "failed"
(APPEND failed, or under way when the daemon stopped: looked up, then APPENDed if
missing, at `next_attempt_at`), "found" (it was already there) or "deferred" (sent
during a surge: never APPENDed yet, copied in batches once the surge is acknowledged).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from email import message_from_bytes
from email.policy import compat32
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Result,
    Row,
    Select,
    and_,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import case as when_kind
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import CaseStatus, OutboxState
from keepword.domain.outbox import CaseNow
from keepword.mail.compose import OutgoingMail, compose_bytes
from keepword.mail.render import Rendered
from keepword.store.cases import add_events
from keepword.store.deferred import deferred, settle
from keepword.store.secret import message_id_secret
from keepword.store.tables import UtcDateTime, case, outbox

MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    mailbox: str
    case_id: int | None
    kind: str
    dedup_key: str
    message_id: str  # bare, no angle brackets
    recipients: tuple[str, ...]
    subject: str
    raw: bytes
    state: OutboxState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sent_copy: str
    sent_at: datetime | None = None
    created_at: datetime | None = None


_FIELDS = tuple(f.name for f in fields(OutboxRow))  # each one a column of the same name


def _to_row(r: Row[Any]) -> OutboxRow:
    values = {name: getattr(r, name) for name in _FIELDS}
    values.update(
        recipients=tuple(r.recipients or ()),
        subject=r.subject or "",
        raw=r.raw or b"",
        state=OutboxState(r.state),
    )
    return OutboxRow(**values)


def message_id_of(raw: bytes) -> str:
    """The bare Message-ID of a composed mail (compat32: headers only, no decoding)."""
    value = message_from_bytes(raw, policy=compat32).get("Message-ID")
    bare = str(value or "").strip().strip("<>").strip()
    if not bare:
        raise ValueError("outgoing mail without a Message-ID")
    return bare


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An outbox row to write: one composed mail of `mailbox` and the decision it records.

    `message_id` defaults to the Message-ID header of `raw` (compose puts the
    deterministic one there). `not_before`: a rate limit holds it back until then.
    """

    mailbox: str
    case_id: int | None
    kind: str
    dedup_key: str
    recipients: Sequence[str]
    subject: str
    raw: bytes
    message_id: str | None = None
    not_before: datetime | None = None


# Run for every message triage sees or every mail it queues: built once (building a
# statement costs more than the indexed lookup or insert it runs).
_OWN_MAILS = select(outbox.c.message_id, outbox.c.case_id, outbox.c.recipients).where(
    outbox.c.message_id.in_(bindparam("message_ids", expanding=True))
)
_EXISTS = select(outbox.c.id).where(outbox.c.dedup_key == bindparam("dedup_key"))
# A decision already recorded (its dedup key) is passed over by the insert itself, and
# RETURNING says whether the row went in: one statement a queued mail, not a lookup and
# then an insert.
_ENQUEUE = {
    dialect: insert(outbox)
    .on_conflict_do_nothing(index_elements=["dedup_key"])
    .returning(outbox.c.id)
    for dialect, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
_ENQUEUE_LATER = {  # the same, many rows at once: nothing to return
    dialect: insert(outbox).on_conflict_do_nothing(index_elements=["dedup_key"])
    for dialect, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}


def enqueue(conn: Connection, entry: OutboxEntry, now: datetime, *, fresh: bool = False) -> bool:
    """Record a mail to send (created `now`); False when its decision was already recorded.

    `fresh`: no mail of this decision can be recorded yet (a new case's acknowledgement):
    in a batch that defers its writes it is written at the batch's end (store.deferred).
    """
    row = {
        "mailbox": entry.mailbox,
        "case_id": entry.case_id,
        "kind": str(entry.kind),
        "dedup_key": entry.dedup_key,
        "message_id": entry.message_id or message_id_of(entry.raw),
        "recipients": list(entry.recipients),
        "subject": entry.subject,
        "raw": entry.raw,
        "state": OutboxState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": entry.not_before or now,
        "created_at": now,
        "sent_copy": "pending",
    }
    waiting = deferred(conn) if fresh else None
    if waiting is not None:
        waiting.add(_ENQUEUE_LATER[conn.dialect.name], [row], read=True)
        return True
    settle(conn)
    return conn.execute(_ENQUEUE[conn.dialect.name], row).first() is not None


def enqueue_mail(
    conn: Connection,
    mail: OutgoingMail,
    body: Rendered,
    *,
    mailbox: str,
    case_id: int | None,
    not_before: datetime | None = None,
) -> bool:
    """Compose and record one mail in the caller's transaction; False if already recorded.

    Call it in the same transaction as the decision that causes the mail (queueing is a
    store write: the use cases that decide on mail never touch SMTP or IMAP). `not_before`:
    a rate limit holds it back until then.
    """
    entry = mail_entry(conn, mail, body, mailbox=mailbox, case_id=case_id, not_before=not_before)
    return enqueue(conn, entry, mail.date)


def mail_entry(
    conn: Connection,
    mail: OutgoingMail,
    body: Rendered,
    *,
    mailbox: str,
    case_id: int | None,
    not_before: datetime | None = None,
) -> OutboxEntry:
    """The outbox row of one mail, composed (enqueue_mail without the write)."""
    if mail.id_secret is None:
        mail = replace(mail, id_secret=message_id_secret(conn))
    return OutboxEntry(
        mailbox,
        case_id,
        mail.kind.value,
        mail.dedup_key,
        list(mail.to),
        mail.subject,
        compose_bytes(mail, body),
        message_id=mail.message_id,
        not_before=not_before,
    )


def exists(conn: Connection, dedup_key: str) -> bool:
    settle(conn)
    return conn.execute(_EXISTS, {"dedup_key": dedup_key}).first() is not None


def get(conn: Connection, row_id: int) -> OutboxRow:
    settle(conn)
    row = conn.execute(select(outbox).where(outbox.c.id == row_id)).one()
    return _to_row(row)


def pending(
    conn: Connection, now: datetime, limit: int = 100, *, mailbox: str | None = None
) -> list[OutboxRow]:
    """Pending rows whose next attempt is due, oldest first."""
    settle(conn)
    due = and_(
        outbox.c.state == OutboxState.PENDING.value,
        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
    )
    if mailbox is not None:
        due = and_(due, outbox.c.mailbox == mailbox)
    query = select(outbox).where(due).order_by(outbox.c.id).limit(limit)
    return [_to_row(r) for r in conn.execute(query)]


def due_in_order(
    conn: Connection, now: datetime, limit: int, *, mailbox: str, ranks: Mapping[str, int]
) -> list[OutboxRow]:
    """Pending rows of mailbox due now: lowest rank of their kind first, then oldest.

    Kinds missing from `ranks` come last.
    """
    settle(conn)
    due = and_(
        outbox.c.mailbox == mailbox,
        outbox.c.state == OutboxState.PENDING.value,
        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
    )
    rank = when_kind(dict(ranks), value=outbox.c.kind, else_=max(ranks.values(), default=0) + 1)
    query = select(outbox).where(due).order_by(rank, outbox.c.id).limit(limit)
    return [_to_row(r) for r in conn.execute(query)]


def unknown_outcomes(conn: Connection, mailbox: str) -> int:
    """How many of this mailbox's mails may have gone out without keepword knowing."""
    return _count(
        conn,
        mailbox,
        outbox.c.state == OutboxState.PENDING.value,
        outbox.c.sent_copy.in_(UNKNOWN_OUTCOME),
    )


def missing_sent_copies(conn: Connection, mailbox: str) -> int:
    """How many sent mails still wait for their copy in the Sent folder."""
    return _count(
        conn,
        mailbox,
        outbox.c.state == OutboxState.SENT.value,
        outbox.c.sent_copy.in_(COPY_WAITING),
    )


def depth(conn: Connection, mailbox: str) -> int:
    """How many mails of this mailbox wait to go out (due or not)."""
    return _count(conn, mailbox, outbox.c.state == OutboxState.PENDING.value)


def _count(conn: Connection, mailbox: str, *conditions: ColumnElement[bool]) -> int:
    """This mailbox's outbox rows that meet every condition (a batch's waiting rows too)."""
    settle(conn)
    query = select(func.count(outbox.c.id)).where(outbox.c.mailbox == mailbox, *conditions)
    return int(conn.execute(query).scalar_one())


UNKNOWN_OUTCOME = ("unknown", "held")  # sent_copy of a pending row that may have gone out
COPY_WAITING = ("failed", "deferred")  # sent_copy of a sent row whose Sent copy is to come


# The drain runs these for every mail: built once (issue 14; see store.cases._LOAD).
_CLAIMABLE = (
    select(outbox.c.id, outbox.c.attempts)
    .where(
        outbox.c.id.in_(bindparam("row_ids", expanding=True)),
        outbox.c.state == OutboxState.PENDING.value,
    )
    .with_for_update(skip_locked=True)
)
_BEGIN_ATTEMPTS = (  # pending still: on SQLite the read above is not in the transaction
    update(outbox)
    .where(
        outbox.c.id.in_(bindparam("row_ids", expanding=True)),
        outbox.c.state == OutboxState.PENDING.value,
    )
    .values(attempts=outbox.c.attempts + 1, sent_copy="unknown")
    .returning(outbox.c.id, outbox.c.attempts)
)
_RELEASE = (
    update(outbox)
    .where(
        outbox.c.id == bindparam("row_id"),
        outbox.c.state == OutboxState.PENDING.value,
        outbox.c.attempts == bindparam("claimed"),
        outbox.c.sent_copy == "unknown",
    )
    .values(attempts=bindparam("count_before"), sent_copy=bindparam("copy_before"))
)
_MARK_SENT = (
    update(outbox)
    .where(outbox.c.id == bindparam("row_id"))
    .values(
        state=OutboxState.SENT.value,
        sent_at=bindparam("now"),
        next_attempt_at=bindparam("copy_retry_at"),
        last_error=None,
        sent_copy=bindparam("sent_copy"),
    )
)


def claim_attempts(conn: Connection, rows: Sequence[OutboxRow]) -> dict[int, int]:
    """Count an attempt for each row still as the sender read it: {row id: new count}.

    Commit before SMTP. Until its outcome is recorded an attempt may have gone out: a
    crash leaves the row "unknown", and the next drain looks for it before sending
    again. A row another sender changed or holds is left out: several senders may read
    the same due row (instances on one PostgreSQL beside each other; the mailbox lease
    makes it rare, this makes it harmless), so rows are locked `FOR UPDATE SKIP LOCKED`
    (a sender claiming one this instant is passed by, never waited for) and must still
    be pending with the attempt count that was read.
    """
    settle(conn)
    if not rows:
        return {}
    read = {row.id: row.attempts for row in rows}
    still = conn.execute(_CLAIMABLE, {"row_ids": list(read)}).all()
    ids = [row_id for row_id, attempts in still if read[row_id] == attempts]
    if not ids:
        return {}
    return {
        int(row_id): int(attempts)
        for row_id, attempts in conn.execute(_BEGIN_ATTEMPTS, {"row_ids": ids}).all()
    }


def release_claims(conn: Connection, rows: Sequence[OutboxRow]) -> None:
    """Claimed, never handed to the relay: each row back as it was read (rows as read)."""
    settle(conn)
    if rows:
        conn.execute(
            _RELEASE,
            [
                {
                    "row_id": r.id,
                    "claimed": r.attempts + 1,
                    "count_before": r.attempts,
                    "copy_before": r.sent_copy,
                }
                for r in rows
            ],
        )


def mark_sent(
    conn: Connection,
    row_id: int,
    now: datetime,
    *,
    sent_copy: str = "done",
    copy_retry_at: datetime | None = None,
) -> None:
    """Sent; `copy_retry_at` is when a failed copy to Sent is tried again."""
    mark_all_sent(conn, now, [SentState(row_id, sent_copy, copy_retry_at)])


@dataclass(frozen=True, slots=True)
class SentState:
    """A row gone out, and what is known of its copy in Sent (see the module docstring)."""

    row_id: int
    sent_copy: str
    copy_retry_at: datetime | None = None  # a failed copy: when it is tried again


def mark_all_sent(conn: Connection, now: datetime, rows: Sequence[SentState]) -> None:
    """mark_sent for many rows in one statement (a drain records a batch at a time)."""
    settle(conn)
    if rows:
        conn.execute(
            _MARK_SENT,
            [
                {
                    "row_id": r.row_id,
                    "now": now,
                    "copy_retry_at": r.copy_retry_at,
                    "sent_copy": r.sent_copy,
                }
                for r in rows
            ],
        )


def mark_retry(
    conn: Connection, row_id: int, *, attempts: int, next_attempt_at: datetime, error: str
) -> None:
    """Refused before the relay took it: nothing went out, send again later."""
    settle(conn)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id)
        .values(
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=error[:MAX_ERROR_CHARS],
            sent_copy="pending",
        )
    )


def mark_held(conn: Connection, row_id: int, *, until: datetime, error: str) -> None:
    """The outcome is unknown: look for it in Sent at `until` before sending again."""
    settle(conn)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id)
        .values(next_attempt_at=until, last_error=error[:MAX_ERROR_CHARS], sent_copy="held")
    )


def postpone(conn: Connection, row_id: int, *, until: datetime, error: str) -> None:
    """Nothing could be done for this row now (e.g. the Sent folder is unreachable)."""
    settle(conn)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id)
        .values(next_attempt_at=until, last_error=error[:MAX_ERROR_CHARS])
    )


def note_error(conn: Connection, row_ids: Sequence[int], error: str) -> None:
    """Record why these rows wait (the relay is down), changing nothing else."""
    settle(conn)
    if row_ids:
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(list(row_ids)))
            .values(last_error=error[:MAX_ERROR_CHARS])
        )


def _copy_waiting(mailbox: str, sent_copy: str, now: datetime | None) -> Any:
    """Sent rows of `mailbox` whose copy is in state `sent_copy` (due at `now`, if given)."""
    waiting = and_(
        outbox.c.mailbox == mailbox,
        outbox.c.state == OutboxState.SENT.value,
        outbox.c.sent_copy == sent_copy,
    )
    if now is None:
        return waiting
    # Rows that failed before copies were retried carry no time: due at once.
    return and_(waiting, or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now))


def _copies(conn: Connection, where: Any, limit: int) -> list[OutboxRow]:
    settle(conn)
    query = select(outbox).where(where).order_by(outbox.c.id).limit(limit)
    return [_to_row(r) for r in conn.execute(query)]


def copies_due(
    conn: Connection, now: datetime, limit: int = 100, *, mailbox: str
) -> list[OutboxRow]:
    """Sent rows whose copy to the Sent folder failed and is due again, oldest first."""
    return _copies(conn, _copy_waiting(mailbox, "failed", now), limit)


def copies_deferred(
    conn: Connection, now: datetime, limit: int, *, mailbox: str
) -> list[OutboxRow]:
    """Sent rows whose copy a surge put off (never APPENDed) and that are due, oldest first."""
    return _copies(conn, _copy_waiting(mailbox, "deferred", now), limit)


def postpone_deferred(conn: Connection, mailbox: str, until: datetime) -> None:
    """The Sent folder did not take them now: every deferred copy waits until `until`."""
    settle(conn)
    waiting = _copy_waiting(mailbox, "deferred", None)
    conn.execute(update(outbox).where(waiting).values(next_attempt_at=until))


def mark_copied(
    conn: Connection, row_id: int, *, sent_copy: str, retry_at: datetime | None = None
) -> None:
    mark_all_copied(conn, [row_id], sent_copy=sent_copy, retry_at=retry_at)


def mark_all_copied(
    conn: Connection, row_ids: Sequence[int], *, sent_copy: str, retry_at: datetime | None = None
) -> None:
    settle(conn)
    if row_ids:
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(list(row_ids)))
            .values(sent_copy=sent_copy, next_attempt_at=retry_at)
        )


def has_due_work(conn: Connection, now: datetime, mailbox: str) -> bool:
    """Anything for a drain to do: a mail due to go out or a Sent copy due (again)."""
    settle(conn)
    return bool(
        pending(conn, now, 1, mailbox=mailbox)
        or copies_due(conn, now, 1, mailbox=mailbox)
        or copies_deferred(conn, now, 1, mailbox=mailbox)
    )


def mark_failed(conn: Connection, row: OutboxRow, now: datetime, error: str) -> None:
    """Permanent failure: recorded on the row and, for a case's mail, on its timeline."""
    settle(conn)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row.id)
        .values(
            state=OutboxState.FAILED.value, next_attempt_at=None, last_error=error[:MAX_ERROR_CHARS]
        )
    )
    if row.case_id is not None:
        detail = f"{row.kind} to {', '.join(row.recipients)} could not be delivered: {error}"
        add_events(conn, row.case_id, [Event(EventKind.DELIVERY_FAILED, now, None, detail)])


def cases_now(conn: Connection, case_ids: Sequence[int]) -> dict[int, CaseNow]:
    """The status and latest team reply of each case, for domain.outbox.withdrawal."""
    if not case_ids:
        return {}
    query = select(case.c.id, case.c.status, case.c.last_response_at).where(
        case.c.id.in_(sorted(set(case_ids)))
    )
    return {
        row.id: CaseNow(CaseStatus(row.status), row.last_response_at) for row in conn.execute(query)
    }


def mark_withdrawn(conn: Connection, row: OutboxRow, now: datetime, reason: str) -> None:
    """A mail no longer true when due: never sent, and the case's timeline says why."""
    settle(conn)
    conn.execute(
        update(outbox)
        .where(and_(outbox.c.id == row.id, outbox.c.state == OutboxState.PENDING.value))
        .values(
            state=OutboxState.WITHDRAWN.value,
            next_attempt_at=None,
            last_error=f"withdrawn: {reason}"[:MAX_ERROR_CHARS],
        )
    )
    if row.case_id is not None:
        detail = f"{row.kind} to {', '.join(row.recipients)} not sent: {reason}"
        add_events(conn, row.case_id, [Event(EventKind.WITHDRAWN, now, None, detail)])


def mark_dry_run(conn: Connection, row_id: int, now: datetime) -> None:
    settle(conn)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id)
        .values(state=OutboxState.DRY_RUN.value, sent_at=now, next_attempt_at=None)
    )


def automatic_mail_times(
    conn: Connection, mailbox: str, address: str | None, kinds: Sequence[str], since: datetime
) -> tuple[list[datetime], list[datetime]]:
    """Planned send times of automatic customer mail since `since` (for domain.limits).

    Returns (to `address` from any mailbox, every one of `mailbox`). A row's time is
    when it went out, else when it is due to go out (a deferred row counts where it is
    planned), else when it was recorded.
    """
    settle(conn)
    to_address: list[datetime] = []
    from_mailbox: list[datetime] = []
    for row in _automatic_mail(conn, kinds, since):
        when: datetime = row.at
        if when < since:
            continue
        if row.mailbox == mailbox:
            from_mailbox.append(when)
        if address is not None and address in (row.recipients or ()):
            to_address.append(when)
    return to_address, from_mailbox


def automatic_mail_rows(
    conn: Connection, kinds: Sequence[str], since: datetime
) -> list[tuple[str, tuple[str, ...], datetime]]:
    """(mailbox, recipients, planned time) of every automatic mail of `kinds` planned
    since `since`, from every mailbox, in one read (domain.limits.Book; the planned time
    as in `automatic_mail_times`)."""
    return [
        (row.mailbox, tuple(row.recipients or ()), row.at)
        for row in _automatic_mail(conn, kinds, since)
        if row.at >= since
    ]


def _automatic_mail(conn: Connection, kinds: Sequence[str], since: datetime) -> Result[Any]:
    settle(conn)
    at = type_coerce(
        func.coalesce(outbox.c.sent_at, outbox.c.next_attempt_at, outbox.c.created_at),
        UtcDateTime(),
    )
    query = select(outbox.c.mailbox, outbox.c.recipients, at.label("at")).where(
        and_(outbox.c.kind.in_(list(kinds)), or_(outbox.c.created_at >= since, at >= since))
    )
    return conn.execute(query)


def keys_in_ranges(conn: Connection, ranges: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The dedup keys within any [low, high) range (read through the unique key index)."""
    settle(conn)
    if not ranges:
        return frozenset()
    values: dict[str, str] = {}
    for n, (low, high) in enumerate(ranges):
        values |= {f"l{n}": low, f"h{n}": high}
    return frozenset(conn.execute(_keys_in(len(ranges)), values).scalars())


@functools.cache
def _keys_in(count: int) -> Select[Any]:
    """The range read for `count` ranges, built once (the chase reads every open case's)."""
    key = outbox.c.dedup_key
    bounds = [and_(key >= bindparam(f"l{n}"), key < bindparam(f"h{n}")) for n in range(count)]
    return select(key).where(or_(*bounds))


@dataclass(frozen=True, slots=True)
class OwnMail:
    """keepword's outbox row of a Message-ID: the case it was about, whom it went to."""

    case_id: int | None
    recipients: tuple[str, ...]


def own_mail(conn: Connection, message_id: str) -> OwnMail | None:
    """The outbox row that holds `message_id`, or None: keepword never sent it."""
    return own_mails(conn, [message_id]).get(message_id)


def own_mails(conn: Connection, message_ids: Sequence[str]) -> dict[str, OwnMail]:
    """own_mail of each of `message_ids` in one read (a triage batch's messages): the
    ones keepword sent."""
    settle(conn)
    rows = conn.execute(_OWN_MAILS, {"message_ids": list(message_ids)})
    return {
        row.message_id: OwnMail(row.case_id, tuple(str(a).lower() for a in row.recipients or ()))
        for row in rows
    }


@dataclass(frozen=True, slots=True)
class NamedMail:
    """An outbox row a delivery report names (pipeline.bounces)."""

    id: int
    case_id: int | None
    kind: str
    recipients: tuple[str, ...]  # lower-cased


def mails_named(conn: Connection, mailbox: str, message_ids: Sequence[str]) -> list[NamedMail]:
    """The mailbox's outbox rows with any of these Message-IDs (its unique index)."""
    if not message_ids:
        return []
    settle(conn)
    query = (
        select(outbox.c.id, outbox.c.case_id, outbox.c.kind, outbox.c.recipients)
        .where(and_(outbox.c.message_id.in_(list(message_ids)), outbox.c.mailbox == mailbox))
        .order_by(outbox.c.id)
    )
    return [
        NamedMail(r.id, r.case_id, r.kind, tuple(str(a).lower() for a in r.recipients or ()))
        for r in conn.execute(query)
    ]
