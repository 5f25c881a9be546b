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
queue including the ones before it (`MailboxContext.honest_window`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from keepword.config import MailboxSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import HistoryCase, PromisePredictor, predictor_from_history
from keepword.domain.windows import Window
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
    cases = _history(conn, box, now, exclude_case)
    outcomes = history_store.first_response_outcomes(
        conn, box.name, now - timedelta(days=box.promise.history_days)
    )
    return predictor_from_history(cases, now, calendar, box.promise, outcomes=outcomes)


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
    stale: bool = False
    _last_was_arrival: bool = True  # at equal times, a build replays answers first

    def arrive(self, case_id: int, at: datetime) -> None:
        """Case `case_id` opened at `at` (a customer's case the store's history holds)."""
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


def pass_predictor(
    conn: Connection,
    box: MailboxSettings,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude_case: int | None = None,
) -> PassPredictor:
    """The store's predictor at `now` (as `mailbox_predictor`), ready to be fed."""
    cases = _history(conn, box, now, exclude_case)
    outcomes = history_store.first_response_outcomes(
        conn, box.name, now - timedelta(days=box.promise.history_days)
    )
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
    return PassPredictor(predictor, waiting, latest)


def _history(
    conn: Connection, box: MailboxSettings, now: datetime, exclude_case: int | None
) -> list[HistoryCase]:
    return history_store.response_history(
        conn,
        box.name,
        now - timedelta(days=2 * box.promise.history_days),
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
