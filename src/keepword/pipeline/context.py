"""One mailbox's desk for one run of a use case: what every step of it shares.

Triage, acknowledgement and the chase take this one object (Mailman passes
`(mlist, msg, msgdata)`; keepword passes the mailbox context) instead of long parameter
lists: the settings and the mailbox's own, its business calendar, its renderer, the
store handle and the run's `now`. The promise predictor is built from the store once a
run and then fed the run's own case changes (`note_case`), so acknowledging a surge costs
O(1) in the mailbox's history per mail, and handed to the next run when nothing else
changed the store meanwhile (`keeper`); the automatic mail the rate limits count is read
once a run too (`planned_mail`) and followed from the run's own queued mail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import NamedTuple

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from keepword.config import MailboxSettings, Settings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState
from keepword.domain.limits import DAY, Book, PlannedMail
from keepword.domain.model import CaseStatus, PromiseAudience, PromiseKind
from keepword.domain.owners import Roster, away_share, roster_for
from keepword.domain.predict import PromisePredictor
from keepword.domain.trust import TrustPolicy
from keepword.domain.windows import Window
from keepword.mail.compose import CUSTOMER_KINDS
from keepword.mail.render import Renderer
from keepword.pipeline.promising import (
    PassPredictor,
    PredictorKeeper,
    mailbox_predictor,
    pass_predictor,
    update_window,
)
from keepword.store import away as away_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store

log = logging.getLogger(__name__)

# The predictor's pace reflects the staff of about the last week (domain.owners.away_share).
AWAY_LOOKBACK_DAYS = 7
CUSTOMER_FACING = sorted(kind.value for kind in CUSTOMER_KINDS)


class _Fed(Enum):
    OPENED = "opened"
    ANSWERED = "answered"
    KEPT = "kept"  # a first-response promise the answer kept (the calibration's record)


class _Event(NamedTuple):
    """A case change of this run, waiting to be fed to the pass predictor."""

    case_id: int
    at: datetime
    what: _Fed
    customer: str = ""  # of an opening: a build leaves out who writes like a robot


def _in_a_build(state: CaseState) -> bool:
    """Whether a build of the predictor (store.history.response_history) holds the case:
    a customer's, unless closed or imported and never answered."""
    unanswered = state.first_response_at is None
    left_out = unanswered and (state.status is CaseStatus.CLOSED or state.is_history)
    return state.customer is not None and not left_out


def calendar_for(settings: Settings, box: MailboxSettings) -> BusinessCalendar:
    return BusinessCalendar.from_settings(box.calendar, settings.keepword.timezone)


@dataclass(slots=True)
class MailboxContext:
    """A mailbox at `now`: its settings, calendar, renderer and store."""

    settings: Settings
    box: MailboxSettings
    engine: Engine
    renderer: Renderer
    now: datetime
    # Carries the pass predictor from one triage run to the next (runtime.service).
    keeper: PredictorKeeper | None = None
    calendar: BusinessCalendar = field(init=False)
    _pass: PassPredictor | None = field(default=None, init=False)
    # This run's openings, first responses and kept promises not yet fed to `_pass`.
    _pending: list[_Event] = field(default_factory=list, init=False)
    _predictor: PromisePredictor | None = field(default=None, init=False)
    # The episode of promises above the maximum this run is in (pipeline.acknowledge):
    # the last promise within it (None: not behind, or not known yet) and the lead
    # alert already queued for it.
    behind_after: int | None = field(default=None, init=False)
    lead_alerted: str | None = field(default=None, init=False)
    # Who may own cases now: the team with planned (config) and recorded absences.
    _roster: Roster | None = field(default=None, init=False)
    _away: float | None = field(default=None, init=False)  # away_share at `now`
    # Automatic customer mail the rate limits count, read once a run (`planned_mail`).
    _book: Book | None = field(default=None, init=False)
    # Open live cases per owner (the least_open policy), read once a run (`open_counts`).
    _open: dict[str, int] | None = field(default=None, init=False)
    # The mailbox's trust policy, built once a run (pipeline.standing.policy_of).
    trust: TrustPolicy | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.calendar = calendar_for(self.settings, self.box)

    @property
    def own_addresses(self) -> frozenset[str]:
        """Every address keepword answers for: mail from them is never a customer's."""
        return frozenset(b.address for b in self.settings.mailbox) | {self.box.address}

    def honest_window(self, conn: Connection, *, exclude_case: int | None = None) -> Window:
        """The window to promise now, from this mailbox's measured first responses and
        backlog, including the cases this run opened and answered before.

        `exclude_case`: the case being answered is already stored and unanswered; it is
        not part of its own queue (its own opening joins the queue after its promise).
        Cases of addresses that write like robots are no queue at all
        (store.history.response_history).
        """
        if self._pass is None or self._pass.stale:
            # Left out of the build: only a case this run opened and has not fed yet (the
            # case being acknowledged). Any other stays in, as in every later window of
            # the run: what the predictor holds must not depend on which mail built it.
            fresh = self._unfed_opening(exclude_case)
            self._pass = pass_predictor(conn, self.box, self.calendar, self.now, exclude_case=fresh)
            # The store already holds the earlier events; the excluded case's are news.
            self._pending = [e for e in self._pending if e.case_id == fresh]
        # Only a new case's own events wait for its promise; a case answered before (a
        # follow-up) is history: its answer counts now, as a build would count it.
        self._feed(keep=self._unfed_opening(exclude_case))
        if self._pass.stale:  # an event out of order: the store says it right
            self._pass = None
            return self.honest_window(conn, exclude_case=exclude_case)
        if exclude_case is not None and exclude_case in self._pass.waiting:
            # Open and already in the queue (rare: an open case promised again): the
            # store's own answer without it.
            once = pass_predictor(
                conn, self.box, self.calendar, self.now, exclude_case=exclude_case
            )
            return once.window(self.now, away=self.away_share(conn))
        return self._pass.window(self.now, away=self.away_share(conn))

    def resume_predictor(self, conn: Connection) -> None:
        """At the start of a triage run, before it writes: take over the last run's
        predictor if the store still gives the same (`PredictorKeeper.take`)."""
        if self.keeper is not None and self._pass is None:
            self._pass = self.keeper.take(conn, self.box, self.now)

    def keep_predictor(self) -> None:
        """At the end of a triage run, after its last commit: hand the predictor, fed
        every event of the run, to the next run."""
        if self.keeper is None or self._pass is None or self._pass.stale:
            return
        self._feed(keep=None)
        if self._pass.stale:
            return
        try:
            with self.engine.connect() as conn:
                self.keeper.keep(conn, self.box, self._pass, self.now)
        except SQLAlchemyError as exc:  # the run's work is committed: build it next time
            log.info("mailbox %s: promise predictor not kept: %s", self.box.name, exc)

    def _unfed(self, case_id: int) -> set[_Fed]:
        """What the run noted of case `case_id` that the predictor has not been fed yet."""
        return {event.what for event in self._pending if event.case_id == case_id}

    def _unfed_opening(self, case_id: int | None) -> int | None:
        """`case_id` if it is a case this run opened, not yet fed and not answered (the
        case being acknowledged: not part of its own queue), else None."""
        if case_id is None:
            return None
        unfed = self._unfed(case_id)
        return case_id if _Fed.OPENED in unfed and _Fed.ANSWERED not in unfed else None

    def note_case(self, conn: Connection, before: CaseState | None, after: CaseState) -> None:
        """Triage changed case `after` (`before`: None if it opened it): the queue the
        next promise sees changes with it. Called inside the message's transaction;
        `forget_run_state` if that transaction fails."""
        assert after.id is not None
        self._count_open(before, -1)
        self._count_open(after, +1)
        if after.is_history:  # a build keeps history only once answered: ask the store
            self._mark_stale()
            return
        if before is None and after.customer is not None:
            self._pending.append(_Event(after.id, after.opened_at, _Fed.OPENED, after.customer))
        if self._pass is None:  # the build will read the rest from the store
            return
        responded = after.first_response_at
        if responded is not None and (before is None or before.first_response_at is None):
            if after.customer is not None and self._holds(after.id):
                answered = max(responded, after.opened_at)
                self._pending.append(_Event(after.id, answered, _Fed.ANSWERED))
            elif after.customer is not None:
                # A case the build left out (closed unanswered) counts once answered: only
                # a build can place its opening in the past of the queue.
                self._mark_stale()
            self._pending += [_Event(after.id, responded, _Fed.KEPT)] * self._kept(conn, after.id)
        elif _in_a_build(after) != (_in_a_build(before) if before else after.customer is not None):
            # Closed unanswered (a build leaves it out of the queue) or reopened unanswered
            # (a build takes it in again).
            self._mark_stale()

    def _holds(self, case_id: int) -> bool:
        """The run's predictor has the case as waiting, or will (its opening is pending)."""
        assert self._pass is not None
        return case_id in self._pass.waiting or _Fed.OPENED in self._unfed(case_id)

    def open_counts(self, conn: Connection) -> Mapping[str, int]:
        """Open (not closed) live cases per owner: read from the store once a run, then
        followed through the run's own case changes (`note_case`) - a surge no longer
        counts every open case again for every case it opens."""
        if self._open is None:
            self._open = away_store.open_counts(conn, self.box.name)
        return self._open

    def _count_open(self, state: CaseState | None, step: int) -> None:
        """What `away_store.open_counts` would count of `state`, added (`step`)."""
        if self._open is None or state is None or state.owner is None or state.is_history:
            return
        if state.status is CaseStatus.CLOSED:
            return
        count = self._open.get(state.owner, 0) + step
        if count:
            self._open[state.owner] = count
        else:  # the store's GROUP BY names no owner without an open case
            self._open.pop(state.owner, None)

    def _kept(self, conn: Connection, case_id: int) -> int:
        """How many of the case's first-response promises its first response keeps that
        were not resolved when the predictor was built (due now or later)."""
        since = self.now - timedelta(days=self.box.promise.history_days)
        return sum(
            1
            for p in promise_store.open_promises(conn, case_id)
            if p.kind is PromiseKind.FIRST_RESPONSE
            and p.audience is PromiseAudience.CUSTOMER
            and p.made_at >= since
            and p.due_at >= self.now
        )

    def forget_run_state(self) -> None:
        """A transaction that fed the predictor rolled back: build it again when asked."""
        self._pass = None
        self._pending.clear()
        self.behind_after = self.lead_alerted = None
        self._book = None
        self.forget_roster()

    def roster(self, conn: Connection) -> Roster:
        """The team with its planned and recorded absences (read once a run;
        `forget_roster` after recording one)."""
        if self._roster is None:
            today = self.now.astimezone(self.calendar.zone).date()
            # the last weeks too: the predictor compares today's staff with recent days
            since = today - timedelta(days=AWAY_LOOKBACK_DAYS + 1)
            recorded = away_store.recorded_away(conn, self.box.name, since)
            self._roster = roster_for(self.box, recorded)
        return self._roster

    def forget_roster(self) -> None:
        """An absence was recorded or ended (its cases may have moved): read again."""
        self._roster = self._away = None
        self._open = None

    def away_share(self, conn: Connection) -> float:
        """The share of the staff not on duty on the next open day: the predictor's
        `away` input (issue 13: staff on duty = the calendar minus people away)."""
        if self._away is None:
            self._away = away_share(
                self.roster(conn), self.calendar, self.now, lookback_days=AWAY_LOOKBACK_DAYS
            )
        return self._away

    def planned_mail(self, conn: Connection, recipient: str | None) -> PlannedMail:
        """Automatic customer mail (acknowledgements, notes, updates) the limits must
        count: sent in the last day or planned for later, to `recipient` (from any
        mailbox) and from this mailbox. Read from the store once a run; the run's own
        mail joins it through `note_planned` (another mailbox's mail to the same address
        queued meanwhile counts from the next run on)."""
        if self._book is None:
            since = self.now - DAY
            rows = outbox_store.automatic_mail_rows(conn, CUSTOMER_FACING, since)
            self._book = Book.of(self.box.name, rows, since)
        return self._book.planned(recipient)

    def note_planned(self, recipient: str, at: datetime) -> None:
        """This run queued an automatic customer mail to `recipient` planned for `at`
        (inside the transaction: `forget_run_state` if it rolls back)."""
        if self._book is not None:
            self._book.add(recipient, at)

    def _mark_stale(self) -> None:
        if self._pass is not None:
            self._pass.stale = True

    def _feed(self, *, keep: int | None) -> None:
        """Feed the pending events in order, except those of case `keep` (the case being
        promised): they wait for the next promise."""
        assert self._pass is not None
        kept: list[_Event] = []
        for event in self._pending:
            if event.case_id == keep:
                kept.append(event)
            elif event.what is _Fed.OPENED:
                self._pass.arrive(event.case_id, event.at, event.customer)
            elif event.what is _Fed.ANSWERED:
                self._pass.answer(event.case_id, event.at)
            else:
                self._pass.predictor.record_outcome(True)
        self._pending = kept

    def residual_window(self, conn: Connection, case_id: int, opened_at: datetime) -> Window:
        """The new time for a customer update of a case open since `opened_at`: the
        remaining time given it has already waited that long (its own wait is
        evidence, not a fresh sample). The predictor is built once a run."""
        if self._predictor is None:
            self._predictor = mailbox_predictor(conn, self.box, self.calendar, self.now)
        return update_window(
            self._predictor, self.now, case_id, opened_at, away=self.away_share(conn)
        )
