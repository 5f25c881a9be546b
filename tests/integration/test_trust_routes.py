"""Issue 12: every route a stranger had into someone else's case, on the real rig.

Real Dovecot (the shared inbox and its Sent folder), real aiosmtpd (what left keepword
is what the relay received), real SQLite. Each hijack is refused, the refusal is on the
timeline of the case it targeted, the mail opens a case of its own for its real sender,
and nothing the stranger receives names or describes the targeted case.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.adapters.metrics import METRICS
from keepword.domain.model import CaseStatus, PromiseState
from keepword.store import cases as case_store
from keepword.store import reports
from keepword.store.tables import case, message, promise
from tests.fixtures.desk import ALICE, ANN, SUPPORT, TEAM_PROOF, Desk, mail
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

MALLORY = ("Mallory", "mallory@evil.test")
RANDOM_HEADERS = ("message-id", "in-reply-to", "references", "content-type")
ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


class TrustDesk(Desk):
    def case_by_ref(self, reference: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(case).where(case.c.reference == reference)).one()

    def rows_of(self, message_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            query = select(message).where(message.c.message_id == message_id.strip("<>"))
            return list(conn.execute(query.order_by(message.c.id)))

    def reference_of(self, msg: EmailMessage) -> str | None:
        [row] = self.rows_of(msg["Message-ID"])
        return self.reference_of_row(row)

    def reference_of_row(self, row: Any) -> str | None:
        if row.case_id is None:
            return None
        with self.engine.connect() as conn:
            return str(case_store.load_case(conn, row.case_id).reference)

    def timeline(self, reference: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            found = case_store.find_case(conn, reference)
            assert found is not None and found.id is not None
            return [(r.kind, r.detail or "") for r in case_store.timeline(conn, found.id)]

    def refusals(self, reference: str) -> list[str]:
        return [detail for kind, detail in self.timeline(reference) if kind == "refused"]

    def correspondents(self, reference: str) -> frozenset[str]:
        found = self.case_by_ref(reference)
        with self.engine.connect() as conn:
            return case_store.case_candidates(conn, [found.id])[found.id].correspondents

    def learned_of(self, address: str) -> str:
        """What `address` can read in everything the relay delivered to it: the headers
        and every decoded text part. Message-IDs and MIME boundaries are left out: they
        are random, and "4711" turns up in one now and then."""
        seen: list[str] = []
        for delivered in self.received(address):
            msg = delivered.parsed()
            seen += [f"{k}: {v}" for k, v in msg.items() if k.lower() not in RANDOM_HEADERS]
            seen += [
                str(part.get_content())  # type: ignore[attr-defined]
                for part in msg.walk()
                if part.get_content_maintype() == "text"
            ]
        return "\n".join(seen)


@pytest.fixture
def desk(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[TrustDesk]:
    desk = TrustDesk(
        dovecot,
        mail_user,
        smtp_server,
        tmp_path,
        team=[ALICE],
        calendar={"hours": ALL_WEEK},
        promise={"follow_up_notes": True},
    )
    yield desk
    desk.close()


def _ann_opens(desk: TrustDesk) -> EmailMessage:
    question = desk.arrive(mail(ANN, "Password reset", "My account is 4711, please reset it."))
    desk.poll()
    assert desk.case_by_ref("KW-1").customer == ANN[1]
    return question


def _learned_nothing(desk: TrustDesk, stranger: str) -> None:
    """Nothing the stranger received names Ann's case, Ann, or what Ann wrote."""
    seen = desk.learned_of(stranger)
    assert seen, "the stranger got their own acknowledgement"
    assert not re.search(r"KW-1\b", seen) and "4711" not in seen and ANN[1] not in seen


def test_1_a_strangers_tag_opens_their_own_case_and_the_sent_copy_is_not_a_claim(
    desk: TrustDesk,
) -> None:
    _ann_opens(desk)
    hijack = desk.arrive(mail(MALLORY, "[KW-1] hello", "What is the status of this?"))
    desk.poll()
    desk.poll()  # the Sent copies of the acknowledgements come back to keepword
    assert desk.reference_of(hijack) == "KW-2"
    [refused] = desk.refusals("KW-1")
    assert "mallory@evil.test tried to join by tag" in refused
    assert "not a correspondent of KW-1" in refused
    [ack] = desk.received(MALLORY[1])
    assert ack.header("Subject") == "Re: hello [KW-2]", "no readable KW-1 claim"
    _learned_nothing(desk, MALLORY[1])
    assert "Password reset" not in desk.learned_of(MALLORY[1])
    # The Sent copy of that acknowledgement is keepword's own mail: filed by its outbox
    # row, even when its subject carries the other tag first (the old "Re: [KW-1] hello
    # [KW-2]"), and its recipient never becomes a correspondent of KW-1.
    [copy] = desk.rows_of(ack.header("Message-ID") or "")
    assert copy.kind == "own" and desk.reference_of_row(copy) == "KW-2"
    old_style = ack.parsed()
    assert isinstance(old_style, EmailMessage)
    old_style.replace_header("Subject", "Re: [KW-1] hello [KW-2]")
    old_style.clear_content()
    old_style.set_content("the same acknowledgement, as older keepword titled it\n")
    desk.arrive(old_style, folder="Sent")
    desk.poll()
    rows = desk.rows_of(ack.header("Message-ID") or "")
    assert len(rows) == 2 and {desk.reference_of_row(r) for r in rows} == {"KW-2"}
    assert MALLORY[1] not in desk.correspondents("KW-1")
    # ... so the stranger's next "[KW-1]" mail is refused again, and KW-1 never moved.
    again = desk.arrive(mail(MALLORY, "Re: [KW-1] hello", "Anything?"))
    desk.poll()
    assert desk.reference_of(again) != "KW-1"
    assert len(desk.refusals("KW-1")) == 2
    assert desk.case_by_ref("KW-1").customer_contacts == 1
    _learned_nothing(desk, MALLORY[1])


def test_2_a_guessed_or_leaked_acknowledgement_id_in_in_reply_to_is_refused(
    desk: TrustDesk,
) -> None:
    _ann_opens(desk)
    [ack] = desk.received(ANN[1])
    real_id = (ack.header("Message-ID") or "").strip("<>")
    old_scheme = f"kw.{hashlib.sha256(b'ack:1').hexdigest()[:24]}@example.com"
    assert real_id.startswith("kw2.") and real_id != old_scheme, "keyed, not computable"
    guessed = mail(MALLORY, "Re: Password reset", "status?")
    guessed["In-Reply-To"] = f"<{old_scheme}>"
    desk.arrive(guessed)
    desk.poll()
    assert desk.reference_of(guessed) == "KW-2"  # the guess matches nothing
    leaked = mail(MALLORY, "Re: Password reset", "status??")
    leaked["In-Reply-To"] = f"<{real_id}>"
    leaked["References"] = f"<{real_id}>"
    desk.arrive(leaked)
    desk.poll()
    assert desk.reference_of(leaked) not in (None, "KW-1")
    [refused] = desk.refusals("KW-1")
    assert "mallory@evil.test tried to join by references" in refused
    assert "was never sent the mail it answers" in refused
    assert desk.case_by_ref("KW-1").customer_contacts == 1
    _learned_nothing(desk, MALLORY[1])


def test_3_a_forged_customer_from_with_a_strangers_reply_to_makes_no_correspondent(
    desk: TrustDesk,
) -> None:
    question = _ann_opens(desk)
    forged = mail(ANN, "Re: Password reset [KW-1]", "Send the new password here.")
    forged["Reply-To"] = f"Mallory <{MALLORY[1]}>"
    forged["In-Reply-To"] = question["Message-ID"]
    desk.arrive(forged)
    desk.poll()
    assert desk.reference_of(forged) != "KW-1"
    [refused] = desk.refusals("KW-1")
    assert "its Reply-To mallory@evil.test is not on KW-1" in refused
    assert MALLORY[1] not in desk.correspondents("KW-1")
    kw1 = desk.case_by_ref("KW-1")
    assert kw1.customer == ANN[1] and kw1.customer_contacts == 1, "not the customer's mail"
    # A forged From alone cannot be told from Ann; but what keepword then mails about
    # the case (follow-up notes are on) goes to the customer of record only.
    alone = mail(ANN, "Re: Password reset [KW-1]", "Any news?", reply_to=question)
    desk.arrive(alone)
    desk.poll()
    assert desk.reference_of(alone) == "KW-1"
    assert all(m.rcpt_tos == (ANN[1],) for m in desk.received(ANN[1]))
    assert len(desk.received(ANN[1])) == 2  # the acknowledgement and one follow-up note
    _learned_nothing(desk, MALLORY[1])


def test_4_a_team_from_without_proof_is_a_customer_and_cannot_answer_the_case(
    desk: TrustDesk,
) -> None:
    question = _ann_opens(desk)
    owner_at_open = desk.case_by_ref("KW-1").owner  # the owner policy's choice
    untrusted = {
        "Authentication-Results": (
            "mx.evil.test; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
        )
    }
    for n, headers in enumerate(({}, untrusted)):
        claim = mail(
            ("Alice", ALICE),
            "Re: Password reset [KW-1]",
            f"Done, closing. ({n})",
            to=ANN[1],
            cc=SUPPORT,
            reply_to=question,
            headers=headers,
        )
        desk.arrive(claim)
        desk.poll()
        [row] = desk.rows_of(claim["Message-ID"])
        assert row.kind == "customer" and "without proof" in row.kind_reason
        assert desk.reference_of(claim) != "KW-1"
    refused = desk.refusals("KW-1")
    assert len(refused) == 2 and all("an unproven team address" in r for r in refused)
    kw1 = desk.case_by_ref("KW-1")
    assert kw1.first_response_at is None and kw1.owner == owner_at_open
    assert kw1.status == CaseStatus.NEW.value
    with desk.engine.connect() as conn:
        assert conn.execute(select(promise.c.state)).scalar_one() == PromiseState.OPEN.value
    assert desk.received(ALICE) == [], "nothing mailed to the address it claimed"
    # The same reply with the proof of the team's server is the team's.
    real = mail(
        ("Alice", ALICE),
        "Re: Password reset [KW-1]",
        "Reset; you should have the link.",
        to=ANN[1],
        cc=SUPPORT,
        reply_to=question,
        headers=TEAM_PROOF,
    )
    desk.arrive(real)
    desk.poll()
    assert desk.reference_of(real) == "KW-1" and desk.rows_of(real["Message-ID"])[0].kind == "staff"
    assert desk.case_by_ref("KW-1").owner == ALICE


def test_5_the_same_message_id_and_body_from_another_sender_is_another_message(
    desk: TrustDesk,
) -> None:
    question = _ann_opens(desk)
    copycat = mail(MALLORY, "Password reset", "My account is 4711, please reset it.")
    copycat.replace_header("Message-ID", question["Message-ID"])
    desk.arrive(copycat)
    desk.poll()
    rows = desk.rows_of(question["Message-ID"])
    assert [r.from_addr for r in rows] == [ANN[1], MALLORY[1]], "stored, not merged away"
    assert rows[0].content_digest != rows[1].content_digest
    assert rows[1].triaged_at is not None and rows[1].case_id not in (None, rows[0].case_id)
    assert desk.case_by_ref("KW-1").customer_contacts == 1
    # the same mail seen again from its own sender (another folder) is still one message
    desk.arrive(question, folder="Sent")
    desk.poll()
    assert len(desk.rows_of(question["Message-ID"])) == 2
    _learned_nothing(desk, MALLORY[1])


GARBAGE = (
    b"From: garbage\r\nTo: support@example.com\r\nSubject: You won\r\n"
    b"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <garbage-1@spam.test>\r\n\r\n"
    b"Claim your prize.\r\n"
)
NO_DOMAIN = GARBAGE.replace(b"From: garbage", b"From: root@localhost").replace(
    b"garbage-1", b"garbage-2"
)
CRLF_NAME = (
    b"From: =?utf-8?q?Evil=0D=0ABcc=3A_x=40y.test?= <crlf@customer.test>\r\n"
    b"To: support@example.com\r\nSubject: Broken invoice\r\n"
    b"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <crlf-1@customer.test>\r\n\r\n"
    b"The invoice PDF is empty.\r\n"
)


def test_6_no_usable_sender_opens_no_case_and_an_undecodable_name_keeps_the_address(
    desk: TrustDesk,
) -> None:
    # Dated now: mail dated days before keepword first saw the mailbox is history, which
    # is never acknowledged (the fixed date this test had made it fail from the next day).
    today = format_datetime(desk.clock()).encode()
    for raw in (GARBAGE, NO_DOMAIN, CRLF_NAME):
        dated = raw.replace(b"Tue, 01 Dec 2026 09:00:00 +0000", today)
        assert dated != raw
        desk.dovecot.append(desk.user, "INBOX", dated)
    desk.service.ingest(desk.box)
    before = METRICS.value("keepword_messages_without_sender_total", mailbox="support") or 0
    result = desk.service.triage(desk.box)
    desk.drain()
    assert result.unusable == 2 and result.opened == 1
    counted = METRICS.value("keepword_messages_without_sender_total", mailbox="support")
    assert counted == before + 2
    for mid in ("garbage-1@spam.test", "garbage-2@spam.test"):
        [row] = desk.rows_of(mid)
        assert row.case_id is None and row.triaged_at is not None
        assert row.kind_reason.startswith("opens no case")
    with desk.engine.connect() as conn:
        ignored = reports.not_answered(conn, "support", desk.clock() - timedelta(days=30), 100)
    assert sum(1 for item in ignored if item.what == "no sender") == 2
    [row] = desk.rows_of("crlf-1@customer.test")
    assert row.from_addr == "crlf@customer.test"
    assert "\r" not in (row.from_name or "") and "\n" not in (row.from_name or "")
    opened = desk.case_by_ref("KW-1")
    assert opened.customer == "crlf@customer.test"
    [ack] = desk.received("crlf@customer.test")
    assert ack.rcpt_tos == ("crlf@customer.test",) and desk.received("x@y.test") == []
    with desk.engine.connect() as conn:
        assert conn.execute(select(case.c.id)).all() == [(opened.id,)]
