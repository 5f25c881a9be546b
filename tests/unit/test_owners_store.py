"""Owners on a real SQLite store (issue 12 part 2, issue 13's `away`): no mail server.

An owner from the start by policy over a week with a holiday and a planned vacation; a
member's own out-of-office marks them away, moves their cases (each move on the
timeline), tells the lead once, and reminders go to the new owner; the predictor counts
only the staff on duty.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.cli.status import away_today
from keepword.config import AwayEntry, OwnersSettings
from keepword.domain.cases import CaseState
from keepword.domain.model import CaseStatus
from keepword.pipeline import send
from keepword.pipeline.context import MailboxContext
from keepword.store import away as away_store
from keepword.store import cases as case_store
from keepword.store.tables import case
from tests.fixtures.chase_store import ALICE, CAROL, StoreDesk
from tests.fixtures.desk import TEAM_PROOF, mail

BOB = "bob@example.com"
DAVE = "dave@example.com"
MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # business hours Mon-Fri 09:00-17:00 UTC
HOLIDAY = date(2026, 11, 4)  # Wednesday: the company is closed
BOB_AWAY = {"address": BOB, "start": date(2026, 11, 5), "back_on": date(2026, 11, 9)}


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


@pytest.fixture
def make_desk(tmp_path: Path) -> Iterator[Any]:
    made: list[StoreDesk] = []

    def make(**mailbox: Any) -> StoreDesk:
        folder = tmp_path / str(len(made))
        folder.mkdir()
        options: dict[str, Any] = {
            "team": [ALICE, BOB, DAVE],
            "calendar": {"timezone": "UTC", "closed_dates": [HOLIDAY]},
            **mailbox,
        }
        desk = StoreDesk(folder, **options)
        desk.triage(at(0, 8))  # first contact: an empty mailbox
        made.append(desk)
        return desk

    yield make
    for desk in made:
        desk.engine.dispose()


def customer_case(desk: StoreDesk, when: datetime, n: int) -> CaseState:
    """A new customer writes at `when` and triage runs then: the case it opened."""
    desk.deliver(mail((f"Customer {n}", f"c{n}@example.org"), f"Question {n}", date=when), when)
    assert desk.triage(when).opened == 1
    return newest(desk)


def newest(desk: StoreDesk) -> CaseState:
    with desk.engine.connect() as conn:
        pk = conn.execute(select(case.c.id).order_by(case.c.id.desc()).limit(1)).scalar_one()
        return case_store.load_case(conn, pk)


def load(desk: StoreDesk, case_id: int | None) -> CaseState:
    assert case_id is not None
    with desk.engine.connect() as conn:
        return case_store.load_case(conn, case_id)


def out_of_office(
    sender: str, when: datetime, body: str, subject: str, *, proof: bool = True
) -> Any:
    """A member's auto-reply, with her server's proof (docs/trust.md) or forged."""
    headers = {"Auto-Submitted": "auto-replied", **(TEAM_PROOF if proof else {})}
    return mail(("Away", sender), subject, body, date=when, headers=headers)


def test_round_robin_through_a_week_with_a_holiday_and_a_vacation(make_desk: Any) -> None:
    desk = make_desk(owners={"policy": "round_robin", "away": [BOB_AWAY]})
    arrivals = [
        (at(0, 10), ALICE),  # Monday: after nobody, the first of the team
        (at(0, 11), BOB),
        (at(1, 10), DAVE),
        (at(1, 20), ALICE),  # Tuesday night: for Thursday (Wednesday closed, Bob away)
        (at(2, 10), DAVE),  # the holiday: for Thursday, Bob still away
        (at(3, 10), ALICE),  # Thursday: Bob away
        (at(4, 10), DAVE),  # Friday: Bob away
        (at(7, 10), ALICE),  # next Monday: Bob back ...
        (at(7, 11), BOB),  # ... and in the ring again
    ]
    owners = []
    for n, (when, _) in enumerate(arrivals):
        owners.append(customer_case(desk, when, n).owner)
    assert owners == [owner for _, owner in arrivals]
    night = newest_with(desk, "Question 3")
    [line] = [d for k, d in desk.events(night) if k == "owner_changed"]
    assert (
        line
        == f"owner (none) -> {ALICE}: owner policy: round robin after {DAVE}, on duty 2026-11-05"
    )


def newest_with(desk: StoreDesk, subject: str) -> int:
    with desk.engine.connect() as conn:
        return int(conn.execute(select(case.c.id).where(case.c.subject == subject)).scalar_one())


def test_least_open_skips_the_vacation_and_counts_open_cases(make_desk: Any) -> None:
    desk = make_desk(owners={"away": [BOB_AWAY]})  # least_open is the default
    assert desk.box.owners.policy == "least_open"
    owners = [customer_case(desk, at(0, 9, n), n).owner for n in range(4)]
    assert owners == [ALICE, BOB, DAVE, ALICE]  # ties in team order
    # Thursday, Bob away: Dave (1 open) before Bob (1 open, away), then Alice/Dave tie.
    assert customer_case(desk, at(3, 10), 10).owner == DAVE
    assert customer_case(desk, at(3, 11), 11).owner == ALICE


def test_policy_none_keeps_the_old_way(make_desk: Any) -> None:
    desk = make_desk(owners={"policy": "none"})
    opened = customer_case(desk, at(0, 10), 0)
    assert opened.owner is None
    assert "owner_changed" not in [k for k, _ in desk.events(opened.id)]
    # reminders of an unowned case go to the members, as before
    desk.chase(at(0, 14))
    [reminder] = [r for r in desk.outbox() if r.kind == "reminder"]
    assert reminder.recipients == [ALICE, BOB, DAVE]


def test_an_out_of_office_moves_the_cases_and_the_lead_hears_once(make_desk: Any) -> None:
    desk = make_desk(team=[ALICE, BOB])
    first, second, third = (customer_case(desk, at(0, 9, n), n) for n in range(3))
    assert (first.owner, second.owner, third.owner) == (ALICE, BOB, ALICE)

    reply = out_of_office(
        ALICE,
        at(0, 12),
        "Thank you for your mail. I am out of the office until 6 November 2026.",
        f"Automatic reply: [{first.reference}] Question 0",
    )
    desk.deliver(reply, at(0, 12))
    desk.triage(at(0, 12))
    assert load(desk, first.id).owner == BOB and load(desk, third.id).owner == BOB
    assert load(desk, second.id).owner == BOB
    assert load(desk, first.id).owner_changes == 1, "an absence is no ping-pong"
    kinds = [k for k, _ in desk.events(first.id)]
    assert kinds[-3:] == ["away", "owner_changed", "automated_in"]  # it joined KW-1 too
    moved = dict(desk.events(third.id))
    assert moved["away"] == f"{ALICE} is away until 2026-11-07"
    assert f"{ALICE} is away" in moved["owner_changed"]
    with desk.engine.connect() as conn:
        [period] = away_store.recorded_away(conn, "support", date(2026, 11, 1))
    assert (period.start, period.back_on) == (date(2026, 11, 2), date(2026, 11, 7))
    with desk.engine.connect() as conn:  # the line `keepword status` prints
        assert away_today(conn, desk.box, at(0, 12)) == [
            f"{ALICE} until 2026-11-07 (out-of-office auto-reply)"
        ]
    # the out-of-office is never answered, and the lead hears once
    notices = [r for r in desk.outbox() if r.kind == "away_notice"]
    assert [n.recipients for n in notices] == [[CAROL]]
    assert notices[0].subject == f"Away: {ALICE} until 2026-11-07"
    assert not [r for r in desk.outbox() if ALICE in r.recipients]

    again = out_of_office(
        ALICE, at(0, 15), "Out of the office until 6 November 2026.", "Out of office"
    )
    desk.deliver(again, at(0, 15))
    desk.triage(at(0, 15))
    assert len([r for r in desk.outbox() if r.kind == "away_notice"]) == 1

    # new cases skip her; the reminders of her old cases go to the new owner
    assert customer_case(desk, at(1, 9), 5).owner == BOB
    desk.chase(at(0, 13, 30))  # 4.5 of 8 business hours of case 0: its first reminder
    reminders = [r for r in desk.outbox() if r.kind == "reminder"]
    assert reminders and all(r.recipients == [BOB] for r in reminders)
    # back on the first day back: new cases reach her again (fewest open)
    assert customer_case(desk, at(7, 9), 6).owner == ALICE


def test_an_out_of_office_without_a_date_ends_when_she_writes(make_desk: Any) -> None:
    desk = make_desk(team=[ALICE, BOB])
    customer_case(desk, at(0, 9), 0)
    desk.deliver(out_of_office(ALICE, at(0, 10), "I am away.", "Out of office"), at(0, 10))
    desk.triage(at(0, 10))
    with desk.engine.connect() as conn:
        [period] = away_store.recorded_away(conn, "support", date(2026, 11, 1))
    assert period.back_on == date(2026, 11, 9)  # the default: a week
    assert customer_case(desk, at(1, 9), 1).owner == BOB
    note = mail(("Alice", ALICE), "Lunch?", "Back early.", to=BOB, date=at(1, 10),
                headers=TEAM_PROOF)  # fmt: skip
    desk.deliver(note, at(1, 10))
    desk.triage(at(1, 10))
    assert customer_case(desk, at(1, 11), 2).owner == ALICE


def test_a_forged_out_of_office_moves_nothing(make_desk: Any) -> None:
    """An auto-reply in Alice's name without her server's proof is no absence of hers."""
    desk = make_desk(team=[ALICE, BOB])
    mine = customer_case(desk, at(0, 9), 0)
    forged = out_of_office(ALICE, at(0, 10), "Away until 2026-11-20.", "Out of office", proof=False)
    desk.deliver(forged, at(0, 10))
    desk.triage(at(0, 10))
    with desk.engine.connect() as conn:
        assert away_store.recorded_away(conn, "support", date(2026, 11, 1)) == []
    assert load(desk, mine.id).owner == mine.owner
    assert [r for r in desk.outbox() if r.kind == "away_notice"] == []


def test_a_planned_absence_moves_the_cases_on_its_first_day(make_desk: Any) -> None:
    desk = make_desk(team=[ALICE, BOB], owners={"away": [BOB_AWAY]})
    opened = customer_case(desk, at(0, 9, 1), 1)
    opened = customer_case(desk, at(0, 9, 2), 2)
    assert opened.owner == BOB
    desk.chase(at(2, 23))  # Wednesday: still his
    assert load(desk, opened.id).owner == BOB
    desk.chase(at(3, 0, 5))  # Thursday, his first day away
    assert load(desk, opened.id).owner == ALICE
    desk.chase(at(3, 0, 6))
    notices = [r for r in desk.outbox() if r.kind == "away_notice"]
    assert [n.recipients for n in notices] == [[CAROL]]


def test_a_vacation_raises_the_promise(make_desk: Any) -> None:
    """Issue 13: the predictor's `away` input comes from the config and the store."""
    desk = make_desk(team=[ALICE, BOB], promise={"min_history_cases": 5})
    start = MONDAY - timedelta(days=28)
    with desk.engine.begin() as conn:
        for day in range(20):
            when = start + timedelta(days=day, hours=10)
            if when.weekday() >= 5:
                continue
            for n in range(3):
                opened = when + timedelta(minutes=40 * n)
                saved = case_store.save_case(
                    conn,
                    CaseState(
                        None, "support", "KW", CaseStatus.WAITING_ON_CUSTOMER, opened, opened,
                        customer=f"h{day}-{n}@example.org",
                        first_response_at=opened + timedelta(hours=2),
                    ),
                    prefix="KW",
                )  # fmt: skip
                assert saved.id is not None
    for n in range(3):  # a queue now
        desk.new_case(at(0, 9, n), customer=f"q{n}@example.org")

    now = at(0, 10)
    on_holiday = desk.box.model_copy(
        update={
            "owners": OwnersSettings(away=[AwayEntry(**BOB_AWAY | {"start": date(2026, 11, 2)})])
        }
    )
    with desk.engine.connect() as conn:
        everyone = MailboxContext(desk.settings, desk.box, desk.engine, desk.renderer, now)
        half = MailboxContext(desk.settings, on_holiday, desk.engine, desk.renderer, now)
        usual = everyone.honest_window(conn)
        vacation = half.honest_window(conn)
    assert not usual.is_default
    assert vacation.basis["on_duty"] == 0.5 and usual.basis["on_duty"] == 1.0
    assert vacation.minutes > usual.minutes


def test_a_case_nobody_can_own_reminds_the_lead_not_the_team(make_desk: Any) -> None:
    long_away = {"address": ALICE, "start": date(2026, 11, 1), "back_on": date(2026, 12, 14)}
    desk = make_desk(team=[ALICE], owners={"away": [long_away]})
    opened = customer_case(desk, at(0, 10), 0)
    assert opened.owner is None
    assert ("owner_changed", "no owner: nobody on the team is on duty in the next weeks") in (
        desk.events(opened.id)
    )
    desk.chase(at(0, 14, 30))
    [reminder] = [r for r in desk.outbox() if r.kind == "reminder"]
    assert reminder.recipients == [CAROL]


def test_a_member_the_relay_refuses_is_away_their_cases_move_and_the_lead_hears(
    make_desk: Any,
) -> None:
    """Bob left and nobody fixed the config: the relay refuses his reminders for good.
    He is away as if out of office without a date: his cases move, new ones skip him,
    the lead hears why, and his own next mail ends it."""
    desk = make_desk(team=[ALICE, BOB])
    _, second = (customer_case(desk, at(0, 9, n), n) for n in range(2))
    assert second.owner == BOB
    refused = {BOB: "550 5.1.1 no such user", CAROL: "550 5.1.1 no such user"}
    with desk.engine.begin() as conn:  # as the drain records a refused reminder
        send._members_refused(conn, desk.box, refused, at(0, 13).date(), at(0, 13))
    desk.chase(at(0, 13, 1))
    assert load(desk, second.id).owner == ALICE
    [notice] = [r for r in desk.outbox() if r.kind == "away_notice"]
    assert notice.recipients == [CAROL]
    text = " ".join(message_from_bytes(notice.raw, policy=default).get_content().split())
    assert f"{BOB} is away until 2026-11-09 (mail to them is refused for good: 550 5.1.1" in text
    with desk.engine.connect() as conn:  # the lead is not a member: never made away
        assert [p.address for p in away_store.recorded_away(conn, "support", at(0, 0).date())] == [
            BOB
        ]
    assert customer_case(desk, at(0, 14), 5).owner == ALICE
    staff = mail(("Bob", BOB), "Re: hello", headers=TEAM_PROOF, to="ann@example.org")
    desk.deliver(staff, at(0, 15), folder="Sent")
    desk.triage(at(0, 15))
    with desk.engine.connect() as conn:  # he wrote: back today, away no longer
        assert away_store.recorded_away(conn, "support", at(0, 0).date()) == []
