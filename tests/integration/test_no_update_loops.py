"""No customer updates between two keepword installations, over days of chase steps.

Two organisations run keepword; someone at each writes to the other from its shared
address. Each side opens a case and acknowledges it once (test_no_loops.py checks
that); nobody answers, so each side's chase reaches the update zone of its promise. The
other side is a machine: its acknowledgement carried its X-Keepword-Loop header. So no
update goes out, the promise becomes the team's own target (withdrawn towards the
customer, with the reason on the timeline) and the chase goes on inside the team.

Everything runs for real: each keepword has its own SQLite store, shared inbox on the
same Dovecot and its SMTP server (aiosmtpd handing mail on over LMTP into Dovecot), on
one virtual clock; the chase runs as the daemon runs it (Service.chase).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select

from keepword.config import KeepwordSettings, MailboxSettings, Settings
from keepword.domain.model import PromiseAudience, PromiseState
from keepword.service import Service
from keepword.store import promises as promise_store
from keepword.store.tables import case, case_event
from tests.fixtures.desk import Clock
from tests.fixtures.dovecot import Dovecot, _pool_user, _user_numbers
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

ALL_WEEK = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
START = datetime(2026, 11, 2, 9, tzinfo=UTC)
DAYS = 3
STEP = timedelta(minutes=30)  # a poll and a chase per installation every 30 virtual minutes


def fresh_user(dovecot: Dovecot) -> str:
    number = next(_user_numbers)
    name = _pool_user(number)
    if name not in dovecot.users:
        dovecot.add_user(name, f"pw-{number}")
    return name


def question(sender: str, to: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[-1] or "example.org")
    msg.set_content("Hello, can you help us with our order?")
    return msg.as_bytes()


class Installation:
    """One keepword: its own store, shared inbox and SMTP server, the shared clock."""

    def __init__(
        self, name: str, dovecot: Dovecot, smtp: SmtpServer, tmp: Path, clock: Clock
    ) -> None:
        self.address = fresh_user(dovecot)
        self.smtp = smtp
        self.box = MailboxSettings(
            name=name,
            address=self.address,
            reference_prefix=name.upper(),
            sent_folder=None,
            imap=dovecot.imap_settings(self.address),
            smtp=smtp.settings(),
            calendar={"hours": ALL_WEEK},
            chase={"digest": False},
        )
        state = tmp / name
        state.mkdir()
        settings = Settings(
            keepword=KeepwordSettings(
                database_url=f"sqlite:///{state / 'kw.db'}",
                allow_inline_passwords=True,
                state_dir=state,
            ),
            mailbox=[self.box],
        )
        self.service = Service(settings, clock=clock)
        self.poll()  # first contact: what is there now is history

    def poll(self) -> None:
        self.service.ingest(self.box)
        self.service.triage(self.box)
        asyncio.run(self.service.drain_now(self.box))

    def chase(self) -> None:
        asyncio.run(self.service.chase(self.box))
        asyncio.run(self.service.drain_now(self.box))

    def sent_to(self, address: str) -> int:
        return sum(1 for m in self.smtp.messages if address in m.rcpt_tos)

    def the_case(self) -> tuple[int, list[str]]:
        with self.service.engine.connect() as conn:
            case_id = conn.execute(select(case.c.id)).scalar_one()
            details = conn.execute(
                select(case_event.c.detail).where(case_event.c.kind == "promise_withdrawn")
            ).scalars()
            return case_id, [d or "" for d in details]


@pytest.fixture
def installations(
    dovecot: Dovecot, smtp_server_factory: Callable[..., SmtpServer], tmp_path: Path
) -> Iterator[tuple[Installation, Installation, Clock]]:
    if not dovecot.is_running():
        dovecot.start()
    clock = Clock(START - timedelta(hours=1))
    made = [
        Installation(
            name,
            dovecot,
            smtp_server_factory(lmtp=(dovecot.host, dovecot.lmtp_port)),
            tmp_path,
            clock,
        )
        for name in ("alpha", "beta")
    ]
    yield made[0], made[1], clock
    for one in made:
        asyncio.run(one.service.close())


def test_two_keepwords_send_each_other_no_update_over_days(
    dovecot: Dovecot, installations: tuple[Installation, Installation, Clock]
) -> None:
    alpha, beta, clock = installations
    clock.now = START
    dovecot.deliver(beta.address, [alpha.address], question(beta.address, alpha.address, "Q1"))
    dovecot.deliver(alpha.address, [beta.address], question(alpha.address, beta.address, "Q2"))
    while clock.now < START + timedelta(days=DAYS):
        for one in (alpha, beta):
            one.poll()
            one.chase()
        clock.now += STEP

    # The acknowledgement each plain question earned, and not one update after it.
    assert alpha.sent_to(beta.address) == 1
    assert beta.sent_to(alpha.address) == 1
    for one, other in ((alpha, beta), (beta, alpha)):
        case_id, withdrawn = one.the_case()
        assert len(withdrawn) == 1 and "another keepword installation" in withdrawn[0]
        assert other.address in withdrawn[0]
        with one.service.engine.connect() as conn:
            promises = promise_store.promises_of_case(conn, case_id)
        first, target = promises
        assert first.state is PromiseState.WITHDRAWN
        # The team still owes an answer: its own target, missed and recorded (not silent).
        assert target.audience is PromiseAudience.TEAM
        assert target.state is PromiseState.BROKEN and "internal target" in target.reason
