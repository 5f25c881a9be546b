"""Draining the outbox: each recorded mail goes out once, even across crashes and timeouts.

Order per mail:

1. If an earlier attempt's outcome is unknown (sent_copy "unknown" or "held", see
   below), resolve it first: its deterministic Message-ID in the Sent folder means it
   went out (mark sent, never send again); otherwise hold it, or, once held long
   enough, send again (step 2).
2. Count the attempt, mark the outcome "unknown" and COMMIT (a crash from here on is
   detectable), CLAIM_BATCH rows at a time; rows claimed and never handed to the relay
   (the drain halts or is stopped) are released as they were.
3. SMTP: `smtp.connections` connections (2 by default: polite to the relay) reused for
   the whole drain, each taking the next row.
4. APPEND a copy to the Sent folder (when `append_to_sent`): the copy is keepword's own
   receipt of the relay's 250, so it comes *before* step 5. Copies are made in batches
   of up to COPY_BATCH on the drain's one IMAP connection (MULTIAPPEND, RFC 3502, where
   the server offers it), each while the relay connections send the next rows; a third
   batch waits until the first is copied and recorded, so what the relay took and is not
   recorded stays within two batches. Nothing is recorded of a row between its 250 and
   its copy.
5. Mark sent (one commit per batch). A failed APPEND is retried by later drains with
   backoff, looking for the Message-ID first so that no retry makes a second copy.

What goes first: customer mail (acknowledgements, updates, follow-up notes), then team
mail (reminders, escalations, lead alerts), digests last (SEND_ORDER); oldest first
within a kind. A drain takes due rows in batches of DRAIN_BATCH until none is due.

Exactly once, and what is left (docs/operations.md, "Exactly once: unknown SMTP
outcomes"). SMTP gives the sender a single moment of truth: the reply to the final
dot. Before the dot nothing went out; a reply (2xx, 4xx, 5xx) settles it. Only a
missing reply leaves the outcome unknown, so keepword
- makes it rare: the DATA phase gets its own RFC 5321 timeout (`data_timeout`, 10
  minutes), so a slow relay is waited for instead of being asked twice;
- never resends such a mail at once: the row is *held* for `unknown_outcome_wait`
  (15 min) and then looked up in the Sent folder, where keepword's own copy (a crash
  after the 250) or the copy the relay files itself (Gmail, Microsoft 365, most
  submission servers) proves it went out;
- when nothing is found after the wait, sends it again: it cannot prove the relay
  dropped it, and a customer left without the acknowledgement (a broken promise, never
  seen) is worse than one who receives it twice. The resend is logged and written on
  the case timeline, so what is left is visible.
So a duplicate needs all of: a relay that took the mail, gave no reply within 10
minutes or lost the connection in the instant after the dot (or keepword crashed in
the milliseconds between the 250 and the APPEND), and files no Sent copy of its own.
Appending the copy *before* sending would not help: a copy that exists whether or not
the relay took the mail proves nothing, and it would leave copies of refused mail.

Temporary refusals (4xx, connection trouble before the DATA phase) retry that row with
capped exponential backoff; permanent ones (5xx) fail only that row, recorded on the
case. Rows are taken in SEND_ORDER among those due (`next_attempt_at`): a row that keeps
failing, or waits for evidence, moves its own time forward and never blocks the rows
behind it. If the relay cannot be reached or refuses the login, every row stays
pending, the error is recorded on them and the drain raises `DeliveryUnavailable` (the
daemon backs the job off; `run --once` exits non-zero).
`dry_run` renders nothing new: it logs each recorded mail in full and marks it dry_run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final, NoReturn, Protocol, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from keepword.adapters.credentials import Secret, resolve_secret
from keepword.adapters.imap import ImapSession
from keepword.adapters.metrics import METRICS
from keepword.adapters.smtp import (
    SmtpConnectError,
    SmtpOutcomeUnknownError,
    SmtpPermanentError,
    SmtpRecipientsRefusedError,
    SmtpSender,
    SmtpTemporaryError,
)
from keepword.config import ImapSettings, MailboxSettings, Settings
from keepword.domain.cases import Event, EventKind
from keepword.domain.model import OutboxKind
from keepword.domain.outbox import CaseNow, withdrawal
from keepword.domain.outbox_keys import promise_id_of
from keepword.domain.reachability import (
    member_unreachable,
    refusals_of_mail,
    refuses_the_address,
)
from keepword.errors import DeliveryUnavailable, KeepwordError
from keepword.mail.compose import CUSTOMER_KINDS
from keepword.mail.preview import preview
from keepword.pipeline import bounces
from keepword.retry import OUTBOX_RETRY
from keepword.store import away as away_store
from keepword.store import outbox
from keepword.store import promises as promise_store
from keepword.store.cases import add_events

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 30  # 12-25 hours of 4xx replies (OUTBOX_RETRY), then give up loudly
COPY_RETRY_FIRST = timedelta(minutes=1)  # a failed Sent copy: first retry
COPY_RETRY_CAP = timedelta(hours=1)
NO_RELAY = "no [mailbox.smtp] configured: nothing is sent until one is"
DRAIN_BATCH: Final = 200  # rows read (and withdrawn if stale) at a time
MAX_DRAIN_BATCHES: Final = 100  # a guard: 20,000 rows, then the next drain goes on
# Sent copies per MULTIAPPEND: the drain's last batch is copied after its last mail is
# sent (~16 ms for 25 against Dovecot, ~28 ms for 50), and a crash leaves at most two
# batches sent and not recorded (looked up in Sent); more copies a command save little.
COPY_BATCH: Final = 25
# Attempts are counted and committed before SMTP (the exactly-once rule) this many rows
# at a time: a commit per mail blocked the event loop, and with it every connection
# (bench/surge.py). A crash can leave this many mails claimed and not yet sent
# "unknown": they are looked up in Sent after `unknown_outcome_wait`, like any unknown
# outcome; a drain that stops (relay down, SIGTERM) releases them as they were.
CLAIM_BATCH: Final = 8
# What leaves first: the customer waits on it, the team reads it, the digest sums up.
SEND_ORDER: Final[dict[str, int]] = {
    OutboxKind.ACKNOWLEDGEMENT.value: 0,
    OutboxKind.CUSTOMER_UPDATE.value: 0,
    OutboxKind.FOLLOW_UP_NOTE.value: 0,
    OutboxKind.REMINDER.value: 1,
    OutboxKind.ESCALATION.value: 1,
    OutboxKind.LEAD_ALERT.value: 1,
    OutboxKind.AWAY_NOTICE.value: 1,
    OutboxKind.COMMAND_REPLY.value: 1,
    OutboxKind.CUSTOMER_UNREACHABLE.value: 1,
    OutboxKind.DIGEST.value: 2,
}

T = TypeVar("T")


class SentCopy(Protocol):
    """The mailbox's Sent folder, as far as the sender needs it (blocking calls)."""

    def has_message_id(self, message_id: str) -> bool: ...

    def append(self, raw: bytes) -> None: ...


@runtime_checkable
class SentCopyBatches(Protocol):
    """A Sent folder that takes many copies in one go; returns how many went in."""

    def append_many(self, raws: Sequence[bytes]) -> int: ...


class ImapSentCopy:
    """SentCopy over IMAP, connected on first use: a drain that never needs the Sent
    folder opens no connection. Not thread-safe: one drain at a time; `close` after it
    (runtime.service keeps one through a surge's drains, then closes it).

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
        return self._using(lambda session: session.has_message_id(self._folder, message_id))

    def append(self, raw: bytes) -> None:
        self._using(lambda session: session.append(self._folder, raw))

    def append_many(self, raws: Sequence[bytes]) -> int:
        return self._using(lambda session: session.append_many(self._folder, raws))

    def _using(self, call: Callable[[ImapSession], T]) -> T:
        """`call` on the connection; one that failed is let go, and the next use connects
        again (runtime.service keeps one through a surge's drains)."""
        try:
            return call(self._open())
        except KeepwordError:
            self.close()
            raise

    @property
    def commands(self) -> int:
        """IMAP commands sent on the open connection (benchmarks, tests)."""
        return self._session.commands if self._session is not None else 0

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
    already_sent: int = 0  # found in the Sent folder after an unknown outcome: not sent again
    held: int = 0  # outcome unknown: waits for evidence in the Sent folder
    resent: int = 0  # outcome stayed unknown after the wait: sent again (of `sent`)
    copied: int = 0  # failed Sent copies made (or found) later
    dry_run: int = 0
    withdrawn: int = 0  # no longer true when due (domain.outbox): recorded, not sent
    error: str | None = None

    @property
    def handled(self) -> int:
        return (
            self.sent
            + self.retried
            + self.failed
            + self.already_sent
            + self.held
            + self.copied
            + self.dry_run
        )


class _SentFolder:
    """The drain's view of the Sent folder: after one error it is not asked again.

    Every row would otherwise wait for its own IMAP timeout while the server is down.
    One IMAP connection: its calls take turns, in the mailbox's thread (`executor`).
    """

    def __init__(self, copy: SentCopy | None, executor: Executor | None = None) -> None:
        self.copy = copy
        self.error: str | None = None
        self._executor = executor
        self._turn = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return self.copy is not None and self.error is None

    async def _run(self, call: Callable[[], T]) -> T:
        async with self._turn:
            context = contextvars.copy_context()  # the mailbox's log context
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: context.run(call))

    async def has(self, message_id: str) -> bool | None:
        """Is it there? None: cannot tell now."""
        copy = self.copy
        if copy is None or self.error is not None:
            return None
        try:
            return await self._run(lambda: copy.has_message_id(message_id))
        except KeepwordError as exc:
            self.error = str(exc)
            return None

    async def append(self, raw: bytes) -> bool:
        return await self.append_many([raw]) == 1

    async def append_many(self, raws: Sequence[bytes]) -> int:
        """Copy raws in order; how many went in (0 when the folder is unusable)."""
        copy = self.copy
        if copy is None or self.error is not None or not raws:
            return 0
        try:
            return await self._run(lambda: _append_all(copy, raws))
        except KeepwordError as exc:
            self.error = str(exc)
            return 0


def _append_all(copy: SentCopy, raws: Sequence[bytes]) -> int:
    if isinstance(copy, SentCopyBatches):
        return copy.append_many(raws)
    for raw in raws:
        copy.append(raw)
    return len(raws)


@dataclass(frozen=True, slots=True)
class Servers:
    """How a drain reaches the mail servers.

    `sent_copy`: the Sent folder (None: no copies, and nothing to look in after an
    unknown outcome). `secret`: the relay's (None: the configured source). `executor`:
    where blocking calls run (the mailbox's thread; None: asyncio's default).
    """

    sent_copy: SentCopy | None = None
    secret: Secret | str | None = None
    executor: Executor | None = None


@dataclass(frozen=True, slots=True)
class DrainOptions:
    """How much one drain does: `limit` rows at most (one batch), and whether the Sent
    copies wait for a surge's end (`defer_copies`)."""

    limit: int | None = None
    defer_copies: bool = False


@dataclass(slots=True)
class _Run:
    """One drain of one mailbox's outbox at `now`: what every step of it shares."""

    engine: Engine
    mailbox: MailboxSettings
    now: datetime
    folder: _SentFolder
    result: DrainResult
    zone: ZoneInfo  # the mailbox's calendar zone: the day a refused member is away from
    defer_copies: bool = False  # a surge: Sent copies wait until its mail is out


def without_relay(box: MailboxSettings) -> str | None:
    """What a mailbox without [mailbox.smtp] means for its mail (said by `keepword run`
    at start and on reload, and by `keepword check`), or None when it has one."""
    if box.smtp is not None:
        return None
    return (
        "no [mailbox.smtp]: its acknowledgements, reminders and escalations wait in the "
        "outbox until one is configured"
    )


async def drain_outbox(
    engine: Engine,
    settings: Settings,
    mailbox: MailboxSettings,
    now: datetime,
    servers: Servers = Servers(),
    options: DrainOptions = DrainOptions(),
) -> DrainResult:
    """Send this mailbox's due outbox rows, then make the Sent copies due.

    `options.defer_copies` (a surge is being acknowledged, slice by slice): what the
    relay takes is recorded sent with its copy "deferred", and the first drain without
    it makes them, a MULTIAPPEND a batch. A surge's drains then go at the relay's pace:
    the copies' APPENDs made each a third longer, on the machine's other core, which
    the relay and the IMAP server share.

    Every row due at `now` goes, in batches of DRAIN_BATCH (`options.limit`: at most
    that many rows, in one batch). With `settings.keepword.dry_run` (the one switch)
    nothing is sent: each due mail is logged and marked dry run. Raises
    DeliveryUnavailable (after leaving every row pending) when the relay cannot be
    reached or refuses the login.
    """
    folder = _SentFolder(servers.sent_copy, servers.executor)
    zone = settings.zone_for(mailbox)
    limit, defer_copies = options.limit, options.defer_copies
    run = _Run(engine, mailbox, now, folder, DrainResult(), zone, defer_copies)
    batch = limit or DRAIN_BATCH
    if settings.keepword.dry_run:
        with engine.connect() as conn:
            rows = outbox.pending(conn, now, batch, mailbox=mailbox.name)
        _dry_run(run, rows)
        return run.result
    unavailable: DeliveryUnavailable | None = None
    seen: set[int] = set()
    for _ in range(1 if limit else MAX_DRAIN_BATCHES):
        with engine.connect() as conn:
            rows = outbox.due_in_order(conn, now, batch, mailbox=mailbox.name, ranks=SEND_ORDER)
        rows = [r for r in rows if r.id not in seen]  # handled rows move on; a guard
        if not rows:
            break
        seen.update(r.id for r in rows)
        rows = _withdraw_stale(run, rows)
        try:
            await _send_due(run, rows, servers)
        except DeliveryUnavailable as exc:
            unavailable = exc
            break
    if not defer_copies:
        await _copy_deferred(run)
    if mailbox.append_to_sent:
        await _retry_copies(run, batch)
    with engine.connect() as conn:
        METRICS.outbox_depth(mailbox.name, outbox.depth(conn, mailbox.name))
    if unavailable is not None:
        raise unavailable
    return run.result


def _withdraw_stale(run: _Run, rows: list[outbox.OutboxRow]) -> list[outbox.OutboxRow]:
    """Drop never-attempted mail that is no longer true (domain.outbox); keep the rest."""
    engine, mailbox, now, result = run.engine, run.mailbox, run.now, run.result
    fresh = {r.id: r.case_id for r in rows if r.attempts == 0 and r.case_id is not None}
    if not fresh:
        return rows
    with engine.connect() as conn:
        states = outbox.cases_now(conn, [case for case in fresh.values() if case is not None])
    keep: list[outbox.OutboxRow] = []
    for row in rows:
        current = states.get(row.case_id) if row.id in fresh and row.case_id else None
        queued = row.created_at or now
        reason = withdrawal(OutboxKind(row.kind), queued, current) if current else None
        if reason is None or current is None:
            keep.append(row)
            continue
        with engine.begin() as conn:
            outbox.mark_withdrawn(conn, row, now, reason)
            _settle_untold(conn, row, current, now)
        result.withdrawn += 1
        log.info(
            "mailbox %s: %s to %s withdrawn: %s",
            mailbox.name,
            row.kind,
            ", ".join(row.recipients),
            reason,
        )
    return keep


def _settle_untold(conn: Connection, row: outbox.OutboxRow, case: CaseNow, now: datetime) -> None:
    """A withdrawn customer update never told its new time: the old promise stands."""
    old_id = promise_id_of(row.dedup_key)
    if row.kind != OutboxKind.CUSTOMER_UPDATE or row.case_id is None or old_id is None:
        return
    promise_store.settle_untold_update(conn, row.case_id, old_id, case.last_response_at, now)


async def _send_due(run: _Run, rows: list[outbox.OutboxRow], servers: Servers) -> None:
    if not rows:
        return
    mailbox, secret = run.mailbox, servers.secret
    if mailbox.smtp is None:
        # As a relay that is down: the rows wait with the reason, and the daemon's drain
        # backs off (a line every 15 minutes at most, not every drain) and shows failing.
        _unavailable(run, rows, NO_RELAY)
    try:
        if secret is None:
            smtp = mailbox.smtp
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            secret = await loop.run_in_executor(
                servers.executor, lambda: context.run(resolve_secret, smtp)
            )
    except KeepwordError as exc:
        _unavailable(run, rows, f"cannot send: {exc}")
    drain = _Drain(run, rows)
    count = max(1, min(mailbox.smtp.connections, len(rows)))
    senders = [SmtpSender(mailbox.smtp, secret) for _ in range(count)]
    try:
        await asyncio.gather(
            *(drain.work(sender, primary=index == 0) for index, sender in enumerate(senders))
        )
    except BaseException:
        drain.abandon_copy()  # stopped: what was not recorded is resolved next time
        raise
    finally:
        drain.release()
        await asyncio.gather(*(sender.close() for sender in senders))
    if drain.crash is not None:
        await drain.finish_copy()
        raise drain.crash  # a bug or a crash: what was not recorded is resolved next time
    await drain.flush()
    if drain.halted is not None:
        error, waiting = drain.halted
        _unavailable(run, waiting, error)


@dataclass
class _Accepted:
    """A mail the relay took (its 250), not yet recorded: its copy comes first."""

    row: outbox.OutboxRow
    refused: dict[str, str]
    resend: bool


@dataclass
class _Drain:
    """One batch of rows shared by the relay connections; Sent copies made in batches."""

    run: _Run
    rows: list[outbox.OutboxRow]
    queue: deque[outbox.OutboxRow] = field(init=False)  # read, not yet claimed
    # Claimed (attempt counted and committed), not yet handed to the relay: the rows as
    # read, with their attempt count now. Released as they were when the drain stops.
    claimed: deque[tuple[outbox.OutboxRow, int]] = field(default_factory=deque)
    copies: list[_Accepted] = field(default_factory=list)  # accepted, not yet copying
    # The batch of copies being made meanwhile, then recorded (one at a time).
    copying: asyncio.Task[None] | None = None
    halted: tuple[str, list[outbox.OutboxRow]] | None = None  # why, and the rows left
    crash: BaseException | None = None
    primary_up: asyncio.Event = field(default_factory=asyncio.Event)
    connected: bool = False  # some connection of this drain has worked
    _flushing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.queue = deque(self.rows)

    @property
    def copies_wanted(self) -> bool:
        return self.run.mailbox.append_to_sent and self.run.folder.copy is not None

    async def work(self, sender: SmtpSender, *, primary: bool) -> None:
        """Send rows from the shared queue until it is empty or the drain halts.

        Extra connections start once the first one has sent (or failed): a relay that
        is down is asked once, and one that takes fewer connections keeps the drain going.
        """
        if not primary:
            await self.primary_up.wait()
        try:
            await self._work(sender, primary)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.crash = self.crash or exc
            self._halt(str(exc))
        finally:
            self.primary_up.set()

    async def _work(self, sender: SmtpSender, primary: bool) -> None:
        while self.halted is None and self.crash is None:
            taken = self._take()
            if taken is None:
                return
            try:
                accepted = await self._send(sender, *taken)
            except SmtpConnectError as exc:  # the row is back in the queue or claimed
                if not primary and self.connected:  # the relay takes fewer connections
                    log.info(
                        "mailbox %s: one SMTP connection fewer: %s", self.run.mailbox.name, exc
                    )
                    return
                self._halt(str(exc))
                return
            except _RelaySilentError as exc:
                # A relay that took a message and went silent: do not feed it more now.
                self._halt(str(exc))
                return
            finally:
                if primary:
                    self.primary_up.set()
            self.connected = self.connected or sender.connected
            if accepted is not None:
                await self.accepted(accepted)

    def _take(self) -> tuple[outbox.OutboxRow, int | None] | None:
        """The next row with its attempt count, claimed CLAIM_BATCH at a time; None for
        the count of a row whose last outcome is unknown (it is looked up first)."""
        while not self.claimed and self.queue:
            if self.queue[0].sent_copy in outbox.UNKNOWN_OUTCOME:
                return self.queue.popleft(), None
            chunk: list[outbox.OutboxRow] = []
            while self.queue and len(chunk) < CLAIM_BATCH:
                if self.queue[0].sent_copy in outbox.UNKNOWN_OUTCOME:
                    break
                chunk.append(self.queue.popleft())
            with self.run.engine.begin() as conn:
                counts = outbox.claim_attempts(conn, chunk)
            # A row left out changed since it was read (another sender has it): passed by.
            self.claimed.extend((row, counts[row.id]) for row in chunk if row.id in counts)
        return self.claimed.popleft() if self.claimed else None

    async def _send(
        self, sender: SmtpSender, row: outbox.OutboxRow, attempts: int | None
    ) -> _Accepted | None:
        """Send one row; the relay's acceptance, or None when the row was dealt with."""
        run = self.run
        resend = attempts is None
        if attempts is None and await _resolve_unknown(run, row):
            return None
        if not sender.connected:
            try:
                await sender.connect()  # nothing counted for a row yet unclaimed
            except SmtpConnectError:
                if attempts is None:
                    self.queue.appendleft(row)
                else:
                    self.claimed.appendleft((row, attempts))
                raise
        if attempts is None:
            with run.engine.begin() as conn:
                attempts = outbox.claim_attempts(conn, [row]).get(row.id)
            if attempts is None:
                return None  # another sender has it
        try:
            return await _deliver(run, row, sender, attempts, resend=resend)
        except SmtpConnectError:
            self.queue.appendleft(row)  # refused before the relay took it: as it was read
            raise

    def _halt(self, error: str) -> None:
        """Stop taking rows; what waits: the claimed rows and the queue, as read."""
        if self.halted is None:
            waiting = [row for row, _ in self.claimed] + list(self.queue)
            self.halted = (error, waiting)
            self.queue.clear()

    def release(self) -> None:
        """Rows claimed and never handed to the relay go back as they were read."""
        rows = [row for row, _ in self.claimed]
        self.claimed.clear()
        if not rows:
            return
        try:
            with self.run.engine.begin() as conn:
                outbox.release_claims(conn, rows)
        except Exception:  # they stay "unknown": looked up in Sent after the wait
            log.exception(
                "mailbox %s: %d claimed mails not released", self.run.mailbox.name, len(rows)
            )

    async def accepted(self, mail: _Accepted) -> None:
        if not self.copies_wanted:
            self._record([mail], copied=0)
            return
        self.copies.append(mail)
        if len(self.copies) >= COPY_BATCH:
            await self._copy_meanwhile()

    async def _copy_meanwhile(self) -> None:
        """Copy a full batch while the relay connections go on sending: the MULTIAPPEND
        waits on the IMAP server, not on them (the surge's drain: ~16 ms a batch of 25
        against Dovecot). The batch before is copied and recorded first, so what the
        relay took and is not recorded yet stays within two batches."""
        async with self._flushing:
            await self._copied()
            if len(self.copies) < COPY_BATCH or self.crash is not None:
                return  # the other connection's call took these along, or a crash
            batch, self.copies = self.copies, []
            self.copying = asyncio.create_task(self._copy(batch))

    async def flush(self) -> None:
        """Every accepted mail copied to Sent (a MULTIAPPEND a batch) and recorded sent."""
        async with self._flushing:
            await self._copied()
            batch, self.copies = self.copies, []
            if batch:
                await self._copy(batch)

    async def _copied(self) -> None:
        """The batch being copied meanwhile is copied and recorded (its error raised)."""
        task, self.copying = self.copying, None
        if task is not None:
            await task

    async def _copy(self, batch: list[_Accepted]) -> None:
        if self.run.defer_copies:  # the relay's pace now, the copies after the surge
            self._record(batch, copied=0, deferred=True)
            return
        made = await self.run.folder.append_many([mail.row.raw for mail in batch])
        self._record(batch, copied=made)

    async def finish_copy(self) -> None:
        """After a crash: the batch under way is still copied and recorded, as a copy in
        progress was before (its mails would otherwise wait to be looked up in Sent)."""
        try:
            await self._copied()
        except Exception:  # the crash is what is raised; this one is only logged
            log.exception("mailbox %s: copies to Sent not recorded", self.run.mailbox.name)

    def abandon_copy(self) -> None:
        """The drain stops early: the batch being copied is not waited for (its mails
        stay claimed, their outcome unknown: looked up in Sent, as after a crash)."""
        task, self.copying = self.copying, None
        if task is not None:
            task.cancel()

    def _record(self, batch: list[_Accepted], *, copied: int, deferred: bool = False) -> None:
        """Mark sent in one transaction; the first `copied` of batch have their copy
        (`deferred`: none was tried, the copies come after the surge)."""
        mailbox, now, result = self.run.mailbox, self.run.now, self.run.result
        states = [
            outbox.SentState(mail.row.id, "deferred")
            if deferred
            else _sent_state(
                mailbox, mail.row, now, (index < copied) if self.copies_wanted else None
            )
            for index, mail in enumerate(batch)
        ]
        with self.run.engine.begin() as conn:
            outbox.mark_all_sent(conn, now, states)
            for mail in batch:
                if mail.refused:
                    _note_refused(conn, self.run, mail.row, mail.refused)
        for mail in batch:
            row = mail.row
            result.sent += 1
            result.resent += mail.resend
            _count_sent(mailbox.name, row.kind)
            log.info("mailbox %s: sent %s to %s", mailbox.name, row.kind, ", ".join(row.recipients))


class _RelaySilentError(Exception):
    """The relay did not answer the DATA phase: stop this drain."""


def _unavailable(run: _Run, rows: list[outbox.OutboxRow], error: str) -> NoReturn:
    mailbox, result = run.mailbox, run.result
    METRICS.smtp_error(mailbox.name)
    result.skipped += len(rows)
    result.error = error
    waiting = [r.id for r in rows if r.sent_copy not in outbox.UNKNOWN_OUTCOME]
    with run.engine.begin() as conn:
        outbox.note_error(conn, waiting, error)
    log.warning("mailbox %s: outbox waits (%d mails): %s", mailbox.name, len(rows), error)
    raise DeliveryUnavailable(f"mailbox {mailbox.name}: {error}")


def _count_sent(mailbox: str, kind: str) -> None:
    if kind == OutboxKind.ACKNOWLEDGEMENT.value:
        METRICS.acknowledgement_sent(mailbox)
    elif kind == OutboxKind.CUSTOMER_UPDATE.value:
        METRICS.update_sent(mailbox)


def _dry_run(run: _Run, rows: list[outbox.OutboxRow]) -> None:
    mailbox = run.mailbox
    for row in rows:
        log.info(
            "mailbox %s: [dry run] %s to %s not sent:\n%s",
            mailbox.name,
            row.kind,
            ", ".join(row.recipients),
            preview(row.raw, indent="    "),  # as the recipient reads it, not MIME
        )
        with run.engine.begin() as conn:
            outbox.mark_dry_run(conn, row.id, run.now)
        run.result.dry_run += 1


async def _deliver(
    run: _Run, row: outbox.OutboxRow, sender: SmtpSender, attempts: int, *, resend: bool
) -> _Accepted | None:
    """Send one claimed row; the relay's acceptance, or None when the row was dealt with."""
    engine, now = run.engine, run.now
    try:
        refused = await sender.send(run.mailbox.address, row.recipients, row.raw)
    except SmtpRecipientsRefusedError as exc:
        _fail(run, row, str(exc), refused=exc.refused)
        return None
    except SmtpPermanentError as exc:
        _fail(run, row, str(exc))
        return None
    except SmtpConnectError as exc:
        with engine.begin() as conn:  # nothing went out: the row is due as it was
            outbox.mark_retry(
                conn, row.id, attempts=attempts - 1, next_attempt_at=now, error=str(exc)
            )
        raise
    except SmtpTemporaryError as exc:
        _retry(run, row, attempts, str(exc))
        return None
    except SmtpOutcomeUnknownError as exc:
        _hold(run, row, str(exc))
        raise _RelaySilentError(str(exc)) from None
    return _Accepted(row, refused, resend)


def _sent_state(
    mailbox: MailboxSettings, row: outbox.OutboxRow, now: datetime, copied: bool | None
) -> outbox.SentState:
    """What to record for a row the relay took (copied: its Sent copy; None: none wanted)."""
    if copied is None:
        return outbox.SentState(row.id, "skipped")
    if copied:
        return outbox.SentState(row.id, "done")
    log.warning(
        "mailbox %s: copy of %s %s to Sent failed; retried later",
        mailbox.name,
        row.kind,
        row.message_id,
    )
    return outbox.SentState(row.id, "failed", now + COPY_RETRY_FIRST)


async def _resolve_unknown(run: _Run, row: outbox.OutboxRow) -> bool:
    """Did an earlier attempt go out? True when the row is dealt with (found, held or
    waiting for the Sent folder); False when it is to be sent again."""
    mailbox, folder = run.mailbox, run.folder
    found = await folder.has(row.message_id) if folder.copy is not None else False
    if found is None:
        _wait_for_sent_folder(run, row, folder.error or "")
        return True
    if found:
        with run.engine.begin() as conn:
            outbox.mark_sent(conn, row.id, run.now, sent_copy="found")
        run.result.already_sent += 1
        _count_sent(mailbox.name, row.kind)
        log.info(
            "mailbox %s: %s %s had gone out: found in Sent", mailbox.name, row.kind, row.message_id
        )
        return True
    if row.sent_copy == "unknown":
        _hold(run, row, "an earlier attempt was interrupted; outcome unknown")
        return True
    _record_resend(run, row, looked=folder.copy is not None)
    return False


def _hold(run: _Run, row: outbox.OutboxRow, error: str) -> None:
    mailbox, now = run.mailbox, run.now
    assert mailbox.smtp is not None
    wait = timedelta(seconds=mailbox.smtp.unknown_outcome_wait)
    log.warning(
        "mailbox %s: %s %s to %s: outcome unknown (%s); looking for it in Sent at %s before "
        "sending again",
        mailbox.name,
        row.kind,
        row.message_id,
        ", ".join(row.recipients),
        error,
        (now + wait).isoformat(timespec="seconds"),
    )
    with run.engine.begin() as conn:
        outbox.mark_held(conn, row.id, until=now + wait, error=f"outcome unknown: {error}")
    METRICS.smtp_error(mailbox.name)
    run.result.held += 1


def _record_resend(run: _Run, row: outbox.OutboxRow, *, looked: bool) -> None:
    """The outcome stays unknown: say so everywhere before sending again."""
    why = "not found in the Sent folder after the wait" if looked else "no Sent folder to look in"
    detail = (
        f"{row.kind} to {', '.join(row.recipients)}: an earlier attempt may have gone out "
        f"({why}); sent again, the customer may receive it twice"
    )
    log.warning("mailbox %s: %s", run.mailbox.name, detail)
    if row.case_id is not None:
        event = Event(EventKind.DELIVERY_FAILED, run.now, None, detail)
        with run.engine.begin() as conn:
            add_events(conn, row.case_id, [event])


def _wait_for_sent_folder(run: _Run, row: outbox.OutboxRow, error: str) -> None:
    """Cannot look now: try later, moving this row's time so it blocks no other row."""
    delay = timedelta(seconds=round(OUTBOX_RETRY.delay(max(row.attempts, 1))))
    log.warning(
        "mailbox %s: cannot check the Sent folder for %s, it waits %s: %s",
        run.mailbox.name,
        row.message_id,
        delay,
        error,
    )
    until, why = run.now + delay, f"Sent folder unreachable: {error}"
    with run.engine.begin() as conn:
        outbox.postpone(conn, row.id, until=until, error=why)
    run.result.skipped += 1


async def _copy_deferred(run: _Run) -> None:
    """The copies a surge put off, a MULTIAPPEND a batch, oldest first. Each batch is
    marked failed (due again in a minute) before its APPEND, so a stop during it leaves
    them to `_retry_copies`, which looks before it appends: never a copy twice. A Sent
    folder that does not take them puts the rest off for a minute, not a drain."""
    engine, mailbox, folder, now = run.engine, run.mailbox, run.folder, run.now
    for _ in range(MAX_DRAIN_BATCHES):
        with engine.connect() as conn:
            rows = outbox.copies_deferred(conn, now, DRAIN_BATCH, mailbox=mailbox.name)
        if not rows:
            return
        if not (mailbox.append_to_sent and folder.copy is not None):
            with engine.begin() as conn:  # copies turned off since: none is wanted now
                outbox.mark_all_copied(conn, [r.id for r in rows], sent_copy="skipped")
            continue
        for start in range(0, len(rows), COPY_BATCH):
            chunk = rows[start : start + COPY_BATCH]
            ids = [r.id for r in chunk]
            retry_at = now + COPY_RETRY_FIRST
            with engine.begin() as conn:
                outbox.mark_all_copied(conn, ids, sent_copy="failed", retry_at=retry_at)
            made = await folder.append_many([r.raw for r in chunk])
            with engine.begin() as conn:
                outbox.mark_all_copied(conn, ids[:made], sent_copy="done")
                if made < len(chunk):  # those marked failed are looked up first
                    outbox.postpone_deferred(conn, mailbox.name, retry_at)
            run.result.copied += made
            if made < len(chunk):
                error = folder.error or "not all taken"
                log.warning("mailbox %s: Sent copies wait: %s", mailbox.name, error)
                return


async def _retry_copies(run: _Run, limit: int) -> None:
    """Make the Sent copies that failed, once each: look first, APPEND only if missing."""
    engine, mailbox, now, folder = run.engine, run.mailbox, run.now, run.folder
    if folder.copy is None:
        return
    with engine.connect() as conn:
        rows = outbox.copies_due(conn, now, limit, mailbox=mailbox.name)
    for row in rows:
        found = await folder.has(row.message_id)
        done = found or (found is False and await folder.append(row.raw))
        with engine.begin() as conn:
            if done:
                outbox.mark_copied(conn, row.id, sent_copy="found" if found else "done")
            else:
                outbox.mark_copied(
                    conn, row.id, sent_copy="failed", retry_at=_copy_retry_at(row, now)
                )
        if not done:
            log.warning("mailbox %s: Sent copies wait: %s", mailbox.name, folder.error)
            return  # the folder is unreachable: the other copies wait too
        run.result.copied += 1


def _copy_retry_at(row: outbox.OutboxRow, now: datetime) -> datetime:
    """Back off with the copy's age: a minute at first, at most an hour."""
    age = now - row.sent_at if row.sent_at is not None else COPY_RETRY_FIRST
    return now + min(COPY_RETRY_CAP, max(COPY_RETRY_FIRST, age))


def _fail(
    run: _Run, row: outbox.OutboxRow, error: str, *, refused: Mapping[str, str] | None = None
) -> None:
    """A mail that will never go out; `refused`: the addresses the relay refused for it."""
    mailbox = run.mailbox
    log.error(
        "mailbox %s: %s to %s failed for good: %s", mailbox.name, row.kind, row.recipients, error
    )
    with run.engine.begin() as conn:
        outbox.mark_failed(conn, row, run.now, error)
        if refused:
            _record_refused(conn, run, row, refused)
    METRICS.smtp_error(mailbox.name)
    run.result.failed += 1


def _note_refused(
    conn: Connection, run: _Run, row: outbox.OutboxRow, refused: Mapping[str, str]
) -> None:
    """Some recipients of a mail the relay took were refused: said on the case, and a
    customer address refused for good is recorded (domain.reachability)."""
    if row.case_id is not None:
        text = ", ".join(f"{a} ({e})" for a, e in refused.items())
        event = Event(EventKind.DELIVERY_FAILED, run.now, None, f"{row.kind} refused for {text}")
        add_events(conn, row.case_id, [event])
    _record_refused(conn, run, row, refused)


def _record_refused(
    conn: Connection, run: _Run, row: outbox.OutboxRow, refused: Mapping[str, str]
) -> None:
    """A customer address is recorded as refused (domain.reachability); a team member's
    makes them away until they write, so their cases move (`keepword check` asks the
    relay about every team address beforehand)."""
    mailbox, now = run.mailbox, run.now
    if row.kind not in CUSTOMER_KINDS:  # a StrEnum member equals its value
        _members_refused(conn, mailbox, refused, now.astimezone(run.zone).date(), now)
        return
    bounces.record(
        conn, mailbox.name, refusals_of_mail(row.id, row.kind, row.case_id, refused, now)
    )


def _members_refused(
    conn: Connection, box: MailboxSettings, refused: Mapping[str, str], today: date, now: datetime
) -> None:
    """Each team member (not the lead: nobody else to tell) refused for good is away
    from today (domain.reachability.member_unreachable); the chase's absence step moves
    their cases and tells the lead."""
    members = {a.lower() for a in box.team} - {(box.lead or "").lower()}
    gone = {
        a: r for a, r in refused.items() if a.strip().lower() in members and refuses_the_address(r)
    }
    if not gone:
        return
    known = away_store.recorded_away(conn, box.name, today - timedelta(days=1))
    days = box.owners.away_default_days
    for address, reply in gone.items():
        period = member_unreachable(address, reply, today, days, known)
        if period is None:
            continue
        away_store.record_away(
            conn, box.name, period, until_they_write=True, message_pk=None, now=now
        )
        log.error("mailbox %s: team member %s is away until %s: %s", box.name,
                  period.address, period.back_on, period.why)  # fmt: skip


def _retry(run: _Run, row: outbox.OutboxRow, attempts: int, error: str) -> None:
    mailbox, now = run.mailbox, run.now
    METRICS.smtp_error(mailbox.name)
    if attempts >= MAX_ATTEMPTS:
        _fail(run, row, f"gave up after {attempts} attempts: {error}")
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
    with run.engine.begin() as conn:
        outbox.mark_retry(conn, row.id, attempts=attempts, next_attempt_at=now + delay, error=error)
    run.result.retried += 1
