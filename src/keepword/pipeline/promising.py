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
millisecond. A pass that acknowledges several mails can build it once and call
`predictor.arrive(case_id, opened_at)` after each promise, so the next one sees it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection

from keepword.config import MailboxSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import PromisePredictor, predictor_from_history
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
    days = box.promise.history_days
    cases = history_store.response_history(
        conn,
        box.name,
        now - timedelta(days=2 * days),
        exclude_case=exclude_case,
        robot_cases_per_day=box.limits.per_sender_per_day,
    )
    outcomes = history_store.first_response_outcomes(conn, box.name, now - timedelta(days=days))
    return predictor_from_history(cases, now, calendar, box.promise, outcomes=outcomes)


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
    predictor: PromisePredictor, now: datetime, case_id: int, opened_at: datetime
) -> Window:
    """The residual time to promise in a customer update for a case open since
    `opened_at` (its own wait is evidence; `predict.explain` says so)."""
    return predictor.residual_window(now, opened_at, key=case_id)
