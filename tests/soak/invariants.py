"""What keepword promised, checked against the store and against what the relay received.

Each invariant is a small function of the soak's record and a read-only connection to
the store; it returns a `Finding`: the figures worth printing and the violations, one
line each, so a failing soak says exactly which case, mail or job broke which word.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, Row, func, select

from keepword.config import ChaseSettings, LimitSettings
from keepword.domain.chase import update_lead_minutes
from keepword.store.leases import LEASE_SECONDS, RENEW_SECONDS
from keepword.store.tables import address_refusal, case, message, message_content, outbox, promise
from tests.soak import traffic
from tests.soak.driver import JobSample, SoakRecord, store_engine
from tests.soak.relay import RelayedMail

CHASE = ChaseSettings()  # the shipped defaults: the soak's config tunes nothing
LIMITS = LimitSettings()
POLL_INTERVAL = 60.0
MAX_BACKOFF = timedelta(minutes=15)  # daemon MAILBOX_RETRY cap: recovery after a fault
DUE_SLACK = timedelta(minutes=1)


@dataclass
class Finding:
    name: str
    figures: dict[str, object] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


Invariant = Callable[[SoakRecord, Connection], Finding]


# -- helpers -----------------------------------------------------------------------------


HARNESS_REAL_SECONDS = 1.5
"""Real time the machine may cost a daemon's cycle (start-up, a busy shared CPU): at
speed 3000 and 1200 the lateness of timed mails and the job gaps stayed near 0.3-0.65 s
*real* at both speeds, i.e. they come from real-time costs, not from keepword's plan. A
CI machine under load later showed daemon gaps of 0.8-1.3 s real (and a harness turn of
1.4 s) at speed 2000, where the daemon alone needs 75% of a core: the short soak now
runs at 1000 with 1.5 s, the same 25 virtual minutes as 0.75 s at 2000."""


def harness_allowance(record: SoakRecord) -> timedelta:
    """Virtual time HARNESS_REAL_SECONDS are worth at the run's speed."""
    return timedelta(seconds=HARNESS_REAL_SECONDS * record.speed)


def base_tolerance(record: SoakRecord) -> timedelta:
    # Two chase intervals plus a drain interval plus the harness's jitter.
    return timedelta(seconds=2 * CHASE.interval_seconds + 10) + harness_allowance(record)


KILLING_FAULTS = frozenset({"kill", "credential"})  # both SIGKILL the daemon at their start


def lease_wait(record: SoakRecord) -> timedelta:
    """On PostgreSQL a SIGKILLed daemon's mailbox lease is taken over only once it expired
    (store.leases: at most LEASE_SECONDS + RENEW_SECONDS, by the database's real clock):
    a few real seconds, worth hours at the soak's speed. SQLite has no lease to wait for."""
    if getattr(record, "database_url", None) is None:
        return timedelta()
    return timedelta(seconds=(LEASE_SECONDS + RENEW_SECONDS) * record.speed)


def fault_slack(record: SoakRecord, start: datetime, end: datetime) -> timedelta:
    """Extra time owed to faults (plus the backoff after them) overlapping [start, end]."""
    slack = timedelta()
    for window in record.faults:
        stop = (window.end or record.finished_at or end) + MAX_BACKOFF
        if window.kind in KILLING_FAULTS:
            stop = max(stop, window.start + lease_wait(record))
        if window.start <= end and stop >= start:
            slack += stop - window.start
    return slack


def blind_spans(record: SoakRecord) -> list[tuple[datetime, datetime]]:
    """Where the harness took no sample for longer than its allowance: the machine (or a
    step of the harness) stood still. What the first sample after such a span sees is a
    pass of the daemon half done (its poll comes first), not evidence of starvation."""
    allowance = harness_allowance(record)
    stamps = [sample.at for sample in record.samples]
    return [(a, b) for a, b in pairwise(stamps) if b - a > allowance]


def _blind_within(
    spans: list[tuple[datetime, datetime]], start: datetime, end: datetime
) -> timedelta:
    return sum(
        (min(b, end) - max(a, start) for a, b in spans if a < end and b > start), timedelta()
    )


def tolerance(record: SoakRecord, at: datetime) -> timedelta:
    """How late a mail due `at` may reach the relay: the base, plus the time owed to every
    fault within that allowance, including faults that begin in the time another fault
    already added (a relay gone slow just as the daemon came back from a bad password),
    plus the time the harness stood still in it (its relay stood still too)."""
    base = allowed = base_tolerance(record)
    blind = blind_spans(record)
    while (
        grown := base
        + fault_slack(record, at, at + allowed)
        + _blind_within(blind, at, at + allowed)
    ) > allowed:
        allowed = grown
    return allowed


def relayed_by_case(record: SoakRecord, kind: str) -> dict[str, list[RelayedMail]]:
    found: dict[str, list[RelayedMail]] = defaultdict(list)
    for mail in record.relayed:
        if mail.kind == kind and mail.case:
            found[mail.case].append(mail)
    return found


def driver_ids(record: SoakRecord, kinds: Iterable[str] | None = None) -> dict[str, str]:
    wanted = set(kinds) if kinds is not None else None
    return {a.message_id: a.kind for a in record.appended if wanted is None or a.kind in wanted}


# -- the invariants ----------------------------------------------------------------------


def each_message_stored_once(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("each message stored once")
    counts = Counter(
        str(row.message_id)
        for row in conn.execute(select(message.c.message_id).where(~message.c.message_id_derived))
    )
    ours = driver_ids(record)
    for message_id, count in counts.items():
        if count > 1:
            finding.violations.append(f"{message_id} stored {count} times")
    missing = [m for m in ours if m not in counts]
    for message_id in missing:
        finding.violations.append(f"{message_id} ({ours[message_id]}) never stored")
    finding.figures = {
        "stored": sum(counts.values()),
        "appended by the soak": len(ours),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": len(missing),
    }
    return finding


def one_acknowledgement_per_case(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("each customer case exactly one acknowledgement")
    acks = relayed_by_case(record, "acknowledgement")
    for reference, mails in acks.items():
        if len(mails) > 1:
            finding.violations.append(f"{reference}: {len(mails)} acknowledgements at the relay")
    first_mails = [a for a in record.appended if a.kind == "customer" and a.customer]
    references = _references_of(conn, [a.message_id for a in first_mails])
    slack = base_tolerance(record)
    late = (record.finished_at or record.plan.end) - slack
    without_case = unacknowledged = answered_first = 0
    for item in first_mails:
        assert item.customer is not None
        reference = references.get(item.message_id)
        if reference is None:
            without_case += 1
            finding.violations.append(
                f"{item.message_id} ({item.customer.address}, {item.at:%a %H:%M}Z): no case"
            )
            continue
        if item.customer.kind == "gone" or (item.appended_at and item.appended_at > late):
            continue  # refused for good at the relay, or too late to be seen
        if acks.get(reference):
            continue
        stored = _stored_acks(conn, reference)
        if any(a.state == "pending" for a in stored):
            continue  # still waiting in the outbox for its limit slot (not dropped)
        if any(
            answered_before_ack(a.state, a.created_at, a.first_response_at, slack) for a in stored
        ):
            answered_first += 1  # withdrawn: a person had answered the case
            continue
        unacknowledged += 1
        finding.violations.append(f"{reference} ({item.customer.address}): no acknowledgement")
    finding.figures = {
        "customer cases": len(first_mails),
        "acknowledgements at the relay": sum(len(m) for m in acks.values()),
        "team answered first (ack withdrawn)": answered_first,
        "new mail without a case": without_case,
        "cases never acknowledged": unacknowledged,
    }
    return finding


def _references_of(conn: Connection, message_ids: list[str]) -> dict[str, str]:
    query = (
        select(message.c.message_id, case.c.reference)
        .select_from(message.join(case, message.c.case_id == case.c.id))
        .where(message.c.message_id.in_(message_ids))
    )
    return {str(r.message_id): str(r.reference) for r in conn.execute(query)}


def _stored_acks(conn: Connection, reference: str) -> list[Row[Any]]:
    """The case's acknowledgements in the outbox: state, when queued, the first response."""
    query = (
        select(outbox.c.state, outbox.c.created_at, case.c.first_response_at)
        .select_from(outbox.join(case, outbox.c.case_id == case.c.id))
        .where(case.c.reference == reference, outbox.c.kind == "acknowledgement")
    )
    return list(conn.execute(query).all())


def answered_before_ack(
    ack_state: str, queued_at: datetime, first_response_at: datetime | None, tolerance: timedelta
) -> bool:
    """No acknowledgement is owed to a customer the team has answered: keepword withdraws
    a queued one when the case turns to the customer (a staff reply from their own mail
    client, e.g. while keepword was down). Fine only if that reply went out before the
    acknowledgement could have left (queued, plus a drain's `tolerance`): a withdrawal
    with no reply, or a reply long after, is still a lost acknowledgement."""
    if ack_state != "withdrawn" or first_response_at is None:
        return False
    return first_response_at <= queued_at + tolerance


def every_promise_kept_or_told(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("every promise kept, superseded in time or broken with a late update")
    updates = relayed_by_case(record, "customer_update")
    horizon = (record.finished_at or record.plan.end) - base_tolerance(record)
    rows = conn.execute(
        select(promise, case.c.reference, case.c.customer)
        .select_from(promise.join(case, promise.c.case_id == case.c.id))
        .where(promise.c.audience == "customer", promise.c.due_at <= horizon)
    ).all()
    states: Counter[str] = Counter()
    for row in rows:
        states[row.state] += 1
        problem = _promise_problem(record, row, updates.get(row.reference, []))
        if problem:
            finding.violations.append(
                f"{row.reference} promise {row.id} due {row.due_at:%a %H:%M}Z: {problem}"
            )
    finding.figures = {
        "customer promises due": len(rows),
        **{f"  {state}": count for state, count in sorted(states.items())},
        "silent breaches": len(finding.violations),
    }
    return finding


def _promise_problem(record: SoakRecord, row: object, updates: list[RelayedMail]) -> str | None:
    """What is wrong with a customer promise due by now, if anything. A customer whose
    address refuses our mail for good (a 550 at the relay, a bounce) is owed no update:
    keepword withdraws the promise (a team target takes its place) once it knows."""
    state, due, made = row.state, row.due_at, row.made_at  # type: ignore[attr-defined]
    resolved = row.resolved_at  # type: ignore[attr-defined]
    told = [m.at for m in updates if m.at >= made]
    in_time = bool(resolved and resolved <= due + DUE_SLACK)
    if state in ("kept", "withdrawn"):
        return None if in_time else f"{state} only at {resolved}"
    if state == "superseded":
        if any(at <= due + DUE_SLACK for at in told):
            return None
        slack = fault_slack(record, due - timedelta(hours=1), due)
        when = f"{min(told):%a %H:%M}Z" if told else "never"
        note = " (an SMTP/daemon fault overlapped)" if slack else ""
        return f"superseded, but the update reached the relay {when}{note}"
    if state == "broken":
        return None if told else "broken without an update to the customer"
    return f"still {state} past its due time"


def chase_on_time(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("reminders, escalations and digests at their times")
    calendar = traffic.business_calendar()
    reminders = relayed_by_case(record, "reminder")
    escalations = relayed_by_case(record, "escalation")
    stages = _chase_mails_by_case(record)
    horizon = (record.finished_at or record.plan.end) - base_tolerance(record)
    checked = 0
    rows = conn.execute(
        select(promise, case.c.reference)
        .select_from(promise.join(case, promise.c.case_id == case.c.id))
        .where(promise.c.audience == "customer")
    ).all()
    for row in rows:
        total = calendar.minutes_between(row.made_at, row.due_at)
        zone_start = calendar.add(row.made_at, total - update_lead_minutes(total, CHASE))
        for fraction in CHASE.reminders:
            planned = calendar.add(row.made_at, fraction * total)
            if planned >= zone_start or fraction >= CHASE.escalate_at:
                continue
            checked += _expect(
                finding, record, row, planned, horizon, (reminders, stages), "reminder"
            )
        planned = min(zone_start, calendar.add(row.made_at, CHASE.escalate_at * total))
        checked += _expect(
            finding, record, row, planned, horizon, (escalations, stages), "escalation"
        )
    digests = _digests(record, finding)
    finding.figures = {
        "worst lateness (on time)": str(finding.figures.get("worst lateness", "n/a")),
        "timed reminders/escalations checked": checked,
        "reminders at the relay": sum(len(v) for v in reminders.values()),
        "escalations at the relay": sum(len(v) for v in escalations.values()),
        "digests at the relay": digests,
        "taken by a later stage after a stall": finding.figures.get("later stage", 0),
        "business mornings": len(_mornings(record)),
        "late or missing": len(finding.violations),
    }
    return finding


def _chase_mails_by_case(record: SoakRecord) -> dict[str, list[RelayedMail]]:
    """Every mail of the chase (reminder, escalation, customer update) by case."""
    found: dict[str, list[RelayedMail]] = defaultdict(list)
    for kind in ("reminder", "escalation", "customer_update"):
        for reference, mails in relayed_by_case(record, kind).items():
            found[reference].extend(mails)
    return found


def _expect(
    finding: Finding,
    record: SoakRecord,
    row: object,
    planned: datetime,
    horizon: datetime,
    mails: tuple[dict[str, list[RelayedMail]], dict[str, list[RelayedMail]]],
    kind: str,
) -> int:
    """One timed chase mail expected for a promise still open at `planned` (+ tolerance).

    `mails` is (this kind's mails, every chase mail) by case. When the harness stood still
    inside the window, the chase that ran after it rightly sent only the latest stage due
    (domain.chase: missed reminders are stale), so a later stage of the case counts."""
    expected, stages = mails
    allowed = tolerance(record, planned)
    resolved = row.resolved_at  # type: ignore[attr-defined]
    if planned + allowed > horizon or (resolved is not None and resolved <= planned + allowed):
        return 0
    reference = row.reference  # type: ignore[attr-defined]
    sent = [m.at for m in expected.get(reference, [])]
    on_time = [at for at in sent if planned - DUE_SLACK <= at <= planned + allowed]
    if not on_time and _blind_within(blind_spans(record), planned, planned + allowed):
        later = [m.at for m in stages.get(reference, [])]
        on_time = [at for at in later if planned - DUE_SLACK <= at <= planned + allowed]
        if on_time:
            taken = finding.figures.get("later stage", 0)
            assert isinstance(taken, int)
            finding.figures["later stage"] = taken + 1
    if on_time:
        late = max(timedelta(), min(on_time) - planned)
        worst = finding.figures.get("worst lateness", timedelta())
        assert isinstance(worst, timedelta)
        finding.figures["worst lateness"] = max(worst, late)
        return 1
    seen = ", ".join(f"{at:%a %H:%M}" for at in sent) or "none"
    finding.violations.append(
        f"{reference} promise {row.id}: {kind} planned {planned:%a %H:%M}Z "  # type: ignore[attr-defined]
        f"(+{allowed}) not at the relay (seen: {seen})"
    )
    return 1


def _mornings(record: SoakRecord) -> list[datetime]:
    zone = traffic.business_calendar().zone
    start = record.lives[0].started_at if record.lives else record.plan.start
    mornings = [
        datetime.combine(day, CHASE.digest_time, tzinfo=zone) for day in record.plan.business_days
    ]
    return [m for m in mornings if start <= m <= (record.finished_at or record.plan.end)]


def _digests(record: SoakRecord, finding: Finding) -> int:
    zone = traffic.business_calendar().zone
    digests = [m for m in record.relayed if m.kind == "digest"]
    by_day: dict[object, list[RelayedMail]] = defaultdict(list)
    for mail in digests:
        by_day[mail.at.astimezone(zone).date()].append(mail)
    for morning in _mornings(record):
        sent = by_day.pop(morning.date(), [])
        allowed = tolerance(record, morning)
        on_time = [m for m in sent if morning <= m.at <= morning + allowed]
        if not on_time:
            seen = ", ".join(f"{m.at.astimezone(zone):%H:%M}" for m in sent) or "none"
            finding.violations.append(f"digest {morning:%a %d %b} 08:30 missing (seen: {seen})")
        elif len(sent) > 1:
            finding.violations.append(f"digest {morning:%a %d %b}: {len(sent)} digests")
    for day, sent in sorted(by_day.items(), key=lambda kv: str(kv[0])):
        finding.violations.append(f"digest on {day} (no business day): {len(sent)}")
    return len(digests)


def no_address_over_its_limits(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("no address over its limits")
    team = {*traffic.TEAM, traffic.LEAD}
    times: dict[str, list[datetime]] = defaultdict(list)
    for mail in record.relayed:
        if mail.kind is None:
            continue
        for rcpt in mail.rcpt_tos:
            if rcpt not in team:
                times[rcpt].append(mail.at)
    worst_hour = worst_day = 0
    for address, stamps in sorted(times.items()):
        hour = _most_in(stamps, timedelta(hours=1))
        day = _most_in(stamps, timedelta(days=1))
        worst_hour, worst_day = max(worst_hour, hour), max(worst_day, day)
        if hour > LIMITS.per_sender_per_hour:
            finding.violations.append(f"{address}: {hour} automatic mails in one hour")
        if day > LIMITS.per_sender_per_day:
            finding.violations.append(f"{address}: {day} automatic mails in 24 hours")
    finding.figures = {
        "addresses written to": len(times),
        "most in one hour": worst_hour,
        "most in 24 hours": worst_day,
        "to the ticket system": len(times.get(traffic.TICKETS, [])),
    }
    return finding


def _most_in(stamps: list[datetime], span: timedelta) -> int:
    ordered = sorted(stamps)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= span:
            start += 1
        most = max(most, end - start + 1)
    return most


TAKEOVER_REAL_SECONDS = 5.0
"""Real time a restarted daemon may take to its first poll: the interpreter's start-up
and imports are real seconds (1-2 s on a busy 2-core machine), worth an hour of virtual
time at the soak's speed; within a life, jobs are held to two intervals."""


def no_job_starved(record: SoakRecord, conn: Connection) -> Finding:
    """Each daemon polled soon after it started, and then ran each job within two
    intervals for as long as it lived (plus any time the harness could not look)."""
    finding = Finding("no job starved")
    allowance = harness_allowance(record)
    blind = blind_spans(record)
    worst: dict[str, timedelta] = {}
    episodes: dict[str, datetime] = {}
    recorded = False
    for sample in record.samples:
        if sample.alive_since is None:
            continue
        for job, interval, started in sample.jobs:
            recorded = True
            if started is None or started < sample.alive_since:
                continue  # not run yet in this life: the take-over bound below
            bound = timedelta(seconds=2 * interval) + allowance
            if fault_slack(record, sample.at - bound, sample.at):
                continue  # a fault (or the backoff after it) may hold the mailbox
            gap = sample.at - max(started, sample.alive_since)
            bound += _blind_within(blind, sample.at - gap, sample.at)
            worst[job] = max(worst.get(job, timedelta()), gap)
            if gap > bound and job not in episodes:
                episodes[job] = sample.at
                finding.violations.append(
                    f"{job}: not run for {gap} at {sample.at:%a %H:%M}Z (bound {bound}; "
                    f"{_last_run(sample, job, started)})"
                )
            elif gap <= bound:
                episodes.pop(job, None)
    alive = sum(
        ((life.ended_at or record.finished_at or life.started_at) - life.started_at
         for life in record.lives),
        timedelta(),
    )  # fmt: skip
    if not recorded and alive > timedelta(minutes=10):
        finding.violations.append(f"no job run recorded in job_run during {alive} of daemon life")
    takeover = timedelta(seconds=TAKEOVER_REAL_SECONDS * record.speed)
    for life, delay in _takeovers(record):
        if fault_slack(record, life, life + takeover):
            continue  # started into a fault (a missing secret, Dovecot down): it may wait
        if delay is None or delay > takeover:
            late = "never" if delay is None else f"after {delay}"
            finding.violations.append(
                f"daemon started {life:%a %H:%M}Z: first poll {late} (bound {takeover})"
            )
    finding.figures = {
        "samples": len(record.samples),
        **{f"  longest gap {job}": str(gap) for job, gap in sorted(worst.items())},
        "bound allowance (harness)": str(allowance),
        "take-over bound (start-up)": str(takeover),
        "harness blind (longest, virtual)": str(
            max((b - a for a, b in blind), default=timedelta())
        ),
        "harness stalls": _stalls_figure(record),
    }
    return finding


def _last_run(sample: JobSample, job: str, started: datetime) -> str:
    """Whose time it was: a run still going is keepword's, a finished one the scheduler's."""
    finished = getattr(sample, "finished", {}).get(job)  # records pickled before it was kept
    if finished is None:
        return "its last run's end not recorded"
    if finished < started:
        return f"its last run, begun {started:%H:%M:%S}Z, still going"
    return f"its last run took {finished - started}"


def _stalls_figure(record: SoakRecord) -> str:
    stalls = getattr(record, "stalls", [])  # records pickled before stalls were kept
    if not stalls:
        return "none"
    worst = max(stalls, key=lambda stall: stall.seconds)
    return (
        f"{len(stalls)}, longest {worst.seconds:.1f} s real at {worst.at:%a %H:%M}Z ({worst.step})"
    )


def nothing_quarantined_that_parses(record: SoakRecord, conn: Connection) -> Finding:
    finding = Finding("nothing quarantined that parses")
    ours = driver_ids(record)
    rows = conn.execute(
        select(message.c.message_id, message.c.quarantine_reason, message_content.c.raw)
        .join(message_content, message_content.c.message_pk == message.c.id)
        .where(message.c.quarantined)
    ).all()
    for row in rows:
        if row.message_id in ours or _parses(bytes(row.raw)):
            finding.violations.append(f"{row.message_id}: quarantined: {row.quarantine_reason}")
    stuck = conn.execute(
        select(func.count()).select_from(message).where(message.c.triage_attempts > 0)
    ).scalar()
    untriaged = conn.execute(
        select(func.count())
        .select_from(message)
        .where(message.c.triaged_at.is_(None), ~message.c.quarantined, ~message.c.is_history)
    ).scalar()
    finding.figures = {
        "quarantined": len(rows),
        "triage retried": stuck,
        "still untriaged": untriaged,
    }
    return finding


def _parses(raw: bytes) -> bool:
    try:
        msg = message_from_bytes(raw, policy=default_policy)
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            body.get_content()
    except Exception:
        return False
    return not msg.defects


def refused_addresses_left_alone(record: SoakRecord, conn: Connection) -> Finding:
    """An address the relay refused for good gets no customer update until it writes
    again, and the case's team hears of each refused mail (domain.reachability)."""
    finding = Finding("no update to an address refused for good; the team told")
    notices = relayed_by_case(record, "customer_unreachable")
    horizon = (record.finished_at or record.plan.end) - base_tolerance(record)
    rows = conn.execute(
        select(address_refusal, case.c.reference, case.c.last_response_at, case.c.closed_at)
        .select_from(address_refusal.join(case, address_refusal.c.case_id == case.c.id))
        .order_by(address_refusal.c.refused_at)
    ).all()
    for row in rows:
        allowed = tolerance(record, row.refused_at)
        if row.refused_at + allowed > horizon:
            continue
        told = [m.at for m in notices.get(row.reference, [])]
        settled = [t for t in (row.last_response_at, row.closed_at) if t is not None]
        updates = _customer_updates_to(conn, row.address, row.refused_at)
        heard = _heard_from(conn, row.address)
        problems = refusal_problems(row.refused_at, updates, heard, told, settled, allowed)
        finding.violations.extend(f"{row.reference} ({row.address}): {p}" for p in problems)
    finding.figures = {
        "refusals recorded (550 or bounce)": len(rows),
        "notices to the team at the relay": sum(len(v) for v in notices.values()),
        "problems": len(finding.violations),
    }
    return finding


def refusal_problems(
    refused_at: datetime,
    updates: list[datetime],
    heard: list[datetime],
    told: list[datetime],
    settled: list[datetime],
    allowed: timedelta,
) -> list[str]:
    """What went wrong after one refusal: a customer update queued (`updates`) with no
    mail from the address in between (`heard`), or no notice to the team (`told`, at
    the relay) within `allowed`, unless the team answered or closed the case by then."""
    problems = [
        f"customer update queued {at:%a %H:%M}Z after the refusal at {refused_at:%a %H:%M}Z"
        for at in updates
        if at > refused_at and not any(refused_at < h <= at for h in heard)
    ]
    deadline = refused_at + allowed
    if not any(refused_at <= at <= deadline for at in told) and not any(
        refused_at - allowed <= at <= deadline for at in settled
    ):
        seen = ", ".join(f"{at:%a %H:%M}Z" for at in told) or "none"
        problems.append(f"team not told by {deadline:%a %H:%M}Z (notices: {seen})")
    return problems


def _customer_updates_to(conn: Connection, address: str, since: datetime) -> list[datetime]:
    query = select(outbox.c.created_at, outbox.c.recipients).where(
        outbox.c.kind == "customer_update", outbox.c.created_at > since
    )
    return [r.created_at for r in conn.execute(query) if address in r.recipients]


def _heard_from(conn: Connection, address: str) -> list[datetime]:
    query = select(message.c.stored_at).where(message.c.from_addr == address)
    return [r.stored_at for r in conn.execute(query)]


INVARIANTS: tuple[Invariant, ...] = (
    each_message_stored_once,
    one_acknowledgement_per_case,
    every_promise_kept_or_told,
    chase_on_time,
    no_address_over_its_limits,
    no_job_starved,
    nothing_quarantined_that_parses,
    refused_addresses_left_alone,
)


def check_all(record: SoakRecord, conn: Connection) -> list[Finding]:
    return [invariant(record, conn) for invariant in INVARIANTS]


def check_store(record: SoakRecord) -> list[Finding]:
    """Every invariant, read from the store the run's daemon wrote (read-only)."""
    engine = store_engine(record)
    try:
        with engine.connect() as conn:
            return check_all(record, conn)
    finally:
        engine.dispose()


def run_figures(record: SoakRecord) -> dict[str, object]:
    """The soak itself: traffic, faults, restarts and the relay's mail per kind."""
    kinds = Counter(a.kind for a in record.appended)
    relayed = Counter(m.kind or "other" for m in record.relayed)
    lives = Counter(life.how.split(" ")[0] for life in record.lives)
    faults = Counter(f.kind for f in record.faults)
    return {
        "seed": record.plan.seed,
        "speed": record.speed,
        "virtual span": f"{record.plan.start:%a %d %b %H:%M}Z - {record.finished_at:%a %d %H:%M}Z",
        "business days": ", ".join(f"{d:%a %d}" for d in record.plan.business_days),
        "closed days": ", ".join(f"{d:%a %d}" for d in record.plan.closed_days),
        **{f"mail in: {k}": v for k, v in sorted(kinds.items())},
        **{f"mail out: {k}": v for k, v in sorted(relayed.items())},
        **{f"relay answered {k}": v for k, v in sorted(record.relay_answers.items())},
        **{f"fault: {k}": v for k, v in sorted(faults.items())},
        "daemon starts": len(record.lives),
        **{f"daemon ended: {k}": v for k, v in sorted(lives.items())},
        "takeover after restart (worst)": _takeover(record),
        "cli calls (failed)": f"{len(record.cli)} ({sum(1 for c in record.cli if c.returncode)})",
        **{f"robot: {k}": v for k, v in sorted(record.robots.items())},
    }


def _takeovers(record: SoakRecord) -> list[tuple[datetime, timedelta | None]]:
    """For each restarted daemon that was sampled alive: its start and the virtual time
    to its first recorded poll (None: it never polled)."""
    found: list[tuple[datetime, timedelta | None]] = []
    for life in record.lives[1:]:
        samples = [s for s in record.samples if s.alive_since == life.started_at]
        polls = [
            started
            for sample in samples
            for job, _, started in sample.jobs
            if job == "poll" and started and started >= life.started_at
        ]
        lived = (life.ended_at or record.finished_at or life.started_at) - life.started_at
        if polls:
            found.append((life.started_at, min(polls) - life.started_at))
        elif samples and lived > timedelta(seconds=TAKEOVER_REAL_SECONDS * record.speed):
            found.append((life.started_at, None))
    return found


def _takeover(record: SoakRecord) -> str:
    """Virtual time from a daemon's start to its first recorded poll (the worst)."""
    delays = [delay for _, delay in _takeovers(record) if delay is not None]
    return str(max(delays)) if delays else "n/a (no job_run)"
