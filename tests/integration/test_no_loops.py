"""No mail loops: two keepword instances, an auto-responder and a naive responder.

Everything runs for real: each keepword has its own SQLite file, shared inbox on the
same Dovecot and SMTP server (aiosmtpd relaying over LMTP into Dovecot), so every
acknowledgement lands in the other side's inbox and is ingested there. The tests run
several poll + drain cycles of every party and count what was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.fixtures.dovecot import Dovecot, fresh_user
from tests.fixtures.installations import Installation, customer_mail, write
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

CYCLES = 6
PER_SENDER_PER_HOUR = 3


class Responder:
    """A correspondent that answers every new mail in its inbox (over LMTP)."""

    def __init__(self, dovecot: Dovecot, *, auto_submitted: bool) -> None:
        self.dovecot = dovecot
        self.address = fresh_user(dovecot)
        self.auto_submitted = auto_submitted
        self.answered: set[int] = set()
        self.replies = 0

    def step(self) -> None:
        with self.dovecot.client(self.address) as imap:
            imap.select_folder("INBOX", readonly=True)
            new = [uid for uid in imap.search("ALL") if uid not in self.answered]
            fetched = imap.fetch(new, ["BODY.PEEK[]"]) if new else {}
        for uid in sorted(fetched):
            self.answered.add(uid)
            received = message_from_bytes(fetched[uid][b"BODY[]"], policy=default_policy)
            self._answer(received)

    def _answer(self, received: EmailMessage) -> None:  # type: ignore[override]
        to = str(received["From"])
        self.replies += 1
        if self.auto_submitted:
            # A ticket system's auto-responder: a new ticket subject, no threading headers;
            # only its RFC 3834 mark says it is a machine.
            reply = customer_mail(
                self.address, to, f"Ticket {self.replies} opened", Auto_Submitted="auto-replied"
            )
        else:
            # A naive responder: a plain new "Re:" mail, no marks, no threading headers
            # (each one looks like a new customer question).
            reply = customer_mail(self.address, to, f"Re: your mail {self.replies}")
        recipient = to.split("<")[-1].rstrip(">").strip()
        self.dovecot.deliver(self.address, [recipient], reply)


@pytest.fixture
def keepword_factory(
    dovecot: Dovecot, smtp_server_factory: Callable[..., SmtpServer], tmp_path: Path
) -> Iterator[Callable[[str], Installation]]:
    if not dovecot.is_running():
        dovecot.start()
    started: list[Installation] = []

    def make(name: str) -> Installation:
        smtp = smtp_server_factory(lmtp=(dovecot.host, dovecot.lmtp_port))
        limits = {"per_sender_per_hour": PER_SENDER_PER_HOUR}
        instance = Installation(name, dovecot, smtp, tmp_path, limits=limits)
        started.append(instance)
        instance.poll()  # first poll: what is there now is history, never acknowledged
        return instance

    yield make
    for instance in started:
        instance.close()


def test_two_keepwords_acknowledge_each_other_once(
    dovecot: Dovecot, keepword_factory: Callable[[str], Installation]
) -> None:
    alpha, beta = keepword_factory("alpha"), keepword_factory("beta")
    write(dovecot, alpha.address, beta.address, "Question from alpha")
    write(dovecot, beta.address, alpha.address, "Question from beta")
    for _ in range(CYCLES):
        alpha.poll()
        beta.poll()

    # Each plain mail earns its one acknowledgement; the acknowledgements (Auto-Submitted,
    # X-Keepword-Loop of the other instance) earn nothing.
    assert alpha.sent_to(beta.address) == 1
    assert beta.sent_to(alpha.address) == 1
    assert len(alpha.smtp.messages) == 1
    assert len(beta.smtp.messages) == 1
    ack = alpha.smtp.messages[0]
    assert ack.header("Auto-Submitted") == "auto-replied"
    # No ping-pong: each inbox holds the question and the other side's one answer.
    assert len(dovecot.uids(alpha.address)) == 2
    assert len(dovecot.uids(beta.address)) == 2


def converse(dovecot: Dovecot, alpha: Installation, *, auto_submitted: bool) -> Responder:
    """A responder asks alpha once; then both run CYCLES rounds, answering what came."""
    responder = Responder(dovecot, auto_submitted=auto_submitted)
    write(dovecot, responder.address, alpha.address, "Where is my parcel?")
    for _ in range(CYCLES):
        alpha.poll()
        responder.step()
    return responder


def test_auto_responder_gets_one_acknowledgement(
    dovecot: Dovecot, keepword_factory: Callable[[str], Installation]
) -> None:
    alpha = keepword_factory("alpha")
    robot = converse(dovecot, alpha, auto_submitted=True)

    assert alpha.sent_to(robot.address) == 1
    assert robot.replies == 1  # it answered the acknowledgement...
    assert len(dovecot.uids(alpha.address)) == 2  # ...and that answer was not answered


def test_naive_responder_is_stopped_by_the_rate_limit(
    dovecot: Dovecot, keepword_factory: Callable[[str], Installation]
) -> None:
    alpha = keepword_factory("alpha")
    naive = converse(dovecot, alpha, auto_submitted=False)

    sent = alpha.sent_to(naive.address)
    # Every naive answer looks like a new question, so only the limit stops the loop.
    assert sent == PER_SENDER_PER_HOUR
    assert naive.replies == PER_SENDER_PER_HOUR
    for _ in range(2):  # and it stays stopped
        alpha.poll()
        naive.step()
    assert alpha.sent_to(naive.address) == PER_SENDER_PER_HOUR
