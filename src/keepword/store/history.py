"""The stored history the predictor and `keepword backtest` read.

`response_history` is what `domain.predict` needs to rebuild its state at `now` (the
mailbox's customer cases with their first responses); `first_response_outcomes` is the
record of promises its calibration corrects from.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Connection, and_, func, select

from keepword.domain.model import CaseStatus, PromiseState
from keepword.domain.predict import HistoryCase, Outcome
from keepword.domain.windows import writes_like_a_robot
from keepword.store.deferred import settle
from keepword.store.promises import first_customer_promise_of
from keepword.store.tables import case, promise


class ResponseHistory(NamedTuple):
    """The cases `response_history` read, with what decided it: the oldest case it read,
    left-out robots' included (a build later than `first_opened + (now - since)` reads
    other rows), every customer's openings (oldest first) and who of them writes like a
    robot."""

    cases: list[HistoryCase]
    first_opened: datetime | None
    openings: dict[str, list[datetime]]
    robots: frozenset[str]


def response_history(
    conn: Connection,
    mailbox: str,
    since: datetime,
    *,
    until: datetime | None = None,
    exclude_case: int | None = None,
    robot_cases_per_day: int | None = None,
) -> ResponseHistory:
    """The mailbox's customer cases opened in [since, until), oldest first, keyed by id.

    Left out, as in `store.cases.first_response_history`: cases closed without a reply
    (nothing was owed) and imported cases never answered (they may have been answered
    elsewhere; as endless waits they would inflate every promise), and with
    `robot_cases_per_day` the cases of an address that writes like a robot
    (domain.windows.writes_like_a_robot: no queue a person waits in).
    """
    settle(conn)
    unanswered = case.c.first_response_at.is_(None)
    conditions = [
        case.c.mailbox == mailbox,
        case.c.opened_at >= since,
        case.c.customer.is_not(None),
        ~and_(unanswered, case.c.status == CaseStatus.CLOSED.value),
        ~and_(unanswered, case.c.is_history.is_(True)),
    ]
    if until is not None:
        conditions.append(case.c.opened_at < until)
    if exclude_case is not None:
        conditions.append(case.c.id != exclude_case)
    query = (
        select(case.c.id, case.c.customer, case.c.opened_at, case.c.first_response_at)
        .where(and_(*conditions))
        .order_by(case.c.opened_at, case.c.id)
    )
    rows = conn.execute(query).all()
    openings: dict[str, list[datetime]] = {}
    for row in rows:
        openings.setdefault(row.customer, []).append(row.opened_at)
    robots: frozenset[str] = frozenset()
    if robot_cases_per_day is not None:
        robots = writes_like_a_robot(((r.customer, r.opened_at) for r in rows), robot_cases_per_day)
    cases = [
        HistoryCase(row.opened_at, row.first_response_at, "new", row.id)
        for row in rows
        if row.customer not in robots
    ]
    return ResponseHistory(cases, rows[0].opened_at if rows else None, openings, robots)


def first_response_outcomes(conn: Connection, mailbox: str, since: datetime) -> list[Outcome]:
    """The customer first-response promises made since `since`, with the case's first
    response: kept or missed is judged against the promise's own due time, whatever
    updates superseded it later."""
    settle(conn)
    query = (
        select(promise.c.made_at, promise.c.due_at, case.c.first_response_at)
        .join(case, case.c.id == promise.c.case_id)
        .where(
            and_(
                first_customer_promise_of(mailbox),
                promise.c.made_at >= since,
                # Withdrawn unanswered: the case closed or turned to the customer before a
                # reply was owed (nothing to keep or miss).
                ~and_(
                    promise.c.state == PromiseState.WITHDRAWN.value,
                    case.c.first_response_at.is_(None),
                ),
            )
        )
        .order_by(promise.c.made_at, promise.c.id)
    )
    return [Outcome(row.made_at, row.due_at, row.first_response_at) for row in conn.execute(query)]


def predictor_fingerprint(conn: Connection, mailbox: str) -> tuple[int, ...]:
    """What any write to the mailbox's cases or customer first-response promises changes
    (every case write raises its version; a promise is inserted or withdrawn): equal
    before and after, no build of the predictor could tell the two apart."""
    settle(conn)
    cases = select(
        func.count(),
        func.coalesce(func.sum(case.c.version), 0),
        func.coalesce(func.max(case.c.id), 0),
    ).where(case.c.mailbox == mailbox)
    withdrawn = promise.c.state == PromiseState.WITHDRAWN.value
    promises = (
        select(
            func.count(),
            func.coalesce(func.max(promise.c.id), 0),
            func.count().filter(withdrawn),
        )
        .join(case, case.c.id == promise.c.case_id)
        .where(first_customer_promise_of(mailbox))
    )
    return (*conn.execute(cases).one(), *conn.execute(promises).one())


def next_promise_due(conn: Connection, mailbox: str, after: datetime) -> datetime | None:
    """When the mailbox's next unresolved customer first-response promise falls due (at
    or after `after`; superseded ones too: each is judged by its own due time): from
    then on a build counts it missed."""
    settle(conn)
    query = (
        select(func.min(promise.c.due_at))
        .join(case, case.c.id == promise.c.case_id)
        .where(
            first_customer_promise_of(mailbox),
            promise.c.state.in_([PromiseState.OPEN.value, PromiseState.SUPERSEDED.value]),
            promise.c.due_at >= after,
        )
    )
    due: datetime | None = conn.execute(query).scalar()
    return due
