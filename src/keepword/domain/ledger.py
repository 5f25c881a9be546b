"""The promise ledger behind `keepword stats`: did the team keep its word?

Pure: the shell reads cases, promises and outbox rows of a period and passes them in
with each mailbox's business clock. Per mailbox, over [since, until):

- cases: opened in the period; `answered` of them have a first response (whenever it
  came); the median and p90 (nearest rank, a time the team really took) of their
  first-response times in *business* minutes.
- customer promises made in the period (acknowledgements and updates) by outcome:
  kept, broken, superseded before breach (an update told the customer in time),
  withdrawn (case closed or waiting on the customer), still open. A promise still open
  but past due at `now` counts as broken: the chase has just not recorded it yet.
- silent breaches: broken customer promises for which no customer update was sent
  before the due time. Must be 0; a late reply or a daemon down across a deadline
  shows here, honestly.
- breaches held back: broken customer promises whose update was due but held back by
  the per-address rate limit (no slot before the due time). They count as broken (the
  customer did not get what we said) but not as silent: keepword decided it before the
  due time, recorded why on the case, and sent the late update at the limit's slot.
  An address that already got its day's worth of automatic mail is almost always a
  machine answering us; the limit protecting it is policy, not an unnoticed miss.
- team targets (internal NEXT_RESPONSE promises) made and missed.
- customer updates, reminders and escalations sent in the period.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from keepword.domain.chase import BusinessClock
from keepword.domain.model import OutboxKind, PromiseState
from keepword.domain.outbox_keys import promise_id_of
from keepword.domain.promises import Promise, break_if_due, is_held_back
from keepword.domain.windows import nearest_rank


@dataclass(frozen=True, slots=True)
class Period:
    """The ledger's period: from `since` up to, not including, `until`."""

    since: datetime
    until: datetime

    def __contains__(self, at: datetime | None) -> bool:
        return at is not None and self.since <= at < self.until


@dataclass(frozen=True, slots=True)
class CaseRecord:
    mailbox: str
    case_id: int
    opened_at: datetime
    first_response_at: datetime | None


@dataclass(frozen=True, slots=True)
class SentAction:
    """One outbox row: `sent_at` is None while not (or never) sent."""

    mailbox: str
    case_id: int | None
    kind: OutboxKind
    dedup_key: str
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class Ledger:
    mailbox: str
    since: datetime
    until: datetime
    cases: int = 0
    answered: int = 0
    median_first_response_minutes: float | None = None
    p90_first_response_minutes: float | None = None
    promises_made: int = 0
    promises_kept: int = 0
    promises_broken: int = 0
    promises_superseded: int = 0
    promises_withdrawn: int = 0
    promises_open: int = 0
    silent_breaches: int = 0
    breaches_held_back: int = 0
    team_targets_made: int = 0
    team_targets_missed: int = 0
    customer_updates_sent: int = 0
    reminders_sent: int = 0
    escalations_sent: int = 0


def compute_ledger(
    cases: Iterable[CaseRecord],
    promises: Iterable[Promise],
    actions: Iterable[SentAction],
    *,
    period: Period,
    now: datetime,
    clocks: Mapping[str, BusinessClock],
) -> list[Ledger]:
    """One `Ledger` per mailbox (every mailbox in `clocks`), sorted by name.

    `cases` must include every case the promises refer to (a promise made in the
    period may belong to an older case); only cases opened in the period are counted.
    """
    known = list(cases)
    mailbox_of = {c.case_id: c.mailbox for c in known}
    sent = [a for a in actions if a.sent_at is not None]
    updates_before = _updates_sent(sent)
    made = [p for p in promises if p.made_at in period]
    ledgers: list[Ledger] = []
    for mailbox in sorted(set(clocks) | {c.mailbox for c in known}):
        clock = clocks.get(mailbox)
        if clock is None:
            raise ValueError(f"no business calendar for mailbox {mailbox!r}")
        books = _Books(
            [c for c in known if c.mailbox == mailbox and c.opened_at in period],
            [p for p in made if mailbox_of.get(p.case_id) == mailbox],
            [a for a in sent if a.mailbox == mailbox and a.sent_at in period],
            updates_before,
        )
        ledgers.append(_ledger(mailbox, period, now, clock, books))
    return ledgers


@dataclass(frozen=True, slots=True)
class _Books:
    """One mailbox's records of the period."""

    cases: list[CaseRecord]  # opened in the period
    promises: list[Promise]  # made in the period
    sent: list[SentAction]  # sent in the period
    updates_before: Mapping[int, datetime]  # promise id -> its first update sent (ever)


def _updates_sent(sent: Iterable[SentAction]) -> dict[int, datetime]:
    """Promise id -> when the first customer update revising it was sent."""
    first: dict[int, datetime] = {}
    for action in sent:
        pid = promise_id_of(action.dedup_key)
        if action.kind is not OutboxKind.CUSTOMER_UPDATE or pid is None or action.sent_at is None:
            continue
        if pid not in first or action.sent_at < first[pid]:
            first[pid] = action.sent_at
    return first


def _ledger(
    mailbox: str, period: Period, now: datetime, clock: BusinessClock, books: _Books
) -> Ledger:
    cases, promises, updates_before = books.cases, books.promises, books.updates_before
    durations = [
        clock.minutes_between(c.opened_at, c.first_response_at)
        for c in cases
        if c.first_response_at is not None
    ]
    customer = [_as_of(p, now, updates_before) for p in promises if p.to_customer]
    team = [_as_of(p, now, updates_before) for p in promises if not p.to_customer]
    states = [p.state for p in customer]
    return Ledger(
        mailbox=mailbox,
        since=period.since,
        until=period.until,
        cases=len(cases),
        answered=len(durations),
        median_first_response_minutes=statistics.median(durations) if durations else None,
        p90_first_response_minutes=nearest_rank(durations, 0.9) if durations else None,
        promises_made=len(customer),
        promises_kept=states.count(PromiseState.KEPT),
        promises_broken=states.count(PromiseState.BROKEN),
        promises_superseded=sum(1 for p in customer if _superseded_in_time(p)),
        promises_withdrawn=states.count(PromiseState.WITHDRAWN),
        promises_open=states.count(PromiseState.OPEN),
        silent_breaches=sum(1 for p in customer if _silent(p, updates_before)),
        breaches_held_back=sum(1 for p in customer if is_held_back(p)),
        team_targets_made=len(team),
        team_targets_missed=sum(1 for p in team if p.state is PromiseState.BROKEN),
        customer_updates_sent=_count(books.sent, OutboxKind.CUSTOMER_UPDATE),
        reminders_sent=_count(books.sent, OutboxKind.REMINDER),
        escalations_sent=_count(books.sent, OutboxKind.ESCALATION),
    )


def _announced(promise: Promise, updates_before: Mapping[int, datetime]) -> bool:
    told = updates_before.get(promise.id) if promise.id is not None else None
    return told is not None and told < promise.due_at


def _as_of(promise: Promise, now: datetime, updates_before: Mapping[int, datetime]) -> Promise:
    """The promise as it stands at `now`: open past due is broken, recorded or not."""
    return break_if_due(promise, now, announced=_announced(promise, updates_before))


def _superseded_in_time(promise: Promise) -> bool:
    return (
        promise.state is PromiseState.SUPERSEDED
        and promise.resolved_at is not None
        and promise.resolved_at < promise.due_at
    )


def _silent(promise: Promise, updates_before: Mapping[int, datetime]) -> bool:
    return (
        promise.state is PromiseState.BROKEN
        and not _announced(promise, updates_before)
        and not is_held_back(promise)
    )


def _count(sent: Iterable[SentAction], kind: OutboxKind) -> int:
    return sum(1 for a in sent if a.kind is kind)
