"""Commands by mail from a real mail client: mutt, a relay, Dovecot and keepword.

A customer writes; keepword acknowledges and, later, reminds the team. Alice answers the
reminder from mutt in batch mode (`mutt -F muttrc -H draft`): mutt sends through an SMTP
relay (aiosmtpd) that delivers over LMTP into the shared mailbox on Dovecot, where
keepword's poll finds it. keepword's own mail goes through a relay into Dovecot too, so
what Alice and the customer receive is read back from their mailboxes over IMAP. Then:
the owner changed, the note is on the timeline and in no customer mail, Alice got one
confirmation, and the chase follows the new promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select

from keepword.domain.model import PromiseState
from keepword.mail.render import Renderer
from keepword.pipeline.chase import chase_mailbox
from keepword.pipeline.context import MailboxContext
from keepword.store import promises as promise_store
from keepword.store.tables import case, case_event, outbox
from tests.fixtures.desk import ALICE, TEAM_STAMP, Desk, mail
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.mutt import mutt_sends
from tests.fixtures.smtp import CapturedMail, SmtpServer
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
NOTE = "called her, accounting fixes it today"
CUSTOMER = ("Cu Stomer", "customer@example.org")  # a Dovecot account: mail really arrives


@pytest.fixture
def relay(dovecot: Dovecot, smtp_server_factory: Callable[..., SmtpServer]) -> Iterator[SmtpServer]:
    """The team's relay a mail client submits to: it vouches for its user's mail (the
    Authentication-Results keepword trusts) and delivers into Dovecot over LMTP."""
    yield smtp_server_factory(auth=False, lmtp=(dovecot.host, dovecot.lmtp_port), stamp=TEAM_STAMP)


@pytest.fixture
def outgoing(
    dovecot: Dovecot, smtp_server_factory: Callable[..., SmtpServer]
) -> Iterator[SmtpServer]:
    """keepword's own relay (with AUTH): its mail lands in the recipients' Dovecot INBOX."""
    yield smtp_server_factory(lmtp=(dovecot.host, dovecot.lmtp_port))


def inbox_texts(dovecot: Dovecot, user: str, loop: str, kind: str | None = None) -> list[str]:
    """The plain text of the mails in `user`'s INBOX that keepword (loop header `loop`)
    sent, optionally of one kind: read back over IMAP, as the person reads them."""
    criteria = ["HEADER", "X-Keepword-Loop", loop]
    if kind is not None:
        criteria += ["HEADER", "X-Keepword-Kind", kind]
    with dovecot.client(user) as imap:
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search(criteria)
        fetched = imap.fetch(uids, ["RFC822"]) if uids else {}
    texts = []
    for data in fetched.values():
        parsed = message_from_bytes(data[b"RFC822"], policy=policy.default)
        part = parsed.get_body(("plain",))
        texts.append(str(part.get_content()) if part is not None else "")
    return texts


def chase(desk: Desk) -> None:
    """One chase step at the desk's clock, then the drain (as the daemon's jobs run)."""
    renderer = Renderer.for_mailbox(desk.settings, desk.box)
    chase_mailbox(MailboxContext(desk.settings, desk.box, desk.engine, renderer, desk.clock.now))
    desk.drain()


def plain(mail: CapturedMail) -> str:
    parsed = message_from_bytes(mail.raw, policy=policy.default)
    part = parsed.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def test_a_reply_to_a_reminder_from_mutt_takes_notes_and_promises(
    dovecot: Dovecot,
    mail_user: str,
    outgoing: SmtpServer,
    relay: SmtpServer,
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    desk = Desk(
        dovecot,
        mail_user,
        outgoing,
        tmp_path,
        start=start,
        address=mail_user,  # the shared address is the Dovecot account mutt writes to
        calendar={"timezone": "UTC", "hours": ALL_WEEK},
        chase={"digest": False},
        owners={"policy": "none"},  # nobody owns it until #take: what the command changes
    )
    try:
        desk.arrive(
            mail(CUSTOMER, "Charged twice", "I was charged twice.", to=mail_user, date=start)
        )
        desk.poll()
        with desk.engine.connect() as conn:
            case_id = conn.execute(select(case.c.id)).scalar_one()
            [ack] = promise_store.promises_of_case(conn, case_id)
        # Half the promised time later, the chase reminds the team.
        desk.clock.now = ack.made_at + (ack.due_at - ack.made_at) * 0.6
        chase(desk)
        [reminder] = [m for m in desk.received(ALICE) if m.header("X-Keepword-Kind") == "reminder"]

        home = tmp_path / "mutt"
        reminder_id = reminder.header("Message-ID")
        quoted = "\n".join(f"> {line}" for line in plain(reminder).splitlines())
        mutt_sends(
            relay,
            home,
            f"From: Alice <{ALICE}>\n"
            f"To: {mail_user}\n"
            f"Subject: Re: {reminder.header('Subject')}\n"
            f"In-Reply-To: {reminder_id}\n"
            f"References: {reminder_id}\n"
            "\n"
            f"#take\n#note {NOTE}\n\n#promise tomorrow 12:00\n\n{quoted}\n",
        )
        assert wait_until(lambda: len(dovecot.uids(mail_user)) >= 2, timeout=30), "mutt's mail"
        desk.clock.now += timedelta(minutes=1)
        desk.poll()

        with desk.engine.connect() as conn:
            current = conn.execute(select(case).where(case.c.id == case_id)).one()
            events = list(
                conn.execute(
                    select(case_event.c.kind, case_event.c.actor, case_event.c.detail).where(
                        case_event.c.case_id == case_id
                    )
                )
            )
            promises = promise_store.promises_of_case(conn, case_id)
        assert current.owner == ALICE
        assert current.first_response_at is None  # commands are no answer to the customer
        assert ("note", ALICE, NOTE) in [(e.kind, e.actor, e.detail) for e in events]
        old, new = promises
        assert old.state is PromiseState.SUPERSEDED and new.state is PromiseState.OPEN
        tomorrow_noon = (desk.clock.now + timedelta(days=1)).replace(
            hour=12, minute=0, second=0, microsecond=0
        )
        assert new.due_at == tomorrow_noon

        # Nothing of the commands or the note ever reached the customer.
        to_customer = [plain(m) for m in desk.received(CUSTOMER[1])]
        assert to_customer and all(NOTE not in text for text in to_customer)
        assert all("#take" not in text and "#promise" not in text for text in to_customer)
        # One confirmation, to Alice only.
        confirmations = [
            m for m in outgoing.messages if m.header("X-Keepword-Kind") == "command_reply"
        ]
        assert len(confirmations) == 1 and confirmations[0].rcpt_tos == (ALICE,)
        # ... and it is in Alice's mailbox; the customer's has keepword's mail, no note.
        [received] = inbox_texts(dovecot, ALICE, mail_user, "command_reply")
        assert "KW-1 is yours now" in received
        in_customer_box = inbox_texts(dovecot, CUSTOMER[1], mail_user)
        assert in_customer_box and all(NOTE not in text for text in in_customer_box)

        # The chase follows the new promise: its reminder is about promise `new`.
        outgoing.clear()
        desk.clock.now = new.made_at + (new.due_at - new.made_at) * 0.6
        chase(desk)
        reminders = [m for m in desk.received(ALICE) if m.header("X-Keepword-Kind") == "reminder"]
        assert len(reminders) == 1
        with desk.engine.connect() as conn:
            keys = list(
                conn.execute(
                    select(outbox.c.dedup_key).where(outbox.c.kind == "reminder")
                ).scalars()
            )
        assert keys[-1].startswith(f"reminder:case:{case_id}:promise:{new.id}:")
    finally:
        desk.close()
