"""Replaying a mailbox's history through the production predictor.

Pure: cases in, promise records out. Every arrival is promised by
`domain.predict.PromisePredictor` seeing only what was known then (the events are fed
in time order: responses, due times passing, the chase's update check, arrivals), and
the chase is replayed too: when a promise enters its update zone unanswered
(`domain.chase.update_lead_minutes`), the customer is promised the residual time
(`PromisePredictor.residual_window`), and that update is followed the same way.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keepword.config import ChaseSettings, PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.chase import update_lead_minutes
from keepword.domain.predict import BusinessTimeline, HistoryCase, PromisePredictor

Progress = Callable[[int, int], None]

# Event order at one instant: a response sent at the due time keeps the promise; the
# chase and a new arrival see everything that happened up to and at that instant.
_ANSWER, _DUE, _CHECK, _ARRIVAL = range(4)


@dataclass(slots=True)
class UpdateRecord:
    """A customer update the chase would have sent: the residual-time promise."""

    case: int
    made_at: datetime
    due_at: datetime
    minutes: int
    waited_minutes: float
    kept: bool | None = None  # None: still open when the history ends


@dataclass(slots=True)
class PromiseRecord:
    """One replayed arrival: the state it met, the promise, and what happened."""

    case: int
    opened_at: datetime
    kind: str
    answered_at: datetime | None
    actual_minutes: float | None  # business minutes to the first response
    ahead: int
    pace: float
    expected_queue: float
    promised: bool = False  # False before the evaluation starts (warm-up)
    minutes: int = 0
    due_at: datetime | None = None
    level: float = 0.0
    is_default: bool = False
    kept: bool | None = None  # None: not promised, or still open when the history ends
    updated: bool = False
    silent_breach: bool = False


@dataclass(slots=True)
class Replay:
    records: list[PromiseRecord]
    updates: list[UpdateRecord]
    quantile: float
    start: datetime
    end: datetime
    backlog: list[tuple[datetime, int]] = field(default_factory=list)

    @property
    def promised(self) -> list[PromiseRecord]:
        return [r for r in self.records if r.promised]


@dataclass(slots=True)
class _Run:
    cases: Sequence[HistoryCase]
    calendar: BusinessCalendar
    predictor: PromisePredictor
    chase: ChaseSettings
    start: datetime
    end: datetime  # the last thing the history knows: nothing is judged after it
    records: list[PromiseRecord]
    updates: list[UpdateRecord] = field(default_factory=list)
    # (at, event kind, sequence, case index, update index or -1 for the first promise)
    events: list[tuple[datetime, int, int, int, int]] = field(default_factory=list)
    # the promise being chased, per case: (due_at, update index or -1 for the first)
    current: dict[int, tuple[datetime, int]] = field(default_factory=dict)
    updates_of: dict[int, list[int]] = field(default_factory=dict)  # unresolved, per case
    backlog: list[tuple[datetime, int]] = field(default_factory=list)
    sequence: int = 0

    def push(self, at: datetime, kind: int, index: int, update: int = -1) -> None:
        if at > self.end:
            return  # unknown: the history ends first
        self.sequence += 1
        heapq.heappush(self.events, (at, kind, self.sequence, index, update))


def replay(
    cases: Sequence[HistoryCase],
    calendar: BusinessCalendar,
    settings: PromiseSettings,
    *,
    start: datetime | None = None,
    chase: ChaseSettings | None = None,
    progress: Progress | None = None,
) -> Replay:
    """Promise every case opened from `start` on (default: the first case), as keepword
    would have, and follow each promise to its outcome and updates.

    The cases before `start` are the history the predictor already knew (an import).
    """
    ordered = sorted(cases, key=lambda c: c.opened_at)
    if not ordered:
        raise ValueError("no cases to replay")
    first = ordered[0].opened_at
    end = max(c.first_response_at or c.opened_at for c in ordered)
    origin = (first - timedelta(days=1)).date()
    timeline = BusinessTimeline(calendar, origin)
    run = _Run(
        cases=ordered,
        calendar=calendar,
        predictor=PromisePredictor.start(calendar, settings, origin, timeline=timeline),
        chase=chase or ChaseSettings(),
        start=start or first,
        end=end,
        records=[],
    )
    for index, c in enumerate(ordered):
        run.push(c.opened_at, _ARRIVAL, index)
        if c.first_response_at is not None:
            run.push(max(c.first_response_at, c.opened_at), _ANSWER, index)
        run.records.append(_record(index, c, timeline))
    total, done = len(ordered), 0
    while run.events:
        at, kind, _, index, update = heapq.heappop(run.events)
        if kind == _ARRIVAL:
            _arrive(run, index, at)
            done += 1
            if progress is not None and (done % 200 == 0 or done == total):
                progress(done, total)
        elif kind == _ANSWER:
            _answer(run, index, at)
        elif kind == _DUE:
            _due(run, index, update, at)
        else:
            _check(run, index, at)
    return Replay(run.records, run.updates, settings.quantile, run.start, end, run.backlog)


def _record(index: int, c: HistoryCase, timeline: BusinessTimeline) -> PromiseRecord:
    actual = (
        timeline.minutes_between(c.opened_at, c.first_response_at)
        if c.first_response_at is not None
        else None
    )
    return PromiseRecord(index, c.opened_at, c.kind, c.first_response_at, actual, 0, 0.0, 0.0)


def _key(index: int) -> Hashable:
    return index


def _arrive(run: _Run, index: int, at: datetime) -> None:
    record = run.records[index]
    state = run.predictor.queue(at)
    record.ahead, record.pace = state.ahead, state.pace
    run.backlog.append((at, state.ahead))
    if at >= run.start:
        window = run.predictor.window(at)
        record.promised = True
        record.minutes = window.minutes
        record.due_at = window.due_at
        record.level = float(
            window.basis.get("calibrated_quantile", run.predictor.settings.quantile)
        )
        record.is_default = window.is_default
        record.expected_queue = float(window.basis.get("expected_queue_minutes", 0.0))
        _follow(run, index, window.due_at, at, -1)
    run.predictor.arrive(_key(index), at, record.kind)


def _follow(run: _Run, index: int, due_at: datetime, made_at: datetime, update: int) -> None:
    """Chase this promise: its due time, and the update check before it."""
    run.current[index] = (due_at, update)
    total = run.calendar.minutes_between(made_at, due_at)
    lead = update_lead_minutes(total, run.chase)
    check_at = run.calendar.add(made_at, max(0.0, total - lead))
    run.push(due_at, _DUE, index, update)
    if check_at < due_at:
        run.push(check_at, _CHECK, index, update)


def _answer(run: _Run, index: int, at: datetime) -> None:
    record = run.records[index]
    run.predictor.answer(_key(index), at)
    if record.promised and record.kept is None and record.due_at is not None:
        record.kept = at <= record.due_at
        if record.kept:
            run.predictor.record_outcome(True)
    run.current.pop(index, None)
    for update in run.updates_of.pop(index, []):
        if run.updates[update].kept is None:
            run.updates[update].kept = at <= run.updates[update].due_at


def _due(run: _Run, index: int, update: int, at: datetime) -> None:
    record = run.records[index]
    if record.answered_at is not None and record.answered_at <= at:
        return
    if update >= 0:
        run.updates[update].kept = False
    elif record.kept is None:
        record.kept = False
        run.predictor.record_outcome(False)
        record.silent_breach = not record.updated


def _check(run: _Run, index: int, at: datetime) -> None:
    """The chase reaches the update zone of the case's current promise."""
    record = run.records[index]
    current = run.current.get(index)
    if current is None or (record.answered_at is not None and record.answered_at <= at):
        return
    old_due, _ = current
    window = run.predictor.residual_window(at, record.opened_at, key=_key(index))
    due = window.due_at if window.due_at > old_due else run.calendar.add(old_due, window.minutes)
    run.updates.append(
        UpdateRecord(index, at, due, window.minutes, float(window.basis.get("waited_minutes", 0.0)))
    )
    record.updated = True
    run.updates_of.setdefault(index, []).append(len(run.updates) - 1)
    _follow(run, index, due, at, len(run.updates) - 1)
