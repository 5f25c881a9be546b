"""The triage use case: every stored message, once, into a case; then acknowledge.

Each message is handled atomically (the Mailman model): classification, threading, the
case change, its timeline, promises and the outbox row for an acknowledgement are
written together, so a crash at any instant leaves the message either untouched (and
triaged again) or fully triaged. Messages go in batches: one transaction without
savepoints, its timeline events and triage records written at its end (store.deferred);
if a message fails, the batch goes again with a savepoint per message (that message
rolls back alone); if the transaction itself fails (the store is busy or gone), its
messages go again one transaction each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from keepword.config import MailboxSettings
from keepword.domain import acknowledge, cases, promises
from keepword.domain.classify import classify
from keepword.domain.commands import Outcome
from keepword.domain.model import (
    Address,
    Classification,
    Kind,
    MessageFacts,
    PromiseState,
)
from keepword.domain.outbox_keys import ack_key, note_key
from keepword.domain.owners import staff_out_of_office
from keepword.domain.threads import (
    Candidates,
    ThreadMatch,
    ThreadRule,
    choose_case,
    correspondents_in_headers,
    external_correspondent,
    find_case_reference,
    referenced_ids,
    subject_key,
)
from keepword.domain.trust import (
    Refusal,
    Sender,
    Standing,
    subject_claim,
    tags_in,
    usable_sender,
    vet_join,
)
from keepword.errors import StaleCaseError
from keepword.pipeline import bounces, commands, owners, standing
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.isolation import isolated
from keepword.retry import RetryPolicy
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store
from keepword.store import triage_state
from keepword.store.db import concurrent_writers, write_transaction
from keepword.store.deferred import deferring
from keepword.store.deferred import flush as flush_deferred
from keepword.store.leases import LeaseLostError
from keepword.store.messages import first_seen_at, load_facts
from keepword.store.outbox import OwnMail
from keepword.store.triage_state import Untriaged

log = logging.getLogger(__name__)

# A case changed under the decision, or the database is busy or gone for a moment.
DEFERRABLE = (StaleCaseError, OperationalError)

# A mail dated more than this before keepword's first poll is history even if it shows up
# later (e.g. after a UIDVALIDITY change): never acknowledge mail from before we started.
DELIVERY_GRACE = timedelta(days=1)

# A message whose triage fails (a bug, a busy database, a case changed meanwhile) is not
# at fault: it is tried again after a minute, doubling up to an hour, then hourly for as
# long as it fails. Never quarantined for it: quarantine is for mail that cannot be parsed.
TRIAGE_RETRY = RetryPolicy(first=60.0, cap=60 * 60.0)
# From this many failed attempts on, every further failure is logged as an ERROR (it
# also shows all along in `keepword status` and the metrics: store.triage_state).
STUCK_AFTER = 10
# A follow-up waits for its first mail through this many failed attempts of it (see
# `_waits_for_first_mail`).
FOLLOW_UP_WAITS_FOR = 3
# So many database errors in a row: the store itself fails, not the messages; the run
# ends (each try could wait out a busy timeout) and the next run starts with new mail.
STORE_ERRORS_TO_STOP = 3
# Messages a transaction triages: the transaction's set-up and commit
# are paid once a batch, and SQLite's write lock is held at most one batch long (tens of
# milliseconds to a few hundred), so other mailboxes and the drain wait no longer.
BATCH = 50
# A first import's history (`through`, `history_only`): nobody waits for its
# acknowledgement, so bigger batches, whose set-up, reads and commit are paid a quarter
# as often (~10% less triage CPU; the write lock held ~0.1 s a batch).
HISTORY_BATCH = 200
# Where writers run side by side (PostgreSQL) bigger still: that triage trails the store
# on a thread of its own and waits for the server at every statement, a set a batch.
# 500 took 0.5-1.2 s off a 20,000-message import there (3 pairs); on SQLite it gained
# nothing and would hold the one write lock ~2.5x as long.
SIDE_BY_SIDE_HISTORY_BATCH = 500


def _batch_size(engine: Engine, *, importing: bool) -> int:
    if not importing:
        return BATCH
    return SIDE_BY_SIDE_HISTORY_BATCH if concurrent_writers(engine) else HISTORY_BATCH


@dataclass
class TriageResult:
    triaged: int = 0
    opened: int = 0
    acknowledged: int = 0
    closed: int = 0
    unusable: int = 0  # mail without a usable sender: kept, no case (domain.trust)
    errors: list[str] = field(default_factory=list)
    # The run stopped at its `limit` with more mail due: a caller that triages in slices
    # (runtime.service: the drain goes between slices) runs again at once.
    more: bool = False


# Called inside the message's transaction when a case earns an acknowledgement or note.
# (..., the decision, whether the message opened the case)
Acknowledger = Callable[
    [Connection, MailboxContext, cases.CaseState, MessageFacts, acknowledge.Decision, bool], None
]


@dataclass(slots=True)
class _Run:
    """One triage run of a mailbox: its context, what it did, what keeps failing."""

    desk: MailboxContext
    acknowledger: Acknowledger | None
    result: TriageResult = field(default_factory=TriageResult)
    # Message-ID -> failed attempts of the mailbox's untriaged messages.
    failing: dict[str, int] = field(default_factory=dict)
    # When keepword first saw the mailbox, less the grace (`cutoff`): read once a run.
    first_seen: tuple[datetime | None] | None = None
    # The case numbers the batch's transaction handed out (None: one message a transaction).
    numbers: case_store.CaseNumbers | None = None

    def cutoff(self, conn: Connection) -> datetime | None:
        """Mail dated before this is history whenever it shows up (DELIVERY_GRACE): the
        mailbox's oldest location row, which no run changes (none is ever deleted)."""
        if self.first_seen is None:
            first = first_seen_at(conn, self.desk.box.name)
            self.first_seen = (None if first is None else first - DELIVERY_GRACE,)
        return self.first_seen[0]


@dataclass(frozen=True, slots=True)
class _Arrival:
    """The message being triaged, with what triage made of it."""

    facts: MessageFacts
    verdict: Classification
    match: ThreadMatch
    correspondent: Address | None
    at: datetime  # when it counts as written: its Date, never in our future
    # Who the sender is (pipeline.standing): `sender.standing is Standing.TEAM` is the
    # only proof that a message is the team's.
    sender: Sender
    # The candidate cases as threading read them (the joined one is changed from this).
    read: Mapping[int, cases.CaseState] = field(default_factory=dict)


def triage_pending(
    desk: MailboxContext,
    *,
    acknowledger: Acknowledger | None = None,
    limit: int = 5000,
    batch: int | None = None,
    through: datetime | None = None,
    history_only: bool = False,
) -> TriageResult:
    """Triage what is due: new mail in the order it was written, then due retries.

    Batches of `batch` messages (unless given: BATCH; during a first import
    HISTORY_BATCH, or SIDE_BY_SIDE_HISTORY_BATCH where writers run side by side;
    `batch=1`: a transaction each); a message whose triage fails stays pending
    for a later retry and never stops the messages behind it. `through`, `history_only`:
    see triage_state.due_untriaged.
    """
    importing = through is not None or history_only
    batch = batch or _batch_size(desk.engine, importing=importing)
    run = _Run(desk, acknowledger)
    box = desk.box
    with desk.engine.connect() as conn:
        # One more than the limit: whether more waits (a poll that says so is followed
        # by another at once; one that found nothing more is an empty cycle).
        queue = triage_state.due_untriaged(
            conn, box.name, desk.now, limit + 1, through=through, history_only=history_only
        )
        run.failing = triage_state.failed_attempts(conn, box.name)
        if queue:  # an idle poll reads nothing more
            desk.resume_predictor(conn)
    run.result.more = len(queue) > limit
    queue = queue[:limit]
    held: list[Untriaged] = []
    try:
        _triage_queue(run, queue, held, batch)
    except _StopTriageError as stop:
        log.warning("%s; triage goes on next run", stop)
        run.result.more = False  # not at once: the next poll, when the store is back
        return run.result
    desk.keep_predictor()
    _close_done(desk, run.result)
    return run.result


class _StopTriageError(Exception):
    """The run ends here: the store keeps failing or is busy, or the lease is lost."""


def _triage_queue(run: _Run, queue: list[Untriaged], held: list[Untriaged], batch: int) -> None:
    for start in range(0, len(queue), batch):
        chunk = queue[start : start + batch]
        left = chunk if batch == 1 else _try_batch(run, chunk, held)
        if left and not _one_by_one(run, left, held):
            raise _StopTriageError(f"mailbox {run.desk.box.name}: the store keeps failing")
    # Follow-ups whose first mail got through in this run go now, not a poll later.
    freed = [item for item in held if not _waits_for_first_mail(item, run.failing)]
    _one_by_one(run, freed if batch == 1 else _try_batch(run, freed, []), [])


def _try_batch(run: _Run, batch: list[Untriaged], held: list[Untriaged]) -> list[Untriaged]:
    """Triage `batch` in one transaction. Follow-ups that must wait go to `held`. Returns
    what is left to do one transaction a message: nothing, or the whole batch when the
    transaction itself failed.

    First without savepoints (two statements a message less: the mail of a surge is all
    but never at fault); if a message fails, the batch rolls back and goes again with a
    savepoint per message: the one that fails rolls back alone and its retry is recorded
    in the same transaction.
    """
    if not batch:
        return []  # no transaction (on SQLite it would wait for the write lock for nothing)
    try:
        return _batch_transaction(run, batch, held, isolate=False)
    except _MessageFailedError as failed:
        log.debug(
            "mailbox %s: message %s failed in a batch; the batch again, a savepoint each",
            run.desk.box.name,
            failed.item.pk,
        )
        return _batch_transaction(run, batch, held, isolate=True)


class _MessageFailedError(Exception):
    """A message failed in a batch without savepoints: the batch goes again with them."""

    def __init__(self, item: Untriaged) -> None:
        super().__init__(f"message {item.pk} failed")
        self.item = item


def _batch_transaction(
    run: _Run, batch: list[Untriaged], held: list[Untriaged], *, isolate: bool
) -> list[Untriaged]:
    """The batch in one transaction; `isolate`: a savepoint per message (else a failing
    message raises _MessageFailedError once the transaction has rolled back)."""
    failing_before = dict(run.failing)
    waiting: list[Untriaged] = []
    outcomes: list[tuple[Untriaged, TriageResult | _Failure]] = []
    began = False
    run.numbers = case_store.CaseNumbers()
    try:
        with write_transaction(run.desk.engine) as conn:
            began = True
            # One read for the batch: what a message says never changes while it waits, and
            # which of them keepword sent (its outbox rows); the batch adds none a later
            # message of it could be: its own mail comes back only once sent.
            facts = {f.pk: f for f in load_facts(conn, [item.pk for item in batch])}
            own_rows = outbox_store.own_mails(conn, [f.message_id for f in facts.values()])
            # Without savepoints, the batch's events and triage records are written at its
            # end, a statement each (store.deferred).
            triage = _in_savepoint if isolate else _unguarded
            with nullcontext() if isolate else deferring(conn):
                # The mail all of them reference (read again after a flush) and the cases
                # they may join, in one read each.
                box = run.desk.box
                named = (mid for read in facts.values() for mid in referenced_ids(read))
                case_store.prefetch_references(conn, box.name, named)
                lookups = (_likely_lookup(box, read) for read in facts.values())
                case_store.prefetch_candidates(conn, box.name, lookups)
                case_store.expect_openings(conn, len(batch))
                for item in batch:
                    if _waits_for_first_mail(item, run.failing):
                        waiting.append(item)
                        continue
                    read = facts[item.pk]
                    own_row = own_rows.get(read.message_id)
                    outcomes.append((item, triage(conn, run, item, read, own_row)))
    except Exception as exc:  # the store is busy or gone: nothing of the batch was written
        run.failing = failing_before
        run.desk.forget_run_state()
        if isinstance(exc, _MessageFailedError):
            raise
        if isinstance(exc, LeaseLostError):  # nothing of this mailbox may commit any more
            raise _StopTriageError(str(exc)) from exc
        if isinstance(exc, OperationalError) and not began:  # no write lock in busy_timeout
            busy = f"mailbox {run.desk.box.name}: the store is busy or unreachable ({exc})"
            raise _StopTriageError(busy) from exc
        log.warning(
            "mailbox %s: a batch of %d messages rolled back (%s: %s); one at a time",
            run.desk.box.name,
            len(batch),
            type(exc).__name__,
            exc,
        )
        return batch
    finally:
        run.numbers = None
    held.extend(waiting)
    for item, outcome in outcomes:
        if isinstance(outcome, _Failure):
            _report_failure(run, item, outcome)
        else:
            _count(run.result, outcome)
    return []


@dataclass(frozen=True, slots=True)
class _Failure:
    """A message's triage failed: when it is tried again, and why."""

    error: Exception
    attempts: int
    retry_at: datetime


def _unguarded(
    conn: Connection, run: _Run, item: Untriaged, facts: MessageFacts, own_row: OwnMail | None
) -> TriageResult:
    """One message of a batch without a savepoint: any error ends the transaction (a
    database error is the store's: raised as it is; any other goes again isolated)."""
    done = TriageResult()
    try:
        _triage_one(conn, run, facts, own_row, done)
    except OperationalError:
        raise
    except Exception as exc:
        raise _MessageFailedError(item) from exc
    run.failing.pop(item.message_id, None)
    return done


def _in_savepoint(
    conn: Connection, run: _Run, item: Untriaged, facts: MessageFacts, own_row: OwnMail | None
) -> TriageResult | _Failure:
    """One message of a batch. A database error is the store's, not the message's: it
    ends the batch (raised); anything else rolls back this message alone."""
    done = TriageResult()
    try:
        with conn.begin_nested():
            _triage_one(conn, run, facts, own_row, done)
    except OperationalError:
        raise
    except Exception as exc:
        if run.numbers is not None:
            run.numbers.forget()  # the savepoint gave back a number it may have taken
        failure = _failure(run, item, exc)
        _write_failure(conn, item, failure)
        return failure
    run.failing.pop(item.message_id, None)
    return done


def _one_by_one(run: _Run, items: list[Untriaged], held: list[Untriaged]) -> bool:
    """Triage `items` one transaction each (after a batch's transaction failed); False when
    the store keeps failing (STORE_ERRORS_TO_STOP database errors in a row)."""
    store_errors = 0
    for item in items:
        if _waits_for_first_mail(item, run.failing):
            held.append(item)
            continue
        error = _try_one(run, item)
        store_errors = store_errors + 1 if isinstance(error, OperationalError) else 0
        if store_errors >= STORE_ERRORS_TO_STOP:
            return False
    return True


def _count(result: TriageResult, done: TriageResult) -> None:
    result.triaged += 1
    result.opened += done.opened
    result.acknowledged += done.acknowledged
    result.unusable += done.unusable


def _waits_for_first_mail(item: Untriaged, failing: dict[str, int]) -> bool:
    """A follow-up whose own first mail is waiting for a triage retry waits too.

    Why: triaged first, the follow-up would find no case to join (the mail it answers has
    none yet) and open a second case with a second acknowledgement; the first mail would
    then land in it, or in a third. Waiting keeps one case per thread. But only for the
    first FOLLOW_UP_WAITS_FOR attempts (minutes): a busy database or a stale case clears
    by then; a first mail that keeps failing must not silence the customer's later mail,
    which then goes on alone (a case of its own beats no answer).
    """
    return any(0 < failing.get(mid, 0) < FOLLOW_UP_WAITS_FOR for mid in item.referenced)


def _try_one(run: _Run, item: Untriaged) -> Exception | None:
    """Triage one message in its own transaction, isolated from the others (a defect or a
    passing fault is never the customer's loss): on failure it is recorded for a retry."""
    done = TriageResult()

    def triage_it() -> None:
        with run.desk.engine.begin() as conn:
            [facts] = load_facts(conn, [item.pk])
            _triage_one(conn, run, facts, outbox_store.own_mail(conn, facts.message_id), done)

    attempt = isolated(
        triage_it,
        what=f"mailbox {run.desk.box.name}: triage of message {item.pk}",
        log=log,
        on_failure=partial(_record_failure, run, item),
    )
    if not attempt.ok:
        return attempt.error
    run.failing.pop(item.message_id, None)
    _count(run.result, done)
    return None


def _failure(run: _Run, item: Untriaged, exc: Exception) -> _Failure:
    """Count a failed attempt: the predictor and limits forget what it fed them."""
    attempts = run.failing[item.message_id] = item.attempts + 1
    retry_at = run.desk.now + timedelta(seconds=TRIAGE_RETRY.delay(attempts))
    run.desk.forget_run_state()  # it may have fed the promise predictor a rolled-back case
    return _Failure(exc, attempts, retry_at)


def _write_failure(conn: Connection, item: Untriaged, failure: _Failure) -> None:
    """The message stays untriaged, tried again from `failure.retry_at`."""
    triage_state.record_failure(
        conn,
        item.pk,
        attempts=failure.attempts,
        retry_at=failure.retry_at,
        error=_reason(failure.error),
    )


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _record_failure(run: _Run, item: Untriaged, exc: Exception) -> None:
    """A message's own transaction failed: record its retry in a new one."""
    failure = _failure(run, item, exc)
    _report_failure(run, item, failure)
    box, pk = run.desk.box, item.pk
    try:
        with run.desk.engine.begin() as conn:
            _write_failure(conn, item, failure)
    except Exception:  # the store is gone too: the message stays as it was, tried next run
        log.exception("mailbox %s: cannot record the triage failure of message %s", box.name, pk)


def _report_failure(run: _Run, item: Untriaged, failure: _Failure) -> None:
    box, pk, exc = run.desk.box, item.pk, failure.error
    reason = _reason(exc)
    run.result.errors.append(f"message {pk} (attempt {failure.attempts}): {reason}")
    if failure.attempts >= STUCK_AFTER:
        log.error(
            "mailbox %s: triage of message %s failed %d times, next try %s: %s",
            box.name,
            pk,
            failure.attempts,
            f"{failure.retry_at:%Y-%m-%d %H:%M:%S}",
            reason,
        )
    elif isinstance(exc, DEFERRABLE):
        log.warning("mailbox %s: triage of message %s deferred: %s", box.name, pk, reason)
    else:
        log.error(
            "mailbox %s: triage of message %s failed",
            box.name,
            pk,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def _triage_one(
    conn: Connection,
    run: _Run,
    facts: MessageFacts,
    own_row: OwnMail | None,
    result: TriageResult,
) -> None:
    """`own_row`: the outbox row of the message's Message-ID, if keepword sent it."""
    desk = run.desk
    arrival, learned = _arrive(conn, desk, facts, own_row)
    if arrival.verdict.kind is Kind.AUTOMATED:
        bounces.note_bounce(conn, desk, facts)
    if _staff_presence(conn, desk, arrival):  # cases may have moved: read them again
        arrival = replace(arrival, read={})
    command = _steering(conn, desk, arrival)
    if arrival.match.case_id is None and _stays_caseless(conn, desk, arrival, command, result):
        return
    _into_case(conn, run, arrival, command, learned, result)


def _arrive(
    conn: Connection, desk: MailboxContext, facts: MessageFacts, own_row: OwnMail | None
) -> tuple[_Arrival, tuple[str, ...]]:
    """Who wrote the message, who it speaks for and which case it joins (None: none yet);
    with the correspondents a vetted join teaches its case."""
    team = desk.box.team_addresses()
    classified = classify(facts, team=team, own_addresses=desk.own_addresses)
    # Who the sender is, decided once (pipeline.standing, docs/trust.md): a team address
    # without proof is a person; keepword's own mail is the outbox row's.
    judged = standing.judge(conn, desk, facts, classified, own_row)
    sender, verdict = judged.sender, judged.verdict
    # The Date header is the sender's word: never in our future (wrong clocks, forgeries).
    at = min(facts.date, desk.now) if facts.date else desk.now
    if sender.standing is Standing.OWN:
        match = standing.own_match(judged, _reference_of(conn, judged.own_case))
        return _Arrival(facts, verdict, match, None, at, sender), ()
    match, learned, read = _thread(conn, desk, facts, verdict.kind, sender)
    correspondent = external_correspondent(facts, verdict.kind, team)
    return _Arrival(facts, verdict, match, correspondent, at, sender, read), learned


def _thread(
    conn: Connection, desk: MailboxContext, facts: MessageFacts, kind: Kind, sender: Sender
) -> tuple[ThreadMatch, tuple[str, ...], Mapping[int, cases.CaseState]]:
    """The case a person's message joins, as trust vets it (domain.trust); a refused join
    goes on the timeline of the case it targeted. With the candidate cases as read."""
    box, now = desk.box, desk.now
    found = _candidates(conn, box, facts, kind, sender)
    candidates = found.candidates
    chosen = choose_case(
        facts,
        kind,
        candidates,
        now=now,
        subject_window=timedelta(days=box.subject_threading_days),
        team=box.team_addresses(),
    )
    chosen = standing.as_vetted(chosen, sender, candidates)
    target = standing.join_target(conn, chosen, candidates, found.referenced)
    decision = vet_join(facts, chosen, sender, target, now=now)
    refusal = decision.refusal or standing.ignored_tag(facts, sender, candidates, chosen, now=now)
    if refusal is not None:
        _refuse(conn, box, refusal)
    return decision.match, decision.new_correspondents, found.read


def _steering(
    conn: Connection, desk: MailboxContext, arrival: _Arrival
) -> commands.CommandMail | None:
    """The commands to carry out from this mail; a team address's without proof are
    refused (told to the address it claimed) and the mail goes on as a person's."""
    command = _command_mail(arrival, desk.box.team_addresses() | desk.own_addresses)
    if command is None:
        return None
    flush_deferred(conn)  # a command reads the case's mail: the batch's too (store.deferred)
    if _commands_allowed(arrival):
        return command
    case_id = arrival.match.case_id
    steered = case_store.load_case(conn, case_id) if case_id else None
    commands.refuse_unproven(conn, desk, steered, command)
    return None


def _stays_caseless(
    conn: Connection,
    desk: MailboxContext,
    arrival: _Arrival,
    command: commands.CommandMail | None,
    result: TriageResult,
) -> bool:
    """A message that joins no case opens one, unless it has no usable sender or is
    nobody's case (robots, mail between colleagues): that is recorded here, True."""
    kind = arrival.verdict.kind
    unusable = usable_sender(arrival.facts) if kind is Kind.CUSTOMER else None
    if unusable is not None:
        _record_unusable(conn, desk, arrival, unusable, result)
        return True
    if _opens_case(kind, arrival.match, arrival.correspondent):
        return False
    _record(conn, arrival, None, desk.now)
    if command is not None:
        commands.refuse_caseless(conn, desk, command)
    return True


def _into_case(
    conn: Connection,
    run: _Run,
    arrival: _Arrival,
    command: commands.CommandMail | None,
    learned: tuple[str, ...],
    result: TriageResult,
) -> None:
    """The message joins (or opens) its case: the case's change, its timeline and
    correspondents, the promises it settles, its commands, an acknowledgement if due."""
    desk, match, verdict, at = run.desk, arrival.match, arrival.verdict, arrival.at
    new_case = match.case_id is None
    opening: tuple[cases.Event, ...] = ()  # a new case's own events: written with the rest
    if match.case_id is not None:
        before = arrival.read.get(match.case_id) or case_store.load_case(conn, match.case_id)
    else:  # written below with the message folded in: one INSERT (commands name it: now)
        before, opening = _open(conn, desk, arrival, save=command is not None, numbers=run.numbers)
        result.opened += 1
    # A command mail is the team's answer only if it went to the customer with more in it
    # (a forward of a customer's mail into the inbox stays that customer's contact).
    answers = command is None or command.answers_customer or match.rule is ThreadRule.FORWARD_NEW
    if answers:
        change = _fold(before, arrival, new_case)
    else:
        assert command is not None
        change = commands.received(command, before, at)
    outcomes: tuple[Outcome, ...] = ()
    if command is not None:
        change, outcomes = commands.decide(command, change, desk)
    saved = case_store.save_case(
        conn,
        change.case,
        prefix=desk.box.reference_prefix,
        numbers=run.numbers,
        correspondents=_correspondents(arrival, new_case, learned),
    )
    assert saved.id is not None
    if new_case:
        _log_opened(desk, arrival, saved)
    desk.note_case(conn, None if new_case else before, saved)  # the queue promises see
    case_store.add_events(conn, saved.id, (*opening, *change.events))
    _record(conn, arrival, saved.id, desk.now)
    if answers:
        _settle_promises(conn, desk, before, saved, verdict.kind, at)
    if command is not None:
        commands.carry_out(conn, desk, saved, command, outcomes)
    if _acknowledge_if_due(conn, run, saved, arrival, new_case):
        result.acknowledged += 1


def _commands_allowed(arrival: _Arrival) -> bool:
    """THE gate for commands by mail: who may steer a case from a mail client - the team,
    proven (pipeline.standing: Sent folder, DKIM, trusted Authentication-Results)."""
    return arrival.sender.standing is Standing.TEAM


def _command_sender(arrival: _Arrival) -> Sender:
    """Who a command mail speaks for: the judged sender (a team From without proof has
    `claimed_team`: its commands are refused and the address it claimed is told)."""
    return arrival.sender


def _command_mail(arrival: _Arrival, team: frozenset[str]) -> commands.CommandMail | None:
    """The commands at the top of a live mail from the team, or from a team address that
    could not prove it (refused). Never imported mail: last year's "#close" is no order."""
    if arrival.facts.is_history:
        return None
    sender = _command_sender(arrival)
    if not _commands_allowed(arrival) and not sender.claimed_team:
        return None
    return commands.read(arrival.facts, sender, team)


def _correspondents(arrival: _Arrival, new_case: bool, learned: tuple[str, ...]) -> list[str]:
    """Who the case learns as its correspondents from this message (domain.trust).

    A new case: the address it opened for (its customer: From, or a web form's Reply-To),
    only that one (a form's shared From, or a forged From beside a stranger's Reply-To,
    must not tie other customers' mail to it). A proven team member's mail: the outside
    recipient they wrote to. A person's mail in an existing case: its own From, never
    its Reply-To. keepword's own mail: nobody.
    """
    who = arrival.correspondent.address if arrival.correspondent is not None else None
    if new_case or arrival.sender.standing is Standing.TEAM:
        return [who] if who is not None else []
    return list(learned)


def _refuse(conn: Connection, box: MailboxSettings, refusal: Refusal) -> None:
    """A join trust refused goes on the timeline of the case it targeted."""
    case_store.add_events(conn, refusal.case_id, [refusal.event])
    log.warning("mailbox %s: %s", box.name, refusal.event.detail)


def _record_unusable(
    conn: Connection, desk: MailboxContext, arrival: _Arrival, why: str, result: TriageResult
) -> None:
    """Mail without a usable sender opens no case: kept, shown by `keepword ignored`.
    Triaged now, like any other mail (not at the time it was written)."""
    verdict = Classification(arrival.verdict.kind, f"opens no case: {why}")
    done = replace(arrival, verdict=verdict)
    _record(conn, done, None, desk.now)
    result.unusable += 1
    log.info("mailbox %s: message %s opens no case: %s", desk.box.name, arrival.facts.pk, why)


def _reference_of(conn: Connection, case_id: int | None) -> str | None:
    return case_store.load_case(conn, case_id).reference if case_id is not None else None


def _opens_case(kind: Kind, match: ThreadMatch, correspondent: Address | None) -> bool:
    """Customers open cases; the team only when writing to someone outside the team
    (internal mail between colleagues is nobody's case); robots never."""
    if match.rule is ThreadRule.FORWARD_NEW:
        return True
    if kind is Kind.STAFF:
        return correspondent is not None
    return kind is Kind.CUSTOMER


def _staff_presence(conn: Connection, desk: MailboxContext, arrival: _Arrival) -> bool:
    """A member's own out-of-office marks them away (their cases move; it is never
    answered: robots are not); a member writing themselves is back. True if either."""
    facts, kind = arrival.facts, arrival.verdict.kind
    if arrival.sender.standing is not Standing.TEAM:
        return False  # a forged out-of-office (a team From without proof) moves no case
    why = staff_out_of_office(facts, kind, desk.box.team)
    if why is not None:
        owners.out_of_office(conn, desk, facts, arrival.at, why)
        return True
    if kind is Kind.STAFF and facts.sender is not None and not facts.is_history:
        owners.staff_wrote(conn, desk, facts.sender.address)
        return True
    return False


def _open(
    conn: Connection,
    desk: MailboxContext,
    arrival: _Arrival,
    *,
    save: bool,
    numbers: case_store.CaseNumbers | None,
) -> tuple[cases.CaseState, tuple[cases.Event, ...]]:
    """The case this message opens and its opening events (for the caller to write with
    the message's own); saved here only if `save` (a command's answer names the case's
    reference), else the caller's save inserts it with the message folded in."""
    box = desk.box
    facts, match = arrival.facts, arrival.match
    opened = cases.open_case(
        facts,
        reference=box.reference_prefix,
        at=arrival.at,
        customer=arrival.correspondent,
        why=match.explanation,
    )
    if _customer_opened(arrival) and not facts.is_history:
        owned = owners.owner_on_open(conn, desk, opened.case)  # one owner from the start
        opened = cases.Change(owned.case, (*opened.events, *owned.events))
    if save:
        saved = case_store.save_case(
            conn, opened.case, prefix=box.reference_prefix, numbers=numbers
        )
        return saved, opened.events
    return opened.case, opened.events


def _log_opened(desk: MailboxContext, arrival: _Arrival, saved: cases.CaseState) -> None:
    # History is imported by the thousand: one line per case only for live mail.
    log.log(
        logging.DEBUG if arrival.facts.is_history else logging.INFO,
        "mailbox %s: opened %s (%s)",
        desk.box.name,
        saved.reference,
        arrival.match.explanation,
    )


def _customer_opened(arrival: _Arrival) -> bool:
    """A customer's mail (or one a member forwarded in) opened the case: the policy
    chooses its owner. A member writing out owns their own case by replying."""
    return arrival.verdict.kind is Kind.CUSTOMER or arrival.match.rule is ThreadRule.FORWARD_NEW


def _fold(before: cases.CaseState, arrival: _Arrival, new_case: bool) -> cases.Change:
    verdict, match, facts = arrival.verdict, arrival.match, arrival.facts
    kind = verdict.kind
    if match.rule is ThreadRule.FORWARD_NEW and new_case:
        # A team member forwarded a customer's mail in: it counts as that customer's contact.
        kind = Kind.CUSTOMER
    why = f"{verdict.reason}; {match.explanation}" if not new_case else verdict.reason
    sender = facts.sender.address if facts.sender else None
    return cases.apply_message(
        before, kind=kind, sender=sender, at=arrival.at, message_pk=facts.pk, why=why
    )


def _record(conn: Connection, arrival: _Arrival, case_id: int | None, now: datetime) -> None:
    rule = arrival.match.rule
    triage_state.record_triage(conn, arrival.facts, arrival.verdict, case_id, rule, now)


@dataclass(frozen=True, slots=True)
class _Found:
    """What threading read for a message: its candidates, the stored mail its References
    name, and the candidate cases as stored."""

    candidates: Candidates
    referenced: case_store.ReferencedMail
    read: Mapping[int, cases.CaseState]


def _likely_lookup(box: MailboxSettings, facts: MessageFacts) -> case_store.Lookup:
    """What `_candidates` will most likely ask of the store for this message, known before
    its triage (a tag in the body or a forwarded mail's sender is read for it alone)."""
    people = correspondents_in_headers(facts, box.team_addresses())
    return case_store.Lookup(
        tags=tags_in(facts.subject, [box.reference_prefix]),
        subject_key=subject_key(facts.subject),
        addresses=tuple(who.address for who in people),
    )


def _candidates(
    conn: Connection, box: MailboxSettings, facts: MessageFacts, kind: Kind, sender: Sender
) -> _Found:
    """The cases `facts` may join as a message of `kind`: those its tag, its References
    and its subject with its correspondent name (choose_case weighs a subject's cases by
    that correspondent alone)."""
    prefixes = [box.reference_prefix]
    # A subject with two different tags claims nothing (domain.trust.subject_claim).
    if tags_in(facts.subject, prefixes):
        tag = subject_claim(facts.subject, prefixes, sender)
    else:
        tag = find_case_reference(facts, prefixes)
    referenced = case_store.referenced_mail(conn, box.name, referenced_ids(facts))
    who = external_correspondent(facts, kind, box.team_addresses())
    read = case_store.read_candidates(
        conn,
        box.name,
        case_ids=referenced.case_ids,
        tag=tag,
        subject_key=subject_key(facts.subject),
        addresses=[who.address] if who is not None else [],
    )
    loaded = read.candidates
    candidates = Candidates(
        by_tag=loaded[read.tagged] if read.tagged is not None else None,
        by_reference=tuple(loaded[i] for i in referenced.case_ids),
        by_subject=tuple(loaded[i] for i in dict.fromkeys(read.by_subject)),
    )
    return _Found(candidates, referenced, read.states)


def _acknowledge_if_due(
    conn: Connection, run: _Run, current: cases.CaseState, arrival: _Arrival, new_case: bool
) -> bool:
    """Decide on an acknowledgement or note for the case; True if one was queued."""
    assert current.id is not None
    box, now, facts, kind = run.desk.box, run.desk.now, arrival.facts, arrival.verdict.kind
    if kind is not Kind.CUSTOMER or facts.is_history:
        return False  # nothing to decide: only live customer mail is ever answered
    recipient = acknowledge.reply_address(facts) if new_case else current.customer
    # A case opened by this message has no mail yet (no outbox row is ever deleted).
    sent = acknowledge.Sent(
        new_case=new_case,
        acknowledged=not new_case and outbox_store.exists(conn, ack_key(current.id)),
        note_sent_today=not new_case and outbox_store.exists(conn, note_key(current.id, now)),
        cutoff=run.cutoff(conn),
        planned=run.desk.planned_mail(conn, recipient),
    )
    policy = acknowledge.Policy(box.team_addresses(), box.promise.follow_up_notes, box.limits)
    decision = acknowledge.decide(facts, kind, sent, policy, now)
    if not decision.sends:
        event = cases.Event(cases.EventKind.NOT_ACKNOWLEDGED, now, None, decision.reason, facts.pk)
        case_store.add_events(conn, current.id, [event])
        return False
    if run.acknowledger is None:
        log.warning(
            "mailbox %s: %s earns an acknowledgement but none is wired", box.name, current.reference
        )
        return False
    run.acknowledger(conn, run.desk, current, facts, decision, new_case)
    return True


def _close_done(desk: MailboxContext, result: TriageResult) -> None:
    """A message moved to the done folder closes its case (once per location)."""
    box, now = desk.box, desk.now
    with desk.engine.begin() as conn:
        for location_id, case_id in triage_state.unhandled_done(conn, box.name):
            if case_id is not None:
                current = case_store.load_case(conn, case_id)
                change = cases.close(
                    current, at=now, actor=None, why=f"moved to the {box.done_folder} folder"
                )
                if change.events:
                    case_store.save_case(conn, change.case)
                    case_store.add_events(conn, case_id, change.events)
                    result.closed += 1
            triage_state.mark_handled(conn, location_id, now)


def _settle_promises(
    conn: Connection,
    desk: MailboxContext,
    before: cases.CaseState,
    after: cases.CaseState,
    kind: Kind,
    at: datetime,
) -> None:
    """A team reply keeps (or, late, breaks) what was promised; a customer follow-up after
    a reply gives the team a new internal target."""
    assert after.id is not None
    if kind is Kind.STAFF:
        for settled in promises.on_staff_reply(promise_store.open_promises(conn, after.id), at):
            promise_store.update_state(conn, settled)
            event = (
                cases.EventKind.PROMISE_KEPT
                if settled.state is PromiseState.KEPT
                else cases.EventKind.PROMISE_BROKEN
            )
            case_store.add_events(conn, after.id, [cases.Event(event, at, None, settled.reason)])
        return
    if kind is not Kind.CUSTOMER or before.first_response_at is None or after.is_history:
        return
    now = desk.now
    window = desk.honest_window(conn, exclude_case=after.id)
    for new in promises.on_customer_follow_up(
        after, promise_store.open_promises(conn, after.id), now, window
    ):
        promise_store.insert_promise(conn, new)
        case_store.add_events(
            conn, after.id, [cases.Event(cases.EventKind.PROMISE_MADE, now, None, new.reason)]
        )
