"""Draining the outbox: each recorded mail goes out once, even across crashes.

Order per mail:

1. attempts > 0 (an earlier attempt may have gone out before a crash): look for the
   deterministic Message-ID in the Sent folder; found -> mark sent, do not send again.
2. Count the attempt and COMMIT (so a crash after the send is detectable).
3. SMTP (one connection reused for the whole drain).
4. APPEND a copy to the Sent folder (when `append_to_sent`) - the copy is what a later
   retry finds in step 1, so it comes *before* step 5.
5. Mark sent (commit).

The window left open is between the SMTP server's "250 OK" and the APPEND
(milliseconds). Without a Sent folder to look in (none configured), a row that may
have gone out is sent again and the log says so: a duplicate acknowledgement is the
lesser evil next to a promise that silently never arrived.

Temporary failures (4xx, timeouts, dropped connections) retry with capped exponential
backoff; permanent ones (5xx) are marked failed and recorded on the case. If the server
cannot be reached or refuses the login, the drain stops and every row stays pending.
`dry_run` renders nothing new: it logs each recorded mail in full and marks it dry_run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection, Engine

from keepword.config import ImapSettings, MailboxSettings, Settings
from keepword.domain.cases import Event, EventKind
from keepword.domain.model import OutboxKind
from keepword.errors import KeepwordError
from keepword.imap import ImapSession
from keepword.mail.compose import OutgoingMail, compose_bytes
from keepword.mail.render import Rendered
from keepword.metrics import METRICS
from keepword.retry import OUTBOX_RETRY
from keepword.secrets import Secret, resolve_secret
from keepword.smtp import SmtpConnectError, SmtpPermanentError, SmtpSender, SmtpTemporaryError
from keepword.store import outbox
from keepword.store.cases import add_events

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 30  # 12-25 hours of 4xx replies (OUTBOX_RETRY), then give up loudly


class SentCopy(Protocol):
    """The mailbox's Sent folder, as far as the sender needs it (blocking calls)."""

    def has_message_id(self, message_id: str) -> bool: ...

    def append(self, raw: bytes) -> None: ...


class ImapSentCopy:
    """SentCopy over IMAP, connected on first use: a drain that never needs the Sent
    folder opens no connection. Not thread-safe: one drain at a time; `close` after it.

    The secret is resolved at connect time unless given (tests, `keepword check`).
    """

    def __init__(self, imap: ImapSettings, folder: str, secret: Secret | None = None) -> None:
        self._imap = imap
        self._folder = folder
        self._secret = secret
        self._session: ImapSession | None = None

    def _open(self) -> ImapSession:
        if self._session is None:
            session = ImapSession(self._imap, self._secret or resolve_secret(self._imap))
            session.connect()
            self._session = session
        return self._session

    def has_message_id(self, message_id: str) -> bool:
        return self._open().has_message_id(self._folder, message_id)

    def append(self, raw: bytes) -> None:
        self._open().append(self._folder, raw)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


@dataclass
class DrainResult:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0  # left pending: server unreachable or Sent folder not checkable
    already_sent: int = 0  # found in the Sent folder after a crash: not sent again
    dry_run: int = 0
    error: str | None = None

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed + self.already_sent + self.dry_run


def enqueue_mail(
    conn: Connection,
    mail: OutgoingMail,
    body: Rendered,
    *,
    mailbox: str,
    case_id: int | None,
    not_before: datetime | None = None,
) -> bool:
    """Compose and record one mail in the caller's transaction; False if already recorded.

    Call it in the same transaction as the decision that causes the mail. `not_before`:
    a rate limit holds it back until then.
    """
    return outbox.enqueue(
        conn,
        mailbox,
        case_id,
        mail.kind.value,
        mail.dedup_key,
        list(mail.to),
        mail.subject,
        compose_bytes(mail, body),
        mail.date,
        message_id=mail.message_id,
        not_before=not_before,
    )


async def drain_outbox(
    engine: Engine,
    settings: Settings,
    mailbox: MailboxSettings,
    now: datetime,
    *,
    sent_copy: SentCopy | None,
    dry_run: bool,
    secret: Secret | str | None = None,
    limit: int = 100,
) -> DrainResult:
    """Send this mailbox's due outbox rows. `secret` defaults to the configured source."""
    result = DrainResult()
    with engine.connect() as conn:
        rows = outbox.pending(conn, now, limit, mailbox=mailbox.name)
    if not rows:
        return result
    if dry_run or settings.keepword.dry_run:
        _dry_run(engine, mailbox, rows, now, result)
        return result
    if mailbox.smtp is None:
        result.skipped = len(rows)
        result.error = f"mailbox {mailbox.name}: no [smtp] configured; {len(rows)} mails wait"
        log.error("%s", result.error)
        return result
    try:
        if secret is None:
            secret = await asyncio.to_thread(resolve_secret, mailbox.smtp)
    except KeepwordError as exc:
        result.skipped, result.error = len(rows), str(exc)
        log.error("mailbox %s: cannot send: %s", mailbox.name, exc)
        return result
    sender = SmtpSender(mailbox.smtp, secret)
    try:
        for index, row in enumerate(rows):
            try:
                await _deliver(engine, mailbox, row, now, sender, sent_copy, result)
            except SmtpConnectError as exc:
                METRICS.smtp_error(mailbox.name)
                result.skipped += len(rows) - index
                result.error = str(exc)
                log.warning("mailbox %s: outbox waits: %s", mailbox.name, exc)
                break
    finally:
        await sender.close()
        with engine.connect() as conn:
            METRICS.outbox_depth(mailbox.name, outbox.depth(conn, mailbox.name))
    return result


def _count_sent(mailbox: str, kind: str) -> None:
    if kind == OutboxKind.ACKNOWLEDGEMENT.value:
        METRICS.acknowledgement_sent(mailbox)
    elif kind == OutboxKind.CUSTOMER_UPDATE.value:
        METRICS.update_sent(mailbox)


def _dry_run(
    engine: Engine,
    mailbox: MailboxSettings,
    rows: list[outbox.OutboxRow],
    now: datetime,
    result: DrainResult,
) -> None:
    for row in rows:
        log.info(
            "mailbox %s: [dry run] %s to %s not sent:\n%s",
            mailbox.name,
            row.kind,
            ", ".join(row.recipients),
            row.raw.decode("utf-8", "replace"),
        )
        with engine.begin() as conn:
            outbox.mark_dry_run(conn, row.id, now)
        result.dry_run += 1


async def _deliver(
    engine: Engine,
    mailbox: MailboxSettings,
    row: outbox.OutboxRow,
    now: datetime,
    sender: SmtpSender,
    sent_copy: SentCopy | None,
    result: DrainResult,
) -> None:
    if row.attempts > 0:
        went_out = await _went_out(mailbox, row, sent_copy)
        if went_out is None:
            result.skipped += 1
            return
        if went_out:
            with engine.begin() as conn:
                outbox.mark_sent(conn, row.id, now, sent_copy="found")
            result.already_sent += 1
            log.info("mailbox %s: %s %s was already sent", mailbox.name, row.kind, row.message_id)
            return
    if not sender.connected:
        await sender.connect()  # SmtpConnectError stops the drain before anything is counted
    with engine.begin() as conn:
        attempts = outbox.begin_attempt(conn, row.id)
    try:
        refused = await sender.send(mailbox.address, row.recipients, row.raw)
    except SmtpPermanentError as exc:
        _fail(engine, mailbox, row, now, str(exc), result)
        return
    except SmtpTemporaryError as exc:
        _retry(engine, mailbox, row, now, attempts, str(exc), result)
        return
    copy_state = await _append_copy(mailbox, row, sent_copy)
    with engine.begin() as conn:
        outbox.mark_sent(conn, row.id, now, sent_copy=copy_state)
        if refused and row.case_id is not None:
            detail = f"{row.kind} refused for {', '.join(f'{a} ({e})' for a, e in refused.items())}"
            add_events(conn, row.case_id, [Event(EventKind.DELIVERY_FAILED, now, None, detail)])
    result.sent += 1
    _count_sent(mailbox.name, row.kind)
    log.info("mailbox %s: sent %s to %s", mailbox.name, row.kind, ", ".join(row.recipients))


def _fail(
    engine: Engine,
    mailbox: MailboxSettings,
    row: outbox.OutboxRow,
    now: datetime,
    error: str,
    result: DrainResult,
) -> None:
    log.error(
        "mailbox %s: %s to %s failed for good: %s", mailbox.name, row.kind, row.recipients, error
    )
    with engine.begin() as conn:
        outbox.mark_failed(conn, row, now, error)
    METRICS.smtp_error(mailbox.name)
    result.failed += 1


def _retry(
    engine: Engine,
    mailbox: MailboxSettings,
    row: outbox.OutboxRow,
    now: datetime,
    attempts: int,
    error: str,
    result: DrainResult,
) -> None:
    METRICS.smtp_error(mailbox.name)
    if attempts >= MAX_ATTEMPTS:
        _fail(engine, mailbox, row, now, f"gave up after {attempts} attempts: {error}", result)
        return
    delay = timedelta(seconds=round(OUTBOX_RETRY.delay(attempts)))
    log.warning(
        "mailbox %s: %s to %s retried in %s: %s",
        mailbox.name,
        row.kind,
        ", ".join(row.recipients),
        delay,
        error,
    )
    with engine.begin() as conn:
        outbox.mark_retry(conn, row.id, attempts=attempts, next_attempt_at=now + delay, error=error)
    result.retried += 1


async def _went_out(
    mailbox: MailboxSettings, row: outbox.OutboxRow, sent_copy: SentCopy | None
) -> bool | None:
    """Did an earlier attempt go out? None: cannot tell now, so wait rather than risk two."""
    if sent_copy is None:
        log.warning(
            "mailbox %s: %s %s may have gone out before a crash; no Sent folder to check, "
            "sending again",
            mailbox.name,
            row.kind,
            row.message_id,
        )
        return False
    try:
        return await asyncio.to_thread(sent_copy.has_message_id, row.message_id)
    except KeepwordError as exc:
        log.warning(
            "mailbox %s: cannot check the Sent folder for %s, it waits: %s",
            mailbox.name,
            row.message_id,
            exc,
        )
        return None


async def _append_copy(
    mailbox: MailboxSettings, row: outbox.OutboxRow, sent_copy: SentCopy | None
) -> str:
    if sent_copy is None or not mailbox.append_to_sent:
        return "skipped"
    try:
        await asyncio.to_thread(sent_copy.append, row.raw)
    except KeepwordError as exc:
        log.warning("mailbox %s: copy of %s to Sent failed: %s", mailbox.name, row.kind, exc)
        return "failed"
    return "done"
