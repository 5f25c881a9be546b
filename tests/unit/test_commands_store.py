"""Commands by mail, carried out by triage on a real SQLite store (no mail server).

Each test opens a case with a customer's mail, then a team member's command mail
arrives as ingest stores it; triage carries it out in the message's transaction.
Checked: the case, its timeline (with the actor), the promise ledger, and the outbox:
one confirmation to the sender, never anything of the commands to the customer.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.cli import cases as cli_cases
from keepword.domain.model import (
    CaseStatus,
    Origin,
    PromiseAudience,
    PromiseKind,
    PromiseState,
)
from keepword.mail.parse import parse_message
from keepword.pipeline import chase
from keepword.pipeline import commands as command_use_case
from keepword.store import cases as case_store
from keepword.store.messages import Folder, StoreItem, store_batch
from keepword.store.tables import case
from tests.fixtures.chase_store import ALICE, CAROL, StoreDesk
from tests.fixtures.desk import SUPPORT, TEAM_PROOF, mail

MONDAY = datetime(2026, 11, 2, 8, tzinfo=UTC)  # business hours Mon-Fri 09-17 UTC
ANN = ("Ann Lee", "ann@example.org")
ALICE_FROM = ("Alice", ALICE)


def at(hour: int, minute: int = 0, day: int = 0) -> datetime:
    return MONDAY.replace(hour=hour, minute=minute) + timedelta(days=day)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[StoreDesk]:
    # No owner from the start here: what #take and #assign change is the point.
    made = StoreDesk(tmp_path, calendar={"timezone": "UTC"}, owners={"policy": "none"})
    made.triage(at(8))  # first contact: an empty mailbox
    yield made
    made.engine.dispose()


def open_case(desk: StoreDesk) -> EmailMessage:
    question = desk.deliver(mail(ANN, "Charged twice", "I was charged twice.", date=at(9)), at(9))
    desk.triage(at(9))
    return question


def command(
    desk: StoreDesk,
    body: str,
    when: datetime,
    *,
    subject: str = "[KW-1] Charged twice",
    proof: bool = True,
    **kw: Any,
) -> EmailMessage:
    """Alice's command mail in the inbox, with her server's proof (or, `proof=False`, a
    forgery of her address)."""
    headers = TEAM_PROOF if proof else None
    sent = desk.deliver(mail(ALICE_FROM, subject, body, date=when, headers=headers, **kw), when)
    result = desk.triage(when)
    assert result.errors == []
    return sent


def cases_of(desk: StoreDesk) -> list[Any]:
    with desk.engine.connect() as conn:
        return list(conn.execute(select(case).order_by(case.c.id)))


def the_case(desk: StoreDesk) -> Any:
    with desk.engine.connect() as conn:
        return conn.execute(select(case).where(case.c.reference == "KW-1")).one()


def rows(desk: StoreDesk, kind: str) -> list[Any]:
    return [r for r in desk.outbox() if r.kind == kind]


def text_of(row: Any) -> str:
    parsed = message_from_bytes(row.raw, policy=policy.default)
    part = parsed.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def customer_text(desk: StoreDesk) -> str:
    return "\n".join(text_of(r) for r in desk.outbox() if ANN[1] in r.recipients)


def confirmation(desk: StoreDesk) -> str:
    [row] = rows(desk, "command_reply")
    assert row.recipients == [ALICE]
    return text_of(row)


def kinds_with_actor(desk: StoreDesk, case_id: int) -> list[tuple[str, str | None]]:
    with desk.engine.connect() as conn:
        return [(e.kind, e.actor) for e in case_store.timeline(conn, case_id)]


# -- each verb ---------------------------------------------------------------------------


def test_take_note_promise_to_the_shared_address(desk: StoreDesk) -> None:
    open_case(desk)
    [ack] = desk.promises(the_case(desk).id)
    body = "#take\n#note called her; the bank reverses it\n\n#promise 2026-11-03 12:00\n"
    command(desk, body, at(10))
    current = the_case(desk)
    assert current.owner == ALICE
    # Commands are no answer to the customer: nothing kept, the case still waits.
    assert current.first_response_at is None and current.status != "waiting_on_customer"
    events = kinds_with_actor(desk, current.id)
    assert ("owner_changed", ALICE) in events
    assert ("note", ALICE) in events
    assert ("promise_made", ALICE) in events and ("promise_superseded", ALICE) in events
    assert ("staff_reply", ALICE) not in events
    old, new = desk.promises(current.id)
    assert old.id == ack.id and old.state is PromiseState.SUPERSEDED
    assert new.state is PromiseState.OPEN and new.due_at == at(12, day=1)
    assert new.audience is PromiseAudience.CUSTOMER  # later than told: the customer is told
    assert new.kind is PromiseKind.UPDATE  # a person's time never calibrates the windows
    assert "the bank reverses it" not in customer_text(desk)
    assert "#take" not in customer_text(desk) and "#note" not in customer_text(desk)
    [update] = rows(desk, "customer_update")
    assert update.recipients == [ANN[1]] and "2026" in text_of(update)
    text = confirmation(desk)
    assert "KW-1 is yours now" in text and "Note added" in text and "promised by" in text
    # The chase follows the new time: its reminders are about the new promise only.
    desk.chase(at(16))
    reminder_keys = [r.dedup_key for r in rows(desk, "reminder")]
    assert reminder_keys and all(f":promise:{new.id}:" in k for k in reminder_keys)


def test_an_earlier_promise_keeps_the_customers_word_without_a_mail(desk: StoreDesk) -> None:
    open_case(desk)
    [ack] = desk.promises(the_case(desk).id)
    earlier = ack.due_at - timedelta(minutes=30)
    command(desk, f"#promise {earlier:%Y-%m-%d %H:%M}\n", at(10))
    _, new = desk.promises(the_case(desk).id)
    assert new.due_at == earlier and new.audience is PromiseAudience.CUSTOMER
    assert rows(desk, "customer_update") == []
    assert "keeps that word" in confirmation(desk)


def test_a_promise_after_the_answer_is_the_teams_target_and_is_chased(desk: StoreDesk) -> None:
    question = open_case(desk)
    reply = mail(ALICE_FROM, "Re: Charged twice", "Refunded.", to=ANN[1], reply_to=question)
    desk.deliver(reply, at(9, 30), folder="Sent")
    desk.triage(at(9, 30))
    assert the_case(desk).status == CaseStatus.WAITING_ON_CUSTOMER.value
    command(desk, "#promise 2026-11-02 15:00\n#note I check the bank's answer\n", at(10))
    assert the_case(desk).status == CaseStatus.WAITING_ON_TEAM.value  # it is owed again
    kept, target = desk.promises(the_case(desk).id)
    assert kept.state is PromiseState.KEPT
    assert (target.kind, target.audience) == (PromiseKind.NEXT_RESPONSE, PromiseAudience.TEAM)
    assert rows(desk, "customer_update") == []  # the customer was promised nothing new
    desk.chase(at(13))
    assert [r.dedup_key for r in rows(desk, "reminder")] == [
        f"reminder:case:{the_case(desk).id}:promise:{target.id}:50"
    ]


def test_assign_only_to_the_team(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#assign mallory@evil.test\n#assign Carol <carol@example.com>\n", at(10))
    assert the_case(desk).owner == CAROL
    text = confirmation(desk)
    assert "Refused: #assign mallory@evil.test (mallory@evil.test is not on the team)" in text
    assert "now owned by carol@example.com" in text
    assert ("refused", ALICE) in kinds_with_actor(desk, the_case(desk).id)


def test_an_unknown_verb_is_refused_and_changes_nothing(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#asign carol@example.com\n", at(10))
    assert the_case(desk).owner is None
    assert "Refused: #asign carol@example.com (unknown command" in confirmation(desk)
    assert "#asign" not in customer_text(desk)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("#promise soonish\n", "cannot read 'soonish'"),
        ("#promise 2026-10-01 12:00\n", "that time has passed"),
        ("#waiting 03.11.2026 the courier\n", "write the date as YYYY-MM-DD"),
        ("#waiting 2026-11-04\n", "say what we are waiting for"),
    ],
)
def test_bad_times_are_refused(desk: StoreDesk, body: str, why: str) -> None:
    open_case(desk)
    command(desk, body, at(10))
    assert why in confirmation(desk)
    assert [p.state for p in desk.promises(the_case(desk).id)] == [PromiseState.OPEN]
    assert rows(desk, "customer_update") == []


def test_waiting_tells_the_customer_the_reason_and_the_new_time(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#waiting 2026-11-04 the courier's damage report\n#note internal only\n", at(10))
    [update] = rows(desk, "customer_update")
    said = text_of(update)
    assert update.recipients == [ANN[1]]
    assert "the courier's damage report" in said and "internal only" not in said
    old, new = desk.promises(the_case(desk).id)
    assert old.state is PromiseState.SUPERSEDED
    assert new.audience is PromiseAudience.CUSTOMER and new.due_at == at(17, day=2)
    assert ("waiting", ALICE) in kinds_with_actor(desk, the_case(desk).id)
    assert "The customer (ann@example.org) gets an update" in confirmation(desk)


def test_a_command_triaged_with_the_mail_it_answers_answers_that_mail(desk: StoreDesk) -> None:
    """The customer's mail and a member's command on it triaged in one batch (it writes
    its timeline and triage records at its end): the command still finds the customer's
    mail, and the update to the customer answers it, as in two passes."""
    question = desk.deliver(mail(ANN, "Charged twice", "I was charged twice.", date=at(9)), at(9))
    body = "#waiting 2026-11-04 the courier's damage report\n"
    order = mail(ALICE_FROM, "[KW-1] Charged twice", body, date=at(10), headers=TEAM_PROOF)
    desk.deliver(order, at(10))
    assert desk.triage(at(10)).errors == []
    [update] = rows(desk, "customer_update")
    answered = message_from_bytes(update.raw, policy=policy.default)
    assert answered["In-Reply-To"] == question["Message-ID"]
    assert "Ann Lee" in text_of(update)


def test_close_and_reopen(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#close\n", at(10))
    assert the_case(desk).status == CaseStatus.CLOSED.value
    command(desk, "#reopen\n", at(11), subject="Re: [KW-1] Commands: Charged twice")
    assert the_case(desk).status == CaseStatus.WAITING_ON_TEAM.value
    assert len(rows(desk, "command_reply")) == 2
    events = kinds_with_actor(desk, the_case(desk).id)
    assert ("closed", ALICE) in events and ("reopened", ALICE) in events


def test_a_promise_then_close_keeps_no_promise_open(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#waiting 2026-11-04 the courier\n#close\n", at(10))
    assert the_case(desk).status == CaseStatus.CLOSED.value
    assert [p.state for p in desk.promises(the_case(desk).id)] == [PromiseState.OPEN]
    assert rows(desk, "customer_update") == []  # the chase withdraws the old one, as paused
    assert "closed now: no promise was kept open" in confirmation(desk)


# -- what the customer gets -----------------------------------------------------------------


def test_text_below_the_commands_to_the_shared_address_is_not_forwarded(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#take\n\nDear Ann, the refund is on its way.\n", at(10))
    assert the_case(desk).first_response_at is None  # nothing reached the customer
    assert "refund is on its way" not in customer_text(desk)
    assert "NOT sent to the customer" in confirmation(desk)


def test_commands_in_a_reply_straight_to_the_customer(desk: StoreDesk) -> None:
    question = open_case(desk)
    command(
        desk,
        "#take\n\nDear Ann, the refund is on its way.\n",
        at(10),
        subject="Re: Charged twice [KW-1]",
        to=ANN[1],
        reply_to=question,
    )
    current = the_case(desk)
    assert current.owner == ALICE
    assert current.first_response_at == at(10)  # a real answer: it counts
    [kept] = desk.promises(current.id)
    assert kept.state is PromiseState.KEPT
    assert "went to the customer too" in confirmation(desk)


def test_only_commands_to_the_customer_is_no_answer(desk: StoreDesk) -> None:
    question = open_case(desk)
    command(desk, "#take\n", at(10), subject="Re: Charged twice", to=ANN[1], reply_to=question)
    assert the_case(desk).first_response_at is None
    assert "went to the customer too" in confirmation(desk)


def test_a_reply_to_the_customer_starting_with_a_hash_word_is_just_a_reply(
    desk: StoreDesk,
) -> None:
    question = open_case(desk)
    body = "#Order 4711 shipped today.\n\nBest, Alice\n"
    command(desk, body, at(10), subject="Re: Charged twice", to=ANN[1], reply_to=question)
    assert the_case(desk).first_response_at == at(10)
    assert rows(desk, "command_reply") == []


def test_a_forward_into_the_inbox_with_take_opens_a_case_owned_by_its_sender(
    desk: StoreDesk,
) -> None:
    body = (
        "#take\n\n"
        "---------- Forwarded message ---------\n"
        "From: Bo Ek <bo@example.net>\n"
        "Date: Mon, 2 Nov 2026 08:30:00 +0000\n"
        "Subject: Broken lid\n"
        "To: alice@example.com\n\n"
        "The lid arrived broken.\n"
    )
    command(desk, body, at(10), subject="Fwd: Broken lid")
    [opened] = cases_of(desk)
    assert (opened.customer, opened.owner) == ("bo@example.net", ALICE)
    assert opened.customer_contacts == 1  # the forwarded mail is the customer's contact
    assert "is yours now" in confirmation(desk)


def test_commands_about_no_case_are_refused(desk: StoreDesk) -> None:
    open_case(desk)
    command(desk, "#close\n", at(10), subject="[KW-99] something")
    assert the_case(desk).status != CaseStatus.CLOSED.value
    assert "belongs to no case" in confirmation(desk)


def test_a_customers_hash_lines_are_no_commands(desk: StoreDesk) -> None:
    question = open_case(desk)
    body = "#close\n#assign ann@example.org\n"
    again = mail(ANN, "Re: Charged twice [KW-1]", body, date=at(10), reply_to=question)
    desk.deliver(again, at(10))
    desk.triage(at(10))
    current = the_case(desk)
    assert current.status != CaseStatus.CLOSED.value and current.owner is None
    assert rows(desk, "command_reply") == []


def test_imported_history_commands_nothing(desk: StoreDesk) -> None:
    open_case(desk)
    old = mail(ALICE_FROM, "[KW-1] Charged twice", "#close\n", date=at(10), headers=TEAM_PROOF)
    item = StoreItem(uid=99, raw=old.as_bytes(), parsed=parse_message(old.as_bytes()))
    with desk.engine.begin() as conn:
        inbox = Folder(desk.box.name, "INBOX", Origin.INBOX, 1)
        store_batch(conn, inbox, [item], is_history=True, now=at(10))
    desk.triage(at(10))
    assert the_case(desk).status != CaseStatus.CLOSED.value
    assert rows(desk, "command_reply") == []


# -- races: commands against the CLI ---------------------------------------------------------


def _cli(desk: StoreDesk, step: Any, **args: Any) -> None:
    namespace = argparse.Namespace(reference="KW-1", by="carol@example.com", **args)
    for _ in range(cli_cases.MUTATION_ATTEMPTS):
        try:
            cli_cases._apply(desk.engine, step, namespace)
            return
        except cli_cases.StaleCaseError:
            continue
    pytest.fail("the CLI never got its change in")


def test_cli_assign_between_the_commands_read_and_write_loses_nothing(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command mail reads the case, `keepword assign` commits, then the command
    mail writes: its save fails on the version, the message is retried, both land.
    (One transaction a message: the path after a failed batch, and PostgreSQL's race. A
    batch on SQLite holds the write lock from its start: the CLI waits, next test.)"""
    open_case(desk)
    real = command_use_case.decide
    raced: list[bool] = []

    def decide_with_a_race(*args: Any) -> Any:
        if not raced:
            raced.append(True)
            _cli(desk, cli_cases._assign, address=CAROL)
        return real(*args)

    monkeypatch.setattr(command_use_case, "decide", decide_with_a_race)
    desk.deliver(
        mail(ALICE_FROM, "[KW-1] x", "#note keep it\n#close\n", date=at(10), headers=TEAM_PROOF),
        at(10),
    )
    first = desk.triage(at(10), batch=1)
    assert len(first.errors) == 1 and "changed meanwhile" in first.errors[0]
    assert the_case(desk).owner == CAROL and rows(desk, "command_reply") == []
    later = desk.triage(at(10, 2), batch=1)  # the triage retry, a minute or so later
    assert later.errors == [] and later.triaged == 1
    current = the_case(desk)
    assert current.owner == CAROL and current.status == CaseStatus.CLOSED.value
    events = kinds_with_actor(desk, current.id)
    assert events.count(("owner_changed", CAROL)) == 1
    assert events.count(("note", ALICE)) == 1 and events.count(("closed", ALICE)) == 1
    assert len(rows(desk, "command_reply")) == 1


def test_cli_assign_during_a_batch_waits_for_it_and_both_land(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's transaction holds SQLite's write lock from its start: `keepword assign`
    run meanwhile (another thread: another process in life) waits for its commit, then
    decides on the case the command mail left - nothing lost, nothing retried."""
    open_case(desk)
    real = command_use_case.decide
    cli: list[threading.Thread] = []

    def decide_with_a_race(*args: Any) -> Any:
        if not cli:
            cli.append(
                threading.Thread(
                    target=_cli, args=(desk, cli_cases._assign), kwargs={"address": CAROL}
                )
            )
            cli[0].start()
            _wait_until_in_sql(cli[0])  # reading, or waiting for the batch's write lock
        return real(*args)

    monkeypatch.setattr(command_use_case, "decide", decide_with_a_race)
    desk.deliver(
        mail(ALICE_FROM, "[KW-1] x", "#note keep it\n#take\n", date=at(10), headers=TEAM_PROOF),
        at(10),
    )
    first = desk.triage(at(10))
    cli[0].join(timeout=30)
    assert first.errors == [] and first.triaged == 1 and not cli[0].is_alive()
    current = the_case(desk)
    events = kinds_with_actor(desk, current.id)
    assert events.count(("note", ALICE)) == 1
    # the mail's #take first (it held the lock), then the CLI's assign on top of it
    assert events.count(("owner_changed", ALICE)) == 1 and current.owner == CAROL
    assert events.index(("owner_changed", ALICE)) < events.index(("owner_changed", CAROL))


def _wait_until_in_sql(thread: threading.Thread) -> None:
    """Until `thread` runs a statement (SQLAlchemy's `do_execute` on its stack): either
    order of the CLI and the batch ends the same, this makes the wait the likely one."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None and frame.f_code.co_name != "do_execute":
            frame = frame.f_back
        if frame is not None:
            return
        time.sleep(0.005)


def test_a_command_between_the_clis_read_and_write_loses_nothing(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keepword close` reads the case, the command mail (#take, #note) is triaged and
    commits, then the CLI writes: it decides again on the new version (no lost update)."""
    open_case(desk)
    desk.deliver(
        mail(ALICE_FROM, "[KW-1] x", "#take\n#note mine\n", date=at(10), headers=TEAM_PROOF), at(10)
    )
    real = cli_cases._case_or_fail
    raced: list[bool] = []

    def read_then_race(conn: Any, reference: str) -> Any:
        found = real(conn, reference)
        if not raced:
            raced.append(True)
            assert desk.triage(at(10)).errors == []
        return found

    monkeypatch.setattr(cli_cases, "_case_or_fail", read_then_race)
    _cli(desk, cli_cases._close)
    current = the_case(desk)
    assert current.owner == ALICE and current.status == CaseStatus.CLOSED.value
    events = kinds_with_actor(desk, current.id)
    assert ("note", ALICE) in events and ("closed", CAROL) in events
    assert len(rows(desk, "command_reply")) == 1


def test_the_confirmation_goes_to_the_sender_only_once(desk: StoreDesk) -> None:
    open_case(desk)
    sent = command(desk, "#take\n", at(10))
    desk.deliver(sent, at(10, 5), folder="Sent")  # the same mail seen again in Sent
    desk.triage(at(10, 5))
    assert len(rows(desk, "command_reply")) == 1
    assert SUPPORT not in rows(desk, "command_reply")[0].recipients


def test_a_command_between_the_chases_plan_and_its_mail_loses_nothing(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chase plans a reminder on the old promise; the command mail (#promise) commits
    before the reminder is written: the chase step is refused (the case moved on) and
    the next step reminds about the new promise only."""
    open_case(desk)
    [ack] = desk.promises(the_case(desk).id)
    when = ack.made_at + (ack.due_at - ack.made_at) * 0.6
    desk.deliver(
        mail(ALICE_FROM, "[KW-1] x", "#promise 2026-11-02 16:30\n", date=when, headers=TEAM_PROOF),
        when,
    )
    real = chase.plan
    raced: list[bool] = []

    def plan_then_race(*args: Any, **kwargs: Any) -> Any:
        planned = real(*args, **kwargs)
        if not raced:
            raced.append(True)
            assert desk.triage(when).errors == []
        return planned

    monkeypatch.setattr(chase, "plan", plan_then_race)
    first = desk.chase(when)
    assert raced and first.reminders == 0  # planned on the old promise: refused
    assert rows(desk, "reminder") == []
    _, new = desk.promises(the_case(desk).id)
    later = new.made_at + (new.due_at - new.made_at) * 0.6
    desk.chase(later)
    assert [r.dedup_key for r in rows(desk, "reminder")] == [
        f"reminder:case:{the_case(desk).id}:promise:{new.id}:50"
    ]


def test_an_unproven_team_address_commands_nothing_and_the_member_is_told(
    desk: StoreDesk,
) -> None:
    """Alice's address without her server's proof (pipeline.standing): a claim, not the
    team. Nothing changes on KW-1, the refusal is on its timeline, and the address it
    claimed is told - never the customer."""
    open_case(desk)
    command(desk, "#assign mallory@evil.test\n#close\n", at(10), proof=False)
    [current, *_] = cases_of(desk)
    assert current.owner != "mallory@evil.test" and current.status != CaseStatus.CLOSED.value
    refused = [d for k, d in desk.events(current.id) if k == "refused"]
    assert refused and all("proof" in d or "team address" in d for d in refused), refused
    text = confirmation(desk)  # to the address it claimed, never to the customer
    assert "in your name without proof" in text and "Refused: #close" in text
    assert all(row.recipients != [ANN[1]] for row in rows(desk, "command_reply"))
