"""Commands by mail (domain.commands): parsing, stripping, and what each does."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState, EventKind
from keepword.domain.commands import (
    Command,
    Context,
    Refused,
    Verb,
    assign_target,
    confirmation_text,
    decide,
    decide_all,
    end_of_business_day,
    parse,
    parse_when,
    reply_recipient,
    strip_commands,
)
from keepword.domain.model import CaseStatus, Kind
from keepword.domain.trust import Sender, Standing

BERLIN = ZoneInfo("Europe/Berlin")
CALENDAR = BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)})
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday, 10:00 in Berlin
ALICE = "alice@shop.example"
BOB = "bob@shop.example"
STAFF = frozenset({ALICE, BOB})
CONTEXT = Context(staff=STAFF, now=NOW, calendar=CALENDAR, message_pk=5)
CASE = CaseState(
    id=1,
    mailbox="support",
    reference="KW-1",
    status=CaseStatus.WAITING_ON_TEAM,
    opened_at=NOW - timedelta(hours=3),
    updated_at=NOW - timedelta(hours=1),
    customer="ann@customer.example",
    owner=BOB,
)
TEAM = Sender(Standing.TEAM, Kind.STAFF, "dkim", ALICE, True)
FORGED = Sender(Standing.PERSON, Kind.CUSTOMER, "claims team address", ALICE, False, True)
STRANGER = Sender(Standing.PERSON, Kind.CUSTOMER, "not from the team", "mallory@evil.test")


# -- parsing -------------------------------------------------------------------------------


def test_commands_at_the_top_and_the_reply_below() -> None:
    body = (
        "#take\n"
        "#note called her, the invoice is wrong;\n"
        "accounting fixes it today\n"
        "\n"
        "#promise tomorrow 12:00\n"
        "\n"
        "Dear Ann,\n"
        "#1 reason is the VAT.\n"
        "\n"
        "On Mon, 23 Nov 2026 at 10:00, Support <support@shop.example> wrote:\n"
        "> Reminder: [KW-1] internal story\n"
        "> #close\n"
    )
    parsed = parse(body)
    assert [c.verb for c in parsed.commands] == [Verb.TAKE, Verb.NOTE, Verb.PROMISE]
    assert parsed.commands[1].argument == (
        "called her, the invoice is wrong;\naccounting fixes it today"
    )
    assert parsed.commands[2].argument == "tomorrow 12:00"
    assert parsed.reply_text == "Dear Ann,\n#1 reason is the VAT."
    assert "internal story" not in parsed.reply_text  # quoted history never goes out
    assert not parsed.only_commands


def test_a_mail_of_only_commands_and_notes_is_never_forwarded() -> None:
    parsed = parse("#note just for us\n\n#close\n\n-- \nAlice\n")
    assert [c.verb for c in parsed.commands] == [Verb.NOTE, Verb.CLOSE]
    assert parsed.reply_text == "--\nAlice"  # a signature alone is no reply to forward
    assert parsed.only_commands
    assert parse("#note only\n").only_commands
    assert parse("#close\n\nSent from my iPhone").only_commands


def test_misspelt_commands_are_stripped_and_refused() -> None:
    parsed = parse("#asign bob@shop.example\nHello Ann")
    assert parsed.commands == (
        Command(Verb.UNKNOWN, "bob@shop.example", "#asign bob@shop.example"),
    )
    assert parsed.reply_text == "Hello Ann"
    outcome = decide(parsed.commands[0], CASE, TEAM, CONTEXT)
    assert not outcome.accepted and "unknown command" in outcome.reply


def test_no_commands_leaves_the_reply_as_it_was() -> None:
    parsed = parse("Hello Ann,\n\nfixed.\n")
    assert parsed.commands == () and parsed.reply_text == "Hello Ann,\n\nfixed."
    assert not parsed.only_commands


def test_commands_quoted_from_an_older_mail_are_not_the_senders() -> None:
    body = "Thanks!\n\nOn Mon, Alice <alice@shop.example> wrote:\n> #close\n"
    assert parse(body).commands == ()


@given(st.text(max_size=300))
def test_strip_commands_never_leaves_a_command_line_at_the_top(body: str) -> None:
    text = strip_commands(body)
    first = next((line for line in text.split("\n") if line.strip()), "")
    parsed_again = parse(text)
    # whatever is left starts with a non-command line
    assert not parsed_again.commands or not first.strip().startswith("#")


# -- trust ---------------------------------------------------------------------------------


def test_commands_from_a_stranger_are_refused_and_nobody_is_told() -> None:
    outcome = decide(Command(Verb.CLOSE, "", "#close"), CASE, STRANGER, CONTEXT)
    assert not outcome.accepted and outcome.change is None
    assert outcome.events[0].kind is EventKind.REFUSED
    assert reply_recipient(STRANGER) is None


def test_commands_from_a_forged_team_address_are_refused_and_the_member_told() -> None:
    outcome = decide(Command(Verb.ASSIGN, "mallory@evil.test", "#assign m"), CASE, FORGED, CONTEXT)
    assert not outcome.accepted and "claims team" in outcome.reply
    assert reply_recipient(FORGED) == ALICE
    assert reply_recipient(TEAM) == ALICE


# -- what each does ----------------------------------------------------------------------------


def test_take_and_assign() -> None:
    outcome = decide(Command(Verb.TAKE, "", "#take"), CASE, TEAM, CONTEXT)
    assert outcome.accepted and outcome.change is not None
    assert outcome.change.case.owner == ALICE
    assert outcome.change.events[0].kind is EventKind.OWNER_CHANGED
    again = decide(Command(Verb.TAKE, "", "#take"), outcome.change.case, TEAM, CONTEXT)
    assert again.accepted and again.change is not None and again.change.events == ()
    moved = decide(Command(Verb.ASSIGN, f"Bob <{BOB}>", "#assign"), CASE, TEAM, CONTEXT)
    assert moved.accepted and moved.change is not None and moved.change.case.owner == BOB


def test_assign_refuses_outsiders() -> None:
    outcome = decide(Command(Verb.ASSIGN, "mallory@evil.test", "#assign"), CASE, TEAM, CONTEXT)
    assert not outcome.accepted and "not on the team" in outcome.reply
    assert assign_target("", STAFF) == Refused("nothing is not an address")
    assert assign_target("BOB@shop.example", STAFF) == BOB


def test_a_proven_team_address_that_is_no_member_cannot_take() -> None:
    shared = Sender(Standing.TEAM, Kind.STAFF, "sent folder", "support@shop.example", True)
    outcome = decide(Command(Verb.TAKE, "", "#take"), CASE, shared, CONTEXT)
    assert not outcome.accepted


def test_close_and_reopen() -> None:
    closed = decide(Command(Verb.CLOSE, "fixed", "#close fixed"), CASE, TEAM, CONTEXT)
    assert closed.change is not None and closed.change.case.status is CaseStatus.CLOSED
    assert "fixed" in closed.change.events[0].detail
    opened = decide(Command(Verb.REOPEN, "", "#reopen"), closed.change.case, TEAM, CONTEXT)
    assert opened.change is not None and opened.change.case.status is CaseStatus.WAITING_ON_TEAM


def test_note_is_internal() -> None:
    outcome = decide(Command(Verb.NOTE, "called her", "#note called her"), CASE, TEAM, CONTEXT)
    assert outcome.accepted and outcome.change is not None
    assert outcome.change.case == CASE
    assert outcome.change.events[0].kind is EventKind.NOTE
    assert outcome.promise is None
    empty = decide(Command(Verb.NOTE, "", "#note"), CASE, TEAM, CONTEXT)
    assert not empty.accepted


def test_waiting_tells_the_customer_and_moves_the_promise() -> None:
    command = Command(Verb.WAITING, "2026-11-26 the courier's answer", "#waiting ...")
    outcome = decide(command, CASE, TEAM, CONTEXT)
    assert outcome.accepted and outcome.promise is not None
    assert outcome.promise.tell_customer
    assert outcome.promise.due_at == datetime(2026, 11, 26, 17, 0, tzinfo=BERLIN)
    assert "the courier's answer" in outcome.promise.reason
    assert outcome.change is not None and outcome.change.events[0].kind is EventKind.WAITING


@pytest.mark.parametrize(
    ("argument", "why"),
    [
        ("26.11.2026 courier", "YYYY-MM-DD"),
        ("2026-11-26", "what we are waiting for"),
        ("2026-11-20 courier", "passed"),
        ("2027-06-01 courier", "days ahead"),
    ],
)
def test_waiting_refusals(argument: str, why: str) -> None:
    outcome = decide(Command(Verb.WAITING, argument, "#waiting"), CASE, TEAM, CONTEXT)
    assert not outcome.accepted and why in outcome.reply


def test_promise_sets_a_human_promise() -> None:
    outcome = decide(Command(Verb.PROMISE, "tomorrow 12:00", "#promise"), CASE, TEAM, CONTEXT)
    assert outcome.accepted and outcome.promise is not None
    assert outcome.promise.due_at == datetime(2026, 11, 24, 12, 0, tzinfo=BERLIN)
    assert not outcome.promise.tell_customer and outcome.promise.set_by == ALICE


def test_commands_on_a_closed_case() -> None:
    closed = CaseState(**{**_fields(CASE), "status": CaseStatus.CLOSED})
    assert not decide(Command(Verb.PROMISE, "+4h", "#promise +4h"), closed, TEAM, CONTEXT).accepted


def _fields(case: CaseState) -> dict[str, object]:
    return {name: getattr(case, name) for name in case.__slots__}  # type: ignore[attr-defined]


def test_decide_all_folds_in_order_and_confirms() -> None:
    commands = parse("#take\n#close\n#asign x\n").commands
    final, outcomes = decide_all(commands, CASE, TEAM, CONTEXT)
    assert final.owner == ALICE and final.status is CaseStatus.CLOSED
    text = confirmation_text("KW-1", outcomes)
    assert text.index("Refused") < text.index("is yours now")
    assert "Nothing was sent to the customer" in text


# -- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2026-11-25 15:00", datetime(2026, 11, 25, 15, 0, tzinfo=BERLIN)),
        ("2026-11-25T15:00", datetime(2026, 11, 25, 15, 0, tzinfo=BERLIN)),
        ("2026-11-25", datetime(2026, 11, 25, 17, 0, tzinfo=BERLIN)),
        ("15:30", datetime(2026, 11, 23, 15, 30, tzinfo=BERLIN)),
        ("tomorrow", datetime(2026, 11, 24, 17, 0, tzinfo=BERLIN)),
        ("Tomorrow 10:00", datetime(2026, 11, 24, 10, 0, tzinfo=BERLIN)),
        ("+4h", NOW + timedelta(hours=4)),
        ("+5d", datetime(2026, 11, 30, 17, 0, tzinfo=BERLIN)),  # Saturday -> Monday
    ],
)
def test_parse_when(spec: str, expected: datetime) -> None:
    assert parse_when(spec, NOW, CALENDAR) == expected


@pytest.mark.parametrize("spec", ["", "soon", "tomorrow noon", "25:00", "2026-11-25 9"])
def test_parse_when_refuses(spec: str) -> None:
    assert isinstance(parse_when(spec, NOW, CALENDAR), Refused)


def test_end_of_business_day_skips_closed_days() -> None:
    assert end_of_business_day(CALENDAR, date(2026, 11, 29)) == datetime(
        2026, 11, 30, 17, 0, tzinfo=BERLIN
    )


def test_now_is_utc_aware() -> None:
    assert NOW.tzinfo is UTC


def test_a_promise_a_person_sets_makes_the_case_wait_on_the_team() -> None:
    # A case waiting on the customer is never chased: the promise must be followed.
    answered = CaseState(**{**_fields(CASE), "status": CaseStatus.WAITING_ON_CUSTOMER})
    for command in (
        Command(Verb.PROMISE, "tomorrow 12:00", "#promise tomorrow 12:00"),
        Command(Verb.WAITING, "2026-11-26 the courier", "#waiting 2026-11-26 the courier"),
    ):
        outcome = decide(command, answered, TEAM, CONTEXT)
        assert outcome.change is not None
        assert outcome.change.case.status is CaseStatus.WAITING_ON_TEAM
    kept = decide(Command(Verb.PROMISE, "+4h", "#promise +4h"), CASE, TEAM, CONTEXT)
    assert kept.change is not None and kept.change.case.status is CaseStatus.WAITING_ON_TEAM
