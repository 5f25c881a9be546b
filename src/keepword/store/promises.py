"""Promise repository: promise rows <-> domain `Promise` values, the writes triage and
the chase make, and what the chase, the CLI and the ledger read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, func, insert, select, update

from keepword.domain.cases import Event, EventKind
from keepword.domain.chase import held_back_note
from keepword.domain.model import Kind, MessageFacts, PromiseAudience, PromiseKind, PromiseState
from keepword.domain.outbox_keys import update_key
from keepword.domain.promises import Promise, never_told
from keepword.store.cases import (
    MAX_PREFETCHED_IDS,
    add_events,
    opened_in_batch,
    pooled_case_ids,
)
from keepword.store.deferred import DeferredWrites, deferred, settle
from keepword.store.messages import load_facts
from keepword.store.tables import case, case_event, message, outbox, promise


def to_promise(row: Row[Any]) -> Promise:
    return Promise(
        id=row.id,
        case_id=row.case_id,
        kind=PromiseKind(row.kind),
        audience=PromiseAudience(row.audience),
        made_at=row.made_at,
        due_at=row.due_at,
        state=PromiseState(row.state),
        resolved_at=row.resolved_at,
        reason=row.reason or "",
        basis=dict(row.basis or {}),
        is_default=row.is_default,
        superseded_by=row.superseded_by,
    )


def open_promises(conn: Connection, case_id: int) -> list[Promise]:
    """The case's open promises, the first due first.

    Sorted here, not by the query: with ORDER BY due_at, SQLite reads them through
    ix_promise_open (state, due_at), that is through every open promise of every case,
    and the chase, which reads each case's, took O(n^2) in the open cases (2,000 open
    cases: ~2 ms a case); by the case's own index it is a few rows. Only promises
    waiting in a batch are written first: the read sees no other table. In a batch, a
    case known to hold none is answered without a read (`_holds_none`)."""
    if _holds_none(conn, case_id):
        return []
    settle(conn, reading=promise.name)
    rows = conn.execute(_OPEN_PROMISES, {"case_id": case_id})
    return sorted((to_promise(row) for row in rows), key=lambda p: (p.due_at, p.id or 0))


# -- a batch's cases without open promises, read once ---------------------------------
#
# Every team reply reads its case's open promises: on a history with the team's answers,
# a statement for each (5,200 of a 20,000-mail import), most of them finding none. A
# batch that defers its writes reads once, at its first such question, which cases of
# its pool of candidates (store.cases) hold open promises; a case it opened holds only
# the promises it wrote. Every promise this module writes in the batch marks its case
# `given`: from then on that case is read from the store, as without the batch.

_HOLDERS: Final = "cases holding open promises"  # its key among DeferredWrites.pools
_GIVEN: Final = "cases given promises"  # the cases the batch wrote promises of
_HOLDING = (
    select(promise.c.case_id)
    .where(
        and_(
            promise.c.case_id.in_(bindparam("ids", expanding=True)),
            promise.c.state == PromiseState.OPEN.value,
        )
    )
    .distinct()
)


def _holds_none(conn: Connection, case_id: int) -> bool:
    """Whether a batch knows, without a read, that this case holds no open promise."""
    waiting = deferred(conn)
    if waiting is None or case_id in _given(waiting):
        return False
    if opened_in_batch(conn, case_id):
        return True
    read = waiting.pools.get(_HOLDERS)
    if not isinstance(read, tuple):
        read = _read_holders(conn)
        waiting.pools[_HOLDERS] = read
    asked, holding = read
    return case_id in asked and case_id not in holding


def _read_holders(conn: Connection) -> tuple[frozenset[int], frozenset[int]]:
    """The pool's case ids, and those of them holding open promises now. Nothing waiting
    is written first: a case with promise rows waiting is `given`, never answered here."""
    ids = pooled_case_ids(conn)
    if not ids or len(ids) > MAX_PREFETCHED_IDS:
        return frozenset(), frozenset()
    return frozenset(ids), frozenset(conn.execute(_HOLDING, {"ids": ids}).scalars())


def _given(waiting: DeferredWrites) -> set[int]:
    given = waiting.pools.setdefault(_GIVEN, set())
    assert isinstance(given, set)
    return given


def _giving(conn: Connection, case_id: int) -> None:
    """A promise of this case written (or to be) in the batch: read it from the store."""
    waiting = deferred(conn)
    if waiting is not None:
        _given(waiting).add(case_id)


# Built once: triage reads a case's open promises for every team reply (see store.cases._LOAD).
_OPEN_PROMISES = select(promise).where(
    and_(promise.c.case_id == bindparam("case_id"), promise.c.state == PromiseState.OPEN.value)
)


_INSERT = insert(promise)  # built once: every acknowledgement inserts a promise


def insert_promise(conn: Connection, value: Promise) -> int:
    settle(conn)
    _giving(conn, value.case_id)
    key = conn.execute(_INSERT, _row(value)).inserted_primary_key
    assert key is not None
    return int(key[0])


def record_promise(conn: Connection, value: Promise) -> None:
    """insert_promise, for a caller that needs no id back: in a batch that defers its
    writes it is written at the batch's end (store.deferred)."""
    waiting = deferred(conn)
    if waiting is None:
        insert_promise(conn, value)
    else:
        _giving(conn, value.case_id)
        waiting.add(_INSERT, [_row(value)], read=True)


def _row(value: Promise) -> dict[str, Any]:
    return {
        "case_id": value.case_id,
        "kind": value.kind.value,
        "audience": value.audience.value,
        "made_at": value.made_at,
        "due_at": value.due_at,
        "state": value.state.value,
        "resolved_at": value.resolved_at,
        "reason": value.reason,
        "basis": dict(value.basis),
        "is_default": value.is_default,
        "superseded_by": value.superseded_by,
    }


def update_state(conn: Connection, value: Promise) -> None:
    settle(conn)
    assert value.id is not None
    _giving(conn, value.case_id)
    conn.execute(
        update(promise)
        .where(promise.c.id == value.id)
        .values(
            state=value.state.value,
            resolved_at=value.resolved_at,
            reason=value.reason,
            superseded_by=value.superseded_by,
        )
    )


def promises_of_case(conn: Connection, case_id: int) -> list[Promise]:
    """Every promise of a case, oldest first."""
    settle(conn)
    query = (
        select(promise)
        .where(promise.c.case_id == case_id)
        .order_by(promise.c.made_at, promise.c.id)
    )
    return [to_promise(row) for row in conn.execute(query)]


def settle_untold_update(
    conn: Connection, case_id: int, old_id: int, reply_at: datetime | None, now: datetime
) -> None:
    """A customer update was withdrawn unsent: its old promise is judged as if never
    superseded (by the team's latest reply, `reply_at`), and the new time it carried
    (never told) is withdrawn (domain.promises.never_told)."""
    settle(conn)
    by_id = {p.id: p for p in promises_of_case(conn, case_id)}
    old = by_id.get(old_id)
    new = by_id.get(old.superseded_by) if old is not None else None
    if old is None or new is None:
        return
    judged, untold = never_told(old, new, reply_at, now)
    update_state(conn, judged)
    update_state(conn, untold)
    detail = f"promise {old_id} stands again (its update never left): {judged.reason}"
    add_events(conn, case_id, [Event(_EVENT_OF[judged.state], now, None, detail)])


_EVENT_OF = {
    PromiseState.KEPT: EventKind.PROMISE_KEPT,
    PromiseState.BROKEN: EventKind.PROMISE_BROKEN,
    PromiseState.WITHDRAWN: EventKind.PROMISE_WITHDRAWN,
}


def case_ids_with_open_promises(conn: Connection, mailbox: str) -> list[int]:
    settle(conn)
    query = (
        select(promise.c.case_id)
        .join(case, case.c.id == promise.c.case_id)
        .where(and_(case.c.mailbox == mailbox, promise.c.state == PromiseState.OPEN.value))
        .distinct()
    )
    return sorted(int(i) for i in conn.execute(query).scalars())


def mailbox_promises(
    conn: Connection, mailboxes: Sequence[str], *, made_since: datetime, made_until: datetime
) -> list[Promise]:
    """Promises of the mailboxes' cases made in [made_since, made_until) (for the ledger)."""
    settle(conn)
    query = (
        select(promise)
        .join(case, case.c.id == promise.c.case_id)
        .where(
            and_(
                case.c.mailbox.in_(list(mailboxes)),
                promise.c.made_at >= made_since,
                promise.c.made_at < made_until,
            )
        )
        .order_by(promise.c.id)
    )
    return [to_promise(row) for row in conn.execute(query)]


def update_queued_at(conn: Connection, value: Promise) -> datetime | None:
    """When the customer update revising this promise was queued (None: never).

    A promise counts as announced if its update was queued before its due time: the
    update then goes out with the next drain, well inside the chase's update lead.
    """
    settle(conn)
    if value.id is None:
        return None
    query = select(outbox.c.created_at).where(
        outbox.c.dedup_key == update_key(value.case_id, value.id)
    )
    found: datetime | None = conn.execute(query).scalar()
    return found


def next_due_by_case(conn: Connection, case_ids: Sequence[int]) -> dict[int, datetime]:
    """The earliest open promise's due time of each of these cases (cases without none)."""
    settle(conn)
    if not case_ids:
        return {}
    query = (
        select(promise.c.case_id, func.min(promise.c.due_at))
        .where(
            and_(promise.c.case_id.in_(list(case_ids)), promise.c.state == PromiseState.OPEN.value)
        )
        .group_by(promise.c.case_id)
    )
    return {row[0]: row[1] for row in conn.execute(query)}


def update_held_back(conn: Connection, case_id: int, promise_id: int) -> bool:
    """Whether the chase recorded that the rate limit held back this promise's update."""
    settle(conn)
    query = select(case_event.c.id).where(
        and_(
            case_event.c.case_id == case_id,
            case_event.c.kind == EventKind.CUSTOMER_UPDATE.value,
            case_event.c.detail.startswith(held_back_note(promise_id), autoescape=True),
        )
    )
    return conn.execute(query.limit(1)).first() is not None


def automated_mail_from(conn: Connection, address: str, *, limit: int = 20) -> list[MessageFacts]:
    """The latest automatic mail this address sent to any of our mailboxes (for
    `update_refusal`: another keepword writing to billing@ is one for support@ too).

    Addresses are stored lower-cased (`Address`). There is no index on the sender, but
    this is read only while a case's customer update is due, not for every case.
    """
    query = (
        select(message.c.id)
        .where(
            and_(
                message.c.from_addr == address.strip().lower(),
                message.c.kind == Kind.AUTOMATED.value,
            )
        )
        .order_by(message.c.id.desc())
        .limit(limit)
    )
    return load_facts(conn, [int(pk) for pk in conn.execute(query).scalars()])


def states_resolved_between(
    conn: Connection, mailbox: str, start: datetime, end: datetime
) -> list[str]:
    """The states of the mailbox's promises resolved in [start, end) (the digest's
    kept/broken of yesterday)."""
    settle(conn)
    query = (
        select(promise.c.state)
        .join(case, case.c.id == promise.c.case_id)
        .where(
            and_(
                case.c.mailbox == mailbox,
                promise.c.resolved_at >= start,
                promise.c.resolved_at < end,
            )
        )
    )
    return list(conn.execute(query).scalars())


def first_customer_promise_of(mailbox: str) -> ColumnElement[bool]:
    """A customer first-response promise of a case of `mailbox` (the query joins case)."""
    return and_(
        case.c.mailbox == mailbox,
        promise.c.kind == PromiseKind.FIRST_RESPONSE.value,
        promise.c.audience == PromiseAudience.CUSTOMER.value,
    )


def last_within_maximum(conn: Connection, mailbox: str) -> int:
    """The id of the mailbox's latest customer first-response promise that was not above
    the maximum (0: none yet): the promises after it are one episode of being behind
    (the lead alert's key). Newest first: it reads back only over the episode."""
    settle(conn)
    behind = promise.c.basis["behind"].as_boolean()
    query = (
        select(promise.c.id)
        .join(case, case.c.id == promise.c.case_id)
        .where(first_customer_promise_of(mailbox), func.coalesce(behind, False).is_(False))
        .order_by(promise.c.id.desc())
        .limit(1)
    )
    return conn.execute(query).scalar() or 0
