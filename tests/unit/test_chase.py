from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepword.config import ChaseSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState
from keepword.domain.chase import (
    BreachRecord,
    BusinessClock,
    CaseSnapshot,
    ChaseAction,
    CustomerUpdate,
    Escalation,
    Reminder,
    UnreachableNotice,
    plan,
    update_lead_minutes,
    update_refusal,
)
from keepword.domain.model import (
    CaseStatus,
    MessageFacts,
    PromiseAudience,
    PromiseKind,
    PromiseState,
)
from keepword.domain.outbox_keys import promise_id_of
from keepword.domain.promises import (
    Promise,
    break_if_due,
    on_customer_follow_up,
    on_staff_reply,
    supersede,
)
from keepword.domain.reachability import Refusal
from tests.fixtures.facts import message_facts

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DEFAULTS = ChaseSettings()
OWNER = "ann@example.com"
LEAD = "lead@example.com"
TEAM = ("ann@example.com", "bob@example.com")
BERLIN = ZoneInfo("Europe/Berlin")


class AlwaysOpen:
    """A 24/7 business clock: business minutes are wall minutes."""

    def add(self, start: datetime, minutes: float) -> datetime:
        return start + timedelta(minutes=minutes)

    def minutes_between(self, start: datetime, end: datetime) -> float:
        return max(0.0, (end - start) / timedelta(minutes=1))


CLOCK = AlwaysOpen()


@dataclass(frozen=True)
class FakeWindow:
    minutes: int
    due_at: datetime
    is_default: bool = False
    basis: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class FollowUpCase:
    id: int | None
    first_response_at: datetime | None


def window(clock: BusinessClock, now: datetime, minutes: int) -> FakeWindow:
    return FakeWindow(minutes, clock.add(now, minutes))


def promise(
    minutes: float = 1000,
    *,
    pid: int = 7,
    audience: PromiseAudience = PromiseAudience.CUSTOMER,
    made_at: datetime = T0,
    clock: BusinessClock = CLOCK,
) -> Promise:
    return Promise(
        id=pid,
        case_id=42,
        kind=PromiseKind.FIRST_RESPONSE
        if audience is PromiseAudience.CUSTOMER
        else PromiseKind.NEXT_RESPONSE,
        audience=audience,
        made_at=made_at,
        due_at=clock.add(made_at, minutes),
    )


def case(*promises: Promise, **changes: object) -> CaseSnapshot:
    snapshot = CaseSnapshot(
        id=42,
        reference="KW-42",
        status=CaseStatus.NEW,
        opened_at=T0,
        owner=OWNER,
        team=TEAM,
        lead=LEAD,
        customer_contacts_since_team_reply=1,
        promises=promises,
    )
    return replace(snapshot, **changes)  # type: ignore[arg-type]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def keys(actions: list[ChaseAction]) -> list[str]:
    return [a.key for a in actions]


# -- a small shell: applies a plan the way the service does ---------------------------


@dataclass
class Shell:
    snapshot: CaseSnapshot
    clock: BusinessClock = CLOCK
    chase: ChaseSettings = DEFAULTS
    update_minutes: int = 480
    done: set[str] = field(default_factory=set)
    log: list[tuple[datetime, ChaseAction]] = field(default_factory=list)
    next_id: int = 100

    def step(self, now: datetime) -> list[ChaseAction]:
        new_window = window(self.clock, now, self.update_minutes)
        actions = plan(
            self.snapshot,
            now,
            self.clock,
            self.chase,
            done=frozenset(self.done),
            new_window=new_window,
        )
        for action in actions:
            assert action.key not in self.done, "an action was planned twice"
            self.done.add(action.key)
            self.log.append((now, action))
            self._apply(action, now)
        return actions

    def _apply(self, action: ChaseAction, now: datetime) -> None:
        promises = {p.id: p for p in self.snapshot.promises}
        if isinstance(action, CustomerUpdate):
            new = replace(action.new_promise(now), id=self.next_id)
            self.next_id += 1
            old = promises[action.promise_id]
            if not action.late:
                promises[old.id] = supersede(old, self.next_id - 1, now)
            promises[new.id] = new
        elif isinstance(action, BreachRecord):
            old = promises[action.promise_id]
            promises[old.id] = break_if_due(old, now, announced=not action.silent)
        self.snapshot = replace(self.snapshot, promises=tuple(promises.values()))

    def reply(self, now: datetime) -> list[Promise]:
        resolved = on_staff_reply(self.snapshot.promises, now)
        by_id = {p.id: p for p in self.snapshot.promises} | {p.id: p for p in resolved}
        self.snapshot = replace(
            self.snapshot,
            status=CaseStatus.WAITING_ON_CUSTOMER,
            customer_contacts_since_team_reply=0,
            promises=tuple(by_id.values()),
        )
        return resolved

    def first(self, key_prefix: str) -> datetime | None:
        return next((t for t, a in self.log if a.key.startswith(key_prefix)), None)


# -- scenarios --------------------------------------------------------------------------


def test_a_case_answered_in_time_is_never_chased_and_the_promise_is_kept() -> None:
    shell = Shell(case(promise(1000)))
    for minute in range(0, 400):
        shell.step(at(minute))
    assert shell.log == []  # 40% elapsed: nothing due yet
    [kept] = shell.reply(at(400))
    assert kept.state is PromiseState.KEPT
    for minute in range(400, 1200, 5):
        shell.step(at(minute))
    assert shell.log == []  # waiting on the customer: the clock is paused


def test_a_case_nobody_answers_is_chased_then_the_customer_is_told_before_due() -> None:
    shell = Shell(case(promise(1000)))
    for minute in range(0, 1000):
        shell.step(at(minute))
    planned = [(int((t - T0) / timedelta(minutes=1)), a.key) for t, a in shell.log]
    assert planned == [
        (500, "reminder:case:42:promise:7:50"),
        (800, "reminder:case:42:promise:7:80"),
        (900, "update:case:42:promise:7"),  # lead = max(60, 10% of 1000) = 100 minutes
        (900, "escalation:case:42:promise:7"),
    ]
    reminder = shell.log[0][1]
    assert isinstance(reminder, Reminder) and reminder.recipients == (OWNER,)
    escalation = shell.log[3][1]
    assert isinstance(escalation, Escalation) and escalation.recipients == (LEAD,)
    assert escalation.trigger == "time"
    update = shell.log[2][1]
    assert isinstance(update, CustomerUpdate) and not update.late
    assert update.new_due_at == at(900 + 480) and update.old_due_at == at(1000)
    old, new = sorted(shell.snapshot.promises, key=lambda p: p.made_at)
    assert old.state is PromiseState.SUPERSEDED and old.superseded_by == new.id
    assert old.resolved_at is not None and old.resolved_at < old.due_at  # announced
    assert (new.kind, new.audience, new.state) == (
        PromiseKind.UPDATE,
        PromiseAudience.CUSTOMER,
        PromiseState.OPEN,
    )
    assert new.due_at == update.new_due_at  # the update's time, not its window's
    resolved = shell.reply(at(1010))
    assert [(p.id, p.state) for p in resolved] == [(new.id, PromiseState.KEPT)]
    assert all(p.state is not PromiseState.BROKEN for p in shell.snapshot.promises)


def test_escalation_at_its_own_point_when_it_comes_before_the_update_zone() -> None:
    shell = Shell(case(promise(1000)), chase=ChaseSettings(escalate_at=0.85))
    for minute in range(0, 1000):
        shell.step(at(minute))
    assert shell.first("escalation") == at(850)
    assert shell.first("update") == at(900)
    assert len([a for _, a in shell.log if isinstance(a, Escalation)]) == 1


def test_a_customer_who_writes_three_times_gets_the_lead_involved() -> None:
    p = promise(1000)
    assert plan(case(p, customer_contacts_since_team_reply=2), at(100), CLOCK, DEFAULTS) == []
    [action] = plan(case(p, customer_contacts_since_team_reply=3), at(100), CLOCK, DEFAULTS)
    assert isinstance(action, Escalation)
    assert (action.trigger, action.recipients, action.promise_id) == ("contacts", (LEAD,), 7)
    assert "3 times" in action.reason


def test_owner_ping_pong_escalates() -> None:
    [action] = plan(case(promise(1000), owner_changes=3), at(100), CLOCK, DEFAULTS)
    assert isinstance(action, Escalation) and action.trigger == "owners"


def test_a_contact_escalation_does_not_swallow_the_owners_reminder() -> None:
    snapshot = case(promise(1000), customer_contacts_since_team_reply=3)
    done = frozenset({"escalation:case:42:promise:7"})
    [action] = plan(snapshot, at(600), CLOCK, DEFAULTS, done=done)
    assert action.key == "reminder:case:42:promise:7:50"


@pytest.mark.parametrize("status", [CaseStatus.WAITING_ON_CUSTOMER, CaseStatus.CLOSED])
def test_no_chasing_while_waiting_on_the_customer_or_closed(status: CaseStatus) -> None:
    snapshot = case(promise(1000), status=status, customer_contacts_since_team_reply=5)
    for minute in (500, 950, 2000):
        assert (
            plan(snapshot, at(minute), CLOCK, DEFAULTS, new_window=window(CLOCK, at(0), 60)) == []
        )


def test_daemon_down_across_the_deadline_sends_one_honest_update_and_records_the_breach() -> None:
    shell = Shell(case(promise(1000)))
    shell.step(at(100))  # running normally, then down for a day
    actions = shell.step(at(1000 + 24 * 60))
    assert [type(a) for a in actions] == [BreachRecord, CustomerUpdate, Escalation]
    breach, update, escalation = actions
    assert isinstance(breach, BreachRecord) and breach.silent
    assert breach.reason.startswith("silent breach") and breach.due_at == at(1000)
    assert isinstance(update, CustomerUpdate) and update.late
    assert "missed" in update.new_promise(at(0)).reason
    assert isinstance(escalation, Escalation) and escalation.trigger == "breach"
    old = next(p for p in shell.snapshot.promises if p.id == 7)
    assert old.state is PromiseState.BROKEN and old.reason.startswith("silent breach")
    # the next chase finds only the new promise, freshly made: nothing stale to send
    assert shell.step(at(1000 + 24 * 60 + 1)) == []


def test_restart_after_the_reminders_points_sends_only_the_latest_reminder() -> None:
    actions = plan(case(promise(1000)), at(850), CLOCK, DEFAULTS)
    assert keys(actions) == ["reminder:case:42:promise:7:80"]


def test_restart_in_the_update_zone_sends_no_reminders() -> None:
    actions = plan(
        case(promise(1000)), at(950), CLOCK, DEFAULTS, new_window=window(CLOCK, at(950), 60)
    )
    assert keys(actions) == ["update:case:42:promise:7", "escalation:case:42:promise:7"]


def test_a_breach_after_an_announced_update_is_not_silent() -> None:
    done = frozenset({"update:case:42:promise:7", "escalation:case:42:promise:7"})
    [breach] = plan(case(promise(1000)), at(1001), CLOCK, DEFAULTS, done=done)
    assert isinstance(breach, BreachRecord) and not breach.silent


def test_the_plan_is_idempotent() -> None:
    snapshot = case(promise(1000), customer_contacts_since_team_reply=4)
    w = window(CLOCK, at(1500), 60)
    for minute in (100, 550, 850, 950, 1500):
        first = plan(snapshot, at(minute), CLOCK, DEFAULTS, new_window=w)
        assert first, minute
        assert plan(snapshot, at(minute), CLOCK, DEFAULTS, new_window=w) == first
        done = frozenset(keys(first))
        assert plan(snapshot, at(minute), CLOCK, DEFAULTS, done=done, new_window=w) == []


def test_keys_are_deterministic_and_name_the_promise() -> None:
    actions = plan(
        case(promise(1000)), at(2000), CLOCK, DEFAULTS, new_window=window(CLOCK, at(2000), 60)
    )
    assert keys(actions) == [
        "breach:case:42:promise:7",
        "update:case:42:promise:7",
        "escalation:case:42:promise:7",
    ]
    assert {promise_id_of(k) for k in keys(actions)} == {7}
    assert promise_id_of("reminder:case:42:promise:7:50") == 7
    assert promise_id_of("escalation:case:42:unpromised") is None
    assert promise_id_of("ack:case:42:promise:x") is None
    assert promise_id_of("something else") is None


def test_team_targets_get_reminders_and_escalation_but_no_customer_update() -> None:
    team_target = promise(1000, audience=PromiseAudience.TEAM)
    w = window(CLOCK, at(0), 60)
    assert keys(plan(case(team_target), at(500), CLOCK, DEFAULTS, new_window=w)) == [
        "reminder:case:42:promise:7:50"
    ]
    assert keys(plan(case(team_target), at(880), CLOCK, DEFAULTS, new_window=w)) == [
        "reminder:case:42:promise:7:80"
    ]
    assert keys(plan(case(team_target), at(950), CLOCK, DEFAULTS, new_window=w)) == [
        "escalation:case:42:promise:7"
    ]
    actions = plan(case(team_target), at(1100), CLOCK, DEFAULTS, new_window=w)
    assert [type(a) for a in actions] == [BreachRecord, Escalation]
    assert isinstance(actions[0], BreachRecord) and not actions[0].silent


def test_a_team_target_has_no_update_zone() -> None:
    team_target = promise(1000, audience=PromiseAudience.TEAM)
    late_escalation = ChaseSettings(escalate_at=0.95)
    actions = plan(
        case(team_target), at(920), CLOCK, late_escalation, new_window=window(CLOCK, at(0), 60)
    )
    assert keys(actions) == ["reminder:case:42:promise:7:80"]


def test_without_owner_or_lead_the_whole_team_is_told() -> None:
    snapshot = case(promise(1000), owner=None, lead=None)
    [reminder] = plan(snapshot, at(500), CLOCK, DEFAULTS)
    assert isinstance(reminder, Reminder) and reminder.recipients == TEAM
    [escalation] = plan(snapshot, at(900), CLOCK, DEFAULTS)
    assert isinstance(escalation, Escalation) and escalation.recipients == TEAM


def test_without_a_new_window_no_update_is_planned() -> None:
    assert keys(plan(case(promise(1000)), at(950), CLOCK, DEFAULTS)) == [
        "escalation:case:42:promise:7"
    ]
    assert keys(plan(case(promise(1000)), at(1001), CLOCK, DEFAULTS)) == [
        "breach:case:42:promise:7",
        "escalation:case:42:promise:7",
    ]


def test_a_short_window_is_not_revised_in_its_first_half() -> None:
    assert update_lead_minutes(60, DEFAULTS) == 30
    assert update_lead_minutes(480, DEFAULTS) == 60
    assert update_lead_minutes(2400, DEFAULTS) == 240
    p = promise(60)
    w = window(CLOCK, at(0), 60)
    assert plan(case(p), at(29), CLOCK, DEFAULTS, new_window=w) == []
    assert "update:case:42:promise:7" in keys(plan(case(p), at(30), CLOCK, DEFAULTS, new_window=w))


def test_a_new_estimate_always_ends_after_the_old_due_time() -> None:
    p = promise(1000)
    early = FakeWindow(30, at(930))  # the history says 30 min: not a revision of due 1000
    [update, _] = plan(case(p), at(910), CLOCK, DEFAULTS, new_window=early)
    assert isinstance(update, CustomerUpdate) and update.new_due_at == at(1030)


def test_a_promise_due_when_made_is_due_at_once() -> None:
    p = promise(0)
    w = window(CLOCK, at(0), 60)
    assert keys(plan(case(p), at(0), CLOCK, DEFAULTS, new_window=w)) == [
        "update:case:42:promise:7",
        "escalation:case:42:promise:7",
    ]


def test_a_case_without_a_promise_escalates_once_on_contacts() -> None:
    assert plan(case(), at(100), CLOCK, DEFAULTS) == []
    [action] = plan(case(customer_contacts_since_team_reply=3), at(100), CLOCK, DEFAULTS)
    assert action.key == "escalation:case:42:unpromised" and "no promise" in action.reason
    done = frozenset({action.key})
    assert (
        plan(case(customer_contacts_since_team_reply=4), at(200), CLOCK, DEFAULTS, done=done) == []
    )


def test_resolved_promises_are_not_chased() -> None:
    kept = replace(promise(1000), state=PromiseState.KEPT)
    assert plan(case(kept), at(950), CLOCK, DEFAULTS, new_window=window(CLOCK, at(0), 60)) == []


def test_promises_are_chased_oldest_due_first() -> None:
    later = promise(2000, pid=9)
    sooner = promise(1000, pid=8)
    assert keys(plan(case(later, sooner), at(1000), CLOCK, DEFAULTS)) == [
        "escalation:case:42:promise:8",
        "reminder:case:42:promise:9:50",
    ]


def test_a_snapshot_of_a_stored_case() -> None:
    state = CaseState(
        id=42,
        mailbox="support",
        reference="KW-42",
        status=CaseStatus.WAITING_ON_TEAM,
        opened_at=T0,
        updated_at=T0,
        owner=OWNER,
        owner_changes=2,
        unanswered_contacts=3,
    )
    snapshot = CaseSnapshot.of(state, [promise(1000)], team=list(TEAM), lead=LEAD)
    assert snapshot == case(
        promise(1000),
        status=CaseStatus.WAITING_ON_TEAM,
        owner_changes=2,
        customer_contacts_since_team_reply=3,
        mailbox="support",
    )
    with pytest.raises(ValueError, match="not stored"):
        CaseSnapshot.of(replace(state, id=None), [], team=TEAM, lead=None)


def test_unstored_promises_are_refused() -> None:
    with pytest.raises(ValueError, match="stored promises"):
        plan(case(replace(promise(1000), id=None)), at(500), CLOCK, DEFAULTS)


# -- with the real business calendar ------------------------------------------------------


def office(*holidays: date) -> BusinessCalendar:
    return BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)}, holidays=holidays)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def run(shell: Shell, start: datetime, end: datetime, step_minutes: int = 1) -> None:
    now = start
    while now <= end:
        shell.step(now)
        now += timedelta(minutes=step_minutes)


def test_a_weekend_in_the_window_does_not_move_the_chase() -> None:
    cal = office()
    made = local(2026, 11, 27, 15, 0)  # Friday 15:00, 8 business hours: due Monday 15:00
    p = promise(480, made_at=made, clock=cal)
    assert p.due_at == local(2026, 11, 30, 15, 0)
    shell = Shell(case(p), clock=cal)
    run(shell, made, p.due_at)
    assert shell.first("reminder:case:42:promise:7:50") == local(2026, 11, 30, 11, 0)
    assert shell.first("reminder:case:42:promise:7:80") == local(2026, 11, 30, 13, 24)
    assert shell.first("update") == local(2026, 11, 30, 14, 0)  # one business hour before
    assert shell.first("escalation") == local(2026, 11, 30, 14, 0)
    assert all(t.weekday() < 5 for t, _ in shell.log)


def test_a_public_holiday_in_the_window_does_not_move_the_chase() -> None:
    cal = office(date(2026, 11, 24))  # Tuesday off
    made = local(
        2026, 11, 23, 13, 0
    )  # Monday 13:00 + 8 h: Mon 13-17, Wed 9-13; 80% = Mon 4 h + Wed 2:24
    p = promise(480, made_at=made, clock=cal)
    assert p.due_at == local(2026, 11, 25, 13, 0)
    shell = Shell(case(p), clock=cal)
    run(shell, made, p.due_at, step_minutes=2)
    assert shell.first("reminder:case:42:promise:7:50") == local(2026, 11, 23, 17, 0)
    assert shell.first("reminder:case:42:promise:7:80") == local(2026, 11, 25, 11, 24)
    assert shell.first("update") == local(2026, 11, 25, 12, 0)
    assert not any(t.date() == date(2026, 11, 24) for t, _ in shell.log)


def test_the_daemon_stopped_over_a_weekend_across_a_deadline() -> None:
    cal = office()
    made = local(2026, 11, 27, 10, 0)  # Friday 10:00 + 8 h: due Monday 10:00
    p = promise(480, made_at=made, clock=cal)
    shell = Shell(case(p), clock=cal)
    run(shell, made, local(2026, 11, 27, 14, 0))  # 50% reminder Friday 14:00, then down
    assert [a.key for _, a in shell.log] == ["reminder:case:42:promise:7:50"]
    restart = local(2026, 11, 30, 11, 30)
    actions = shell.step(restart)
    assert [type(a) for a in actions] == [BreachRecord, CustomerUpdate, Escalation]
    update = actions[1]
    assert isinstance(update, CustomerUpdate) and update.late
    assert update.new_due_at == cal.add(restart, 480)
    run(shell, restart + timedelta(minutes=1), local(2026, 11, 30, 17, 0))
    # nothing stale afterwards: only the new promise's own 50% reminder (11:30 + 4 h)
    assert [(t, a.key) for t, a in shell.log[4:]] == [
        (local(2026, 11, 30, 15, 30), "reminder:case:42:promise:100:50")
    ]


def test_a_follow_up_after_a_reply_is_chased_internally_only() -> None:
    shell = Shell(case(promise(1000)))
    shell.reply(at(100))
    target = on_customer_follow_up(
        FollowUpCase(42, at(100)), shell.snapshot.promises, at(200), window(CLOCK, at(200), 600)
    )
    [team_target] = [replace(p, id=8) for p in target]
    shell.snapshot = replace(
        shell.snapshot,
        status=CaseStatus.WAITING_ON_TEAM,
        customer_contacts_since_team_reply=1,
        promises=(*shell.snapshot.promises, team_target),
    )
    for minute in range(200, 1000):
        shell.step(at(minute))
    planned = [(int((t - T0) / timedelta(minutes=1)), a.key) for t, a in shell.log]
    assert planned == [
        (500, "reminder:case:42:promise:8:50"),
        (680, "reminder:case:42:promise:8:80"),
        (740, "escalation:case:42:promise:8"),
        (801, "breach:case:42:promise:8"),
    ]
    breach = shell.log[-1][1]
    assert isinstance(breach, BreachRecord) and not breach.silent
    assert not any(isinstance(a, CustomerUpdate) for _, a in shell.log)


# -- the invariant: never a silent breach when the chase runs often enough -----------------


def assert_never_silent(shell: Shell) -> None:
    breaches = [a for _, a in shell.log if isinstance(a, BreachRecord)]
    assert breaches == []
    for p in shell.snapshot.promises:
        if p.state is PromiseState.SUPERSEDED:
            assert p.resolved_at is not None and p.resolved_at < p.due_at
    updates = [(t, a) for t, a in shell.log if isinstance(a, CustomerUpdate)]
    assert updates, "a promise that ran out was never revised"
    for t, update in updates:
        assert t < update.old_due_at and not update.late


@settings(max_examples=60, deadline=None)
@given(
    step=st.integers(1, 30),
    data=st.data(),
)
def test_invariant_a_customer_promise_is_revised_before_it_breaks(
    step: int, data: st.DataObject
) -> None:
    minutes = data.draw(st.integers(2 * step, 3000), label="window")
    update_minutes = data.draw(st.integers(2 * step, 3000), label="update window")
    offset = data.draw(st.integers(0, step - 1), label="first chase after")
    shell = Shell(case(promise(minutes)), update_minutes=update_minutes)
    run(shell, at(offset), at(minutes + 2 * update_minutes), step)
    assert_never_silent(shell)


@settings(max_examples=25, deadline=None)
@given(
    step=st.integers(1, 30),
    start=st.datetimes(
        min_value=datetime(2026, 12, 18), max_value=datetime(2027, 1, 8), timezones=st.just(UTC)
    ),
    data=st.data(),
)
def test_invariant_holds_across_nights_weekends_and_holidays(
    step: int, start: datetime, data: st.DataObject
) -> None:
    cal = office(date(2026, 12, 24), date(2026, 12, 25), date(2026, 12, 31), date(2027, 1, 1))
    minutes = data.draw(st.integers(2 * step, 1500), label="window")
    p = promise(minutes, made_at=start, clock=cal)
    shell = Shell(case(p), clock=cal, update_minutes=data.draw(st.integers(2 * step, 960)))
    run(shell, start, p.due_at + timedelta(minutes=1), step)
    assert_never_silent(shell)


# -- a missed chase step never skips the update zone ----------------------------------------


def test_one_missed_chase_step_still_leaves_a_step_in_the_update_zone() -> None:
    """A two-minute promise (made half a minute after a step): half of it is one minute,
    less than the gap one missed step leaves; the zone is at least two chase intervals."""
    p = promise(2, made_at=at(0.5))
    shell = Shell(case(p))
    for minute in (0, 1, 3, 4):  # the step at minute 2 was missed
        shell.step(at(minute))
    assert not any(isinstance(a, BreachRecord) for _, a in shell.log)
    assert shell.first("update") == at(1)


def test_the_update_lead_is_at_least_two_chase_intervals() -> None:
    slow = ChaseSettings(interval_seconds=300)
    assert update_lead_minutes(12, slow) == 10  # half would be 6: less than two steps
    assert update_lead_minutes(6, slow) == 6  # never more than the whole promise
    assert update_lead_minutes(480, slow) == 60
    assert update_lead_minutes(8, DEFAULTS) == 4


# -- five business days, a weekend and a public holiday, a chase every minute --------------


def test_a_week_nobody_answers_every_promise_is_revised_before_due() -> None:
    """Thursday to the next Thursday (Tuesday a public holiday): five business days.
    The chase runs every 60 s, except that now and then one step is missed. Every
    customer promise gets its reminders, the lead and an update before it is due; no
    breach at all; nothing happens outside business hours."""
    holiday = date(2026, 11, 24)
    cal = office(holiday)
    made = local(2026, 11, 19, 9, 0)
    first = promise(480, made_at=made, clock=cal)
    shell = Shell(case(first), clock=cal)
    now, end, step = made, local(2026, 11, 26, 17, 0), 0
    while now <= end:
        if step % 47 != 46:  # one missed step in 47
            shell.step(now)
        now += timedelta(minutes=1)
        step += 1

    assert not any(isinstance(a, BreachRecord) for _, a in shell.log)
    revised = [p for p in shell.snapshot.promises if p.state is PromiseState.SUPERSEDED]
    assert len(revised) >= 4
    for p in revised:
        mine = [(t, a) for t, a in shell.log if promise_id_of(a.key) == p.id]
        kinds = [type(a).__name__ for _, a in mine]
        assert kinds == ["Reminder", "Reminder", "CustomerUpdate", "Escalation"], kinds
        assert all(t < p.due_at for t, _ in mine)
        assert p.resolved_at is not None and p.resolved_at < p.due_at
    for t, _ in shell.log:
        assert t.weekday() < 5 and t.date() != holiday and time(9) <= t.time() <= time(17)
    [still_open] = [p for p in shell.snapshot.promises if p.is_open]
    assert still_open.due_at > end


# -- no updates to robots or another keepword ------------------------------------------------

OWN = frozenset({"support@example.com"})


def facts(sender: str, subject: str = "Re: Help", **headers: str) -> MessageFacts:
    return message_facts(
        sender,
        subject=subject,
        headers={k.lower().replace("_", "-"): (v,) for k, v in headers.items()},
    )


def test_another_keepword_gets_no_update() -> None:
    seen = [facts("help@other.example", X_Keepword_Loop="help@other.example")]
    why = update_refusal("help@other.example", seen, OWN)
    assert why is not None and "another keepword installation" in why


def test_robots_get_no_update() -> None:
    assert update_refusal("noreply@shop.example", [], OWN) is not None
    ticket = facts("t@c.example", "Ticket 7 opened", Auto_Submitted="auto-replied")
    assert "robot" in (update_refusal("T@C.example", [ticket], OWN) or "")
    listed = facts("news@l.example", List_Id="<news.l.example>")
    assert update_refusal("news@l.example", [listed], OWN) is not None


def test_people_get_their_update() -> None:
    person = "ann@example.org"
    assert update_refusal(person, [], OWN) is None
    away = facts(person, "Out of office: Help", Auto_Submitted="auto-replied")
    ours = facts(person, X_Keepword_Loop="support@example.com")  # our own mail, seen again
    someone_else = facts("bot@x.example", Auto_Submitted="auto-generated")
    plain = facts(person)
    assert update_refusal(person, [away, ours, someone_else, plain], OWN) is None


# -- rule 7: the team hears of a customer mail the relay refused for good ----------------


def test_the_owner_hears_once_of_each_refused_mail() -> None:
    refused = Refusal(5, "ann@example.org", "acknowledgement", "550 no such user", T0, case_id=42)
    other = replace(refused, outbox_id=6, case_id=43)
    snapshot = case(promise(), refusals=(refused, other))
    notices = [
        a for a in plan(snapshot, at(1), CLOCK, DEFAULTS) if isinstance(a, UnreachableNotice)
    ]
    assert [(n.key, n.recipients) for n in notices] == [("unreachable:case:42:outbox:5", (OWNER,))]
    assert "550 no such user" in notices[0].reason
    again = plan(snapshot, at(2), CLOCK, DEFAULTS, done=frozenset(keys(notices)))
    assert not any(isinstance(a, UnreachableNotice) for a in again)
    unowned = plan(replace(snapshot, owner=None), at(1), CLOCK, DEFAULTS)
    assert [a.recipients for a in unowned if isinstance(a, UnreachableNotice)] == [TEAM]
    closed = replace(snapshot, status=CaseStatus.CLOSED)
    assert plan(closed, at(1), CLOCK, DEFAULTS) == []
