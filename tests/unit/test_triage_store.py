"""Triage on a real SQLite store, mail stored as ingest stores it: no mail server.

The real-server flows stay in tests/integration; these check triage's own decisions
fast: a case per thread, one acknowledgement, the team's reply keeping the promise, the
done folder closing the case, and a failing message never stopping the ones behind it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.domain.model import PromiseState
from keepword.pipeline import chase as chasing
from keepword.pipeline import send, triage
from keepword.pipeline.acknowledge import acknowledge_case
from keepword.store import outbox as outbox_store
from keepword.store.tables import case, message
from tests.fixtures.chase_store import ALICE, StoreDesk
from tests.fixtures.desk import SUPPORT, mail

MONDAY = datetime(2026, 11, 2, 8, tzinfo=UTC)  # business hours Mon-Fri 09-17 UTC
ANN = ("Ann Lee", "ann@example.org")


def at(hour: int, minute: int = 0) -> datetime:
    return MONDAY.replace(hour=hour, minute=minute)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[StoreDesk]:
    made = StoreDesk(tmp_path)
    made.triage(at(8))  # first contact: an empty mailbox
    yield made
    made.engine.dispose()


def cases_of(desk: StoreDesk) -> list[Any]:
    with desk.engine.connect() as conn:
        return list(conn.execute(select(case).order_by(case.c.id)))


def kinds(desk: StoreDesk) -> list[str]:
    return [row.kind for row in desk.outbox()]


def test_a_customer_mail_opens_a_case_and_is_acknowledged_once(desk: StoreDesk) -> None:
    desk.deliver(mail(ANN, "Charged twice", date=at(9)), at(9))
    result = desk.triage(at(9))
    assert (result.triaged, result.opened, result.acknowledged, result.errors) == (1, 1, 1, [])
    [opened] = cases_of(desk)
    assert (opened.reference, opened.customer) == ("KW-1", ANN[1])
    assert desk.outbox_keys() == [f"ack:{opened.id}"]
    [promised] = desk.promises(opened.id)
    assert promised.state is PromiseState.OPEN and promised.due_at > at(9)
    assert desk.triage(at(9, 5)).triaged == 0  # each message once


def test_a_follow_up_joins_its_case_without_a_second_acknowledgement(desk: StoreDesk) -> None:
    question = desk.deliver(mail(ANN, "Charged twice", date=at(9)), at(9))
    desk.triage(at(9))
    again = mail(ANN, "Re: Charged twice", "Any news?", date=at(10), reply_to=question)
    desk.deliver(again, at(10))
    result = desk.triage(at(10))
    assert (result.triaged, result.opened) == (1, 0)
    assert len(cases_of(desk)) == 1
    assert kinds(desk).count("acknowledgement") == 1


def test_the_teams_reply_from_sent_keeps_the_promise(desk: StoreDesk) -> None:
    question = desk.deliver(mail(ANN, "Charged twice", date=at(9)), at(9))
    desk.triage(at(9))
    reply = mail(
        ("Alice", ALICE),
        "Re: Charged twice",
        "Refunded.",
        to=ANN[1],
        date=at(11),
        reply_to=question,
    )
    desk.deliver(reply, at(11), folder="Sent")
    desk.triage(at(11))
    [answered] = cases_of(desk)
    [kept] = desk.promises(answered.id)
    assert kept.state is PromiseState.KEPT and kept.resolved_at == at(11)
    assert answered.first_response_at == at(11)


def test_moving_a_message_to_done_closes_its_case_once(desk: StoreDesk) -> None:
    question = desk.deliver(mail(ANN, "Charged twice", date=at(9)), at(9))
    desk.triage(at(9))
    desk.deliver(question, at(12), folder="Done")  # the same message, found in Done
    assert desk.triage(at(12)).closed == 1
    assert [row.status for row in cases_of(desk)] == ["closed"]
    assert desk.triage(at(12, 5)).closed == 0


def test_a_failing_message_is_retried_later_and_never_stops_the_next(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk.deliver(mail(("Bob", "bob@example.org"), "Broken", date=at(9)), at(9))
    desk.deliver(mail(ANN, "Charged twice", date=at(9, 1)), at(9, 1))
    real = triage.classify

    def fails_for_bob(facts: Any, **kwargs: Any) -> Any:
        if facts.sender and facts.sender.address == "bob@example.org":
            raise RuntimeError("a defect")
        return real(facts, **kwargs)

    monkeypatch.setattr(triage, "classify", fails_for_bob)
    result = desk.triage(at(9, 2))
    assert (result.triaged, result.opened, len(result.errors)) == (1, 1, 1)
    with desk.engine.connect() as conn:
        bob = conn.execute(select(message).where(message.c.from_addr == "bob@example.org")).one()
    assert bob.triaged_at is None and bob.triage_attempts == 1
    assert at(9, 2) < bob.triage_retry_at <= at(9, 2) + timedelta(minutes=2)  # about a minute
    monkeypatch.setattr(triage, "classify", real)
    assert desk.triage(at(9, 2)).triaged == 0  # not due yet
    assert desk.triage(bob.triage_retry_at).opened == 1


def test_mail_to_the_mailbox_from_itself_opens_no_case(desk: StoreDesk) -> None:
    # Proven by the mailbox's own Sent folder: the team's internal mail, nobody's case.
    desk.deliver(mail(("Support", SUPPORT), "Weekly note", to=ALICE, date=at(9)), at(9), "Sent")
    result = desk.triage(at(9))
    assert (result.triaged, result.opened) == (1, 0)
    assert desk.outbox() == []


def test_an_update_withdrawn_unsent_leaves_the_old_promise_to_the_reply(desk: StoreDesk) -> None:
    """The team replied while the customer update was still held: the update is not sent,
    so the customer still holds the first promise - the reply keeps that one, and the new
    time nobody told them is withdrawn, not counted as kept."""
    question = desk.deliver(mail(ANN, "Charged twice", date=at(9)), at(9))
    desk.triage(at(9))
    [opened] = cases_of(desk)
    [first] = desk.promises(opened.id)
    for minute in (10, 20, 30):  # Ann had all the automatic mail an hour allows
        desk.automatic_mail(None, ANN[1], first.due_at - timedelta(minutes=80 - minute))
    update_zone = first.due_at - timedelta(minutes=60)
    chasing.chase_mailbox(desk.desk_at(update_zone))
    [held] = [row for row in desk.outbox() if row.kind == "customer_update"]
    assert held.next_attempt_at > update_zone and held.sent_at is None

    reply = mail(("Alice", ALICE), "Re: Charged twice", "Refunded.", to=ANN[1],
                 date=update_zone + timedelta(minutes=5), reply_to=question)  # fmt: skip
    desk.deliver(reply, update_zone + timedelta(minutes=5), folder="Sent")
    desk.triage(update_zone + timedelta(minutes=5))
    leaving = held.next_attempt_at
    with desk.engine.connect() as conn:
        due = outbox_store.pending(conn, leaving, mailbox=desk.box.name)
    folder = send._SentFolder(None, None)  # nothing is sent: the withdrawal comes first
    zone = desk.settings.zone_for(desk.box)
    run = send._Run(desk.engine, desk.box, leaving, folder, send.DrainResult(), zone)
    kept = send._withdraw_stale(run, due)
    assert [row.kind for row in kept if row.kind == "customer_update"] == []

    old, new = desk.promises(opened.id)
    assert old.state is PromiseState.KEPT and old.resolved_at == update_zone + timedelta(minutes=5)
    assert old.superseded_by is None
    assert new.state is PromiseState.WITHDRAWN and "never told" in new.reason
    assert any("stands again" in detail for _, detail in desk.events(opened.id))


def test_the_shared_address_without_proof_is_a_person_never_answered(desk: StoreDesk) -> None:
    # issue 12: a team From without proof (here: only in the inbox) is a claim, not the
    # team; it opens a case the team sees, and nothing is mailed to the address it claims.
    desk.deliver(mail(("Support", SUPPORT), "Weekly note", to=ALICE, date=at(9)), at(9))
    result = desk.triage(at(9))
    assert (result.triaged, result.opened, result.acknowledged) == (1, 1, 0)
    assert desk.outbox() == []


def test_triage_up_to_an_instant_and_of_history_alone_leaves_the_rest_waiting(
    desk: StoreDesk,
) -> None:
    """What triage during an import takes (pipeline.history): mail written up to the
    horizon; `keepword import`'s: history only (live mail is the daemon's to answer)."""
    old = mail(("Old Customer", "old@example.org"), "Last year", date=at(9) - timedelta(days=300))
    desk.deliver_raw(old.as_bytes(), at(9), is_history=True)
    desk.deliver_raw(mail(ANN, "Imported", date=at(9, 30)).as_bytes(), at(9), is_history=True)
    desk.deliver(mail(ANN, "Live", date=at(9, 10)), at(9, 10))

    def run(**only: Any) -> int:
        done = triage.triage_pending(desk.desk_at(at(10)), acknowledger=acknowledge_case, **only)
        return done.triaged

    assert run(through=at(9, 20), history_only=True) == 1  # last year's
    assert run(through=at(9, 20)) == 1  # the live one, written before the horizon
    assert run() == 1  # the rest
    with desk.engine.connect() as conn:
        waiting = conn.execute(select(message.c.subject).where(message.c.triaged_at.is_(None)))
        assert list(waiting) == []
    assert [row.subject for row in cases_of(desk)] == ["Last year", "Live", "Imported"]
