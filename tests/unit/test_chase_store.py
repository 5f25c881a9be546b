"""The chase step over a real SQLite store: limits on customer updates, no updates to
robots or another keepword, and per-item isolation (no mail servers: see
tests/fixtures/chase_store.py; the mail itself is covered in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from keepword.domain import promises as promise_rules
from keepword.domain.model import PromiseAudience, PromiseState
from keepword.domain.promises import HELD_BACK
from keepword.mail.render import Rendered
from keepword.pipeline import chase as chasing
from keepword.pipeline.context import MailboxContext
from keepword.store import cases as case_store
from tests.fixtures.chase_store import ANN, CAROL, StoreDesk, most_in_a_day

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # business hours Mon-Fri 09:00-17:00 UTC


def at(hour: int, minute: int = 0, day: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


CUSTOMER_MAIL = ("acknowledgement", "follow_up_note", "customer_update")


@pytest.fixture
def make_desk(tmp_path: Path) -> Iterator[Any]:
    made: list[StoreDesk] = []

    def make(**mailbox: Any) -> StoreDesk:
        desk = StoreDesk(tmp_path / str(len(made)), **mailbox)
        made.append(desk)
        return desk

    for i in range(3):
        (tmp_path / str(i)).mkdir()
    yield make
    for desk in made:
        desk.engine.dispose()


def acknowledged_case(desk: StoreDesk, customer: str = ANN) -> int:
    """A case opened at 09:00 Monday, acknowledged with the default 8 business hours."""
    opened = at(9)
    case_id = desk.new_case(opened, customer=customer)
    desk.promise(case_id, opened, at(17))
    desk.automatic_mail(case_id, customer, opened)
    return case_id


def rows(desk: StoreDesk, kind: str) -> list[Any]:
    return [r for r in desk.outbox() if r.kind == kind]


# -- customer updates obey the per-address limit ------------------------------------------


def test_an_update_the_hourly_limit_holds_back_goes_out_at_its_slot_before_due(
    make_desk: Any,
) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk)
    for minute in (20, 30, 40):  # three other automatic mails to Ann in the last hour
        desk.automatic_mail(None, ANN, at(15, minute))
    result = desk.chase(at(16))  # the update zone (60 min before 17:00) begins

    assert result.updates == 1 and result.failed == 0
    [update] = rows(desk, "customer_update")
    assert update.next_attempt_at == at(16, 20) and update.sent_at is None  # held, not sent
    old, new = desk.promises(case_id)
    # The new promise runs from when the update goes out; the old one is superseded then.
    assert new.made_at == at(16, 20) and new.due_at > old.due_at
    assert old.state is PromiseState.SUPERSEDED and old.resolved_at == at(16, 20)
    assert any("held by the rate limit until" in d for _, d in desk.events(case_id))

    desk.chase(at(16, 20))
    [update] = rows(desk, "customer_update")
    assert update.sent_at == at(16, 20) < old.due_at
    sent = desk.sent_to(ANN, CUSTOMER_MAIL)
    assert all(len([t for t in sent if u - timedelta(hours=1) < t <= u]) <= 3 for u in sent)


def test_an_update_without_a_slot_before_due_is_held_back_and_the_breach_is_not_silent(
    make_desk: Any,
) -> None:
    desk = make_desk(limits={"per_sender_per_day": 3, "per_sender_per_hour": 20})
    case_id = acknowledged_case(desk)  # mail 1 at 09:00
    desk.automatic_mail(None, ANN, at(10))
    desk.automatic_mail(None, ANN, at(11))  # 3 in 24 h: the next slot is Tuesday 09:00
    result = desk.chase(at(16))

    assert rows(desk, "customer_update") == []
    assert result.escalations == 1  # the lead hears the promise is about to break
    notes = [d for k, d in desk.events(case_id) if k == "customer_update"]
    assert len(notes) == 1 and "held back by the rate limit" in notes[0]
    desk.chase(at(16, 30))
    assert len([d for k, d in desk.events(case_id) if k == "customer_update"]) == 1  # said once

    breach = desk.chase(at(17, 1))
    assert (breach.breaches, breach.silent_breaches) == (1, 0)
    old = desk.promises(case_id)[0]
    assert old.state is PromiseState.BROKEN and old.reason.startswith(HELD_BACK)
    assert promise_rules.is_held_back(old)
    # The late, honest update waits for the limit's slot, and its promise runs from there.
    [late] = rows(desk, "customer_update")
    assert late.next_attempt_at == at(9, day=1)
    assert desk.promises(case_id)[1].made_at == at(9, day=1)


def test_a_ticket_system_opening_a_case_per_mail_never_gets_more_than_the_limit(
    make_desk: Any,
) -> None:
    """The customer's ticket system answers every mail under a new subject: a case per
    mail. Acknowledgements and updates together stay within the per-address limits."""
    desk = make_desk()
    tickets = "tickets@customer.example"
    results = []
    for day in range(3):
        for n in range(8):  # eight cases a day, acknowledged as the limits allow
            opened = at(9, 30 * n, day=day)
            case_id = desk.new_case(opened, customer=tickets)
            desk.promise(case_id, opened, at(17, day=day))
            desk.limited_acknowledgement(case_id, tickets, opened)
        for minute in range(9 * 60, 24 * 60, 10):
            results.append(desk.chase(MONDAY + timedelta(days=day, minutes=minute)))
    sent = desk.sent_to(tickets, CUSTOMER_MAIL)
    assert len(rows(desk, "customer_update")) > 0
    assert most_in_a_day(sent) <= desk.box.limits.per_sender_per_day
    assert all(len([t for t in sent if u - timedelta(hours=1) < t <= u]) <= 3 for u in sent)
    assert sum(r.silent_breaches for r in results) == 0
    assert sum(r.failed for r in results) == 0


# -- no updates to robots and other keepwords ---------------------------------------------

OTHER_KEEPWORD = {
    "X-Keepword-Loop": ["help@other.example"],
    "Auto-Submitted": ["auto-replied"],
}


def test_no_update_to_another_keepword_its_promise_becomes_a_team_target(make_desk: Any) -> None:
    desk = make_desk()
    other = "help@other.example"
    case_id = acknowledged_case(desk, other)
    desk.stored_mail(other, at(9, 1), kind="automated", headers=OTHER_KEEPWORD)
    results = [desk.chase(at(16) + timedelta(minutes=m)) for m in range(0, 3 * 24 * 60, 10)]

    assert rows(desk, "customer_update") == []
    first, target = desk.promises(case_id)
    assert first.state is PromiseState.WITHDRAWN
    assert "another keepword installation" in first.reason
    assert target.audience is PromiseAudience.TEAM and target.due_at == first.due_at
    assert ("promise_withdrawn", f"no customer update: {first.reason.split(': ', 1)[1]}") in (
        desk.events(case_id)
    )
    # The chase goes on inside the team: reminders, the lead, a recorded (internal) breach.
    assert rows(desk, "reminder") and rows(desk, "escalation")
    assert target.state is PromiseState.BROKEN and sum(r.silent_breaches for r in results) == 0


@pytest.mark.parametrize(
    ("customer", "headers", "subject"),
    [
        ("noreply@shop.example", None, None),
        ("tickets@customer.example", {"Auto-Submitted": ["auto-replied"]}, "Ticket 7 opened"),
        ("news@list.example", {"List-Id": ["<news.list.example>"]}, "Weekly news"),
    ],
)
def test_no_update_to_a_robot(
    make_desk: Any, customer: str, headers: dict[str, list[str]] | None, subject: str | None
) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk, customer)
    if headers is not None:
        desk.stored_mail(customer, at(9, 1), kind="automated", headers=headers, subject=subject)
    desk.chase(at(16))
    assert rows(desk, "customer_update") == []
    assert desk.promises(case_id)[0].state is PromiseState.WITHDRAWN


def test_a_person_out_of_office_still_gets_the_update(make_desk: Any) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk)
    desk.stored_mail(
        ANN,
        at(9, 1),
        kind="automated",
        headers={"Auto-Submitted": ["auto-replied"]},
        subject="Out of office: Help",
    )
    desk.stored_mail(  # another keepword's loop header naming *our* address is our own mail
        ANN, at(9, 2), kind="own", headers={"X-Keepword-Loop": ["support@example.com"]}
    )
    assert desk.chase(at(16)).updates == 1
    assert desk.promises(case_id)[0].state is PromiseState.SUPERSEDED


# -- per-item isolation --------------------------------------------------------------------


def failing_render(real: Any, name: str) -> Any:
    def render(self: Any, template: str, language: str, context: Any) -> Rendered:
        if template == name:
            raise RuntimeError(f"broken template {name}")
        return real(self, template, language, context)

    return render


def test_a_broken_update_template_does_not_keep_the_breach_or_the_lead_from_the_case(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk)
    monkeypatch.setattr(
        type(desk.renderer), "render", failing_render(type(desk.renderer).render, "customer_update")
    )
    result = desk.chase(at(17, 30))  # past due: breach, late update (fails), escalation

    assert result.failed == 1 and result.breaches == 1 and result.escalations == 1
    assert desk.promises(case_id)[0].state is PromiseState.BROKEN
    assert [r.recipients for r in rows(desk, "escalation")] == [[CAROL]]


def test_one_promise_failing_to_settle_does_not_keep_the_others_open(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk)
    second = desk.promise(case_id, at(9), at(16), audience=PromiseAudience.TEAM)
    with desk.engine.begin() as conn:
        state = case_store.load_case(conn, case_id)
        case_store.save_case(conn, chasing.cases.close(state, at=at(12), actor=None, why="x").case)
    real = chasing.withdraw

    def withdraw(value: Any, now: datetime, why: str) -> Any:
        if value.id == second.id:
            raise RuntimeError("bad row")
        return real(value, now, why)

    monkeypatch.setattr(chasing, "withdraw", withdraw)
    result = desk.chase(at(12, 1))
    assert (result.withdrawn, result.failed) == (1, 1)
    states = {p.id: p.state for p in desk.promises(case_id)}
    assert states[second.id] is PromiseState.OPEN
    assert list(states.values()).count(PromiseState.WITHDRAWN) == 1


def test_a_failing_digest_does_not_escape_the_chase_step(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk(chase={"digest": True})
    acknowledged_case(desk)

    def broken(*_: Any) -> Any:
        raise RuntimeError("digest query failed")

    monkeypatch.setattr(chasing, "digest_context", broken)
    result = desk.chase(at(13))  # the 50% reminder, and the digest time has passed
    assert (result.reminders, result.digests, result.failed) == (1, 0, 1)


def test_a_failing_case_does_not_stop_the_others(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk()
    first, second = acknowledged_case(desk), acknowledged_case(desk, "bob@example.org")
    real = case_store.load_case

    def load(conn: Any, case_id: int) -> Any:
        if case_id == first:
            raise RuntimeError("bad row")
        return real(conn, case_id)

    monkeypatch.setattr(case_store, "load_case", load)
    result = desk.chase(at(13))
    assert (result.failed, result.cases, result.reminders) == (1, 1, 1)
    assert [r.case_id for r in rows(desk, "reminder")] == [second]


def test_the_digest_lists_cases_that_tie_by_case_number(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cases opened in the same second, no promise: the order is the case number's,
    whatever order the database returns the tie in."""
    desk = make_desk(chase={"digest": True})
    ids = [desk.new_case(at(9)), desk.new_case(at(9))]
    real = case_store.list_cases
    monkeypatch.setattr(case_store, "list_cases", lambda *a, **k: list(reversed(real(*a, **k))))
    desk_state = MailboxContext(desk.settings, desk.box, desk.engine, desk.renderer, at(10))
    with desk.engine.connect() as conn:
        context = chasing.digest_context(conn, desk_state)
    assert [c.reference for c in context.open_by_urgency] == [f"KW-{i}" for i in ids]


# -- the new time in an update is the residual time --------------------------------------


def test_an_update_promises_the_residual_time_and_says_the_case_has_waited(
    make_desk: Any,
) -> None:
    desk = make_desk()
    case_id = acknowledged_case(desk)
    result = desk.chase(at(16))  # 7 business hours waited, the update zone begins

    assert result.updates == 1
    _old, new = desk.promises(case_id)
    assert new.basis.get("waited_minutes") == 7 * 60, "the case's own wait is evidence"
    [update] = rows(desk, "customer_update")
    text = " ".join(update.raw.decode("utf-8", "replace").split())
    assert "Your case has already waited 7 business hours" in text


# -- a customer the relay refuses for good -------------------------------------------------

REFUSED = "550 5.1.1 <ann@example.org>: no such user"  # tests.fixtures.chase_store's reply


def test_a_customer_the_relay_refused_gets_no_update_and_the_owner_is_told_once(
    make_desk: Any,
) -> None:
    """The acknowledgement came back 550: the customer promise becomes the team's own
    target, no update is tried a second time, and the team hears of it once."""
    desk = make_desk()
    opened = at(9)
    case_id = desk.new_case(opened)
    desk.promise(case_id, opened, at(17))
    desk.refused_mail(case_id, ANN, opened + timedelta(seconds=5))
    results = [desk.chase(at(9, 1) + timedelta(minutes=m)) for m in range(0, 2 * 24 * 60, 10)]

    assert desk.sent_to(ANN, CUSTOMER_MAIL) == []
    first, target = desk.promises(case_id)
    assert first.state is PromiseState.WITHDRAWN and "550 5.1.1" in first.reason
    assert target.audience is PromiseAudience.TEAM and target.due_at == first.due_at
    [notice] = rows(desk, "customer_unreachable")
    assert sum(r.notices for r in results) == 1
    assert notice.recipients == [CAROL]  # nobody owns it: the lead (owner policy)
    text = plain_text(notice.raw)
    assert "550 5.1.1" in text and "reach them another way" in text
    told = f"the acknowledgement to {ANN} was refused for good: {REFUSED}: to {CAROL}"
    assert ("unreachable", told) in desk.events(case_id)
    assert f"cannot be reached by mail: {told.rsplit(': to ', 1)[0]}." in text
    # The team's chase goes on: reminders and the lead, an internal breach, none silent.
    assert rows(desk, "reminder") and rows(desk, "escalation")
    assert sum(r.silent_breaches for r in results) == 0


def plain_text(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_a_refused_customer_who_writes_again_is_written_to_again(make_desk: Any) -> None:
    desk = make_desk()
    opened = at(9)
    case_id = desk.new_case(opened)
    desk.promise(case_id, opened, at(17))
    desk.refused_mail(case_id, ANN, opened + timedelta(seconds=5))
    desk.stored_mail(ANN, at(9, 0, 0) + timedelta(seconds=30), kind="person", case_id=case_id)
    assert desk.chase(at(16)).updates == 1  # a sign of life after the refusal
    assert desk.promises(case_id)[0].state is PromiseState.SUPERSEDED
    assert len(rows(desk, "customer_unreachable")) == 1  # the refused ack is still news


def test_mail_from_before_the_refusal_is_no_sign_of_life(make_desk: Any) -> None:
    desk = make_desk()
    opened = at(9)
    case_id = desk.new_case(opened)
    desk.promise(case_id, opened, at(17))
    desk.stored_mail(ANN, opened, kind="person", case_id=case_id)
    desk.refused_mail(case_id, ANN, opened + timedelta(seconds=5))
    assert desk.chase(at(16)).updates == 0
    assert desk.promises(case_id)[0].state is PromiseState.WITHDRAWN


def test_a_refusal_on_one_case_stops_updates_on_the_customers_other_case(
    make_desk: Any,
) -> None:
    desk = make_desk()
    older = acknowledged_case(desk)  # acknowledged at 09:00 and delivered
    newer = desk.new_case(at(10))
    desk.promise(newer, at(10), at(9, day=1))
    desk.refused_mail(newer, ANN, at(10) + timedelta(seconds=5))
    desk.chase(at(16))
    assert rows(desk, "customer_update") == []
    assert desk.promises(older)[0].state is PromiseState.WITHDRAWN
    [notice] = rows(desk, "customer_unreachable")  # told on the case whose mail was refused
    assert notice.case_id == newer
