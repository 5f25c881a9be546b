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

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keepword.domain.model import PromiseAudience, PromiseState
from keepword.store import promises as promise_store
from keepword.store.tables import case, case_event
from tests.fixtures.desk import Clock
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.installations import Installation, write
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 2, 9, tzinfo=UTC)
DAYS = 3
STEP = timedelta(minutes=30)  # a poll and a chase per installation every 30 virtual minutes


def the_case(one: Installation) -> tuple[int, list[str]]:
    """The one case of an installation, and why its promises were withdrawn."""
    with one.service.engine.connect() as conn:
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
            clock=clock,
            chase={"digest": False},
        )
        for name in ("alpha", "beta")
    ]
    for one in made:
        one.poll()  # first contact: what is there now is history
    yield made[0], made[1], clock
    for one in made:
        one.close()


def test_two_keepwords_send_each_other_no_update_over_days(
    dovecot: Dovecot, installations: tuple[Installation, Installation, Clock]
) -> None:
    alpha, beta, clock = installations
    clock.now = START
    write(dovecot, beta.address, alpha.address, "Q1")
    write(dovecot, alpha.address, beta.address, "Q2")
    while clock.now < START + timedelta(days=DAYS):
        for one in (alpha, beta):
            one.poll()
            one.chase()
        clock.now += STEP

    # The acknowledgement each plain question earned, and not one update after it.
    assert alpha.sent_to(beta.address) == 1
    assert beta.sent_to(alpha.address) == 1
    for one, other in ((alpha, beta), (beta, alpha)):
        case_id, withdrawn = the_case(one)
        assert len(withdrawn) == 1 and "another keepword installation" in withdrawn[0]
        assert other.address in withdrawn[0]
        with one.service.engine.connect() as conn:
            promises = promise_store.promises_of_case(conn, case_id)
        first, target = promises
        assert first.state is PromiseState.WITHDRAWN
        # The team still owes an answer: its own target, missed and recorded (not silent).
        assert target.audience is PromiseAudience.TEAM
        assert target.state is PromiseState.BROKEN and "internal target" in target.reason
