"""Promise repository: promise rows <-> domain `Promise` values.

The row mapping and the writes triage needs live in `store.promise_rows`; this module
adds what the chase and the ledger read (a case's promises, a mailbox's promises, when
a customer update was queued).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, func, select

from keepword.domain.chase import update_key
from keepword.domain.model import PromiseState
from keepword.domain.promises import Promise
from keepword.store.promise_rows import insert_promise, open_promises, to_promise, update_state
from keepword.store.tables import case, outbox, promise

__all__ = [
    "case_ids_with_open_promises",
    "insert_promise",
    "mailbox_promises",
    "next_due_by_case",
    "open_promises",
    "promises_of_case",
    "to_promise",
    "update_queued_at",
    "update_state",
]


def promises_of_case(conn: Connection, case_id: int) -> list[Promise]:
    """Every promise of a case, oldest first."""
    query = (
        select(promise)
        .where(promise.c.case_id == case_id)
        .order_by(promise.c.made_at, promise.c.id)
    )
    return [to_promise(row) for row in conn.execute(query)]


def case_ids_with_open_promises(conn: Connection, mailbox: str) -> list[int]:
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
    if value.id is None:
        return None
    query = select(outbox.c.created_at).where(
        outbox.c.dedup_key == update_key(value.case_id, value.id)
    )
    found: datetime | None = conn.execute(query).scalar()
    return found


def next_due_by_case(conn: Connection, case_ids: Sequence[int]) -> dict[int, datetime]:
    """The earliest open promise's due time of each of these cases (cases without none)."""
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
