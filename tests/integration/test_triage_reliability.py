"""Triage keeps every customer's answer coming: real Dovecot, real aiosmtpd, SQLite or
PostgreSQL, driven as the daemon's poll job runs (ingest + triage + drain).

- two cases opened in the same second do not poison the window (ties are ordered);
- a message whose triage fails is retried later and never blocks the mail behind it;
- a 3 KB subject is triaged on PostgreSQL (bounded subject keys);
- rate limits defer an acknowledgement to when the limit allows, never drop it;
- cases opened by an address that writes like a robot are no backlog.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from keepword.store import triage_state
from keepword.store.tables import case, case_event, message, outbox, promise
from tests.fixtures.desk import ALICE, ANN, mail
from tests.fixtures.desk import Desk as BaseDesk
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.faults import fail_for
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

BOB = ("Bob Roe", "bob@example.net")
CARL = ("Carl Poe", "carl@example.net")
ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Desk(BaseDesk):
    def write(
        self, sender: tuple[str, str], subject: str, *, dated: bool = True, **kw: Any
    ) -> EmailMessage:
        msg = mail(sender, subject, date=self.clock.now, **kw)
        if not dated:
            del msg["Date"]
        return self.arrive(msg)

    def case_of(self, msg: EmailMessage) -> Any:
        mid = msg["Message-ID"].strip("<>")
        with self.engine.connect() as conn:
            row = conn.execute(select(message).where(message.c.message_id == mid)).one()
            if row.case_id is None:
                return None
            return conn.execute(select(case).where(case.c.id == row.case_id)).one()

    def stored(self, msg: EmailMessage) -> Any:
        mid = msg["Message-ID"].strip("<>")
        with self.engine.connect() as conn:
            return conn.execute(select(message).where(message.c.message_id == mid)).one()

    def acks_to(self, address: str) -> int:
        return len(self.received(address))

    def backlog(self) -> triage_state.TriageBacklog:
        with self.engine.connect() as conn:
            return triage_state.triage_backlog(conn, self.box.name)

    def later(self, **delta: float) -> None:
        self.clock.now += timedelta(**delta)


DeskFactory = Callable[..., Desk]


@pytest.fixture
def make_desk(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[DeskFactory]:
    made: list[Desk] = []

    def make(database_url: str | None = None, **options: Any) -> Desk:
        class On(Desk):
            pass

        On.database_url = database_url
        options.setdefault("calendar", {"hours": ALL_WEEK})
        desk = On(dovecot, mail_user, smtp_server, tmp_path, start=START, **options)
        made.append(desk)
        return desk

    yield make
    for desk in made:
        desk.close()


# -- ties ------------------------------------------------------------------------------------


def test_two_mails_without_a_date_in_one_poll_then_more_mail_all_get_their_answer(
    make_desk: DeskFactory,
) -> None:
    desk = make_desk()
    ann = desk.write(ANN, "Charged twice", dated=False)
    bob = desk.write(BOB, "Login broken", dated=False)
    desk.poll()
    assert desk.case_of(ann).opened_at == desk.case_of(bob).opened_at  # the same second
    assert (desk.acks_to(ANN[1]), desk.acks_to(BOB[1])) == (1, 1)

    # One of the tied cases is answered: the window now sees (t, reply) beside (t, None).
    desk.later(minutes=30)
    reply = mail(("Alice", ALICE), "Re: Charged twice", to=ANN[1], reply_to=ann)
    desk.arrive(reply, folder="Sent")
    desk.poll()
    assert desk.case_of(ann).first_response_at is not None

    desk.later(minutes=5)
    carl = desk.write(CARL, "Where is my parcel")
    desk.poll()
    stored = desk.stored(carl)
    assert not stored.quarantined, stored.quarantine_reason
    assert desk.case_of(carl) is not None and desk.acks_to(CARL[1]) == 1


# -- failure policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [RuntimeError("a bug in keepword"), OperationalError("UPDATE", {}, Exception("locked"))],
    ids=["bug", "database-busy"],
)
def test_a_message_whose_triage_fails_is_retried_and_never_blocks_the_mail_behind_it(
    make_desk: DeskFactory, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    desk = make_desk()
    calls = fail_for("Poison", fault, monkeypatch)
    poison = desk.write(ANN, "Poison")
    desk.later(seconds=1)
    behind = desk.write(BOB, "Login broken")
    desk.poll()

    # a database error ends its batch's transaction: tried again alone in the same run
    assert 1 <= len(calls) <= 2, "the fault was injected"
    tried = len(calls)
    assert desk.case_of(behind) is not None and desk.acks_to(BOB[1]) == 1, "not blocked"
    waiting = desk.stored(poison)
    assert waiting.triaged_at is None and not waiting.quarantined
    assert waiting.triage_attempts == 1 and waiting.triage_error
    assert START < waiting.triage_retry_at <= desk.clock.now + timedelta(minutes=1)
    backlog = desk.backlog()
    assert (backlog.pending, backlog.retrying) == (0, 1)
    assert backlog.last_error is not None and type(fault).__name__ in backlog.last_error

    desk.poll()  # not due yet: not tried again at once
    assert len(calls) == tried

    monkeypatch.undo()  # the fault is gone
    desk.later(minutes=1)
    desk.poll()
    assert desk.case_of(poison) is not None and desk.acks_to(ANN[1]) == 1
    assert desk.stored(poison).triaged_at is not None
    assert desk.backlog() == triage_state.TriageBacklog(0, 0, None)


def test_a_follow_up_waits_for_its_first_mail_and_both_land_in_one_case(
    make_desk: DeskFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk()
    fail_for("Charged twice", RuntimeError("a bug"), monkeypatch)
    first = desk.write(ANN, "Charged twice")
    desk.later(seconds=1)
    follow_up = desk.write(ANN, "Re: Charged twice - order 1234", reply_to=first)
    desk.later(seconds=1)
    other = desk.write(BOB, "Login broken")
    desk.poll()
    assert desk.case_of(other) is not None, "the unrelated mail goes on"
    assert desk.stored(follow_up).triaged_at is None, "the follow-up waits for its first mail"
    assert desk.stored(follow_up).triage_attempts == 0

    monkeypatch.undo()
    desk.later(minutes=1)
    desk.poll()  # the first mail, then (in the same run) its follow-up
    assert desk.case_of(first).id == desk.case_of(follow_up).id
    assert desk.acks_to(ANN[1]) == 1


def test_a_message_that_keeps_failing_is_retried_hourly_and_stays_visible(
    make_desk: DeskFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = make_desk()
    fail_for("Poison", RuntimeError("a lasting bug"), monkeypatch)
    poison = desk.write(ANN, "Poison")
    gaps = []
    for _ in range(12):
        desk.poll()
        retry_at = desk.stored(poison).triage_retry_at
        gaps.append(retry_at - desk.clock.now)
        desk.clock.now = retry_at
    assert max(gaps) <= timedelta(hours=1)
    # at the cap: an hour between tries (equal jitter: at least half of it)
    assert min(gaps[-3:]) >= timedelta(minutes=30)
    waiting = desk.stored(poison)
    assert (waiting.triage_attempts, waiting.triaged_at, waiting.quarantined) == (12, None, False)
    assert desk.backlog().retrying == 1

    monkeypatch.undo()
    desk.clock.now = waiting.triage_retry_at
    desk.poll()
    assert desk.case_of(poison) is not None and desk.acks_to(ANN[1]) == 1


# -- PostgreSQL: a long subject ----------------------------------------------------------------


def test_a_3kb_subject_is_triaged_on_postgres_and_so_is_the_mail_behind_it(
    make_desk: DeskFactory, postgres_url: str
) -> None:
    desk = make_desk(postgres_url)
    assert desk.engine.dialect.name == "postgresql"
    # Random words: PostgreSQL compresses index entries, so repetitive text would fit.
    rng = random.Random(3)
    words = (
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyzäöü") for _ in range(7)) for _ in range(400)
    )
    subject = " ".join(words)
    assert len(subject.encode()) > 3000
    long = desk.write(ANN, subject)
    desk.later(seconds=1)
    behind = desk.write(BOB, "Login broken")
    desk.poll()
    assert desk.case_of(long) is not None and desk.acks_to(ANN[1]) == 1
    assert desk.case_of(behind) is not None and desk.acks_to(BOB[1]) == 1
    # the customer's reply, under the same long subject, joins the case by its subject
    desk.later(minutes=5)
    again = desk.write(ANN, "Re: " + subject, body="Any news?")
    desk.poll()
    assert desk.case_of(again).id == desk.case_of(long).id


# -- limits defer ------------------------------------------------------------------------------


def test_the_global_limit_defers_a_real_customers_acknowledgement_until_it_allows(
    make_desk: DeskFactory,
) -> None:
    desk = make_desk(limits={"global_per_hour": 2})
    for n in range(2):  # forged senders use up the hour
        desk.write((f"Spoof {n}", f"spoof{n}@forged.example"), f"Invoice {n}")
    desk.poll()
    desk.later(minutes=10)
    ann = desk.write(ANN, "Charged twice")
    desk.poll()
    assert desk.acks_to(ANN[1]) == 0, "held back by the limit"
    ann_case = desk.case_of(ann)
    with desk.engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.case_id == ann_case.id)).one()
        made = conn.execute(select(promise).where(promise.c.case_id == ann_case.id)).one()
        events = list(
            conn.execute(
                select(case_event.c.kind, case_event.c.detail).where(
                    case_event.c.case_id == ann_case.id
                )
            )
        )
    slot = START + timedelta(hours=1)
    assert row.next_attempt_at == slot and row.created_at == desk.clock.now
    # the promise runs from when the customer is told
    assert made.due_at - slot == timedelta(minutes=desk.box.promise.default_window_minutes)
    [deferred] = [detail for kind, detail in events if kind == "deferred"]
    assert deferred.startswith("acknowledgement deferred until") and "rate limit" in deferred

    desk.clock.now = slot
    desk.drain()
    [ack] = desk.received(ANN[1])
    assert ack.header("Auto-Submitted") == "auto-replied"
    assert ann_case.reference in ack.header("Subject")
    desk.later(hours=2)
    desk.drain()
    assert desk.acks_to(ANN[1]) == 1


def test_per_address_limit_defers_the_fourth_acknowledgement_within_the_hour(
    make_desk: DeskFactory,
) -> None:
    desk = make_desk()  # shipped limits: 3 an hour, 10 a day to one address
    for n in range(4):
        desk.write(ANN, f"Question {n}")
        desk.later(minutes=1)
    desk.poll()
    assert desk.acks_to(ANN[1]) == 3
    desk.later(hours=1)
    desk.poll()
    assert desk.acks_to(ANN[1]) == 4, "the fourth case is acknowledged when the limit allows"


# -- robots are no backlog ---------------------------------------------------------------------


def test_a_ticket_system_opening_a_case_per_mail_does_not_inflate_a_real_customers_promise(
    make_desk: DeskFactory,
) -> None:
    desk = make_desk(promise={"min_history_cases": 1})
    ann = desk.write(ANN, "Charged twice")
    desk.poll()
    desk.later(hours=1)
    reply = mail(
        ("Alice", ALICE), "Re: Charged twice", to=ANN[1], reply_to=ann, date=desk.clock.now
    )
    desk.arrive(reply, folder="Sent")
    desk.poll()
    # a ticket system on a customer's side: plain mail, a new subject each time
    desk.later(hours=1)
    for n in range(12):
        desk.write(
            ("Ticket System", "tickets@vendor.example"), f"Ticket {1000 + n} received: {n} new"
        )
    desk.poll()

    desk.later(minutes=1)
    bob = desk.write(BOB, "Login broken")
    desk.poll()
    with desk.engine.connect() as conn:
        made = conn.execute(select(promise).where(promise.c.case_id == desk.case_of(bob).id)).one()
    # the team took an hour for its one real case: that is the promise, not 12x it
    assert made.due_at - made.made_at == timedelta(hours=1), made.reason
    assert desk.acks_to(BOB[1]) == 1


def test_a_deferred_acknowledgement_is_withdrawn_when_the_team_answers_before_its_slot(
    make_desk: DeskFactory,
) -> None:
    desk = make_desk()  # shipped limits: 3 an hour to one address
    asked = [desk.write(ANN, f"Question {n}") for n in range(4)]
    desk.poll()
    assert desk.acks_to(ANN[1]) == 3, "the fourth acknowledgement waits for its slot"
    fourth = desk.case_of(asked[3])
    desk.later(minutes=10)
    reply = mail(
        ("Alice", ALICE), "Re: Question 3", "Here is your answer.", to=ANN[1],
        reply_to=asked[3], date=desk.clock.now,
    )  # fmt: skip
    desk.arrive(reply, "Sent")
    desk.poll()
    desk.later(hours=1)
    desk.poll()
    assert desk.acks_to(ANN[1]) == 3, "no promise of a reply after the reply came"
    assert "withdrawn" in desk.events(fourth.id)
    with desk.engine.connect() as conn:
        states = conn.execute(select(outbox.c.state).where(outbox.c.case_id == fourth.id))
        assert [s for (s,) in states] == ["withdrawn"]
