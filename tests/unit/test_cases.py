from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keepword.domain.cases import (
    CaseState,
    EventKind,
    apply_message,
    assign,
    close,
    open_case,
    reopen,
)
from keepword.domain.model import Address, CaseStatus, Kind
from tests.fixtures.facts import message_facts

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CUSTOMER = "ann@example.org"


def new_case() -> CaseState:
    change = open_case(
        message_facts(CUSTOMER, subject="Re: Invoice"),
        reference="KW-1",
        at=T0,
        customer=Address(CUSTOMER, "Ann"),
        why="no tag, reference or subject match",
    )
    assert [e.kind for e in change.events] == [EventKind.OPENED]
    assert (change.case.mailbox, change.case.subject_key) == ("support", "invoice")
    return change.case


def customer(case: CaseState, at: datetime, pk: int = 1) -> CaseState:
    return apply_message(
        case, kind=Kind.CUSTOMER, sender=CUSTOMER, at=at, message_pk=pk, why="x"
    ).case


def staff(case: CaseState, at: datetime, who: str = "alice@example.com") -> CaseState:
    return apply_message(case, kind=Kind.STAFF, sender=who, at=at, message_pk=9, why="x").case


def test_customer_message_counts_contacts_and_keeps_case_open() -> None:
    case = customer(new_case(), T0)
    case = customer(case, T0 + timedelta(hours=1))
    assert case.status is CaseStatus.NEW
    assert (case.customer_contacts, case.unanswered_contacts) == (2, 2)
    assert case.last_customer_at == T0 + timedelta(hours=1)
    assert case.awaiting_team


def test_first_staff_reply_sets_first_response_and_owner() -> None:
    case = customer(new_case(), T0)
    change = apply_message(
        case,
        kind=Kind.STAFF,
        sender="alice@example.com",
        at=T0 + timedelta(hours=2),
        message_pk=2,
        why="Sent folder",
    )
    after = change.case
    assert after.status is CaseStatus.WAITING_ON_CUSTOMER
    assert after.first_response_at == T0 + timedelta(hours=2)
    assert after.owner == "alice@example.com" and after.owner_changes == 1
    assert after.unanswered_contacts == 0
    assert [e.kind for e in change.events] == [EventKind.STAFF_REPLY, EventKind.OWNER_CHANGED]
    later = staff(after, T0 + timedelta(hours=5), who="bob@example.com")
    assert later.first_response_at == T0 + timedelta(hours=2)
    assert later.last_response_at == T0 + timedelta(hours=5)
    assert later.owner == "alice@example.com", "the owner stays the first who replied"


def test_customer_follow_up_after_reply_waits_on_team() -> None:
    case = customer(
        staff(customer(new_case(), T0), T0 + timedelta(hours=1)), T0 + timedelta(hours=3)
    )
    assert case.status is CaseStatus.WAITING_ON_TEAM and case.unanswered_contacts == 1


def test_automated_mail_never_changes_status() -> None:
    case = close(staff(customer(new_case(), T0), T0), at=T0, actor=None, why="done").case
    change = apply_message(
        case, kind=Kind.AUTOMATED, sender="mailer-daemon@x", at=T0, message_pk=3, why="bounce"
    )
    assert change.case == case
    assert [e.kind for e in change.events] == [EventKind.AUTOMATED_IN]


def test_closed_case_reopens_when_customer_writes() -> None:
    closed = close(
        customer(new_case(), T0), at=T0, actor="alice@example.com", why="done folder"
    ).case
    assert closed.status is CaseStatus.CLOSED and closed.closed_at == T0
    change = apply_message(
        closed,
        kind=Kind.CUSTOMER,
        sender=CUSTOMER,
        at=T0 + timedelta(days=1),
        message_pk=4,
        why="x",
    )
    assert change.case.status is CaseStatus.WAITING_ON_TEAM and change.case.closed_at is None
    assert EventKind.REOPENED in [e.kind for e in change.events]


def test_close_reopen_and_assign_are_idempotent() -> None:
    case = customer(new_case(), T0)
    closed = close(case, at=T0, actor=None, why="x")
    assert close(closed.case, at=T0, actor=None, why="x").events == ()
    reopened = reopen(closed.case, at=T0, actor="bob@example.com", why="cli")
    assert reopened.case.status is CaseStatus.WAITING_ON_TEAM
    assert reopen(reopened.case, at=T0, actor=None, why="x").events == ()
    first = assign(case, "Bob@Example.com", at=T0, actor="lead@example.com", why="cli").case
    assert first.owner == "bob@example.com" and first.owner_changes == 1
    assert assign(first, "bob@example.com", at=T0, actor=None, why="x").events == ()
