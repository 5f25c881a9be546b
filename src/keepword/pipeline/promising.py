"""The shell around `domain.predict`: the mailbox's predictor, built from the store.

What acknowledgement and the chase call (the coordinator wires them in):

* `honest_window(conn, box, calendar, now, exclude_case=...)` - the first-response
  window for a case arriving now; the drop-in for `MailboxContext.honest_window`
  (pipeline/context.py).
* `mailbox_predictor(...)` once per pass, then `update_window(predictor, ...)` per
  case - the residual time promised in a customer update (replaces the one shared
  `honest_window` of the chase's `MailboxContext`).

The predictor's state is built in one pass over the stored history (O(n log n), ~70 ms
for 180 days of a busy mailbox); a promise on a built state costs well under a
millisecond. A triage pass builds it once (`pass_predictor`) and feeds it the pass's
openings and first responses (`PassPredictor.arrive` / `answer`), so each mail sees the
queue including the ones before it (`MailboxContext.honest_window`). The next pass takes
it over while nothing else wrote to the mailbox's cases and promises (`PredictorKeeper`):
a surge triaged in slices builds it once, not once a slice.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from keepword.config import MailboxSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import (
    HistoryCase,
    Outcome,
    PromisePredictor,
    predictor_from_history,
    resolution,
)
from keepword.domain.windows import Window, writes_like_a_robot
from keepword.store import history as history_store


def mailbox_predictor(
    conn: Connection,
    box: MailboxSettings,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude_case: int | None = None,
) -> PromisePredictor:
    """The predictor's state at `now`: the cases of the last 2 x history_days (older
    open ones only add to the queue) and the first-response promises of the last
    history_days for the calibration."""
    cases = _history(conn, box, now, exclude_case).cases
    outcomes = history_store.first_response_outcomes(conn, box.name, now - _span(box))
    return predictor_from_history(cases, now, calendar, box.promise, outcomes=outcomes)


NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True)
class PassPredictor:
    """The predictor of one triage pass: built once from the store, then fed the pass's
    own openings and first responses in time order, so each mail sees the queue of the
    ones before it at O(1) store cost (the promise itself is one Kaplan-Meier pass over
    the recent sample).

    It gives the window a fresh build from the store would give, as long as the events
    come in the order a build would replay them (`predictor_from_history`: by time,
    answers before openings at equal times). An event out of that order makes it
    `stale`: the owner builds it again (a mail dated before the last event, rare).
    """

    predictor: PromisePredictor
    waiting: set[int]  # cases it holds as open: only their first response is news to it
    latest: datetime  # the time of the last event it was fed
    built_at: datetime  # the `now` it was built from the store at
    # Who writes like a robot (a build leaves their cases out), every customer's
    # openings so far, and the threshold (LimitSettings.per_sender_per_day; None: none).
    robots: set[str] = field(default_factory=set)
    openings: dict[str, list[datetime]] = field(default_factory=dict)
    cases_per_day: int | None = None
    # A build at this time or later reads something else from the same store: a case or
    # promise leaves the history's span, a promise falls due (those of the pass itself
    # included: PredictorKeeper.keep), a future-dated event is known.
    valid_until: datetime = NEVER
    stale: bool = False
    _last_was_arrival: bool = True  # at equal times, a build replays answers first

    def arrive(self, case_id: int, at: datetime, customer: str) -> None:
        """Case `case_id` of `customer` opened at `at` (a customer's case the store's
        history holds)."""
        if customer in self.robots:
            return  # a build leaves out every case of theirs
        if self.cases_per_day is not None:
            times = self.openings.setdefault(customer, [])
            bisect.insort(times, at)
            if writes_like_a_robot(((customer, t) for t in times), self.cases_per_day):
                self.stale = True  # a build now leaves out their earlier cases too
                return
        if at < self.latest:
            self.stale = True
            return
        self.predictor.arrive(case_id, at)
        self.waiting.add(case_id)
        self.latest = at
        self._last_was_arrival = True

    def answer(self, case_id: int, at: datetime) -> None:
        """The first response of `case_id` at `at` (ignored for cases it does not hold:
        a build would not replay them either)."""
        if case_id not in self.waiting:
            return
        if at < self.latest or (at == self.latest and self._last_was_arrival):
            self.stale = True
            return
        self.predictor.answer(case_id, at)
        self.waiting.discard(case_id)
        self.latest = at
        self._last_was_arrival = False

    def window(self, now: datetime, *, away: float = 0.0) -> Window:
        """`away`: the share of the staff not on duty (domain.owners.away_share)."""
        return self.predictor.window(now, away=away)


#: How long after its build a predictor may serve the triage runs after the one that
#: built it, the store unchanged meanwhile (`PredictorKeeper`): the slices of a surge
#: take it over; then it is built again, so a write the fingerprint cannot see (one
#: committed between a run's end and its fingerprint) is forgotten within this time.
KEEP_FOR = timedelta(minutes=1)


@dataclass(slots=True)
class _Kept:
    predictor: PassPredictor
    fed_at: datetime  # the `now` of the run that fed it last
    fingerprint: tuple[int, ...]  # history_store.predictor_fingerprint after that run


@dataclass(slots=True)
class PredictorKeeper:
    """A mailbox's pass predictor from one triage run to the next (the daemon's worker
    holds one per mailbox; only the mailbox's own thread uses it).

    The next run takes it over only if a build from the store would give the same: no
    write to the mailbox's cases or customer first-response promises since (the
    fingerprint read when it was kept, read again), nothing a build reads changes with
    the clock in between (`PassPredictor.valid_until`), and built less than `KEEP_FOR`
    ago.
    """

    _kept: _Kept | None = None
    taken: int = 0  # runs that took it over (benchmarks and tests read it)

    def keep(
        self, conn: Connection, box: MailboxSettings, predictor: PassPredictor, now: datetime
    ) -> None:
        """After a run, its predictor fed every event of the run (the run's own promises
        fall due too: a build after that counts them)."""
        fingerprint = history_store.predictor_fingerprint(conn, box.name)
        due = history_store.next_promise_due(conn, box.name, now)
        if due is not None:
            predictor.valid_until = min(predictor.valid_until, due)
        self._kept = _Kept(predictor, now, fingerprint)

    def take(self, conn: Connection, box: MailboxSettings, now: datetime) -> PassPredictor | None:
        """The kept predictor, if it still is what a build at `now` gives (the caller
        feeds it; it is kept once: a run that fails leaves nothing behind)."""
        kept, self._kept = self._kept, None
        if kept is None or kept.predictor.stale:
            return None
        horizon = min(kept.predictor.built_at + KEEP_FOR, kept.predictor.valid_until)
        if not kept.fed_at <= now < horizon:
            return None
        if history_store.predictor_fingerprint(conn, box.name) != kept.fingerprint:
            return None
        self.taken += 1
        return kept.predictor


def pass_predictor(
    conn: Connection,
    box: MailboxSettings,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude_case: int | None = None,
) -> PassPredictor:
    """The store's predictor at `now` (as `mailbox_predictor`), ready to be fed."""
    history = _history(conn, box, now, exclude_case)
    cases = history.cases
    outcomes = history_store.first_response_outcomes(conn, box.name, now - _span(box))
    predictor = predictor_from_history(cases, now, calendar, box.promise, outcomes=outcomes)
    waiting: set[int] = set()
    latest = datetime.min.replace(tzinfo=now.tzinfo)
    for c in cases:
        if c.opened_at > now:
            continue
        latest = max(latest, c.opened_at)
        if c.first_response_at is not None and c.first_response_at <= now:
            latest = max(latest, c.first_response_at)
        elif isinstance(c.key, int):
            waiting.add(c.key)
    until = _valid_until(box, now, history.first_opened, cases, outcomes)
    return PassPredictor(
        predictor,
        waiting,
        latest,
        now,
        valid_until=until,
        robots=set(history.robots),
        openings=history.openings,
        cases_per_day=box.limits.per_sender_per_day,
    )


def _span(box: MailboxSettings) -> timedelta:
    return timedelta(days=box.promise.history_days)


def _valid_until(
    box: MailboxSettings,
    now: datetime,
    first_opened: datetime | None,
    cases: Sequence[HistoryCase],
    outcomes: Sequence[Outcome],
) -> datetime:
    """The first time a build from the same store would read something else than a
    build at `now`: the oldest case leaves the span (2 x history_days) or the oldest
    promise the calibration's (history_days), a promise open at `now` is due or answered,
    a case dated after `now` opens or is answered."""
    times = [first_opened + 2 * _span(box)] if first_opened is not None else []
    if outcomes:
        times.append(min(o.made_at for o in outcomes) + _span(box))
    for outcome in outcomes:
        if resolution(outcome, now) is None:  # open at `now`: resolved at one of these
            times.append(outcome.due_at)
            if outcome.answered_at is not None:
                times.append(outcome.answered_at)
    for c in cases:
        if c.opened_at > now:
            times.append(c.opened_at)
        elif c.first_response_at is not None and c.first_response_at > now:
            times.append(c.first_response_at)
    return min(times, default=NEVER)


def _history(
    conn: Connection, box: MailboxSettings, now: datetime, exclude_case: int | None
) -> history_store.ResponseHistory:
    return history_store.response_history(
        conn,
        box.name,
        now - 2 * _span(box),
        exclude_case=exclude_case,
        robot_cases_per_day=box.limits.per_sender_per_day,
    )


def honest_window(
    conn: Connection,
    box: MailboxSettings,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude_case: int | None = None,
) -> Window:
    """The window to promise a case arriving now. `exclude_case`: the case being
    acknowledged is already stored and unanswered; it is not part of its own queue."""
    predictor = mailbox_predictor(conn, box, calendar, now, exclude_case=exclude_case)
    return predictor.window(now)


def update_window(
    predictor: PromisePredictor,
    now: datetime,
    case_id: int,
    opened_at: datetime,
    *,
    away: float = 0.0,
) -> Window:
    """The residual time to promise in a customer update for a case open since
    `opened_at` (its own wait is evidence; `predict.explain` says so). `away`: the share
    of the staff not on duty."""
    return predictor.residual_window(now, opened_at, key=case_id, away=away)
