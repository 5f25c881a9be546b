"""Draining the outbox through a real SMTP server (aiosmtpd) and a real Sent folder (Dovecot)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from keepword.adapters.credentials import Secret
from keepword.adapters.smtp import SmtpConnectError, SmtpSender
from keepword.config import MailboxSettings, Settings, SmtpSettings, TlsMode
from keepword.domain.cases import CaseState
from keepword.domain.model import CaseStatus, OutboxKind, OutboxState
from keepword.errors import DeliveryUnavailable
from keepword.mail.compose import About, Answering, compose_bytes, customer_mail, team_mail
from keepword.mail.render import Rendered
from keepword.pipeline.send import (
    NO_RELAY,
    DrainOptions,
    DrainResult,
    ImapSentCopy,
    SentCopy,
    Servers,
    drain_outbox,
)
from keepword.retry import OUTBOX_RETRY
from keepword.store import away, outbox, refusals
from keepword.store.cases import save_case
from keepword.store.db import open_store
from keepword.store.tables import case_event
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
CUSTOMER = "ann@example.org"


EVERY_DUE_ROW = DrainOptions()  # a drain as the daemon runs it outside a surge


class FakeSentCopy:
    """A Sent folder in memory, for tests that need no IMAP server."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.lookups: list[str] = []

    def has_message_id(self, message_id: str) -> bool:
        self.lookups.append(message_id)
        return any(f"<{message_id}>".encode() in raw for raw in self.raws)

    def append(self, raw: bytes) -> None:
        self.raws.append(raw)


class SimulatedCrash(BaseException):
    """Raised right after the copy is in the Sent folder, before the row is marked sent."""


@dataclass
class CrashAfterAppend:
    inner: SentCopy
    appended: list[bytes] = field(default_factory=list)

    def has_message_id(self, message_id: str) -> bool:
        return self.inner.has_message_id(message_id)

    def append(self, raw: bytes) -> None:
        self.inner.append(raw)
        self.appended.append(raw)
        raise SimulatedCrash


@dataclass
class Rig:
    engine: Engine
    settings: Settings
    box: MailboxSettings
    server: SmtpServer
    case_id: int

    def enqueue_ack(self, dedup_key: str = "ack:1", to: str = CUSTOMER) -> outbox.OutboxRow:
        mail = customer_mail(
            self.box,
            OutboxKind.ACKNOWLEDGEMENT,
            dedup_key=dedup_key,
            about=About("KW-1", "Printer on fire"),
            now=NOW,
            answering=Answering(to, "orig@example.org"),
        )
        body = Rendered("Hello.\nCase reference: KW-1\n")
        with self.engine.begin() as conn:
            queued = [
                outbox.enqueue_mail(conn, mail, body, mailbox=self.box.name, case_id=self.case_id)
                for _ in range(2)
            ]
            assert queued == [True, False]  # recorded once
            rows = outbox.pending(conn, NOW, 10_000, mailbox=self.box.name)
        return next(r for r in rows if r.dedup_key == dedup_key)

    def enqueue_reminder(self, to: list[str]) -> None:
        """A reminder about the rig's case to `to`, queued as the chase queues it."""
        mail = team_mail(
            self.box,
            OutboxKind.REMINDER,
            dedup_key="reminder:1:0.5",
            to=to,
            about=About("KW-1", "Printer on fire"),
            now=NOW,
        )
        raw = compose_bytes(mail, Rendered("Reminder\nCase reference: KW-1\n"))
        with self.engine.begin() as conn:
            entry = outbox.OutboxEntry(
                "support", self.case_id, "reminder", mail.dedup_key, mail.to, mail.subject, raw
            )
            outbox.enqueue(conn, entry, NOW)

    def drain(
        self,
        at: datetime = NOW,
        *,
        sent_copy: SentCopy | None = None,
        options: DrainOptions = EVERY_DUE_ROW,
    ) -> DrainResult:
        return asyncio.run(
            drain_outbox(self.engine, self.settings, self.box, at, Servers(sent_copy), options)
        )

    def row(self, row_id: int) -> outbox.OutboxRow:
        with self.engine.connect() as conn:
            return outbox.get(conn, row_id)


def make_rig(tmp_path: Path, server: SmtpServer, **box_changes: Any) -> Rig:
    engine = open_store(f"sqlite:///{tmp_path / 'keepword.db'}")
    box_values: dict[str, Any] = {
        "name": "support",
        "address": "support@example.com",
        "display_name": "Example Support",
        "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password": "p"},
        "smtp": server.settings().model_dump(),
    }
    box_values.update(box_changes)
    settings = Settings.model_validate(
        {"keepword": {"allow_inline_passwords": True}, "mailbox": [box_values]}
    )
    with engine.begin() as conn:
        state = save_case(
            conn,
            CaseState(
                id=None,
                mailbox="support",
                reference="KW",
                status=CaseStatus.NEW,
                opened_at=NOW,
                updated_at=NOW,
                customer=CUSTOMER,
                subject="Printer on fire",
            ),
        )
    assert state.id is not None
    return Rig(engine, settings, settings.mailbox[0], server, state.id)


@pytest.fixture
def rig(tmp_path: Path, smtp_server: SmtpServer) -> Rig:
    return make_rig(tmp_path, smtp_server)


def test_enqueue_is_idempotent(rig: Rig) -> None:
    rig.enqueue_ack()
    with rig.engine.begin() as conn:
        entry = outbox.OutboxEntry(
            "support", rig.case_id, "acknowledgement", "ack:1", [CUSTOMER], "s", b"x",
            message_id="again@example.com",
        )  # fmt: skip
        again = outbox.enqueue(conn, entry, NOW)
        assert again is False
        assert outbox.depth(conn, "support") == 1


def test_drain_sends_once(rig: Rig) -> None:
    row = rig.enqueue_ack()
    copy = FakeSentCopy()
    result = rig.drain(sent_copy=copy)
    assert (result.sent, result.retried, result.failed, result.skipped) == (1, 0, 0, 0)
    [mail] = rig.server.messages
    assert mail.rcpt_tos == (CUSTOMER,)
    assert mail.mail_from == "support@example.com"
    assert mail.header("Message-ID") == f"<{row.message_id}>"
    assert mail.header("Subject") == "Re: Printer on fire [KW-1]"
    assert copy.raws == [row.raw]  # the copy in Sent is byte-identical
    assert copy.lookups == []  # a first attempt need not look
    stored = rig.row(row.id)
    assert stored.state is OutboxState.SENT and stored.attempts == 1
    assert stored.sent_copy == "done"

    again = rig.drain(NOW + timedelta(hours=1), sent_copy=copy)
    assert again.handled == 0
    assert len(rig.server.messages) == 1


def test_one_connection_serves_the_whole_drain(rig: Rig) -> None:
    for n in range(5):
        rig.enqueue_ack(f"ack:{n}", to=f"c{n}@example.org")
    result = rig.drain()
    assert result.sent == 5
    assert sorted(m.rcpt_tos[0] for m in rig.server.messages) == [
        f"c{n}@example.org" for n in range(5)
    ]
    row = rig.row(1)
    assert row.sent_copy == "skipped"  # no Sent folder given


def test_temporary_failure_retries_later(rig: Rig) -> None:
    row = rig.enqueue_ack()
    rig.server.fail(CUSTOMER, 451)
    copy = FakeSentCopy()
    result = rig.drain(sent_copy=copy)
    assert (result.sent, result.retried) == (0, 1)
    stored = rig.row(row.id)
    assert stored.state is OutboxState.PENDING
    assert stored.attempts == 1
    step = timedelta(seconds=OUTBOX_RETRY.step(1))
    assert stored.next_attempt_at is not None
    assert NOW + step / 2 <= stored.next_attempt_at <= NOW + step
    assert stored.last_error is not None and "451" in stored.last_error
    assert rig.server.messages == []

    rig.server.heal()
    early = rig.drain(NOW + timedelta(seconds=10), sent_copy=copy)
    assert early.handled == 0  # not due yet
    later = rig.drain(NOW + step, sent_copy=copy)
    assert later.sent == 1
    assert copy.lookups == []  # refused before the relay took it: nothing to look for
    assert len(rig.server.messages) == 1
    assert rig.row(row.id).attempts == 2


def test_permanent_failure_is_recorded_on_the_case(rig: Rig) -> None:
    row = rig.enqueue_ack()
    ok = rig.enqueue_ack("ack:2", to="bob@example.org")
    rig.server.fail(CUSTOMER, 550)
    result = rig.drain()
    assert (result.sent, result.failed) == (1, 1)  # one bad address does not stop the rest
    stored = rig.row(row.id)
    assert stored.state is OutboxState.FAILED
    assert stored.last_error is not None and "550" in stored.last_error
    assert rig.row(ok.id).state is OutboxState.SENT
    with rig.engine.connect() as conn:
        events = conn.execute(
            select(case_event.c.kind, case_event.c.detail).where(
                case_event.c.case_id == rig.case_id
            )
        ).all()
    assert [e.kind for e in events] == ["delivery_failed"]
    assert "550" in events[0].detail and CUSTOMER in events[0].detail
    assert rig.drain(NOW + timedelta(days=1)).handled == 0  # never tried again
    with rig.engine.connect() as conn:  # the address, recorded for domain.reachability
        [refusal] = refusals.refusals_about(conn, "support", rig.case_id, CUSTOMER)
    assert (refusal.address, refusal.outbox_id, refusal.kind) == (
        CUSTOMER,
        row.id,
        "acknowledgement",
    )
    assert refusal.reply.startswith("550") and refusal.at == NOW


def test_only_a_customer_address_refused_for_good_is_recorded(rig: Rig) -> None:
    """A 4xx may clear up, and a team address refused is a configuration error (the
    failed row shows it): neither stops mail to the customer."""
    rig.enqueue_ack()
    rig.server.fail(CUSTOMER, 451)
    assert rig.drain().failed == 0
    rig.enqueue_reminder(["alice@example.com"])
    rig.server.fail("alice@example.com", 550)
    assert rig.drain(NOW + timedelta(minutes=5)).failed == 1
    with rig.engine.connect() as conn:
        assert refusals.refusals_about(conn, "support", rig.case_id, CUSTOMER) == []


def test_a_relay_that_denies_relaying_takes_nobody_for_gone(rig: Rig) -> None:
    """A broken login makes the relay refuse every recipient ("554 5.7.1 Relay access
    denied"): the mail fails, but no customer is recorded as unreachable."""
    row = rig.enqueue_ack()
    rig.server.fail(CUSTOMER, 554, "5.7.1 <ann@example.org>: Relay access denied")
    assert rig.drain().failed == 1
    assert rig.row(row.id).state is OutboxState.FAILED
    with rig.engine.connect() as conn:
        assert refusals.refusals_about(conn, "support", rig.case_id, CUSTOMER) == []


def test_a_team_member_refused_for_good_is_away_until_they_write(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """A reminder to a member who left: the drain makes them away (their cases move at the
    next chase step, tests/unit/test_owners_store.py), never the lead."""
    rig = make_rig(
        tmp_path,
        smtp_server,
        team=["alice@example.com", "bob@example.com"],
        lead="carol@example.com",
    )
    rig.enqueue_reminder(["bob@example.com", "carol@example.com"])
    rig.server.fail("bob@example.com", 550)
    rig.server.fail("carol@example.com", 550)
    assert rig.drain().failed == 1
    with rig.engine.connect() as conn:
        [bob] = away.recorded_away(conn, "support", NOW.date())
        assert refusals.refusals_about(conn, "support", rig.case_id, CUSTOMER) == []
    assert (bob.address, bob.start) == ("bob@example.com", NOW.date())
    assert bob.why.startswith("mail to them is refused for good: 550")


def test_a_customer_refused_beside_an_accepted_recipient_is_recorded(rig: Rig) -> None:
    """The relay took the mail for one recipient and refused the customer: the mail is
    sent, and the customer's address is recorded as refused all the same."""
    mail = customer_mail(
        rig.box,
        OutboxKind.ACKNOWLEDGEMENT,
        dedup_key="ack:1",
        about=About("KW-1", "Printer on fire"),
        now=NOW,
        answering=Answering(CUSTOMER, "orig@example.org"),
    )
    raw = compose_bytes(mail, Rendered("Hello.\nCase reference: KW-1\n"))
    with rig.engine.begin() as conn:
        entry = outbox.OutboxEntry(
            "support",
            rig.case_id,
            "acknowledgement",
            "ack:1",
            (CUSTOMER, "cc@example.org"),
            "s",
            raw,
        )
        outbox.enqueue(conn, entry, NOW)
    rig.server.fail(CUSTOMER, 550)
    assert rig.drain().sent == 1
    with rig.engine.connect() as conn:
        [refusal] = refusals.refusals_about(conn, "support", rig.case_id, None)
    assert refusal.address == CUSTOMER and refusal.reply.startswith("550")


def test_dry_run_sends_nothing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """The one switch, settings.keepword.dry_run (`keepword run --dry-run` sets it)."""
    rig.settings = rig.settings.model_copy(
        update={"keepword": rig.settings.keepword.model_copy(update={"dry_run": True})}
    )
    row = rig.enqueue_ack()
    caplog.set_level("INFO", logger="keepword.pipeline.send")
    result = rig.drain()
    assert result.dry_run == 1 and result.sent == 0
    assert rig.server.messages == []
    assert rig.row(row.id).state is OutboxState.DRY_RUN
    assert "Re: Printer on fire [KW-1]" in caplog.text  # the whole mail is logged


def test_unreachable_server_leaves_everything_pending(rig: Rig) -> None:
    row = rig.enqueue_ack()
    rig.server.stop()
    with pytest.raises(DeliveryUnavailable, match="cannot connect"):
        rig.drain()
    stored = rig.row(row.id)
    assert stored.state is OutboxState.PENDING and stored.attempts == 0
    assert stored.last_error is not None and "cannot connect" in stored.last_error
    rig.server.start()
    assert rig.drain().sent == 1


def test_a_mailbox_without_smtp_keeps_its_mail_until_it_has_one(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """As a relay that is down (the daemon's drain backs off and shows failing), not
    an error line every drain while the mail waits."""
    rig = make_rig(tmp_path, smtp_server, smtp=None)
    row = rig.enqueue_ack()
    with pytest.raises(DeliveryUnavailable, match=r"no \[mailbox.smtp\] configured"):
        rig.drain()
    stored = rig.row(row.id)
    assert stored.state is OutboxState.PENDING and stored.attempts == 0
    assert stored.last_error == NO_RELAY
    assert smtp_server.messages == []
    rig.box = rig.box.model_copy(update={"smtp": smtp_server.settings()})
    rig.settings = rig.settings.model_copy(update={"mailbox": [rig.box]})
    assert rig.drain().sent == 1
    assert rig.row(row.id).state is OutboxState.SENT


def test_wrong_password_is_a_connect_error_without_the_secret(
    smtp_server: SmtpServer,
) -> None:
    settings = smtp_server.settings(password="wrong-secret-value")

    async def attempt() -> None:
        async with SmtpSender(settings, Secret("wrong-secret-value")):
            pass

    with pytest.raises(SmtpConnectError) as info:
        asyncio.run(attempt())
    assert "wrong-secret-value" not in str(info.value)
    assert "535" in str(info.value)


def test_crash_after_send_with_a_fake_sent_folder(rig: Rig) -> None:
    row = rig.enqueue_ack()
    copy = FakeSentCopy()
    with pytest.raises(SimulatedCrash):
        rig.drain(sent_copy=CrashAfterAppend(copy))
    stored = rig.row(row.id)
    assert stored.state is OutboxState.PENDING and stored.attempts == 1
    result = rig.drain(sent_copy=copy)
    assert result.already_sent == 1 and result.sent == 0
    assert len(rig.server.messages) == 1
    assert rig.row(row.id).sent_copy == "found"


def test_crash_before_send_is_held_then_sent_after_looking(rig: Rig) -> None:
    row = rig.enqueue_ack()
    with rig.engine.begin() as conn:
        outbox.claim_attempts(conn, [row])  # counted, then the daemon died before SMTP
    copy = FakeSentCopy()
    result = rig.drain(sent_copy=copy)
    assert (result.held, result.sent) == (1, 0)  # it may have gone out: not resent blindly
    assert copy.lookups == [row.message_id]
    assert rig.server.messages == []
    wait = timedelta(seconds=rig.server.settings().unknown_outcome_wait)
    assert rig.drain(NOW + wait / 2, sent_copy=copy).handled == 0

    later = rig.drain(NOW + wait, sent_copy=copy)
    assert (later.sent, later.resent) == (1, 1)
    assert copy.lookups == [row.message_id] * 2
    assert len(rig.server.messages) == 1
    with rig.engine.connect() as conn:
        details = conn.execute(select(case_event.c.detail)).scalars().all()
    assert any("may have gone out" in d for d in details)  # the case timeline says so


def test_unknown_sent_folder_state_waits(rig: Rig) -> None:
    from keepword.errors import MailboxError

    class Broken(FakeSentCopy):
        def has_message_id(self, message_id: str) -> bool:
            raise MailboxError("IMAP down")

    row = rig.enqueue_ack()
    with rig.engine.begin() as conn:
        outbox.claim_attempts(conn, [row])
    result = rig.drain(sent_copy=Broken())
    assert result.skipped == 1
    assert rig.server.messages == []
    assert rig.row(row.id).state is OutboxState.PENDING


def test_crash_between_send_and_record_with_dovecot(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer
) -> None:
    """The real thing: the copy lands in Dovecot's Sent folder, then the daemon 'dies'."""
    rig = make_rig(tmp_path, smtp_server)
    row = rig.enqueue_ack()
    imap, secret = dovecot.imap_settings(mail_user), Secret(dovecot.users[mail_user])
    with closing(ImapSentCopy(imap, "Sent", secret)) as copy, pytest.raises(SimulatedCrash):
        rig.drain(sent_copy=CrashAfterAppend(copy))
    assert len(smtp_server.messages) == 1
    assert rig.row(row.id).attempts == 1
    assert len(dovecot.uids(mail_user, "Sent")) == 1

    # Restart: a new session, the same row.
    with closing(ImapSentCopy(imap, "Sent", secret)) as copy:
        result = rig.drain(NOW + timedelta(minutes=1), sent_copy=copy)
    assert result.already_sent == 1 and result.sent == 0
    assert len(smtp_server.messages) == 1  # the customer has exactly one acknowledgement
    assert len(dovecot.uids(mail_user, "Sent")) == 1
    assert rig.row(row.id).state is OutboxState.SENT


def test_delivery_through_lmtp_and_copy_in_sent(
    tmp_path: Path,
    clean_dovecot: Dovecot,
    mail_user: str,
    smtp_server_factory: Callable[..., SmtpServer],
) -> None:
    """aiosmtpd hands the mail on to Dovecot: the customer really has it in their INBOX."""
    dovecot = clean_dovecot
    server = smtp_server_factory(lmtp=(dovecot.host, dovecot.lmtp_port))
    rig = make_rig(tmp_path, server)
    customer = "customer@example.org"
    row = rig.enqueue_ack(to=customer)
    secret = Secret(dovecot.users[mail_user])
    with closing(ImapSentCopy(dovecot.imap_settings(mail_user), "Sent", secret)) as copy:
        result = rig.drain(sent_copy=copy)
        assert result.sent == 1, (result, server.handler.relay_errors)
        assert copy.has_message_id(row.message_id)
    with dovecot.client(customer) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        assert len(uids) == 1
        raw = client.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    msg = message_from_bytes(raw, policy=default_policy)
    assert msg["Message-ID"] == f"<{row.message_id}>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert rig.row(row.id).sent_copy == "done"


def test_team_mail_goes_to_every_recipient(rig: Rig) -> None:
    rig.enqueue_reminder(["alice@example.com", "bob@example.com"])
    assert rig.drain().sent == 1
    [captured] = rig.server.messages
    assert captured.rcpt_tos == ("alice@example.com", "bob@example.com")
    assert captured.header("Auto-Submitted") == "auto-generated"


async def _send_one(settings: SmtpSettings, secret: Secret | str) -> dict[str, str]:
    async with SmtpSender(settings, secret) as smtp:
        return await smtp.send(
            "support@example.com", ["ann@example.org"], b"Subject: t\r\n\r\nx\r\n"
        )


@pytest.mark.parametrize("tls", [TlsMode.IMPLICIT, TlsMode.STARTTLS])
def test_tls_modes(smtp_server_factory: Callable[..., SmtpServer], tls: TlsMode) -> None:
    server = smtp_server_factory(tls=tls)
    assert asyncio.run(_send_one(server.settings(), server.password)) == {}
    assert len(server.messages) == 1
    # Without trusting the self-signed certificate the connection is refused.
    untrusted = server.settings(ca_file=None)
    with pytest.raises(SmtpConnectError):
        asyncio.run(_send_one(untrusted, server.password))
    assert len(server.messages) == 1


def test_plain_client_against_a_starttls_only_server(
    smtp_server_factory: Callable[..., SmtpServer],
) -> None:
    server = smtp_server_factory(tls=TlsMode.STARTTLS)
    with pytest.raises(SmtpConnectError):
        asyncio.run(_send_one(server.settings(tls=TlsMode.PLAIN), server.password))
    assert server.messages == []


def test_xoauth2(smtp_server_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_server_factory(oauth2_token="token-123")
    asyncio.run(_send_one(server.settings(), Secret("token-123", is_oauth2=True)))
    assert len(server.messages) == 1
    with pytest.raises(SmtpConnectError) as info:
        asyncio.run(_send_one(server.settings(), Secret("token-999", is_oauth2=True)))
    assert "token-999" not in str(info.value)


def test_metrics_count_acknowledgements_and_errors(rig: Rig) -> None:
    from keepword.adapters.metrics import METRICS

    def value(name: str) -> float:
        return METRICS.value(name, mailbox="support") or 0.0

    acks, errors = (
        value("keepword_acknowledgements_sent_total"),
        value("keepword_smtp_errors_total"),
    )
    rig.enqueue_ack()
    rig.enqueue_ack("ack:2", to="bad@example.org")
    rig.server.fail("bad@example.org", 451)
    rig.drain()
    assert value("keepword_acknowledgements_sent_total") == acks + 1
    assert value("keepword_smtp_errors_total") == errors + 1
    assert value("keepword_outbox_depth") == 1
