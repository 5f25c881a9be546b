"""Customer addresses that refused our mail for good (domain.reachability reads them).

Written by the drain in the transaction that records the mail the relay refused, and
by triage in the transaction of a bounce about our mail (pipeline.bounces); read by the
chase, only for the cases they touch (the table holds a row per refused mail: few).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, func, insert, or_, select

from keepword.domain.cases import CaseState
from keepword.domain.reachability import Refusal
from keepword.store.tables import address_refusal, message


def record_refusals(conn: Connection, mailbox: str, refusals: Iterable[Refusal]) -> list[Refusal]:
    """Record the refusals not yet recorded (once per mail and address, however often it
    is called); the ones recorded now."""
    recorded: list[Refusal] = []
    for refusal in refusals:
        known = conn.execute(
            select(address_refusal.c.id).where(
                and_(
                    address_refusal.c.outbox_id == refusal.outbox_id,
                    address_refusal.c.address == refusal.address,
                )
            )
        ).first()
        if known is not None:
            continue
        conn.execute(
            insert(address_refusal).values(
                mailbox=mailbox,
                address=refusal.address,
                outbox_id=refusal.outbox_id,
                case_id=refusal.case_id,
                kind=refusal.kind,
                reply=refusal.reply,
                refused_at=refusal.at,
            )
        )
        recorded.append(refusal)
    return recorded


def last_heard_from(conn: Connection, address: str) -> datetime | None:
    """When keepword last stored mail from `address`, in any of our mailboxes: on the
    daemon's clock, as the refusals are (a server's INTERNALDATE is another clock).
    No index on the sender: read only for an address with a refusal."""
    latest = conn.execute(
        select(func.max(message.c.stored_at)).where(message.c.from_addr == address.strip().lower())
    ).scalar()
    return latest if isinstance(latest, datetime) else None


def _refusal(row: Row[Any]) -> Refusal:
    return Refusal(
        outbox_id=row.outbox_id,
        address=row.address,
        kind=row.kind,
        reply=row.reply,
        at=row.refused_at,
        case_id=row.case_id,
    )


def refusals_about(
    conn: Connection, mailbox: str, case_id: int, address: str | None
) -> list[Refusal]:
    """The refusals of a case's mail and of its customer's address (on any of the
    mailbox's cases: a customer refused on one case is refused on all), oldest first."""
    about = address_refusal.c.case_id == case_id
    if address:
        about = or_(about, address_refusal.c.address == address.strip().lower())
    rows = conn.execute(
        select(address_refusal)
        .where(and_(address_refusal.c.mailbox == mailbox, about))
        .order_by(address_refusal.c.refused_at, address_refusal.c.id)
    )
    return [_refusal(r) for r in rows]


@dataclass(frozen=True, slots=True)
class RefusedIn:
    """Which of a mailbox's cases and addresses have a refusal at all: read once per chase
    step, so the chase reads refusals only for the (few) cases they touch."""

    addresses: frozenset[str]
    case_ids: frozenset[int]

    def touches(self, state: CaseState) -> bool:
        customer = (state.customer or "").strip().lower()
        return state.id in self.case_ids or customer in self.addresses


def refused_in(conn: Connection, mailbox: str) -> RefusedIn:
    rows = conn.execute(
        select(address_refusal.c.address, address_refusal.c.case_id)
        .where(address_refusal.c.mailbox == mailbox)
        .distinct()
    ).all()
    return RefusedIn(
        frozenset(r.address for r in rows),
        frozenset(r.case_id for r in rows if r.case_id is not None),
    )
