"""The outbox at the relay's speed: priorities, no row cap, connections, batched copies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import closing
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from keepword.adapters.credentials import Secret
from keepword.adapters.smtp import SmtpSender
from keepword.domain.model import OutboxKind, OutboxState
from keepword.errors import MailboxError
from keepword.pipeline.send import COPY_BATCH, DRAIN_BATCH, DrainOptions, ImapSentCopy
from keepword.store import outbox
from tests.fixtures.dovecot import Dovecot, load_mailserver
from tests.fixtures.smtp import SmtpServer, open_relay
from tests.fixtures.waiting import wait_until
from tests.integration.test_send import (
    NOW,
    CrashAfterAppend,
    FakeSentCopy,
    Rig,
    SimulatedCrash,
    make_rig,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path: Path, smtp_server: SmtpServer) -> Rig:
    return make_rig(tmp_path, smtp_server)


def record(rig: Rig, kind: OutboxKind, n: int, to: str | None = None) -> None:
    mail = EmailMessage()
    mail["From"] = "support@example.com"
    mail["To"] = to or f"c{n}@example.org"
    mail["Subject"] = f"{kind.value} {n}"
    mail["Message-ID"] = make_msgid(domain="example.com")
    mail.set_content(f"{kind.value} number {n}\n")
    with rig.engine.begin() as conn:
        entry = outbox.OutboxEntry(
            rig.box.name,
            None,
            kind.value,
            f"{kind.value}:{n}",
            [str(mail["To"])],
            str(mail["Subject"]),
            mail.as_bytes(),
        )
        outbox.enqueue(conn, entry, NOW - timedelta(minutes=1))


def test_customer_mail_leaves_before_team_mail_and_digests(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # One connection: the order in which the relay receives them is the drain's order.
    smtp = smtp_server.settings(connections=1).model_dump()
    rig = make_rig(tmp_path, smtp_server, smtp=smtp)
    record(rig, OutboxKind.DIGEST, 1)
    record(rig, OutboxKind.REMINDER, 2)
    record(rig, OutboxKind.ACKNOWLEDGEMENT, 3)
    record(rig, OutboxKind.ESCALATION, 4)
    record(rig, OutboxKind.CUSTOMER_UPDATE, 5)
    assert rig.drain().sent == 5
    subjects = [m.parsed()["Subject"] for m in rig.server.messages]
    assert subjects == [
        "acknowledgement 3",
        "customer_update 5",
        "reminder 2",
        "escalation 4",
        "digest 1",
    ]


def test_one_drain_sends_everything_due(rig: Rig) -> None:
    """Not 100 rows a drain: every due row goes, in bounded batches."""
    due = DRAIN_BATCH * 2 + 17
    for n in range(due):
        record(rig, OutboxKind.ACKNOWLEDGEMENT, n)
    result = rig.drain(sent_copy=FakeSentCopy())
    assert result.sent == due
    assert len(rig.server.messages) == due
    with rig.engine.connect() as conn:
        assert outbox.depth(conn, rig.box.name) == 0


def acknowledgements(rig: Rig, count: int) -> None:
    for n in range(count):
        record(rig, OutboxKind.ACKNOWLEDGEMENT, n)


def sent_folder(dovecot: Dovecot, user: str) -> ImapSentCopy:
    return ImapSentCopy(dovecot.imap_settings(user), "Sent", Secret(dovecot.users[user]))


def copy_states(rig: Rig, count: int) -> list[str]:
    with rig.engine.connect() as conn:
        return [outbox.get(conn, i + 1).sent_copy for i in range(count)]


def test_sent_copies_go_in_batches_with_multiappend(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer
) -> None:
    rig = make_rig(tmp_path, smtp_server)
    mails = 120
    acknowledgements(rig, mails)
    with closing(sent_folder(dovecot, mail_user)) as copy:
        assert rig.drain(sent_copy=copy).sent == mails
        commands = copy.commands
    assert len(dovecot.uids(mail_user, "Sent")) == mails  # every copy, once
    assert commands < 12, commands  # login, capability, 3 MULTIAPPENDs: not one APPEND each
    with rig.engine.connect() as conn:
        rows = outbox.copies_due(conn, NOW + timedelta(days=1), 1000, mailbox=rig.box.name)
        assert rows == []
    assert copy_states(rig, mails) == ["done"] * mails


SURGE = DrainOptions(defer_copies=True)


def test_a_surges_drains_leave_the_sent_copies_to_the_first_drain_after_it(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer
) -> None:
    """While a surge is acknowledged the drains go at the relay's pace: what it takes is
    recorded sent, its copy deferred (counted as missing); the first drain after the
    surge copies them all, a MULTIAPPEND a batch, each once."""
    rig = make_rig(tmp_path, smtp_server)
    mails = 60
    acknowledgements(rig, mails)
    with closing(sent_folder(dovecot, mail_user)) as copy:
        surge = rig.drain(sent_copy=copy, options=SURGE)
        assert (surge.sent, surge.copied, copy.commands) == (mails, 0, 0)
        assert copy_states(rig, mails) == ["deferred"] * mails
        with rig.engine.connect() as conn:
            assert outbox.missing_sent_copies(conn, rig.box.name) == mails
            assert outbox.has_due_work(conn, NOW, rig.box.name)
        after = rig.drain(sent_copy=copy)
        assert (after.sent, after.copied) == (0, mails)
        assert copy.commands < 12, copy.commands  # 3 MULTIAPPENDs, not an APPEND each
    assert len(dovecot.uids(mail_user, "Sent")) == mails
    assert copy_states(rig, mails) == ["done"] * mails
    assert len(smtp_server.messages) == mails  # nothing sent twice
    with rig.engine.connect() as conn:
        assert outbox.missing_sent_copies(conn, rig.box.name) == 0
        assert not outbox.has_due_work(conn, NOW + timedelta(days=1), rig.box.name)


def test_a_stop_while_deferred_copies_are_made_never_copies_one_twice(rig: Rig) -> None:
    """The batch under way was marked failed before its APPEND: the next drain looks each
    up first; the rest of the deferred copies go as before."""
    mails = COPY_BATCH + 5
    acknowledgements(rig, mails)
    folder = FakeSentCopy()
    assert rig.drain(sent_copy=folder, options=SURGE).sent == mails
    with pytest.raises(SimulatedCrash):
        rig.drain(sent_copy=CrashAfterAppend(folder))  # the first copy in, then a stop
    assert copy_states(rig, mails) == ["failed"] * COPY_BATCH + ["deferred"] * 5
    assert len(folder.raws) == 1
    later = rig.drain(NOW + timedelta(minutes=2), sent_copy=folder)
    assert (later.sent, later.copied) == (0, mails)
    assert len(folder.raws) == mails
    assert len(set(folder.raws)) == mails  # each copy once
    assert sorted(copy_states(rig, mails)) == ["done"] * (mails - 1) + ["found"]


class CountingDown(FakeSentCopy):
    """A Sent folder that is down: every APPEND is refused (and counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def append(self, raw: bytes) -> None:
        self.tries += 1
        raise MailboxError("IMAP down")


def test_deferred_copies_wait_a_minute_when_the_sent_folder_is_down(rig: Rig) -> None:
    """Not an IMAP attempt every drain: the first batch goes to the retries that look
    first, the rest waits a minute and then goes in batches as before."""
    mails = COPY_BATCH + 5
    acknowledgements(rig, mails)
    assert rig.drain(sent_copy=FakeSentCopy(), options=SURGE).sent == mails
    down = CountingDown()
    assert rig.drain(sent_copy=down).copied == 0
    assert rig.drain(NOW + timedelta(seconds=10), sent_copy=down).copied == 0
    assert down.tries == 1  # the second drain left them alone
    assert copy_states(rig, mails) == ["failed"] * COPY_BATCH + ["deferred"] * 5
    with rig.engine.connect() as conn:
        assert not outbox.has_due_work(conn, NOW + timedelta(seconds=10), rig.box.name)
    folder = FakeSentCopy()
    back = rig.drain(NOW + timedelta(minutes=2), sent_copy=folder)
    assert back.copied == mails
    assert len(set(folder.raws)) == len(folder.raws) == mails
    assert sorted(copy_states(rig, mails)) == ["done"] * mails


def test_deferred_copies_of_a_mailbox_that_no_longer_copies_are_skipped(rig: Rig) -> None:
    acknowledgements(rig, 3)
    folder = FakeSentCopy()
    assert rig.drain(sent_copy=folder, options=SURGE).sent == 3
    rig.box = rig.box.model_copy(update={"append_to_sent": False})
    assert rig.drain(sent_copy=folder).copied == 0
    assert copy_states(rig, 3) == ["skipped"] * 3
    assert folder.raws == []


class PeerRecorder:
    """Takes every mail and notes which connection (client port) brought it."""

    def __init__(self) -> None:
        self.peers: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.append(session.peer)
        await asyncio.sleep(0.002)  # a relay that takes a moment: connections overlap
        return "250 2.0.0 accepted"


@pytest.mark.parametrize("connections", [1, 2, 3])
def test_the_drain_keeps_smtp_connections_in_flight(
    tmp_path: Path, smtp_server: SmtpServer, connections: int
) -> None:
    handler = PeerRecorder()
    port = load_mailserver().free_port()
    controller = open_relay(handler, port)
    try:
        settings = smtp_server.settings(port=port, connections=connections).model_dump()
        rig = make_rig(tmp_path, smtp_server, smtp=settings)  # this relay, not smtp_server
        for n in range(40):
            record(rig, OutboxKind.ACKNOWLEDGEMENT, n)
        assert rig.drain().sent == 40
    finally:
        controller.stop()
    assert len(handler.peers) == 40
    assert len(set(handler.peers)) == connections


def test_rows_stay_exactly_once_when_a_copy_batch_fails(rig: Rig) -> None:
    """A failed batch of copies: every mail sent once, copies made later, once each."""

    class Broken(FakeSentCopy):
        def append(self, raw: bytes) -> None:
            from keepword.errors import MailboxError

            raise MailboxError("IMAP down")

    for n in range(7):
        record(rig, OutboxKind.ACKNOWLEDGEMENT, n)
    assert rig.drain(sent_copy=Broken()).sent == 7
    copy = FakeSentCopy()
    later = rig.drain(NOW + timedelta(minutes=2), sent_copy=copy)
    assert later.copied == 7 and later.sent == 0
    assert len(copy.raws) == 7 and len(rig.server.messages) == 7
    with rig.engine.connect() as conn:
        assert {outbox.get(conn, i + 1).state for i in range(7)} == {OutboxState.SENT}


class TimedRelay:
    """Takes every mail; notes when."""

    def __init__(self) -> None:
        self.accepted: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(time.monotonic())
        return "250 2.0.0 accepted"


class SlowSentFolder(FakeSentCopy):
    """A Sent folder that takes a moment per copy; notes, at each batch, how many mails
    the relay took that are not recorded sent yet."""

    def __init__(self, relay: TimedRelay) -> None:
        super().__init__()
        self.relay = relay
        self.unrecorded: list[int] = []

    def append_many(self, raws: Sequence[bytes]) -> int:
        # Every batch before this one is recorded (one at a time, in order).
        self.unrecorded.append(len(self.relay.accepted) - len(self.raws))
        for raw in raws:
            time.sleep(0.006)
            self.append(raw)
        return len(raws)


def test_a_slow_sent_folder_leaves_at_most_two_batches_sent_and_unrecorded(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """What the relay took and is not recorded yet (what a crash would leave to be
    looked up in Sent, and sent again if it is not there) stays within two batches of
    copies however slow the Sent folder; every mail is recorded sent with its copy,
    each copy made once."""
    relay, mails = TimedRelay(), COPY_BATCH * 5 + 20
    folder = SlowSentFolder(relay)
    rig = drained_through(tmp_path, smtp_server, relay, folder, mails, connections=2)
    assert len(relay.accepted) == mails
    assert max(folder.unrecorded) <= 2 * COPY_BATCH + 2, folder.unrecorded
    assert_copied_once_and_recorded(rig, folder, mails)


def drained_through(
    tmp_path: Path,
    smtp_server: SmtpServer,
    relay: TimedRelay,
    folder: FakeSentCopy,
    mails: int,
    connections: int,
) -> Rig:
    """`mails` acknowledgements recorded, then drained to `relay` (on a port of its own)
    with `folder` as the Sent folder: every one sent."""
    port = load_mailserver().free_port()
    controller = open_relay(relay, port)
    try:
        settings = smtp_server.settings(port=port, connections=connections).model_dump()
        rig = make_rig(tmp_path, smtp_server, smtp=settings)
        for n in range(mails):
            record(rig, OutboxKind.ACKNOWLEDGEMENT, n)
        assert rig.drain(sent_copy=folder).sent == mails
    finally:
        controller.stop()
    return rig


def assert_copied_once_and_recorded(rig: Rig, folder: FakeSentCopy, mails: int) -> None:
    numbers = [int(raw.split(b"number ")[1].split(b"\n")[0]) for raw in folder.raws]
    assert sorted(numbers) == list(range(mails))  # each copy once
    with rig.engine.connect() as conn:
        rows = [outbox.get(conn, i + 1) for i in range(mails)]
    assert {(r.state, r.sent_copy) for r in rows} == {(OutboxState.SENT, "done")}


class HeldSentFolder(FakeSentCopy):
    """Holds its first batch of copies until the relay has taken `until` mails (at most
    a few seconds); notes how many it had taken by then."""

    def __init__(self, relay: TimedRelay, until: int) -> None:
        super().__init__()
        self.relay = relay
        self.until = until
        self.taken_meanwhile: int | None = None

    def append_many(self, raws: Sequence[bytes]) -> int:
        if self.taken_meanwhile is None:
            wait_until(lambda: len(self.relay.accepted) >= self.until, 5)
            self.taken_meanwhile = len(self.relay.accepted)
        for raw in raws:
            self.append(raw)
        return len(raws)


def test_the_relay_connection_goes_on_sending_while_a_batch_is_copied(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """The MULTIAPPEND of a batch of copies waits on the IMAP server: the relay
    connection sends the next batch meanwhile (one connection: nothing else could),
    and waits before a third (two batches sent and not yet recorded, at most)."""
    relay, mails = TimedRelay(), COPY_BATCH * 3
    folder = HeldSentFolder(relay, until=2 * COPY_BATCH)
    rig = drained_through(tmp_path, smtp_server, relay, folder, mails, connections=1)
    assert folder.taken_meanwhile == 2 * COPY_BATCH
    assert_copied_once_and_recorded(rig, folder, mails)


def test_a_kept_sent_connection_that_broke_is_made_again(dovecot: Dovecot, mail_user: str) -> None:
    """runtime.service keeps the Sent connection through a surge's drains: one the
    server dropped fails once (the drain retries that batch's copies later), and the
    next use connects again instead of failing every drain after it."""
    imap, secret = dovecot.imap_settings(mail_user), Secret(dovecot.users[mail_user])
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "support@example.com", "c@example.org", "Hi"
    mail.set_content("copy\n")
    with closing(ImapSentCopy(imap, "Sent", secret)) as copy:
        assert copy.append_many([mail.as_bytes()]) == 1
        session = copy._session
        assert session is not None and session._client is not None
        session._client.shutdown()  # the server dropped it, say (idle too long)
        with pytest.raises(MailboxError):
            copy.append_many([mail.as_bytes()])
        assert copy.append_many([mail.as_bytes()]) == 1
    assert len(dovecot.uids(mail_user, "Sent")) == 2


class SlowCopies(FakeSentCopy):
    """A Sent folder that takes a moment for each batch of copies."""

    def append_many(self, raws: Sequence[bytes]) -> int:
        time.sleep(0.3)
        for raw in raws:
            self.append(raw)
        return len(raws)


def test_a_crash_while_a_batch_is_copied_still_records_that_batch(
    tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while sending (here: the relay connection's send raising at the mail after
    the first batch) stops the drain, but the batch whose copy is under way is still
    copied and recorded sent: only the mail the bug struck is left unknown (looked up in
    Sent later), not the whole batch. One connection: the batch is full before the bug."""
    rig = make_rig(tmp_path, smtp_server, smtp=smtp_server.settings(connections=1).model_dump())
    for n in range(COPY_BATCH + 5):
        record(rig, OutboxKind.ACKNOWLEDGEMENT, n)
    send = SmtpSender.send
    calls = [0]

    async def failing(self: SmtpSender, *args: Any) -> dict[str, str]:
        calls[0] += 1
        if calls[0] > COPY_BATCH:
            raise RuntimeError("a bug in keepword")
        return await send(self, *args)

    monkeypatch.setattr(SmtpSender, "send", failing)
    folder = SlowCopies()
    with pytest.raises(RuntimeError, match="a bug in keepword"):
        rig.drain(sent_copy=folder)
    assert len(folder.raws) == COPY_BATCH
    with rig.engine.connect() as conn:
        states = [outbox.get(conn, i + 1).state for i in range(COPY_BATCH)]
    assert set(states) == {OutboxState.SENT}
