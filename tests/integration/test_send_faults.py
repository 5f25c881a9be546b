"""Exactly one mail per customer through relay faults, on the real aiosmtpd relay and the
real Dovecot Sent folder: slow or silent answers to the final dot, dropped connections,
4xx/5xx, a refused login, an IMAP outage while sending, and rows that keep failing."""

from __future__ import annotations

import asyncio
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keepword.adapters.credentials import Secret
from keepword.cli.status import MailboxHealth, mailbox_health
from keepword.domain.model import OutboxState
from keepword.errors import DeliveryUnavailable, MailboxError
from keepword.pipeline.send import (
    DrainOptions,
    DrainResult,
    ImapSentCopy,
    Servers,
    drain_outbox,
)
from keepword.store import outbox
from keepword.store.tables import case_event
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.waiting import COSTLY, wait_until, wait_until_async
from tests.integration.test_send import NOW, FakeSentCopy, Rig, make_rig
from tests.integration.test_send import rig as rig  # the fixture

pytestmark = pytest.mark.integration


def rig_with(tmp_path: Path, server: SmtpServer, smtp: dict[str, Any], **box: Any) -> Rig:
    return make_rig(tmp_path, server, smtp=server.settings(**smtp).model_dump(), **box)


def health(rig: Rig) -> MailboxHealth:
    with rig.engine.connect() as conn:
        return mailbox_health(conn, rig.box, NOW)


def timeline(rig: Rig) -> list[str]:
    with rig.engine.connect() as conn:
        return list(conn.execute(select(case_event.c.detail)).scalars())


def test_a_relay_slow_to_answer_the_final_dot_is_waited_for(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """Commands time out after 0.3 s, but the reply to the final dot may take longer
    (RFC 5321: 10 minutes); the old code gave up, retried and delivered twice."""
    rig = rig_with(tmp_path, smtp_server, {"timeout": 0.3, "data_timeout": 10.0})
    row = rig.enqueue_ack()
    smtp_server.delay_data_reply(1.0)
    result = rig.drain(sent_copy=FakeSentCopy())
    assert (result.sent, result.retried, result.held) == (1, 0, 0)
    assert rig.row(row.id).state is OutboxState.SENT
    assert rig.drain(NOW + timedelta(hours=2), sent_copy=FakeSentCopy()).handled == 0
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("fault", ["no answer in time", "connection dropped"])
def test_unknown_outcome_is_held_and_resolved_from_the_relays_sent_copy(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, fault: str
) -> None:
    """The relay took the mail but keepword never heard its 250. Like Gmail or
    Microsoft 365 the relay files its own copy in Sent (so keepword does not append):
    that copy, found after the wait, settles it; nothing is sent twice."""
    rig = rig_with(
        tmp_path, smtp_server, {"data_timeout": 0.3, "unknown_outcome_wait": 600.0},
        append_to_sent=False,
    )  # fmt: skip
    first, second = rig.enqueue_ack(), rig.enqueue_ack("ack:2", to="bob@example.org")
    smtp_server.file_sent_copies(lambda raw: dovecot.append(mail_user, "Sent", raw))
    if fault == "connection dropped":
        smtp_server.drop_after_data()
    else:
        smtp_server.delay_data_reply(1.0)
    imap, secret = dovecot.imap_settings(mail_user), Secret(dovecot.users[mail_user])
    with closing(ImapSentCopy(imap, "Sent", secret)) as copy:
        with pytest.raises(DeliveryUnavailable, match="no reply"):
            rig.drain(sent_copy=copy)  # a relay that went silent gets no more mail now
        held = rig.row(first.id)
        assert (held.state, held.sent_copy) == (OutboxState.PENDING, "held")
        assert health(rig).outbox_unknown == 1  # `keepword status` shows it
        assert rig.row(second.id).attempts == 0  # untouched, waits for the next drain
        smtp_server.heal()

        # Within the wait the row is not sent again (the old code retried after a minute),
        # and the row behind it goes out.
        soon = rig.drain(NOW + timedelta(minutes=2), sent_copy=copy)
        assert (soon.sent, soon.held, soon.already_sent) == (1, 0, 0)
        assert wait_until(lambda: len(dovecot.uids(mail_user, "Sent")) == 2, poll=COSTLY)

        later = rig.drain(NOW + timedelta(minutes=11), sent_copy=copy)
    assert (later.already_sent, later.sent) == (1, 0)
    assert rig.row(first.id).sent_copy == "found"
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "ann@example.org",
        "bob@example.org",
    ]  # each customer exactly once
    assert len(dovecot.uids(mail_user, "Sent")) == 2


def test_unknown_outcome_without_evidence_is_sent_again_after_the_wait_and_said_so(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """The window left open: no copy anywhere. After the wait keepword sends again rather
    than risk a customer never acknowledged, and the case timeline says so."""
    rig = rig_with(tmp_path, smtp_server, {"unknown_outcome_wait": 600.0})
    row = rig.enqueue_ack()
    smtp_server.drop_after_data()
    copy = FakeSentCopy()
    with pytest.raises(DeliveryUnavailable):
        rig.drain(sent_copy=copy)
    smtp_server.heal()
    assert rig.drain(NOW + timedelta(minutes=9), sent_copy=copy).handled == 0
    later = rig.drain(NOW + timedelta(minutes=10), sent_copy=copy)
    assert (later.sent, later.resent) == (1, 1)
    assert copy.lookups == [row.message_id]
    assert any("may have gone out" in d for d in timeline(rig))
    assert len(smtp_server.messages) == 2  # the documented duplicate


@pytest.mark.parametrize("code", [421, 451, 452])
def test_a_4xx_to_the_final_dot_retries_without_needing_the_sent_folder(
    rig: Rig, code: int
) -> None:
    """A reply settles the outcome: nothing went out, so the retry need not (and, with
    IMAP down, must not wait to) look in Sent. The old code looked and waited."""

    class Down(FakeSentCopy):
        def has_message_id(self, message_id: str) -> bool:
            raise MailboxError("IMAP down")

        def append(self, raw: bytes) -> None:
            raise MailboxError("IMAP down")

    rows = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(3)]
    rig.server.fail_data(code)
    result = rig.drain(sent_copy=Down())
    assert result.retried == 3  # one row's 4xx does not stop the others
    assert all(rig.row(r.id).sent_copy == "pending" for r in rows)
    rig.server.heal()
    later = rig.drain(NOW + timedelta(hours=2), sent_copy=Down())
    assert later.sent == 3
    assert sorted(m.rcpt_tos[0] for m in rig.server.messages) == [
        f"c{n}@example.org" for n in range(3)
    ]


def test_a_5xx_to_the_final_dot_fails_only_that_row(rig: Rig) -> None:
    bad, good = rig.enqueue_ack(), rig.enqueue_ack("ack:2", to="bob@example.org")
    rig.server.fail_data(554, "5.7.1 content rejected")
    assert rig.drain().failed == 2
    assert rig.row(bad.id).state is OutboxState.FAILED
    assert rig.row(good.id).state is OutboxState.FAILED
    assert any("554" in d for d in timeline(rig))
    assert rig.drain(NOW + timedelta(days=1)).handled == 0
    assert rig.server.messages == []


def test_a_refused_login_raises_and_leaves_every_row_pending(rig: Rig) -> None:
    rows = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(2)]
    rig.server.refuse_login()
    with pytest.raises(DeliveryUnavailable, match="535"):
        rig.drain()
    for row in rows:
        stored = rig.row(row.id)
        assert (stored.state, stored.attempts) == (OutboxState.PENDING, 0)
        assert stored.last_error is not None and "535" in stored.last_error
    rig.server.heal()
    assert rig.drain().sent == 2
    assert len(rig.server.messages) == 2


def test_a_drain_stopped_mid_send_gives_back_the_mails_it_had_not_handed_over(
    rig: Rig,
) -> None:
    """Attempts are claimed a few rows at a time (send.CLAIM_BATCH); a drain stopped
    (SIGTERM, the daemon's bounded stop) while the relay holds one mail leaves only
    that one "unknown": the others claimed with it are pending as they were, due at once
    and never held for the unknown-outcome wait."""
    rows = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(5)]
    rig.server.delay_data_reply(5.0)

    async def stopped() -> None:
        servers = Servers(None)
        task = asyncio.create_task(drain_outbox(rig.engine, rig.settings, rig.box, NOW, servers))
        assert await wait_until_async(lambda: bool(rig.server.messages))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stopped())
    stored = [rig.row(row.id) for row in rows]
    assert [(s.attempts, s.sent_copy) for s in stored] == [(1, "unknown")] + [(0, "pending")] * 4
    rig.server.heal()
    again = rig.drain(NOW + timedelta(seconds=1), sent_copy=FakeSentCopy())
    assert (again.sent, again.held) == (4, 1)  # the one the relay had waits for evidence


def test_a_relay_that_takes_one_connection_gets_every_mail_once_over_it(
    tmp_path: Path, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The second connection's login is refused once the first mail is in (a relay that
    allows one session): the row that connection had claimed goes back to the others,
    counted once, and the drain goes on over the first connection."""
    rig = rig_with(tmp_path, smtp_server, {"connections": 2})
    rows = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(12)]
    smtp_server.file_sent_copies(lambda raw: smtp_server.refuse_login())
    with caplog.at_level("INFO", logger="keepword.pipeline.send"):
        result = rig.drain()
    assert "one SMTP connection fewer" in caplog.text
    assert (result.sent, result.retried) == (12, 0)
    recipients = sorted(m.rcpt_tos[0] for m in smtp_server.messages)
    assert recipients == sorted(f"c{n}@example.org" for n in range(12))  # each once
    for row in rows:
        stored = rig.row(row.id)
        assert (stored.state, stored.attempts) == (OutboxState.SENT, 1)


def test_sent_copies_missed_during_an_imap_outage_are_made_later_exactly_once(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer
) -> None:
    rig = make_rig(tmp_path, smtp_server)
    rows = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(4)]
    imap, secret = dovecot.imap_settings(mail_user), Secret(dovecot.users[mail_user])
    dovecot.stop()
    try:
        with closing(ImapSentCopy(imap.model_copy(update={"timeout": 2.0}), "Sent", secret)) as c:
            result = rig.drain(sent_copy=c)
    finally:
        dovecot.start()
    assert result.sent == 4  # the customers are not kept waiting for IMAP
    assert [rig.row(r.id).sent_copy for r in rows] == ["failed"] * 4
    assert health(rig).sent_copies_missing == 4
    # One copy made by hand meanwhile (say, an APPEND whose answer was lost): not twice.
    dovecot.append(mail_user, "Sent", rows[0].raw)

    with closing(ImapSentCopy(imap, "Sent", secret)) as copy:
        assert rig.drain(NOW + timedelta(seconds=30), sent_copy=copy).copied == 0  # backoff
        later = rig.drain(NOW + timedelta(minutes=2), sent_copy=copy)
        assert later.copied == 4
        assert [rig.row(r.id).sent_copy for r in rows] == ["found", "done", "done", "done"]
        assert rig.drain(NOW + timedelta(hours=3), sent_copy=copy).handled == 0
        for row in rows:
            assert copy.has_message_id(row.message_id)
    assert len(dovecot.uids(mail_user, "Sent")) == 4  # every copy exactly once
    assert health(rig).sent_copies_missing == 0
    assert len(smtp_server.messages) == 4


def test_rows_that_cannot_be_resolved_never_block_the_rows_behind_them(rig: Rig) -> None:
    """Two unknown rows whose Sent folder cannot be checked, a drain of two rows at a
    time: they move their own time forward and the third row goes out."""

    class Down(FakeSentCopy):
        def has_message_id(self, message_id: str) -> bool:
            self.lookups.append(message_id)
            raise MailboxError("IMAP down")

    stuck = [rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org") for n in range(2)]
    fresh = rig.enqueue_ack("ack:fresh", to="fresh@example.org")
    with rig.engine.begin() as conn:
        for row in stuck:
            outbox.claim_attempts(conn, [row])  # crashed mid-send: outcome unknown
    down = Down()
    first = asyncio_drain(rig, NOW, down, limit=2)
    assert first.skipped == 2
    assert len(down.lookups) == 1  # an unreachable folder is asked once per drain
    second = asyncio_drain(rig, NOW + timedelta(seconds=1), down, limit=2)
    assert second.sent == 1
    assert rig.row(fresh.id).state is OutboxState.SENT
    assert [m.rcpt_tos[0] for m in rig.server.messages] == ["fresh@example.org"]


def asyncio_drain(rig: Rig, at: datetime, copy: FakeSentCopy, *, limit: int) -> DrainResult:
    return asyncio.run(
        drain_outbox(rig.engine, rig.settings, rig.box, at, Servers(copy), DrainOptions(limit))
    )
