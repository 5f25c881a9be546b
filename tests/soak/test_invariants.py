"""The soak's checks on hand-made records: each must be able to fail (pure, no servers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tests.soak.driver import DaemonLife, FaultWindow, JobSample, SoakRecord
from tests.soak.invariants import (
    MAX_BACKOFF,
    Finding,
    _expect,
    _most_in,
    _promise_problem,
    answered_before_ack,
    base_tolerance,
    harness_allowance,
    lease_wait,
    no_address_over_its_limits,
    no_job_starved,
    refusal_problems,
    tolerance,
)
from tests.soak.relay import RelayedMail
from tests.soak.traffic import make_plan

T0 = datetime(2026, 4, 27, 8, 0, tzinfo=UTC)


def record() -> SoakRecord:
    plan = make_plan(1, business_days=1, customers_per_day=1, kills=0)
    made = SoakRecord(plan, speed=1000)
    made.finished_at = plan.end
    return made


def relayed(at: datetime, kind: str, rcpt: str, case: str = "KW-1") -> RelayedMail:
    return RelayedMail(0.0, at, "kw@example.com", (rcpt,), b"", "id", kind, case, "s", None)


@dataclass
class PromiseRow:
    state: str
    due_at: datetime
    made_at: datetime = T0
    resolved_at: datetime | None = None
    id: int = 1
    reference: str = "KW-1"


def sampled(made: SoakRecord, stamps: list[datetime]) -> None:
    """The harness looked at these times (and nowhere between them)."""
    made.samples = [JobSample(at, T0 - timedelta(days=1), ()) for at in stamps]


def every_minute(start: datetime, end: datetime) -> list[datetime]:
    return [start + timedelta(minutes=m) for m in range(int((end - start) / timedelta(minutes=1)))]


def test_sliding_window_counts_the_busiest_span() -> None:
    stamps = [T0 + timedelta(minutes=m) for m in (0, 20, 40, 59, 61, 200)]
    assert _most_in(stamps, timedelta(hours=1)) == 4
    assert _most_in(stamps, timedelta(minutes=1)) == 1


def test_a_fourth_automatic_mail_in_an_hour_is_a_violation() -> None:
    made = record()
    made.relayed = [
        relayed(T0 + timedelta(minutes=m), "acknowledgement", "a@x.org") for m in range(4)
    ]
    assert no_address_over_its_limits(made, None).violations == [  # type: ignore[arg-type]
        "a@x.org: 4 automatic mails in one hour"
    ]
    made.relayed = made.relayed[:3]
    assert not no_address_over_its_limits(made, None).violations  # type: ignore[arg-type]


def test_promises_kept_told_in_time_or_broken_loudly_pass_and_silence_does_not() -> None:
    due = T0 + timedelta(hours=8)
    before, after = (
        [relayed(due - timedelta(hours=1), "customer_update", "c@x.org")],
        [relayed(due + timedelta(hours=1), "customer_update", "c@x.org")],
    )
    made = record()
    assert _promise_problem(made, PromiseRow("kept", due, resolved_at=due), []) is None
    assert _promise_problem(made, PromiseRow("superseded", due), before) is None
    assert _promise_problem(made, PromiseRow("broken", due), after) is None
    assert "reached the relay" in str(_promise_problem(made, PromiseRow("superseded", due), after))
    assert "without an update" in str(_promise_problem(made, PromiseRow("broken", due), []))
    assert "past its due time" in str(_promise_problem(made, PromiseRow("open", due), []))


def test_a_job_that_stops_running_is_starved_unless_a_fault_explains_it() -> None:
    made = record()
    born = T0 - timedelta(hours=1)
    made.samples = [
        JobSample(T0 + timedelta(minutes=m), born, (("chase", 60.0, T0),)) for m in range(0, 60, 5)
    ]
    found = no_job_starved(made, None)  # type: ignore[arg-type]
    assert found.violations and found.violations[0].startswith("chase: not run for")
    made.faults = [FaultWindow("dovecot", T0, T0 + timedelta(hours=1))]
    assert not no_job_starved(made, None).violations  # type: ignore[arg-type]


def test_a_pass_half_done_after_the_harness_stood_still_is_not_starvation() -> None:
    """The machine stood still for 4 virtual hours (a few real seconds): the first sample
    after it sees the new pass's poll, not yet its chase. Starvation is judged after that."""
    made = record()
    born, stall = T0 - timedelta(hours=1), T0 + timedelta(hours=4)

    def chase_at(at: datetime, ran_after_stall: bool) -> JobSample:
        chase = at if ran_after_stall else T0
        return JobSample(at, born, (("poll", 60.0, at), ("chase", 60.0, chase)))

    made.samples = [
        chase_at(T0, True),
        chase_at(stall, False),
        chase_at(stall + timedelta(minutes=1), True),
    ]
    assert not no_job_starved(made, None).violations  # type: ignore[arg-type]
    still = record()
    # Looked every 5 minutes after the stall, and the chase never ran again.
    still.samples = [chase_at(T0, True)] + [
        chase_at(stall + timedelta(minutes=m), False) for m in range(0, 61, 5)
    ]
    found = no_job_starved(still, None).violations  # type: ignore[arg-type]
    assert found and found[0].startswith("chase: not run for"), found


def test_a_restarted_daemon_must_poll_within_the_take_over_bound_not_two_intervals() -> None:
    made = record()
    first, restart = T0 - timedelta(hours=5), T0
    made.lives = [DaemonLife(first, restart), DaemonLife(restart, restart + timedelta(hours=5))]
    slow_start = restart + timedelta(minutes=40)  # 2.4 real s at speed 1000: start-up

    def last_poll(at: datetime) -> datetime:  # every minute once started, before: the old life
        return at.replace(second=0) if at >= slow_start else first

    made.samples = [
        JobSample(at, restart, (("poll", 60.0, last_poll(at)),))
        for at in (restart + timedelta(minutes=m) for m in range(5, 120, 5))
    ]
    assert not no_job_starved(made, None).violations  # type: ignore[arg-type]
    never = record()
    never.lives = made.lives
    never.samples = [
        JobSample(restart + timedelta(hours=h), restart, (("poll", 60.0, first),))
        for h in range(1, 5)
    ]
    found = no_job_starved(never, None).violations  # type: ignore[arg-type]
    assert any("first poll never" in v for v in found)


def test_an_acknowledgement_withdrawn_is_excused_only_by_a_team_reply_in_time() -> None:
    queued, drain = T0, timedelta(minutes=3)
    before = T0 - timedelta(minutes=20)  # answered from Sent while keepword was down
    assert answered_before_ack("withdrawn", queued, before, drain)
    assert answered_before_ack("withdrawn", queued, queued + drain, drain)
    assert not answered_before_ack("withdrawn", queued, None, drain)  # nobody answered
    assert not answered_before_ack("withdrawn", queued, queued + 2 * drain, drain)  # too late
    assert not answered_before_ack("pending", queued, before, drain)
    assert not answered_before_ack("sent", queued, before, drain)


def test_a_promise_withdrawn_in_time_is_fine_and_an_update_never_relayed_is_not() -> None:
    """A customer the relay refuses: the promise is withdrawn (a team target replaces it)
    long before it is due; superseding it with an update that never reaches the relay
    is a silent breach, refused address or not."""
    made, due = record(), T0 + timedelta(hours=8)
    withdrawn = PromiseRow("withdrawn", due, resolved_at=T0 + timedelta(minutes=1))
    assert _promise_problem(made, withdrawn, []) is None
    late = PromiseRow("withdrawn", due, resolved_at=due + timedelta(hours=1))
    assert "only at" in str(_promise_problem(made, late, []))
    early = PromiseRow("superseded", due, resolved_at=due - timedelta(hours=1))
    assert "reached the relay never" in str(_promise_problem(made, early, []))


def test_a_fault_that_begins_within_another_faults_allowance_is_owed_too() -> None:
    made, due = record(), T0
    base = base_tolerance(made)
    assert tolerance(made, due) == base  # no fault: the base
    first = FaultWindow("credential", due - timedelta(minutes=15), due + timedelta(hours=2))
    made.faults = [first]
    alone = tolerance(made, due)
    assert alone == base + (first.end + MAX_BACKOFF - first.start)  # type: ignore[operator]
    # Starts after the base allowance, inside the one the first fault added.
    later = FaultWindow("slow", due + timedelta(hours=1), due + timedelta(hours=2, minutes=40))
    made.faults = [first, later]
    assert tolerance(made, due) == alone + (later.end + MAX_BACKOFF - later.start)  # type: ignore[operator]
    # One beyond every allowance changes nothing.
    made.faults = [
        first,
        FaultWindow("kill", due + timedelta(days=1), due + timedelta(days=1, hours=1)),
    ]
    assert tolerance(made, due) == alone


def test_an_update_to_a_refused_address_is_a_violation_unless_it_wrote_since() -> None:
    refused, allowed = T0, timedelta(minutes=5)
    told = [T0 + timedelta(minutes=1)]
    update = T0 + timedelta(hours=3)
    assert refusal_problems(refused, [], [], told, [], allowed) == []
    [problem] = refusal_problems(refused, [update], [T0 - timedelta(minutes=1)], told, [], allowed)
    assert problem.startswith("customer update queued")
    wrote = [T0 + timedelta(hours=1)]
    assert refusal_problems(refused, [update], wrote, told, [], allowed) == []


def test_the_team_must_hear_of_a_refusal_in_time_unless_it_answered() -> None:
    refused, allowed = T0, timedelta(minutes=5)
    late = [T0 + timedelta(minutes=6)]
    [problem] = refusal_problems(refused, [], [], late, [], allowed)
    assert problem.startswith("team not told by")
    assert refusal_problems(refused, [], [], [], [T0 + timedelta(minutes=2)], allowed) == []
    long_ago = [T0 - timedelta(hours=2)]  # an answer before the refusal excuses nothing
    assert refusal_problems(refused, [], [], [], long_ago, allowed) != []


def test_the_time_the_harness_stood_still_is_owed_to_a_timed_mail() -> None:
    """Its relay stood still with it: a mail the daemon sent then is received after."""
    made, due = record(), T0
    base = base_tolerance(made)
    sampled(made, every_minute(due - timedelta(hours=1), due + timedelta(hours=3)))
    assert tolerance(made, due) == base  # looked every minute: nothing owed
    frozen = (due + timedelta(minutes=5), due + timedelta(minutes=55))  # 3 s real at 1000
    stamps = every_minute(due - timedelta(hours=1), due + timedelta(hours=3))
    sampled(made, [at for at in stamps if not frozen[0] < at < frozen[1]])
    assert frozen[1] - frozen[0] > harness_allowance(made)
    assert tolerance(made, due) == base + (frozen[1] - frozen[0])
    # A stall far beyond the window changes nothing.
    sampled(
        made, [at for at in stamps if not due + timedelta(hours=2) < at < due + timedelta(hours=3)]
    )
    assert tolerance(made, due) == base


def test_a_later_stage_stands_in_for_a_reminder_only_after_the_harness_stood_still() -> None:
    """The chase that runs after a stall sends the latest stage due (a missed reminder is
    stale); without a stall, an escalation is no reminder."""
    made, planned = record(), T0
    horizon = T0 + timedelta(days=1)
    row = PromiseRow("open", T0 + timedelta(hours=8))
    escalated = relayed(planned + timedelta(minutes=10), "escalation", "lead@x.org")
    stages = {"KW-1": [escalated]}
    stamps = every_minute(T0 - timedelta(hours=1), T0 + timedelta(hours=3))
    sampled(made, stamps)
    found = Finding("chase")
    assert _expect(found, made, row, planned, horizon, ({}, stages), "reminder") == 1
    assert found.violations and "reminder planned" in found.violations[0]
    frozen = (planned + timedelta(minutes=2), planned + timedelta(minutes=38))
    sampled(made, [at for at in stamps if not frozen[0] < at < frozen[1]])
    found = Finding("chase")
    assert _expect(found, made, row, planned, horizon, ({}, stages), "reminder") == 1
    assert not found.violations
    assert found.figures["later stage"] == 1
    # Nothing at all after the stall is still a violation.
    found = Finding("chase")
    _expect(found, made, row, planned, horizon, ({}, {}), "reminder")
    assert found.violations


def test_a_starved_job_says_whether_its_last_run_was_still_going() -> None:
    made = record()
    born = T0 - timedelta(hours=1)
    made.samples = [
        JobSample(T0 + timedelta(minutes=m), born, (("chase", 60.0, T0),), {"chase": finish})
        for m in range(0, 60, 5)
        for finish in [T0 - timedelta(minutes=1)]
    ]
    [still] = no_job_starved(made, None).violations  # type: ignore[arg-type]
    assert "still going" in still
    for sample in made.samples:
        sample.finished = {"chase": T0 + timedelta(seconds=2)}
    [done] = no_job_starved(made, None).violations  # type: ignore[arg-type]
    assert "its last run took 0:00:02" in done


def test_on_postgresql_a_killed_daemons_lease_wait_is_owed_after_the_kill() -> None:
    """The lease of a SIGKILLed holder expires in real seconds: at speed 1000, hours."""
    made, at = record(), T0 + timedelta(hours=2)
    made.faults = [FaultWindow("kill", T0, T0 + timedelta(minutes=10))]
    assert tolerance(made, at) == base_tolerance(made)  # SQLite: the kill is long over
    made.database_url = "postgresql+psycopg://kw@127.0.0.1/kw"
    assert lease_wait(made) == timedelta(hours=5, minutes=33, seconds=20)  # 20 s real
    assert tolerance(made, at) == base_tolerance(made) + lease_wait(made)
    # Faults that do not kill the daemon leave its lease alone.
    made.faults = [FaultWindow("outage", T0, T0 + timedelta(minutes=10))]
    assert tolerance(made, at) == base_tolerance(made)
