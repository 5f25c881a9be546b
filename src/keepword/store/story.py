"""Everything the story of one case needs (domain.story), read in a few bounded queries.

Only for the cases that get a reminder or an escalation in a chase pass: a count of the
case's messages, the first customer message and the newest ones (bodies cut to what
`trim_quoted` reads), the newest promises and the newest timeline events a story tells.
A case with 500 messages reads 25 of them; the story says how many it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import Kind, PromiseAudience, PromiseKind, PromiseState
from keepword.domain.outbox_keys import update_key
from keepword.domain.story import (
    STORY_EVENT_KINDS,
    STORY_MAX_EVENTS,
    STORY_MAX_MESSAGES,
    STORY_MAX_PROMISES,
    CaseRecord,
    Story,
    StoryMessage,
    StoryPromise,
    build_story,
)
from keepword.store.messages import with_content
from keepword.store.tables import case_event, message, message_content, outbox, promise

_STORY_KINDS = (Kind.CUSTOMER.value, Kind.STAFF.value)
# trim_quoted reads at most this much of a body: no need to load a pasted log whole.
_BODY_CHARS = 20_000


def load_story(
    conn: Connection,
    case_id: int,
    reference: str,
    *,
    now: datetime,
    just_promised: int | None = None,
    max_messages: int = STORY_MAX_MESSAGES,
) -> Story:
    """The story of case `case_id` (instants in UTC: `Story.in_zone` for the mailbox's).

    `just_promised`: the id of a promise made in this pass together with the mail that
    shows the story (an escalation with a customer update); flagged as new.
    """
    messages, left_out = _messages(conn, case_id, max_messages)
    promises = _promises(conn, case_id)
    new = next((p for p in promises if p.id == just_promised), None)
    record = CaseRecord(messages, promises, _events(conn, case_id), left_out)
    return build_story(reference, record, now=now, new_promise=new)


def _messages(conn: Connection, case_id: int, max_messages: int) -> tuple[list[StoryMessage], int]:
    """The case's first customer message and its newest messages, and how many of the
    customer's and the team's messages are not among them.

    Which messages is decided on ids and times alone; only the chosen ones' bodies are
    read (a sort that carried bodies would read every body of a long case)."""
    of_case = and_(message.c.case_id == case_id, message.c.kind.in_(_STORY_KINDS))
    total = int(
        conn.execute(select(func.count()).select_from(message).where(of_case)).scalar() or 0
    )
    at = func.coalesce(message.c.received_at, message.c.date, message.c.stored_at)
    newest = (
        select(message.c.id)
        .where(of_case)
        .order_by(at.desc(), message.c.id.desc())
        .limit(max_messages)
    )
    chosen = [int(pk) for pk in conn.execute(newest).scalars()]
    if total > len(chosen):
        # The question that opened the case stays: the lead must not start from nothing.
        first = conn.execute(
            select(message.c.id)
            .where(and_(of_case, message.c.kind == Kind.CUSTOMER.value))
            .order_by(at, message.c.id)
            .limit(1)
        ).scalar()
        if first is not None and first not in chosen:
            chosen = [*chosen[: max_messages - 1], int(first)]
    rows = conn.execute(
        select(
            message.c.id,
            message.c.kind,
            message.c.from_addr,
            message.c.from_name,
            message.c.received_at,
            message.c.date,
            message.c.stored_at,
            func.substr(message_content.c.body_text, 1, _BODY_CHARS).label("body"),
        )
        .select_from(with_content())
        .where(message.c.id.in_(chosen))
    ).all()
    return [_story_message(row) for row in rows], total - len(rows)


def _at(row: Any) -> datetime:
    value: datetime = row.received_at or row.date or row.stored_at
    return value


def _story_message(row: Any) -> StoryMessage:
    return StoryMessage(
        pk=int(row.id),
        at=_at(row),
        kind=Kind(row.kind),
        sender=row.from_addr,
        body_text=row.body or "",
        sender_name=row.from_name or "",
    )


def _promises(conn: Connection, case_id: int) -> list[StoryPromise]:
    rows = conn.execute(
        select(promise)
        .where(promise.c.case_id == case_id)
        .order_by(promise.c.id.desc())
        .limit(STORY_MAX_PROMISES)
    ).all()
    return [_story_promise(row) for row in reversed(rows)]


def _story_promise(row: Any) -> StoryPromise:
    basis = row.basis if isinstance(row.basis, dict) else {}
    set_by = basis.get("set_by")
    return StoryPromise(
        id=int(row.id),
        made_at=row.made_at,
        due_at=row.due_at,
        kind=PromiseKind(row.kind),
        audience=PromiseAudience(row.audience),
        state=PromiseState(row.state),
        resolved_at=row.resolved_at,
        reason=row.reason or "",
        set_by=set_by if isinstance(set_by, str) and set_by else None,
    )


def _events(conn: Connection, case_id: int) -> Sequence[Event]:
    """The newest events a story tells, in stored order (their index is the tiebreak)."""
    kinds = sorted(kind.value for kind in STORY_EVENT_KINDS)
    rows = conn.execute(
        select(case_event)
        .where(and_(case_event.c.case_id == case_id, case_event.c.kind.in_(kinds)))
        .order_by(case_event.c.id.desc())
        .limit(STORY_MAX_EVENTS)
    ).all()
    return [
        Event(EventKind(row.kind), row.at, row.actor, row.detail or "", row.message_pk)
        for row in reversed(rows)
    ]


def promise_of_update(conn: Connection, case_id: int, promise_id: int) -> int | None:
    """The promise the customer update revising `promise_id` made, if that update is in
    the outbox: the case's first customer UPDATE promise after `promise_id` (one update
    per promise, and its new promise is stored right after it is queued)."""
    if not conn.execute(
        select(outbox.c.id).where(outbox.c.dedup_key == update_key(case_id, promise_id))
    ).first():
        return None
    found = conn.execute(
        select(func.min(promise.c.id)).where(
            and_(
                promise.c.case_id == case_id,
                promise.c.id > promise_id,
                promise.c.kind == PromiseKind.UPDATE.value,
                promise.c.audience == PromiseAudience.CUSTOMER.value,
            )
        )
    ).scalar()
    return int(found) if found is not None else None
