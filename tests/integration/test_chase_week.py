"""A business week nobody answers, through the store and the mail rig, one chase a minute.

The daemon runs the chase every `chase.interval_seconds` (60 s by default); here the
chase step and the drain run at every virtual minute from Thursday 24 December 2026 to
Thursday 31 December (Christmas Day a public holiday in Germany, then a weekend: five
business days), except that now and then one step is missed, as a busy mailbox lock
can make it. Real Dovecot (the customer's mail), real aiosmtpd (what people got), real
SQLite. The chase's own invariants must hold throughout: every customer promise gets
its reminders, the lead and an update before its due time; no breach, silent or not;
team mail only in business hours; one digest per business day.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.domain.model import PromiseState
from keepword.domain.outbox_keys import promise_id_of
from keepword.pipeline.chase import chase_mailbox
from keepword.pipeline.context import MailboxContext
from keepword.store.tables import outbox
from tests.fixtures.desk import ALICE, ANN, CAROL
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer
from tests.integration.test_chasing import Desk

pytestmark = pytest.mark.integration

START = datetime(2026, 12, 24, 9, tzinfo=UTC)  # Thursday; Friday 25th is Christmas Day
END = datetime(2026, 12, 31, 17, tzinfo=UTC)  # Thursday a week later (Jan 1st: holiday)
CLOSED = {date(2026, 12, 25), date(2026, 12, 26), date(2026, 12, 27)}
BUSINESS_DAYS = [date(2026, 12, d) for d in (24, 28, 29, 30, 31)]
MISSED_EVERY = 47  # one step in 47 does not run


@pytest.fixture
def desk(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[Desk]:
    made = Desk(
        dovecot,
        mail_user,
        smtp_server,
        tmp_path,
        START - timedelta(hours=1),
        calendar={"country": "DE"},
        chase={"digest": True},
    )
    yield made
    made.close()


def in_business_hours(at: datetime) -> bool:
    return at.date() not in CLOSED and at.weekday() < 5 and time(9) <= at.time() <= time(17)


def test_a_week_nobody_answers_with_a_chase_every_minute(desk: Desk) -> None:
    desk.customer_writes(START, "Broken order", "The parcel arrived broken.")
    silent = failed = 0
    now, step = START, 0
    while now <= END:
        if step % MISSED_EVERY != MISSED_EVERY - 1:
            result = chase_mailbox(
                MailboxContext(desk.settings, desk.box, desk.engine, desk.renderer, now)
            )
            if result.queued:  # the daemon's drain runs anyway; only this one sends
                desk.clock.now = now
                desk.drain()
            silent += result.silent_breaches
            failed += result.failed
        now += timedelta(minutes=1)
        step += 1
    assert (silent, failed) == (0, 0)

    promises = desk.promises()
    assert not [p for p in promises if p.state == PromiseState.BROKEN.value]
    revised = [p for p in promises if p.state == PromiseState.SUPERSEDED.value]
    assert len(revised) >= 4  # one business day each, revised an hour before due
    with desk.engine.connect() as conn:
        rows = list(conn.execute(select(outbox).order_by(outbox.c.id)))
    by_promise: dict[int, list[Any]] = {}
    for row in rows:
        pid = promise_id_of(row.dedup_key)
        if pid is not None:
            by_promise.setdefault(pid, []).append(row)
    for p in revised:
        kinds = sorted(r.kind for r in by_promise[p.id])
        assert kinds == ["customer_update", "escalation", "reminder", "reminder"], kinds
        # everything about a promise went out before it was due: nothing stale
        assert all(r.sent_at is not None and r.sent_at < p.due_at for r in by_promise[p.id])
        assert p.resolved_at < p.due_at
    team_mail = [r for r in rows if r.kind in ("reminder", "escalation")]
    assert all(in_business_hours(r.created_at) for r in team_mail)

    # The digest at 08:30 on business days only.
    digests = sorted(r.dedup_key for r in rows if r.kind == "digest")
    assert all(r.created_at.time() >= time(8, 30) for r in rows if r.kind == "digest")
    assert digests == [f"digest:support:{day}" for day in BUSINESS_DAYS]
    # What people received: the acknowledgement and one update per revised promise; every
    # reminder and escalation queued reached its people.
    assert len(desk.received(ANN[1])) == 1 + len(revised)
    for who, kind, label in ((CAROL, "escalation", "Escalation"), (ALICE, "reminder", "Reminder")):
        got = [m for m in desk.received(who) if label in (m.header("Subject") or "")]
        assert len(got) == len([r for r in rows if r.kind == kind])
