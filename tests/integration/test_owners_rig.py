"""Owners on the real rig (issue 12 part 2): Dovecot, aiosmtpd, SQLite, and mutt.

A team member's out-of-office is sent by a real mail client (mutt in batch mode, `-H`
draft) through a relay that delivers into the shared Dovecot account; keepword's poll
marks her away, moves her cases to the colleague on duty (on their timelines), tells the
lead once, never answers the auto-reply, and the next reminders go to the new owner.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from keepword.mail.render import Renderer
from keepword.pipeline.chase import ChaseResult, chase_mailbox
from keepword.pipeline.context import MailboxContext
from keepword.store.tables import case, case_event
from tests.fixtures.desk import ALICE, CAROL, TEAM_STAMP, Desk, mail
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.mutt import mutt_sends
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration  # mutt: `scripts/mailserver install` (never skipped)

BOB = "bob@example.com"
MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # business hours Mon-Fri 09:00-17:00 UTC


def at(hour: int, minute: int = 0) -> datetime:
    return MONDAY.replace(hour=hour, minute=minute)


def out_of_office(to: str, subject: str, in_reply_to: str) -> str:
    return (
        f"From: Alice <{ALICE}>\n"
        f"To: Example Support <{to}>\n"
        f"Subject: Automatic reply: {subject}\n"
        f"In-Reply-To: {in_reply_to}\n"
        "Auto-Submitted: auto-replied\n"
        "\n"
        "Thank you for your message. I am out of the office until 6 November 2026\n"
        "and will read it when I am back.\n"
    )


def chase(desk: Desk, when: datetime) -> ChaseResult:
    desk.clock.now = when
    renderer = Renderer.for_mailbox(desk.settings, desk.box)
    result = chase_mailbox(MailboxContext(desk.settings, desk.box, desk.engine, renderer, when))
    desk.drain()
    return result


def owners(desk: Desk) -> dict[str, str | None]:
    with desk.engine.connect() as conn:
        return {r.reference: r.owner for r in conn.execute(select(case).order_by(case.c.id))}


def test_an_out_of_office_from_mutt_moves_the_cases_and_the_lead_hears_once(
    dovecot: Dovecot,
    mail_user: str,
    smtp_server: SmtpServer,
    smtp_server_factory: Callable[..., SmtpServer],
    tmp_path: Path,
) -> None:
    relay = smtp_server_factory(
        auth=False, lmtp=(dovecot.host, dovecot.lmtp_port), stamp=TEAM_STAMP
    )
    desk = Desk(
        dovecot,
        mail_user,
        smtp_server,
        tmp_path,
        start=at(8),
        team=[ALICE, BOB],
        chase={"digest": False},
    )
    try:
        for n in range(3):  # least_open (the default): Alice, Bob, Alice
            desk.clock.now = at(9, n)
            desk.arrive(mail((f"C{n}", f"c{n}@example.org"), f"Question {n}", date=at(9, n)))
            desk.poll()
        assert owners(desk) == {"KW-1": ALICE, "KW-2": BOB, "KW-3": ALICE}

        assert chase(desk, at(13, 5)).reminders == 3  # half of the default 8 hours
        to_alice = desk.received(ALICE)
        assert len(to_alice) == 2 and all(ALICE not in m.rcpt_tos[1:] for m in to_alice)
        assert all(m.rcpt_tos == (ALICE,) for m in to_alice)  # the owner only
        first = next(m for m in to_alice if "[KW-1]" in (m.header("Subject") or ""))

        mutt_sends(
            relay,
            tmp_path / "alice",
            out_of_office(
                mail_user, first.header("Subject") or "", first.header("Message-ID") or ""
            ),
        )
        assert relay.messages, "the relay took Alice's out-of-office"
        desk.clock.now = at(13, 10)
        desk.poll()

        assert owners(desk) == {"KW-1": BOB, "KW-2": BOB, "KW-3": BOB}
        with desk.engine.connect() as conn:
            lines = [
                (r.kind, r.detail)
                for r in conn.execute(
                    select(case_event).where(case_event.c.case_id == 3).order_by(case_event.c.id)
                )
            ]
        assert ("away", f"{ALICE} is away until 2026-11-07") in lines
        assert any(k == "owner_changed" and f"{ALICE} is away" in d for k, d in lines)
        [notice] = desk.received(CAROL)
        assert notice.header("Subject") == f"Away: {ALICE} until 2026-11-07"
        body = notice.parsed().get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "KW-1 -> bob@example.com" in body and "KW-3 -> bob@example.com" in body
        assert len(desk.received(ALICE)) == 2, "the out-of-office is never answered"

        # another auto-reply of the same absence: the lead is not told again
        third = next(m for m in to_alice if "[KW-3]" in (m.header("Subject") or ""))
        mutt_sends(
            relay,
            tmp_path / "alice",
            out_of_office(
                mail_user, third.header("Subject") or "", third.header("Message-ID") or ""
            ),
        )
        desk.clock.now = at(13, 20)
        desk.poll()
        assert len(desk.received(CAROL)) == 1

        # the next reminders of her old cases go to the new owner
        assert chase(desk, at(15, 30)).reminders == 3  # 80%
        assert len(desk.received(ALICE)) == 2
        late = [m for m in desk.received(BOB) if "Reminder" in (m.header("Subject") or "")]
        assert {m.rcpt_tos for m in late} == {(BOB,)} and len(late) == 4
    finally:
        desk.close()
