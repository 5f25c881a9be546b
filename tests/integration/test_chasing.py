"""Chasing end to end on virtual time: real Dovecot, real aiosmtpd, real SQLite.

Customer mail is APPENDed to Dovecot, keepword's poll (ingest + triage + acknowledgement)
runs as the daemon runs it, then chase steps at chosen virtual instants, then the drain
through the SMTP fixture. The assertions are about the mail people really received and
the promises recorded. Business hours: Mon-Fri 09:00-17:00 UTC; with no history the
promise is the default window of 8 business hours.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from keepword.cli import main
from keepword.domain import cases as case_rules
from keepword.domain.model import CaseStatus, PromiseKind, PromiseState
from keepword.mail.render import Renderer
from keepword.pipeline.chase import ChaseResult, chase_mailbox
from keepword.pipeline.context import MailboxContext
from keepword.store import cases as case_store
from keepword.store.tables import case, outbox, promise
from tests.fixtures.desk import ALICE, ANN, CAROL, SUPPORT, mail
from tests.fixtures.desk import Desk as BaseDesk
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import CapturedMail, SmtpServer

pytestmark = pytest.mark.integration

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday without holidays
MONDAY_MORNING = MONDAY.replace(hour=8)


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


class Desk(BaseDesk):
    """The shared desk with chase steps on a virtual clock (no digest unless asked)."""

    def __init__(
        self,
        dovecot: Dovecot,
        user: str,
        smtp: SmtpServer,
        tmp: Path,
        start: datetime,
        calendar: dict[str, Any] | None = None,
        chase: dict[str, Any] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.database_url = database_url  # None: SQLite in `tmp`
        super().__init__(
            dovecot,
            user,
            smtp,
            tmp,
            start=start,
            calendar=calendar or {},
            chase={"digest": False, **(chase or {})},
        )
        self.renderer = Renderer.for_mailbox(self.settings, self.box)

    def chase(self, when: datetime) -> ChaseResult:
        """One chase step at `when`, then the drain (as the daemon's jobs do)."""
        self.clock.now = when
        result = chase_mailbox(
            MailboxContext(self.settings, self.box, self.engine, self.renderer, when)
        )
        self.drain()
        return result

    def daemon_chase(self, when: datetime) -> None:
        """The chase as the daemon's Worker runs it (Service.chase in a thread), then drain."""
        self.clock.now = when
        asyncio.run(self.service.chase(self.box))
        self.drain()

    def customer_writes(
        self, when: datetime, subject: str, body: str, reply_to: EmailMessage | None = None
    ) -> EmailMessage:
        self.clock.now = when
        msg = self.arrive(mail(ANN, subject, body, date=when, reply_to=reply_to))
        self.poll()
        return msg

    def staff_replies(self, when: datetime, question: EmailMessage, body: str) -> None:
        self.clock.now = when
        subject = f"Re: {question['Subject']}"
        reply = mail(("Alice", ALICE), subject, body, date=when, to=ANN[1], reply_to=question)
        self.arrive(reply, folder="Sent")
        self.poll()

    def promises(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(promise).order_by(promise.c.id)))

    def the_case(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(case)).one()

    def outbox_keys(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(outbox.c.dedup_key).order_by(outbox.c.id)).scalars())

    def config_file(self) -> Path:
        pw = self.tmp / "imap.pw"
        pw.write_text(self.dovecot.users[self.user] + "\n")
        pw.chmod(0o600)
        path = self.tmp / "keepword.toml"
        path.write_text(
            f"""
[keepword]
state_dir = "{self.tmp}"
database_url = "{self.engine.url}"

[[mailbox]]
name = "support"
address = "{SUPPORT}"
team = ["{ALICE}"]
lead = "{CAROL}"

[mailbox.imap]
host = "127.0.0.1"
port = {self.dovecot.imap_port}
tls = "plain"
username = "{self.user}"
password_file = "{pw}"
"""
        )
        return path


def text_of(captured: CapturedMail) -> str:
    body = captured.parsed().get_body(("plain",))
    assert body is not None
    return str(body.get_content())


# The central scenarios run on both stores: the schema promises nothing SQLite-only.
ON_BOTH_STORES = pytest.mark.parametrize("make_desk", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def make_desk(
    request: pytest.FixtureRequest,
    dovecot: Dovecot,
    mail_user: str,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> Iterator[Any]:
    """Desks on SQLite; on PostgreSQL for the tests marked `ON_BOTH_STORES`."""
    database = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    made: list[Desk] = []

    def make(start: datetime = MONDAY_MORNING, **options: Any) -> Desk:
        desk = Desk(dovecot, mail_user, smtp_server, tmp_path, start, database_url=url, **options)
        assert desk.engine.dialect.name == database
        made.append(desk)
        return desk

    yield make
    for desk in made:
        desk.close()


@ON_BOTH_STORES
def test_case_answered_in_time_keeps_its_promise_without_any_chasing(make_desk: Any) -> None:
    desk = make_desk()
    question = desk.customer_writes(at(MONDAY, 9), "Charged twice", "I was charged twice.")
    [first] = desk.promises()
    assert first.due_at == at(MONDAY, 17)  # 8 business hours, the default window
    assert desk.chase(at(MONDAY, 12, 59)).queued == 0  # under 50%: nothing yet

    desk.staff_replies(at(MONDAY, 12, 59), question, "Refunded, sorry.")
    for when in (at(MONDAY, 16, 30), at(MONDAY, 18), at(MONDAY.replace(day=3), 10)):
        assert desk.chase(when).queued == 0

    [kept] = desk.promises()
    assert kept.state == PromiseState.KEPT.value
    [ack] = desk.received(ANN[1])  # the acknowledgement, and no update
    assert ack.header("Subject") == "Re: Charged twice [KW-1]"
    assert desk.received(ALICE) == [] and desk.received(CAROL) == []


@ON_BOTH_STORES
def test_nobody_answers_reminders_escalation_and_an_update_before_the_deadline(
    make_desk: Any,
) -> None:
    desk = make_desk(chase={"update_before_minutes": 30, "update_before_fraction": 0.05})
    question = desk.customer_writes(
        at(MONDAY, 9), "Charged twice", "I was charged twice for order 1234.\nPlease refund."
    )
    assert desk.chase(at(MONDAY, 12)).queued == 0

    fifty = desk.chase(at(MONDAY, 13))
    assert fifty.reminders == 1
    assert desk.chase(at(MONDAY, 13)).queued == 0, "the same minute again queues nothing"
    [reminder] = desk.received(ALICE)
    assert reminder.header("Subject") == "[KW-1] Reminder: Charged twice"
    assert reminder.header("Auto-Submitted") == "auto-generated"
    text = text_of(reminder)
    assert "> I was charged twice for order 1234." in text
    assert "keepword assign" not in text and "#take" in text and "#close" in text
    assert "ann@example.org" in text and "17:00" in text

    assert desk.chase(at(MONDAY, 15, 30)).reminders == 1  # 80% (15:24)
    assert desk.chase(at(MONDAY, 16, 15)).escalations == 1  # 90% (16:12), to the lead
    [escalation] = desk.received(CAROL)
    assert escalation.header("Subject") == "[KW-1] Escalation: Charged twice"
    assert desk.received(ANN[1])[-1].header("Subject") == "Re: Charged twice [KW-1]"

    update_step = desk.chase(at(MONDAY, 16, 31))  # 29 business minutes left of 480
    assert (update_step.updates, update_step.reminders, update_step.escalations) == (1, 0, 0)
    acknowledgement, update = desk.received(ANN[1])
    assert acknowledgement.header("In-Reply-To") == question["Message-ID"]
    assert update.header("Subject") == "Re: Charged twice [KW-1]"
    assert update.header("In-Reply-To") == question["Message-ID"]
    assert "we will not make that time" in text_of(update)
    old, new = desk.promises()
    assert old.state == PromiseState.SUPERSEDED.value and old.superseded_by == new.id
    assert new.kind == PromiseKind.UPDATE.value and new.state == PromiseState.OPEN.value
    assert new.due_at > old.due_at
    assert f"{new.due_at:%H:%M}" in text_of(update)

    # past the old due time: nothing more, the new promise runs
    assert desk.chase(at(MONDAY, 17, 30)).queued == 0
    desk.staff_replies(at(MONDAY.replace(day=3), 10), question, "Refunded, sorry for the wait.")
    old, new = desk.promises()
    assert new.state == PromiseState.KEPT.value
    assert old.state == PromiseState.SUPERSEDED.value
    events = desk.events()
    for kind in ("reminder", "escalation", "customer_update", "promise_superseded"):
        assert kind in events
    assert "promise_broken" not in events
    assert len(desk.received(ALICE)) == 2 and len(desk.received(CAROL)) == 1


@ON_BOTH_STORES
def test_stats_shows_the_announced_revision_and_no_silent_breach(
    make_desk: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = make_desk()
    question = desk.customer_writes(at(MONDAY, 9), "Login broken", "I cannot log in.")
    for hour in (13, 15, 16):
        desk.daemon_chase(at(MONDAY, hour, 30))  # the Worker's path: Service.chase
    desk.staff_replies(at(MONDAY.replace(day=3), 10), question, "Fixed.")
    capsys.readouterr()
    with time_machine.travel(at(MONDAY.replace(day=3), 12), tick=False):
        code = main(["--config", str(desk.config_file()), "stats", "--json", "--days", "7"])
    assert code == 0
    [ledger] = json.loads(capsys.readouterr().out)
    assert ledger["mailbox"] == "support" and ledger["cases"] == 1
    assert ledger["silent_breaches"] == 0
    assert ledger["promises_made"] == 2
    assert ledger["promises_superseded"] == 1 and ledger["promises_kept"] == 1
    assert ledger["reminders_sent"] == 2 and ledger["escalations_sent"] == 1
    assert ledger["customer_updates_sent"] == 1
    # first response Monday 09:00 -> Tuesday 10:00 = 8 h Monday + 1 h Tuesday
    assert ledger["median_first_response_minutes"] == 9 * 60

    with time_machine.travel(at(MONDAY.replace(day=3), 12), tick=False):
        assert main(["--config", str(desk.config_file()), "stats"]) == 0
    table = capsys.readouterr().out
    assert "silent breaches" in table and "support" in table


@ON_BOTH_STORES
def test_a_customer_who_writes_three_times_is_escalated(make_desk: Any) -> None:
    desk = make_desk()
    first = desk.customer_writes(at(MONDAY, 9), "Where is my parcel?", "It has not arrived.")
    assert desk.chase(at(MONDAY, 9, 5)).queued == 0
    desk.customer_writes(at(MONDAY, 9, 30), "Re: Where is my parcel? [KW-1]", "Any news?", first)
    assert desk.chase(at(MONDAY, 9, 35)).queued == 0
    desk.customer_writes(at(MONDAY, 10), "Re: Where is my parcel? [KW-1]", "Hello??", first)
    assert desk.the_case().unanswered_contacts == 3

    result = desk.chase(at(MONDAY, 10, 5))
    assert (result.escalations, result.reminders, result.updates) == (1, 0, 0)
    [escalation] = desk.received(CAROL)
    text = text_of(escalation)
    assert "wrote 3 times" in text and "> Hello??" in text
    assert desk.chase(at(MONDAY, 10, 6)).queued == 0
    assert len(desk.received(ANN[1])) == 1  # one acknowledgement, no canned repeats


def test_a_case_waiting_on_the_customer_is_not_chased(make_desk: Any) -> None:
    desk = make_desk()
    question = desk.customer_writes(at(MONDAY, 9), "Invoice", "Please send my invoice.")
    desk.staff_replies(at(MONDAY, 10), question, "Which order number?")
    assert desk.the_case().status == CaseStatus.WAITING_ON_CUSTOMER.value
    for when in (at(MONDAY, 13), at(MONDAY, 16, 45), at(MONDAY.replace(day=4), 12)):
        assert desk.chase(when).queued == 0
    assert desk.received(ALICE) == [] and desk.received(CAROL) == []
    assert len(desk.received(ANN[1])) == 1


@ON_BOTH_STORES
def test_a_case_closed_without_a_reply_has_its_promise_withdrawn(make_desk: Any) -> None:
    desk = make_desk()
    desk.customer_writes(at(MONDAY, 9), "Thanks!", "Just saying thanks.")
    with desk.engine.begin() as conn:  # as `keepword close` does: no promise handling
        current = case_store.load_case(conn, desk.the_case().id)
        change = case_rules.close(current, at=at(MONDAY, 9, 30), actor=ALICE, why="nothing to do")
        case_store.save_case(conn, change.case)
    result = desk.chase(at(MONDAY, 13))
    assert result.withdrawn == 1 and result.queued == 0
    [withdrawn] = desk.promises()
    assert withdrawn.state == PromiseState.WITHDRAWN.value
    assert desk.events().count("promise_withdrawn") == 1, "the timeline says so"
    assert desk.chase(at(MONDAY, 18)).breaches == 0, "withdrawn, not broken later"
    assert desk.events().count("promise_withdrawn") == 1


def test_a_weekend_and_a_public_holiday_do_not_move_the_chase_on(make_desk: Any) -> None:
    thursday = datetime(2026, 12, 24, tzinfo=UTC)  # Christmas Day (DE) is the Friday
    desk = make_desk(start=at(thursday, 8), calendar={"country": "DE"})
    desk.customer_writes(at(thursday, 16), "Broken order", "The order arrived broken.")
    [first] = desk.promises()
    # 1 h on Thursday, Friday 25th holiday, weekend, then 7 h on Monday the 28th
    assert first.due_at == datetime(2026, 12, 28, 16, tzinfo=UTC)
    for day in (25, 26, 27):
        assert desk.chase(datetime(2026, 12, day, 12, tzinfo=UTC)).queued == 0
    monday = datetime(2026, 12, 28, tzinfo=UTC)
    assert desk.chase(at(monday, 11, 59)).queued == 0  # 3 h 59 of 8 h
    assert desk.chase(at(monday, 12)).reminders == 1  # 4 h of 8 h: 50%


@ON_BOTH_STORES
def test_daemon_down_across_the_deadline_one_late_update_and_an_escalation(
    make_desk: Any,
) -> None:
    desk = make_desk()
    desk.customer_writes(at(MONDAY, 9), "Refund", "Where is my refund?")
    assert desk.chase(at(MONDAY, 13)).reminders == 1
    # the daemon is down from 13:01 until Tuesday 10:00: the 80% reminder, the
    # escalation and the update were all due in that time
    tuesday = MONDAY.replace(day=3)
    result = desk.chase(at(tuesday, 10))
    assert (result.reminders, result.escalations, result.updates) == (0, 1, 1)
    assert result.breaches == 1 and result.silent_breaches == 1  # honest: nobody was told
    assert desk.chase(at(tuesday, 10, 1)).queued == 0
    assert desk.chase(at(tuesday, 10, 2)).breaches == 0

    old, new = desk.promises()
    assert old.state == PromiseState.BROKEN.value and "silent breach" in old.reason
    assert new.state == PromiseState.OPEN.value and new.due_at > at(tuesday, 10)
    _acknowledgement, late = desk.received(ANN[1])
    assert late.header("Subject") == "Re: Refund [KW-1]"
    assert len(desk.received(ALICE)) == 1  # only the 50% reminder before the outage
    [escalation] = desk.received(CAROL)
    assert "passed" in text_of(escalation)
    assert "promise_broken" in desk.events()


def test_daily_digest_once_a_business_day_to_team_and_lead(make_desk: Any) -> None:
    desk = make_desk(chase={"digest": True, "digest_time": time(8, 30)})
    desk.customer_writes(at(MONDAY, 9), "Charged twice", "Help.")
    assert desk.chase(at(MONDAY, 9, 5)).digests == 1  # after 08:30 local: today's digest
    assert desk.chase(at(MONDAY, 9, 6)).digests == 0
    tuesday = MONDAY.replace(day=3)
    assert desk.chase(at(tuesday, 8, 29)).digests == 0
    assert desk.chase(at(tuesday, 8, 30)).digests == 1
    digests = [m for m in desk.received(CAROL) if "digest" in (m.header("Subject") or "").lower()]
    assert len(digests) == 2 and all(ALICE in m.rcpt_tos for m in digests)
    # Tuesday 08:30: the first promise broke overnight (recorded by this very step) and
    # the late update's new promise is due today
    text = text_of(digests[-1])
    assert "Due today (1)" in text and "KW-1" in text
    assert "0 promises kept, 1 broken" in text
    assert "digest:support:2026-11-03" in desk.outbox_keys()
    saturday = MONDAY.replace(day=7)
    assert desk.chase(at(saturday, 9)).digests == 0, "no digest when nobody works"


def test_a_follow_up_after_a_reply_is_chased_inside_the_team_only(make_desk: Any) -> None:
    desk = make_desk()
    question = desk.customer_writes(at(MONDAY, 9), "Refund", "Where is my refund?")
    desk.staff_replies(at(MONDAY, 10), question, "It is on its way.")
    desk.customer_writes(at(MONDAY, 11), "Re: Refund [KW-1]", "Still nothing.", question)
    first, target = desk.promises()
    assert first.state == PromiseState.KEPT.value
    assert target.kind == PromiseKind.NEXT_RESPONSE.value and target.audience == "team"
    tuesday = MONDAY.replace(day=3)
    assert target.due_at == at(tuesday, 11)

    assert desk.chase(at(MONDAY, 15)).reminders == 1  # 50%, to the owner who replied
    [reminder] = desk.received(ALICE)
    assert "> Still nothing." in text_of(reminder)
    late = desk.chase(at(tuesday, 10, 50))  # 10 business minutes left: no customer update
    assert (late.escalations, late.updates) == (1, 0)
    missed = desk.chase(at(tuesday, 11, 30))
    assert (missed.breaches, missed.silent_breaches, missed.queued) == (1, 0, 0)
    assert len(desk.received(ANN[1])) == 1, "the customer only ever got the acknowledgement"
    assert len(desk.received(CAROL)) == 1
    [_first, broken] = desk.promises()
    assert broken.state == PromiseState.BROKEN.value and "internal target" in broken.reason


def test_never_a_silent_breach_when_nobody_ever_answers(make_desk: Any) -> None:
    """Chased every 15 minutes for three days, an unanswered case breaks no promise in
    silence: each one is revised, and the update really went out, before its due time."""
    desk = make_desk()
    desk.customer_writes(at(MONDAY, 9), "Broken login", "I cannot log in.")
    step = MONDAY.replace(hour=9, minute=15)
    while step <= MONDAY.replace(day=4, hour=18):
        assert desk.chase(step).silent_breaches == 0
        step += timedelta(minutes=15)

    with desk.engine.connect() as conn:
        updates = {
            row.dedup_key: row.sent_at
            for row in conn.execute(select(outbox).where(outbox.c.kind == "customer_update"))
        }
    promises = desk.promises()
    assert all(p.state != PromiseState.BROKEN.value for p in promises)
    revised = [p for p in promises if p.state == PromiseState.SUPERSEDED.value]
    assert len(revised) >= 3 and len(revised) == len(updates)
    for old in revised:
        sent_at = updates[f"update:case:{old.case_id}:promise:{old.id}"]
        assert sent_at is not None and sent_at < old.due_at
    assert len(desk.received(ANN[1])) == 1 + len(updates)
    assert len(desk.received(CAROL)) == len(revised)  # one escalation per promise


def test_a_close_while_the_case_is_chased_sends_no_reminder(
    make_desk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keepword close` lands between the chase reading the case and committing its
    reminder: the reminder is not sent; the next step withdraws the promise instead."""
    desk = make_desk()
    desk.customer_writes(at(MONDAY, 9), "Charged twice", "I was charged twice.")
    real_load = case_store.load_case
    raced: list[int] = []

    def load_then_close(conn: Any, case_id: int) -> Any:
        state = real_load(conn, case_id)
        if not raced:
            raced.append(case_id)
            with desk.engine.begin() as cli:
                change = case_rules.close(
                    real_load(cli, case_id), at=at(MONDAY, 13), actor=ALICE, why="by phone"
                )
                case_store.save_case(cli, change.case)
        return state

    monkeypatch.setattr(case_store, "load_case", load_then_close)
    racing = desk.chase(at(MONDAY, 13))  # the 50% reminder was due
    assert raced and racing.queued == 0 and racing.cases == 0
    monkeypatch.undo()
    settled = desk.chase(at(MONDAY, 13, 1))
    assert (settled.queued, settled.withdrawn) == (0, 1)
    assert desk.received(ALICE) == []
    assert "reminder" not in desk.events()
