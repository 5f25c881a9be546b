from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.chase import update_key
from keepword.domain.ledger import CaseRecord, Ledger, Period, SentAction, compute_ledger
from keepword.domain.model import OutboxKind, PromiseAudience, PromiseKind, PromiseState
from keepword.domain.promises import Promise, break_if_due, keep, supersede, withdraw

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(days=7)
PERIOD = Period(SINCE, UNTIL)
NOW = UNTIL


class AlwaysOpen:
    def add(self, start: datetime, minutes: float) -> datetime:
        return start + timedelta(minutes=minutes)

    def minutes_between(self, start: datetime, end: datetime) -> float:
        return max(0.0, (end - start) / timedelta(minutes=1))


CLOCKS = {"support": AlwaysOpen(), "billing": AlwaysOpen()}


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def customer_case(
    case_id: int, opened: float, answered: float | None, box: str = "support"
) -> CaseRecord:
    return CaseRecord(box, case_id, h(opened), None if answered is None else h(answered))


def promise(
    pid: int,
    case_id: int,
    made: float,
    due: float,
    audience: PromiseAudience = PromiseAudience.CUSTOMER,
) -> Promise:
    return Promise(
        id=pid,
        case_id=case_id,
        kind=PromiseKind.FIRST_RESPONSE,
        audience=audience,
        made_at=h(made),
        due_at=h(due),
    )


def sent(kind: OutboxKind, key: str, at: float | None, box: str = "support") -> SentAction:
    return SentAction(box, 1, kind, key, None if at is None else h(at))


def ledger_for(box: str, **kwargs: Any) -> Ledger:
    [ledger] = [lg for lg in compute_ledger(**kwargs) if lg.mailbox == box]
    return ledger


def test_first_response_statistics_in_business_time() -> None:
    cases = [customer_case(i, 1, 1 + i) for i in range(1, 11)]  # 1..10 hours
    cases.append(customer_case(11, 2, None))  # unanswered
    cases.append(customer_case(12, -48, -47))  # opened before the period
    [billing, support] = compute_ledger(cases, [], [], period=PERIOD, now=NOW, clocks=CLOCKS)
    assert billing.mailbox == "billing" and billing.cases == 0
    assert billing.median_first_response_minutes is None
    assert (support.cases, support.answered) == (11, 10)
    assert support.median_first_response_minutes == 5.5 * 60
    assert support.p90_first_response_minutes == 9 * 60  # nearest rank: 9th of 10


def test_business_calendar_leaves_out_the_weekend() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    cal = BusinessCalendar(berlin, {d: [(time(9), time(17))] for d in range(5)})
    opened = datetime(2026, 11, 27, 16, 0, tzinfo=berlin)  # Friday 16:00
    answered = datetime(2026, 11, 30, 10, 0, tzinfo=berlin)  # Monday 10:00
    case = CaseRecord("support", 1, opened, answered)
    [ledger] = compute_ledger(
        [case],
        [],
        [],
        period=Period(opened - timedelta(days=1), answered),
        now=answered,
        clocks={"support": cal},
    )
    assert ledger.median_first_response_minutes == 120


def test_promise_outcomes_and_silent_breaches() -> None:
    cases = [customer_case(i, 0, None) for i in range(1, 8)]
    kept = keep(promise(1, 1, 0, 8), h(4))
    late_reply = keep(promise(2, 2, 0, 8), h(9))  # broken, nobody told the customer
    revised = supersede(promise(3, 3, 0, 8), 30, h(7))
    revision = promise(30, 3, 7, 16)  # the update's new promise, still running
    withdrawn = withdraw(promise(4, 4, 0, 8), h(2), "case closed")
    overdue_open = promise(5, 5, 0, 8)  # the chase has not recorded it yet: broken, silent
    announced = replace(
        promise(6, 6, 0, 8), state=PromiseState.BROKEN, resolved_at=h(8)
    )  # an update went out in time but the supersede did not happen
    team = replace(promise(7, 7, 0, 8, PromiseAudience.TEAM), state=PromiseState.BROKEN)
    team_ok = keep(promise(8, 7, 0, 8, PromiseAudience.TEAM), h(1))
    before_period = promise(9, 1, -30, -20)
    actions = [
        sent(OutboxKind.CUSTOMER_UPDATE, update_key(3, 3), 7),
        sent(OutboxKind.CUSTOMER_UPDATE, update_key(6, 6), 7.5),
        sent(OutboxKind.CUSTOMER_UPDATE, update_key(6, 6), 7.9),  # a retry, later
    ]
    ledger = ledger_for(
        "support",
        cases=cases,
        promises=[
            kept,
            late_reply,
            revised,
            revision,
            withdrawn,
            overdue_open,
            announced,
            team,
            team_ok,
            before_period,
        ],
        actions=actions,
        period=PERIOD,
        now=NOW,
        clocks=CLOCKS,
    )
    assert ledger.promises_made == 7
    assert ledger.promises_kept == 1
    assert ledger.promises_broken == 4  # 2, 5, 6 and the revision 30
    assert ledger.promises_superseded == 1
    assert ledger.promises_withdrawn == 1
    assert ledger.promises_open == 0  # the revision is past due at NOW
    assert ledger.silent_breaches == 3  # 2, 5 and the revision 30
    assert (ledger.team_targets_made, ledger.team_targets_missed) == (2, 1)
    assert ledger.customer_updates_sent == 3


def test_an_update_sent_after_due_does_not_make_a_breach_announced() -> None:
    cases = [customer_case(1, 0, None)]
    broken = replace(promise(1, 1, 0, 8), state=PromiseState.BROKEN, resolved_at=h(8))
    actions = [sent(OutboxKind.CUSTOMER_UPDATE, update_key(1, 1), 30)]  # daemon was down
    [ledger] = compute_ledger(
        cases,
        [broken],
        actions,
        period=PERIOD,
        now=NOW,
        clocks={"support": AlwaysOpen()},
    )
    assert ledger.silent_breaches == 1


def test_a_running_promise_is_open_not_broken() -> None:
    cases = [customer_case(1, 0, None)]
    running = promise(1, 1, 0, 8)
    [ledger] = compute_ledger(
        cases, [running], [], period=PERIOD, now=h(4), clocks={"support": AlwaysOpen()}
    )
    assert (ledger.promises_open, ledger.promises_broken, ledger.silent_breaches) == (1, 0, 0)


def test_sent_mail_is_counted_per_kind_mailbox_and_period() -> None:
    actions = [
        sent(OutboxKind.REMINDER, "reminder:case:1:promise:1:50", 1),
        sent(OutboxKind.REMINDER, "reminder:case:1:promise:1:80", 2),
        sent(OutboxKind.REMINDER, "reminder:case:1:promise:2:50", None),  # not sent
        sent(OutboxKind.REMINDER, "reminder:case:1:promise:3:50", -5),  # before the period
        sent(OutboxKind.ESCALATION, "escalation:case:1:promise:1", 3),
        sent(OutboxKind.ESCALATION, "escalation:case:1:unpromised", 3, box="billing"),
        sent(OutboxKind.ACKNOWLEDGEMENT, "ack:case:1", 0),
    ]
    [billing, support] = compute_ledger([], [], actions, period=PERIOD, now=NOW, clocks=CLOCKS)
    assert (support.reminders_sent, support.escalations_sent) == (2, 1)
    assert (billing.reminders_sent, billing.escalations_sent) == (0, 1)
    assert support.customer_updates_sent == 0


def test_a_mailbox_without_a_calendar_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        compute_ledger(
            [customer_case(1, 0, 1, box="unknown")],
            [],
            [],
            period=PERIOD,
            now=NOW,
            clocks=CLOCKS,
        )


def test_a_breach_whose_update_the_rate_limit_held_back_is_broken_but_not_silent() -> None:
    """The limit had no slot before due (recorded on the case then): broken, counted
    apart, never silent; an unannounced breach beside it still is."""
    held = break_if_due(promise(1, 1, 0, 8), h(9), held=True)
    silent = break_if_due(promise(2, 2, 0, 8), h(9))
    ledger = ledger_for(
        "support",
        cases=[customer_case(1, 0, None), customer_case(2, 0, None)],
        promises=[held, silent],
        actions=[sent(OutboxKind.CUSTOMER_UPDATE, update_key(1, 1), 20)],  # the late update
        period=PERIOD,
        now=NOW,
        clocks=CLOCKS,
    )
    assert (ledger.promises_broken, ledger.breaches_held_back, ledger.silent_breaches) == (2, 1, 1)
