"""Cases and acknowledgements end to end: real Dovecot, real aiosmtpd, real SQLite.

Each test fills a fresh shared inbox, runs keepword's poll (ingest + triage) and drain
steps as the daemon does, and checks the cases, timelines, promises and the mail that
actually reached the SMTP server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.domain import cases as case_rules
from keepword.domain.model import LOOP_HEADER, CaseStatus, PromiseState
from keepword.pipeline import triage as triage_module
from keepword.store import cases as case_store
from keepword.store.tables import case, message, outbox, promise
from tests.fixtures.desk import ALICE, ANN, SUPPORT, TEAM_PROOF, mail
from tests.fixtures.desk import Desk as BaseDesk
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

BOB = ("Bob Roe", "bob@example.net")


ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


class Desk(BaseDesk):
    """The shared desk plus the lookups these tests need."""

    def cycle(self) -> None:
        self.poll()

    def cases(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(case).order_by(case.c.id)))

    def case_of(self, msg: EmailMessage) -> Any:
        mid = msg["Message-ID"].strip("<>")
        with self.engine.connect() as conn:
            case_id = conn.execute(
                select(message.c.case_id).where(message.c.message_id == mid)
            ).scalar_one()
            if case_id is None:
                return None
            return conn.execute(select(case).where(case.c.id == case_id)).one()

    def kind_of(self, msg: EmailMessage) -> str:
        mid = msg["Message-ID"].strip("<>")
        with self.engine.connect() as conn:
            query = select(message.c.kind).where(message.c.message_id == mid)
            return str(conn.execute(query).scalar_one())

    def sent_to(self, address: str) -> list[Any]:
        return self.received(address)


def _cli_config(desk: Desk, tmp_path: Path) -> str:
    """A config for the CLI on the desk's store, with its mailbox and team."""
    imap = desk.box.imap
    team = ", ".join(f'"{a}"' for a in desk.box.team)
    return (
        f'[keepword]\ndatabase_url = "{desk.engine.url}"\nstate_dir = "{tmp_path}"\n'
        "allow_inline_passwords = true\n"
        f'[[mailbox]]\nname = "support"\naddress = "{SUPPORT}"\nteam = [{team}]\n'
        f'[mailbox.imap]\nhost = "{imap.host}"\nport = {imap.port}\ntls = "plain"\n'
        f'username = "{imap.username}"\npassword = "{imap.password}"\n'
    )


@pytest.fixture
def desk(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[Desk]:
    desk = Desk(
        dovecot,
        mail_user,
        smtp_server,
        tmp_path,
        team=[ALICE, "bob@example.com"],
        done_folder="Done",
        calendar={"hours": ALL_WEEK},
    )
    yield desk
    desk.close()


def test_customer_gets_one_honest_acknowledgement_and_staff_reply_from_sent_keeps_promise(
    desk: Desk,
) -> None:
    question = desk.arrive(mail(ANN, "Charged twice"))
    desk.cycle()
    [opened] = desk.cases()
    assert opened.reference == "KW-1" and opened.status == CaseStatus.NEW.value
    [ack] = desk.sent_to(ANN[1])
    assert ack.header("Auto-Submitted") == "auto-replied"
    assert ack.header("In-Reply-To") == question["Message-ID"]
    assert ack.header("Subject") == "Re: Charged twice [KW-1]"
    assert ack.header(LOOP_HEADER)
    text = ack.parsed().get_body(("plain",)).get_content()
    assert "automatic" in text and "KW-1" in text
    with desk.engine.connect() as conn:
        [made] = conn.execute(select(promise)).all()
    assert made.state == PromiseState.OPEN.value and made.is_default
    # the due time stated in the mail is the promise's, in the mailbox's zone (UTC here)
    assert f"{made.due_at:%H:%M}" in text

    follow_up = desk.arrive(mail(ANN, "Re: Charged twice [KW-1]", reply_to=question))
    desk.cycle()
    assert len(desk.sent_to(ANN[1])) == 1, "no second canned text in a case"
    assert desk.case_of(follow_up).id == opened.id

    reply = mail(
        ("Alice", ALICE), "Re: Charged twice [KW-1]", "Refunded.", to=ANN[1], reply_to=question
    )
    desk.arrive(reply, folder="Sent")
    desk.cycle()
    [answered] = desk.cases()
    assert answered.status == CaseStatus.WAITING_ON_CUSTOMER.value
    assert answered.owner == ALICE and answered.first_response_at is not None
    with desk.engine.connect() as conn:
        assert conn.execute(select(promise.c.state)).scalar_one() == PromiseState.KEPT.value
    assert {"staff_reply", "owner_changed", "promise_kept"} <= set(desk.events(answered.id))


def test_staff_reply_with_shared_address_in_cc_counts(desk: Desk) -> None:
    question = desk.arrive(mail(ANN, "Login broken"))
    desk.cycle()
    reply = mail(
        ("Alice", ALICE),
        "Re: Login broken",
        to=ANN[1],
        cc=SUPPORT,
        reply_to=question,
        headers=TEAM_PROOF,
    )
    desk.arrive(reply)
    desk.cycle()
    assert desk.kind_of(reply) == "staff"
    assert desk.case_of(reply).status == CaseStatus.WAITING_ON_CUSTOMER.value


def test_robots_get_nothing_and_out_of_office_does_not_reopen(desk: Desk) -> None:
    question = desk.arrive(mail(ANN, "Where is my parcel"))
    desk.cycle()
    [ack] = desk.sent_to(ANN[1])
    ack_msg = ack.parsed()
    auto = EmailMessage()
    auto["From"] = f"Ann Lee <{ANN[1]}>"
    auto["To"] = SUPPORT
    auto["Subject"] = "Automatic reply: " + str(ack_msg["Subject"])
    auto["Date"] = format_datetime(datetime.now(UTC))
    auto["Message-ID"] = make_msgid(domain="example.org")
    auto["In-Reply-To"] = str(ack_msg["Message-ID"])
    auto["Auto-Submitted"] = "auto-replied"
    auto.set_content("I am away until Monday.")
    desk.arrive(auto)
    bounce = desk.arrive(
        mail(
            ("Mail Delivery System", "MAILER-DAEMON@mx.example.net"),
            "Undelivered Mail Returned to Sender",
        )
    )
    listmail = desk.arrive(
        mail(
            ("News", "news@lists.example.com"),
            "Weekly news",
            headers={"List-Id": "<news.example.com>"},
        )
    )
    desk.cycle()
    assert len(desk.sent_to(ANN[1])) == 1
    assert len(desk.smtp.messages) == 1, "only the one acknowledgement ever left"
    assert desk.kind_of(auto) == "automated"
    assert desk.case_of(auto).id == desk.case_of(question).id, "joins by In-Reply-To"
    assert desk.case_of(auto).status == CaseStatus.NEW.value
    assert desk.case_of(bounce) is None and desk.case_of(listmail) is None
    assert len(desk.cases()) == 1


def test_tag_only_and_subject_only_replies_thread_and_same_subject_customers_do_not_merge(
    desk: Desk,
) -> None:
    first = desk.arrive(mail(ANN, "Invoice"))
    other = desk.arrive(mail(BOB, "Invoice"))
    desk.cycle()
    assert desk.case_of(first).id != desk.case_of(other).id, "different customers, same subject"
    tagged = desk.arrive(mail(ANN, "Re: Invoice [KW-1]", reply_to=first, references=False))
    untagged = desk.arrive(mail(ANN, "AW: Invoice", reply_to=first, references=False))
    desk.cycle()
    assert desk.case_of(tagged).id == desk.case_of(first).id
    assert desk.case_of(untagged).id == desk.case_of(first).id
    assert len(desk.cases()) == 2
    assert len(desk.sent_to(ANN[1])) == 1 and len(desk.sent_to(BOB[1])) == 1


def test_stranger_cannot_inject_into_a_case_with_its_tag(desk: Desk) -> None:
    desk.arrive(mail(ANN, "Password reset"))
    desk.cycle()
    stranger = desk.arrive(mail(BOB, "Re: Password reset [KW-1]"))
    desk.cycle()
    assert desk.case_of(stranger).reference == "KW-2"


def test_forward_by_team_member_opens_case_for_original_sender(desk: Desk) -> None:
    body = (
        "FYI, can someone take this?\n\n"
        "---------- Forwarded message ---------\n"
        "From: Bob Roe <bob@example.net>\n"
        "Date: Mon, 23 Nov 2026 09:00:00 +0100\n"
        "Subject: Broken export\n"
        "To: alice@example.com\n\n"
        "The CSV export is empty.\n"
    )
    forward = desk.arrive(mail(("Alice", ALICE), "Fwd: Broken export", body, headers=TEAM_PROOF))
    desk.cycle()
    opened = desk.case_of(forward)
    assert opened is not None and opened.customer == BOB[1]
    assert opened.status == CaseStatus.NEW.value


def test_done_folder_closes_and_customer_reopens(desk: Desk) -> None:
    question = desk.arrive(mail(ANN, "Cancel my plan"))
    desk.cycle()
    desk.arrive(question, folder="Done")
    desk.cycle()
    assert desk.case_of(question).status == CaseStatus.CLOSED.value
    again = desk.arrive(mail(ANN, "Re: Cancel my plan [KW-1]", reply_to=question))
    desk.cycle()
    assert desk.case_of(again).status == CaseStatus.WAITING_ON_TEAM.value
    assert "reopened" in desk.events(desk.case_of(again).id)


def test_case_cli_shows_the_whole_story(
    desk: Desk, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json

    from keepword.cli import main

    question = desk.arrive(mail(ANN, "Need an invoice copy"))
    desk.cycle()
    config = tmp_path / "kw.toml"
    config.write_text(_cli_config(desk, tmp_path))
    assert main(["--config", str(config), "case", "KW-1", "--json"]) == 0
    story = json.loads(capsys.readouterr().out)
    assert story["case"]["customer"] == ANN[1]
    assert [m["from"] for m in story["messages"]] == [ANN[1]]
    assert story["promises"][0]["state"] == "open"
    assert "acknowledgement" in [e["kind"] for e in story["timeline"]]
    # issue 12: an outsider as owner would be sent the case's reminders
    assert main(["--config", str(config), "assign", "KW-1", "mallory@evil.test"]) == 2
    assert "mallory@evil.test is not on the team" in capsys.readouterr().err
    assert main(["--config", str(config), "assign", "KW-1", "bob@example.com"]) == 0
    assert main(["--config", str(config), "close", "KW-1"]) == 0
    assert main(["--config", str(config), "cases", "--status", "closed", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert [c["reference"] for c in listed] == ["KW-1"] and listed[0]["owner"] == "bob@example.com"
    assert desk.case_of(question).status == CaseStatus.CLOSED.value
    with desk.engine.connect() as conn:
        assert case_store.find_case(conn, "kw-1") is not None
        assert conn.execute(select(outbox.c.state)).scalar_one() == "sent"


def test_the_cli_shows_a_hostile_subject_as_written(
    desk: Desk, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail text is never read as rich markup: "[/x]" raised MarkupError, "[link=...]"
    made a link in the operator's terminal, "[bold]" restyled the rest."""
    from keepword.cli import main

    subject = "[/x] invoice [link=https://evil.example]here[/link] [bold]now"
    desk.arrive(mail(ANN, subject))
    desk.cycle()
    config = tmp_path / "kw.toml"
    config.write_text(_cli_config(desk, tmp_path))
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["--config", str(config), "cases"]) == 0
    assert subject in capsys.readouterr().out
    assert main(["--config", str(config), "case", "KW-1"]) == 0
    assert subject in capsys.readouterr().out


def test_status_reports_polls_backlog_and_overdue_promises(
    desk: Desk, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json

    from sqlalchemy import update

    from keepword.cli import main

    desk.arrive(mail(ANN, "Where is my order"))
    desk.cycle()
    config = tmp_path / "status.toml"
    imap = desk.box.imap
    config.write_text(
        f'[keepword]\ndatabase_url = "{desk.engine.url}"\nstate_dir = "{tmp_path}"\n'
        "allow_inline_passwords = true\n"
        f'[[mailbox]]\nname = "support"\naddress = "{SUPPORT}"\n'
        f'[mailbox.imap]\nhost = "{imap.host}"\nport = {imap.port}\ntls = "plain"\n'
        f'username = "{imap.username}"\npassword = "{imap.password}"\n'
    )
    assert main(["--config", str(config), "status", "--json"]) == 0
    [health] = json.loads(capsys.readouterr().out)
    assert {f["folder"] for f in health["folders"]} == {"INBOX", "Sent", "Done"}
    assert all(f["last_success_at"] for f in health["folders"])
    assert (health["open_promises"], health["outbox_pending"], health["healthy"]) == (1, 0, True)
    with desk.engine.begin() as conn:
        conn.execute(update(promise).values(due_at=datetime.now(UTC) - timedelta(minutes=5)))
    assert main(["--config", str(config), "status", "--json"]) == 1
    [health] = json.loads(capsys.readouterr().out)
    assert health["overdue_promises"] == 1 and health["healthy"] is False


def test_internal_team_mail_opens_no_case_and_future_dates_are_clamped(desk: Desk) -> None:
    internal = desk.arrive(
        mail(("Alice", ALICE), "Lunch?", to="bob@example.com", cc=ALICE), folder="Sent"
    )
    future = desk.arrive(mail(BOB, "Clock is wrong", date=desk.clock.now + timedelta(days=2)))
    desk.cycle()
    assert desk.case_of(internal) is None
    opened = desk.case_of(future)
    assert opened.opened_at <= desk.clock.now


def test_follow_up_note_repeats_the_promised_time_once_a_day(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # The morning of today (UTC): the two hours below stay on one day of the note's key
    # (started at the wall clock, the test failed when run after 22:00 UTC).
    morning = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    desk = Desk(
        dovecot,
        mail_user,
        smtp_server,
        tmp_path,
        start=morning,
        calendar={"hours": ALL_WEEK},
        promise={"follow_up_notes": True},
    )
    try:
        question = desk.arrive(mail(ANN, "Broken zipper", date=desk.clock.now))
        desk.cycle()
        for extra in ("Photo attached", "Any news?"):
            desk.clock.now += timedelta(hours=1)  # a new window would now end later
            follow_up = mail(
                ANN, "Re: Broken zipper [KW-1]", extra, date=desk.clock.now, reply_to=question
            )
            desk.arrive(follow_up)
            desk.cycle()
        ack, note = desk.sent_to(ANN[1])  # the second follow-up that day gets nothing
        assert ack.header("X-Keepword-Kind") == "acknowledgement"
        assert note.header("X-Keepword-Kind") == "follow_up_note"
        with desk.engine.connect() as conn:
            [due] = conn.execute(select(promise.c.due_at)).scalars()
        text = note.parsed().get_body(("plain",)).get_content()
        assert f"{due:%H:%M}" in text and "KW-1" in text
    finally:
        desk.close()


def test_a_close_from_the_cli_during_triage_is_not_overwritten(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keepword close` lands between triage reading the case and saving it: triage must
    decide again on the closed case (the follow-up reopens it), not undo the close.
    (One transaction a message: the path after a failed batch, and PostgreSQL's race. A
    batch on SQLite holds the write lock from its start, so there the CLI waits for it:
    tests/unit/test_commands_store.py.)"""
    monkeypatch.setattr(triage_module, "BATCH", 1)
    question = desk.arrive(mail(ANN, "Charged twice"))
    desk.cycle()
    real_save = case_store.save_case
    raced: list[int] = []

    def close_first(conn: Any, state: Any, **options: Any) -> Any:
        # the follow-up's save (its second customer contact), not the Sent copy's
        if state.id is not None and state.customer_contacts > 1 and not raced:
            raced.append(state.id)
            with desk.engine.begin() as cli:  # what `keepword close KW-1` does, meanwhile
                current = case_store.load_case(cli, state.id)
                change = case_rules.close(current, at=desk.clock(), actor=ALICE, why="by phone")
                real_save(cli, change.case)
                case_store.add_events(cli, state.id, change.events)
        return real_save(conn, state, **options)

    monkeypatch.setattr(case_store, "save_case", close_first)
    follow_up = desk.arrive(mail(ANN, "Re: Charged twice [KW-1]", reply_to=question))
    desk.cycle()
    assert raced, "triage saved the case without the race happening"
    mid = follow_up["Message-ID"].strip("<>")
    with desk.engine.connect() as conn:
        waiting = conn.execute(
            select(message.c.triaged_at, message.c.quarantined).where(message.c.message_id == mid)
        ).one()
    assert waiting.triaged_at is None and not waiting.quarantined, "deferred, not lost"
    [closed] = desk.cases()
    assert closed.status == CaseStatus.CLOSED.value

    desk.clock.now += timedelta(minutes=1)  # the retry is due (TRIAGE_RETRY: first 60 s)
    desk.cycle()  # the next poll decides again, on the closed case
    [reopened] = desk.cases()
    assert reopened.status == CaseStatus.WAITING_ON_TEAM.value
    assert desk.case_of(follow_up).id == reopened.id
    timeline = desk.events(reopened.id)
    assert timeline.index("closed") < timeline.index("reopened")


def test_cli_decides_again_when_the_daemon_changed_the_case_meanwhile(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keepword.cli import main

    desk.arrive(mail(ANN, "Charged twice"))
    desk.cycle()
    config = tmp_path / "kw.toml"
    config.write_text(_cli_config(desk, tmp_path))
    real_save = case_store.save_case
    raced: list[int] = []

    def triage_first(conn: Any, state: Any, **options: Any) -> Any:
        if not raced:  # the daemon records a new customer contact meanwhile
            raced.append(state.id)
            with desk.engine.begin() as daemon:
                current = case_store.load_case(daemon, state.id)
                real_save(daemon, replace(current, customer_contacts=current.customer_contacts + 5))
        return real_save(conn, state, **options)

    monkeypatch.setattr(case_store, "save_case", triage_first)
    assert main(["--config", str(config), "assign", "KW-1", "bob@example.com"]) == 0
    [assigned] = desk.cases()
    assert raced and assigned.owner == "bob@example.com"
    assert assigned.customer_contacts == 6, "the daemon's change survived the assignment"
