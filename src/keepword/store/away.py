"""Team members away, as their own out-of-office auto-replies told (issue 12: owners).

Planned absences live in the config (`[mailbox.owners] away`); this table holds the
ones keepword learned from mail, one row per absence (mailbox, address, start day).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Connection, and_, func, insert, select, update

from keepword.domain.cases import CaseState
from keepword.domain.model import CaseStatus
from keepword.domain.owners import AwayPeriod
from keepword.store.cases import _to_state, cases_written
from keepword.store.tables import case, staff_away

# Every status but closed, spelled out so the (mailbox, status) index serves the lookup.
NOT_CLOSED = [s.value for s in CaseStatus if s is not CaseStatus.CLOSED]


def recorded_away(conn: Connection, mailbox: str, since: date) -> list[AwayPeriod]:
    """The absences of the mailbox's staff that end after `since` (first day back later)."""
    rows = conn.execute(
        select(staff_away)
        .where(and_(staff_away.c.mailbox == mailbox, staff_away.c.back_on > since))
        .order_by(staff_away.c.start, staff_away.c.id)
    )
    return [AwayPeriod(r.address, r.start, r.back_on, r.why or "") for r in rows]


def record_away(
    conn: Connection,
    mailbox: str,
    period: AwayPeriod,
    *,
    until_they_write: bool,
    message_pk: int | None,
    now: datetime,
) -> None:
    """Insert the absence, or take the new return date of the one with the same start."""
    assert period.back_on is not None
    match = and_(
        staff_away.c.mailbox == mailbox,
        staff_away.c.address == period.address,
        staff_away.c.start == period.start,
    )
    values = {
        "back_on": period.back_on,
        "why": period.why,
        "until_they_write": until_they_write,
        "message_pk": message_pk,
        "recorded_at": now,
    }
    if conn.execute(update(staff_away).where(match).values(**values)).rowcount:
        return
    conn.execute(
        insert(staff_away).values(
            mailbox=mailbox, address=period.address, start=period.start, **values
        )
    )


def back_again(conn: Connection, mailbox: str, address: str, today: date) -> int:
    """`address` wrote themselves: absences without a stated return date end today.

    Read first: most staff mail ends no absence, and an UPDATE that matches nothing still
    takes SQLite's write lock for the rest of the message's transaction."""
    ending = and_(
        staff_away.c.mailbox == mailbox,
        staff_away.c.address == address,
        staff_away.c.until_they_write.is_(True),
        staff_away.c.start <= today,
        staff_away.c.back_on > today,
    )
    if conn.execute(select(staff_away.c.id).where(ending).limit(1)).first() is None:
        return 0
    return conn.execute(update(staff_away).where(ending).values(back_on=today)).rowcount


def open_counts(conn: Connection, mailbox: str) -> dict[str, int]:
    """Open (not closed) live cases per owner: the `least_open` policy's measure."""
    cases_written(conn)
    rows = conn.execute(
        select(case.c.owner, func.count())
        .where(
            and_(
                case.c.mailbox == mailbox,
                case.c.owner.is_not(None),
                case.c.status.in_(NOT_CLOSED),
                case.c.is_history.is_(False),
            )
        )
        .group_by(case.c.owner)
    )
    return {str(row[0]): int(row[1]) for row in rows}


def last_assigned(conn: Connection, mailbox: str) -> str | None:
    """The owner of the mailbox's newest live case that has one (round robin's start;
    a case opened later but dated earlier still counts as the newest)."""
    cases_written(conn)
    return conn.execute(
        select(case.c.owner)
        .where(
            and_(
                case.c.mailbox == mailbox,
                case.c.owner.is_not(None),
                case.c.is_history.is_(False),
            )
        )
        .order_by(case.c.id.desc())  # the primary key, walked from the end
        .limit(1)
    ).scalar()


def open_cases_of(conn: Connection, mailbox: str, owners: list[str]) -> list[CaseState]:
    """The live cases (not closed) these people own, oldest first."""
    if not owners:
        return []
    cases_written(conn)
    rows = conn.execute(
        select(case)
        .where(
            and_(
                case.c.mailbox == mailbox,
                case.c.owner.in_(owners),
                case.c.status.in_(NOT_CLOSED),
                case.c.is_history.is_(False),
            )
        )
        .order_by(case.c.opened_at, case.c.id)
    )
    return [_to_state(r) for r in rows]
