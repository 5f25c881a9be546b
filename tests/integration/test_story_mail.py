"""The whole story in the reminders and escalations people really receive: real Dovecot,
real aiosmtpd, real SQLite, keepword's poll and chase on a virtual clock (as in
test_chasing.py). Mail is read back from what the SMTP server got: every customer
message of the case in order, the promise history, and an escaped text/html timeline.

Business hours Mon-Fri 09:00-17:00 UTC; no history, so the promise is the default
window of 8 business hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from keepword.domain.model import PromiseState
from tests.fixtures.desk import ALICE, ANN, CAROL
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import CapturedMail, SmtpServer
from tests.integration.test_chasing import Desk as ChasingDesk

pytestmark = pytest.mark.integration

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday without holidays
TUESDAY = MONDAY + timedelta(days=1)
HOSTILE = '<script>alert("x")</script><img src="https://evil.example/t.gif"> still broken & cold'


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


class Desk(ChasingDesk):
    """Mail arrives at the virtual now: its IMAP INTERNALDATE (the message's time in the
    story, as in production) is the clock's, not the wall clock's."""

    def arrive(self, msg: EmailMessage, folder: str = "INBOX") -> EmailMessage:
        with self.dovecot.client(self.user) as imap:
            imap.append(folder, msg.as_bytes(), msg_time=self.clock.now)
        return msg


@pytest.fixture(params=["sqlite", "postgresql"])
def desk(
    request: pytest.FixtureRequest,
    dovecot: Dovecot,
    mail_user: str,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> Iterator[Desk]:
    """The story's queries on both stores (SQLite in `tmp_path`, a fresh PostgreSQL)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    made = Desk(dovecot, mail_user, smtp_server, tmp_path, at(MONDAY, 8), database_url=url)
    assert made.engine.dialect.name == request.param
    yield made
    made.close()


def parts(captured: CapturedMail) -> tuple[str, str]:
    """The plain text and the HTML of a received mail (plain first, one alternative)."""
    msg = captured.parsed()
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    crlf = (str(plain.get_content()), str(html.get_content()))
    return crlf[0].replace("\r\n", "\n"), crlf[1].replace("\r\n", "\n")


def in_order(text: str, *needles: str) -> bool:
    places = [text.find(n) for n in needles]
    return -1 not in places and places == sorted(places)


def test_a_reminder_and_an_escalation_carry_the_whole_story(desk: Desk) -> None:
    question = desk.customer_writes(
        at(MONDAY, 9), "Heating broken", "The heating in flat 4 is broken since Sunday."
    )
    desk.customer_writes(
        at(MONDAY, 10),
        "Re: Heating broken",
        "It is getting cold.\n\nOn Mon, 2 Nov 2026, Support <support@example.com> wrote:\n"
        "> your mail has arrived and is now case KW-1\n",
        reply_to=question,
    )

    # 13:00, half of the promised 8 business hours: the reminder to the team.
    assert desk.chase(at(MONDAY, 13)).reminders == 1
    [reminder] = desk.received(ALICE)
    text, html = parts(reminder)
    story = text[text.index("The whole story of KW-1") :]
    assert "(2 messages from the customer)" in story
    assert in_order(
        story,
        "> The heating in flat 4 is broken since Sunday.",
        "Promised the customer an answer: by Monday, November 2, 2026, 17:00 (UTC) [open]",
        "Acknowledgement sent to the customer",
        "> It is getting cold.",
    )
    assert "your mail has arrived" not in story  # quoted history trimmed
    assert in_order(html, "The heating in flat 4", "It is getting cold.")
    assert "NEW:" not in text

    # 14:00 a third message with markup in it; Tuesday 10:00 the promise has broken:
    # the late update tells Ann a new time and the escalation to the lead names it.
    desk.customer_writes(at(MONDAY, 14), "Re: Heating broken", HOSTILE, reply_to=question)
    result = desk.chase(at(TUESDAY, 10))
    assert (result.breaches, result.updates, result.escalations) == (1, 1, 1)
    old, new = desk.promises()
    assert old.state == PromiseState.BROKEN.value and new.state == PromiseState.OPEN.value
    [escalation] = desk.received(CAROL)
    assert escalation.header("Subject") == "[KW-1] Escalation: Heating broken"
    text, html = parts(escalation)
    new_time = f"{new.due_at:%H:%M} (UTC)"
    told = text.index("NEW: the customer was just told to expect us by")
    assert new_time in text[told:].split("\n")[0]
    story = text[text.index("The whole story of KW-1") :]
    assert "(3 messages from the customer)" in story
    assert in_order(
        story,
        "> The heating in flat 4 is broken since Sunday.",
        "Promised the customer an answer: by Monday, November 2, 2026, 17:00 (UTC) [broken]",
        "> It is getting cold.",
        '> <script>alert("x")</script>',
        "Promised the customer an update: by",
    )
    assert "[just now]" in story and "Update sent to the customer" in story
    assert in_order(story, "> It is getting cold.", "Reminder sent", '> <script>alert("x")')
    assert in_order(html, "The heating in flat 4", "It is getting cold.", "still broken")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<strong>New:</strong>" in html and new_time in html

    # The customer got the acknowledgement, the follow-up notes and the update: never
    # the story (internal notes and the team's timeline stay inside the team).
    for mail in desk.received(ANN[1]):
        body = mail.parsed().get_body(("plain",))
        assert body is not None and "The whole story" not in str(body.get_content())
