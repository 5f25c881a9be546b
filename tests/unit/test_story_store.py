"""The whole story in reminders and escalations, on a real SQLite store (no mail server):
what `store.story` loads for one case, bounded for a long case, and the team mail the
chase queues with it (plain text first, an escaped HTML timeline as the alternative)."""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import PromiseState
from keepword.domain.story import STORY_MAX_MESSAGES, Part
from keepword.pipeline import chase as chasing
from keepword.store import cases as case_store
from keepword.store.story import load_story
from keepword.store.tables import case, message, message_content
from tests.fixtures.chase_store import ALICE, CAROL, StoreDesk
from tests.fixtures.desk import mail

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # Berlin business hours: 08:00-16:00 UTC
ANN = ("Ann Lee", "ann@example.org")
HOSTILE = (
    'It still fails: <script>alert("x")</script><img src=x onerror=alert(1)>\n'
    '<a href="https://evil.example/">click</a> & "quotes"'
)


def at(hour: int, minute: int = 0, day: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[StoreDesk]:
    made = StoreDesk(tmp_path, calendar={"timezone": "Europe/Berlin"})
    made.triage(at(7))  # first contact: an empty mailbox
    yield made
    made.engine.dispose()


def the_case(desk: StoreDesk) -> Any:
    with desk.engine.connect() as conn:
        return conn.execute(select(case)).one()


def a_case_told_three_times(desk: StoreDesk) -> Any:
    """Ann writes at 09:00, 10:00 and 11:00 Berlin; the second quotes the acknowledgement,
    the third carries markup; Alice notes something at 10:30 Berlin."""
    question = desk.deliver(
        mail(ANN, "Charged twice", "I was charged twice for order 1234.", date=at(8)), at(8)
    )
    desk.triage(at(8))
    again = mail(
        ANN,
        "Re: Charged twice",
        "Any news?\n\nOn Mon, 2 Nov 2026 at 09:00, Support <support@example.com> wrote:\n"
        "> your mail has arrived\n",
        date=at(9),
        reply_to=question,
    )
    desk.deliver(again, at(9))
    desk.triage(at(9))
    hostile = mail(ANN, "Re: Charged twice", HOSTILE, date=at(10), reply_to=question)
    desk.deliver(hostile, at(10))
    desk.triage(at(10))
    case_id = the_case(desk).id
    with desk.engine.begin() as conn:
        note = Event(EventKind.NOTE, at(9, 30), ALICE, "asked accounting about 1234")
        case_store.add_events(conn, case_id, [note])
    return case_id


def parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts_of(raw: bytes) -> tuple[str, str]:
    msg = parsed(raw)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    # Plain text first: a client that shows the first part it understands shows text.
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    return str(plain.get_content()), str(html.get_content())


def test_the_story_of_a_case_is_loaded_whole_and_in_order(desk: StoreDesk) -> None:
    case_id = a_case_told_three_times(desk)
    with desk.engine.connect() as conn:
        story = load_story(conn, case_id, "KW-1", now=at(12))
    customer = [e for e in story.entries if e.part is Part.CUSTOMER]
    assert [e.text.splitlines()[0] for e in customer] == [
        "I was charged twice for order 1234.",
        "Any news?",  # the quoted acknowledgement is trimmed
        'It still fails: <script>alert("x")</script><img src=x onerror=alert(1)>',
    ]
    assert [e.at for e in customer] == [at(8), at(9), at(10)]
    assert customer[0].title == "Ann Lee <ann@example.org> wrote"
    [promised] = [e for e in story.entries if e.part is Part.PROMISE]
    assert promised.fate == "open" and promised.due_at == at(16)
    notes = [e for e in story.entries if e.part is Part.NOTE]
    assert [(n.actor, n.text) for n in notes] == [(ALICE, "asked accounting about 1234")]
    parts = [e.part for e in story.entries]
    before_note = parts[: parts.index(Part.NOTE)]
    assert before_note.count(Part.CUSTOMER) == 2  # the 09:30 note between 09:00 and 10:00
    assert story.messages_left_out == 0


def test_a_reminder_carries_the_whole_story_as_text_and_an_escaped_html_timeline(
    desk: StoreDesk,
) -> None:
    a_case_told_three_times(desk)
    assert desk.chase(at(12)).reminders == 1  # 50% of 08:00-16:00
    [reminder] = [r for r in desk.outbox() if r.kind == "reminder"]
    text, html = parts_of(reminder.raw)
    text = text[text.index("The whole story of KW-1") :]  # the case block quotes the last one

    first, second, third = (
        "> I was charged twice for order 1234.",
        "> Any news?",
        '> It still fails: <script>alert("x")</script>',
    )
    assert text.index(first) < text.index(second) < text.index(third)
    assert "your mail has arrived" not in text
    assert "asked accounting about 1234" in text and "[open]" in text
    assert "Monday, November 2, 2026, 09:00 (Europe/Berlin)" in text  # the mailbox's zone

    # Hostile customer text is text in the HTML part, never markup.
    assert "<script" not in html and "<img" not in html and 'evil.example/">' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;a href=&#34;https://evil.example/&#34;&gt;click&lt;/a&gt; &amp;" in html
    assert html.index("charged twice for order 1234") < html.index("Any news?")
    assert html.index("Any news?") < html.index("It still fails")
    assert "<table" in html and "Europe/Berlin" in html
    assert "src=" not in html.replace("&lt;img src=x", "")  # no external resources
    assert "<style" not in html


def test_an_escalation_with_a_late_update_names_the_new_time_up_front(desk: StoreDesk) -> None:
    case_id = a_case_told_three_times(desk)
    result = desk.chase(at(9, day=1))  # Tuesday 10:00 Berlin: the promise broke at 17:00
    assert (result.updates, result.escalations) == (1, 1)
    old, new = desk.promises(case_id)
    assert old.state is PromiseState.BROKEN and new.state is PromiseState.OPEN
    [escalation] = [r for r in desk.outbox() if r.kind == "escalation"]
    assert escalation.recipients == [CAROL]
    text, html = parts_of(escalation.raw)
    new_time = f"{new.due_at.astimezone(BERLIN):%H:%M} (Europe/Berlin)"
    told = text.index("NEW: the customer was just told to expect us by")
    assert told < text.index("> I was charged twice") and new_time in text[told:].split("\n")[0]
    assert "[just now]" in text and "[broken]" in text
    assert "<strong>New:</strong>" in html and new_time in html


def test_an_escalation_with_an_announced_update_names_the_new_time(desk: StoreDesk) -> None:
    desk.deliver(mail(("Bob", "bob@example.org"), "Login", "I cannot log in.", date=at(8)), at(8))
    desk.triage(at(8))
    case_id = the_case(desk).id
    assert desk.chase(at(12)).reminders == 1
    result = desk.chase(at(15))  # an hour before 16:00: the update zone begins
    assert (result.updates, result.escalations) == (1, 1)
    old, new = desk.promises(case_id)
    assert old.state is PromiseState.SUPERSEDED and old.superseded_by == new.id
    [escalation] = [r for r in desk.outbox() if r.kind == "escalation"]
    text, html = parts_of(escalation.raw)
    assert "Escalation for case KW-1: the promise is about to break." in text
    new_time = f"{new.due_at.astimezone(BERLIN):%H:%M} (Europe/Berlin)"
    told = text.index("NEW: the customer was just told to expect us by")
    assert new_time in text[told:].split("\n")[0]
    assert "[replaced by a later promise, announced in time]" in text and "[just now]" in text
    assert "Reminder sent" in text and new_time in html


def test_a_reminder_is_not_told_of_a_new_time(desk: StoreDesk) -> None:
    a_case_told_three_times(desk)
    desk.chase(at(12))
    [reminder] = [r for r in desk.outbox() if r.kind == "reminder"]
    text, _ = parts_of(reminder.raw)
    assert "NEW:" not in text and "[just now]" not in text


def test_a_long_case_makes_a_bounded_story_that_keeps_the_question(desk: StoreDesk) -> None:
    case_id = desk.new_case(at(8))
    pasted_log = "\n".join(f"log line {i} " + "x" * 80 for i in range(20_000))  # ~1.8 MB
    with desk.engine.begin() as conn:
        conn.execute(
            insert(message),
            [
                {
                    "id": 10_000 + i,
                    "mailbox": "support",
                    "message_id": f"m{i}@example.org",
                    "content_digest": f"d{i}",
                    "size": 1,
                    "from_addr": ANN[1],
                    "subject": "Re: Help",
                    "received_at": at(8) + timedelta(minutes=i),
                    "stored_at": at(8) + timedelta(minutes=i),
                    "origin": "inbox",
                    "kind": "customer",
                    "case_id": case_id,
                }
                for i in range(500)
            ],
        )
        bodies = ["The question"] + [f"message {i}\n{pasted_log}" for i in range(1, 500)]
        conn.execute(
            insert(message_content),
            [{"message_pk": 10_000 + i, "raw": b"x", "body_text": b} for i, b in enumerate(bodies)],
        )
    desk.promise(case_id, at(8), at(16))
    with desk.engine.connect() as conn:
        story = load_story(conn, case_id, "KW-1", now=at(12))
    customer = [e for e in story.entries if e.part is Part.CUSTOMER]
    assert len(customer) == STORY_MAX_MESSAGES
    assert customer[0].text == "The question"  # the first message stays
    assert customer[1].text.startswith("message 476\n") and customer[-1].text.startswith(
        "message 499\n"
    )
    assert story.messages_left_out == 500 - STORY_MAX_MESSAGES

    assert desk.chase(at(12)).reminders == 1
    [reminder] = [r for r in desk.outbox() if r.kind == "reminder"]
    assert len(reminder.raw) < 400_000  # not megabytes
    text, html = parts_of(reminder.raw)
    assert "475 earlier messages of this long case not shown" in text
    assert "475 earlier messages" in html


def test_the_story_is_read_only_for_cases_that_get_a_team_mail(
    desk: StoreDesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    for hour in (8, 9, 10):
        desk.deliver(
            mail((f"C{hour}", f"c{hour}@example.org"), f"Q{hour}", date=at(hour)), at(hour)
        )
        desk.triage(at(hour))
    loaded: list[int] = []
    real = chasing.story_store.load_story

    def counting(conn: Any, case_id: int, *args: Any, **kwargs: Any) -> Any:
        loaded.append(case_id)
        return real(conn, case_id, *args, **kwargs)

    monkeypatch.setattr(chasing.story_store, "load_story", counting)
    assert desk.chase(at(11)).reminders == 0 and loaded == []  # nobody at 50% yet
    result = desk.chase(at(12, 30))  # only the 08:00 case is past half its window
    assert result.reminders == 1 and result.cases == 3
    assert loaded == [the_first_case(desk)]


def the_first_case(desk: StoreDesk) -> int:
    with desk.engine.connect() as conn:
        return int(conn.execute(select(case.c.id).order_by(case.c.id).limit(1)).scalar_one())
