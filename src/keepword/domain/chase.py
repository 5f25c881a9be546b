"""The chase plan: given the stored state of one case and `now`, which actions are due.

Pure and idempotent: every action has a deterministic `key` (the outbox dedup key) and
`plan` leaves out the keys in `done`, so planning twice, or again after a restart, never
repeats an action. Progress through a promise is measured in *business* time
(`BusinessClock`): a night or a weekend does not move the chase on.

For each open promise of a case that waits on the team (oldest due first), with
`total` = business minutes from made to due, `elapsed` = made to now, `left` = now to due:

1. No chasing at all for a case that waits on the customer or is closed: the clock is
   paused and its promises were resolved when the team replied or the case closed.
2. Past due (now > due_at; the daemon was down or nobody acted) - only what is still
   useful: a `BreachRecord` (the promise is recorded broken; *silent* for a customer
   promise whose update was never planned), a late, honest `CustomerUpdate` ("we missed
   it", with a new promise) for a customer promise, and one `Escalation`. No reminders:
   a pile of stale reminders helps nobody.
3. Update zone: a customer promise with `left <= lead` where
   `lead = min(max(update_before_minutes, update_before_fraction * total), total / 2)`
   (but at least two chase intervals, at most `total`) gets a `CustomerUpdate`
   carrying the new promise that will supersede the old one before it breaks. The cap
   at half the window keeps a customer who was just told "one hour" from hearing "we
   will miss it" a minute later; the floor lets one missed chase step pass without a
   silent breach. The update also plans the promise's `Escalation`: a promise about to
   break is exactly what the lead must know. The shell sends no update to a robot or
   another keepword (`update_refusal`) and holds it to the per-address limits.
4. `Escalation` to the lead (the whole team when no lead is configured), once per
   promise, when `elapsed >= escalate_at * total`, or the customer wrote
   `escalate_after_contacts` times without a team reply, or the owner changed
   `escalate_after_owners` times (ping-pong). A case waiting on the team without any
   promise (e.g. its acknowledgement was rate-limited) is escalated once on the
   contact and owner triggers.
5. `Reminder` to the owner (when nobody owns the case: `CaseSnapshot.team`, which the
   shell sets to the lead under an owner policy, the members under policy none) at each
   configured fraction of `total` elapsed, only the latest fraction reached (earlier
   ones that were missed are stale), and none once the promise reached `escalate_at` or
   (a customer promise) the update zone: from there on the lead and the customer are
   told instead.
6. Team (internal) promises get reminders, escalations and a (non-silent) breach
   record, never a customer update: the customer was not told their time.
7. `UnreachableNotice` to the owner (as a reminder's recipients) once for each mail of
   the case the relay refused for good (domain.reachability): nobody else learns that
   the customer never got it. The shell turns the case's customer promises into team
   targets while the refusal stands (`update_refusal`'s path), so the chase mails the
   team, never the address again.

The shell applies one plan in one transaction: outbox rows for the mails, the new
promise and `promises.supersede` for an update (or `promises.break_if_due` for a breach).
The invariant (tested by simulation): with a chase at least every `lead` business
minutes (so with one step a minute, even when one step is missed), a customer promise
passes its due time only after a team reply or a planned customer update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from keepword.config import ChaseSettings
from keepword.domain.cases import CaseState
from keepword.domain.classify import classify, out_of_office_reason, robot_reason
from keepword.domain.model import (
    LOOP_HEADER,
    Address,
    CaseStatus,
    Kind,
    MessageFacts,
    PromiseAudience,
    PromiseKind,
)
from keepword.domain.outbox_keys import (
    breach_key,
    escalation_key,
    reminder_key,
    unreachable_key,
    update_key,
)
from keepword.domain.promises import Promise, WindowLike, make_promise
from keepword.domain.reachability import Refusal, notices_due

PAUSED_STATUSES = frozenset({CaseStatus.WAITING_ON_CUSTOMER, CaseStatus.CLOSED})


class BusinessClock(Protocol):
    """Business-time arithmetic (domain.calendar.BusinessCalendar fits)."""

    def add(self, start: datetime, minutes: float) -> datetime: ...

    def minutes_between(self, start: datetime, end: datetime) -> float: ...


@dataclass(frozen=True, slots=True)
class CaseSnapshot:
    """What the chase needs to know about one case, read from the store."""

    id: int
    reference: str
    status: CaseStatus
    opened_at: datetime
    owner: str | None
    team: tuple[str, ...]
    lead: str | None
    customer_contacts_since_team_reply: int = 0
    owner_changes: int = 0
    promises: tuple[Promise, ...] = ()
    mailbox: str = ""
    refusals: tuple[Refusal, ...] = ()  # the case's mail the relay refused for good

    @classmethod
    def of(
        cls,
        case: CaseState,
        promises: Iterable[Promise],
        *,
        team: Iterable[str],
        lead: str | None,
        refusals: Iterable[Refusal] = (),
    ) -> CaseSnapshot:
        """The snapshot of a stored case (its `unanswered_contacts` count since a reply)."""
        if case.id is None:
            raise ValueError(f"case {case.reference} is not stored yet (id is None)")
        return cls(
            id=case.id,
            reference=case.reference,
            status=case.status,
            opened_at=case.opened_at,
            owner=case.owner,
            team=tuple(team),
            lead=lead,
            customer_contacts_since_team_reply=case.unanswered_contacts,
            owner_changes=case.owner_changes,
            promises=tuple(promises),
            mailbox=case.mailbox,
            refusals=tuple(refusals),
        )

    def open_promises(self) -> list[Promise]:
        return sorted((p for p in self.promises if p.is_open), key=lambda p: (p.due_at, p.id or 0))


def _promise_id(promise: Promise) -> int:
    if promise.id is None:
        raise ValueError("the chase plans over stored promises only (id is None)")
    return promise.id


@dataclass(frozen=True, slots=True)
class Reminder:
    case_id: int
    promise_id: int
    fraction: float
    recipients: tuple[str, ...]
    due_at: datetime
    reason: str

    @property
    def key(self) -> str:
        return reminder_key(self.case_id, self.promise_id, self.fraction)


@dataclass(frozen=True, slots=True)
class Escalation:
    case_id: int
    promise_id: int | None
    trigger: str  # "time", "update", "breach", "contacts" or "owners"
    recipients: tuple[str, ...]
    reason: str

    @property
    def key(self) -> str:
        return escalation_key(self.case_id, self.promise_id)


@dataclass(frozen=True, slots=True)
class CustomerUpdate:
    """An honest word to the customer with a new promise; `late` once the old one broke."""

    case_id: int
    promise_id: int
    old_due_at: datetime
    new_due_at: datetime
    window: WindowLike
    late: bool
    reason: str

    @property
    def key(self) -> str:
        return update_key(self.case_id, self.promise_id)

    def new_promise(self, at: datetime) -> Promise:
        """The promise the update makes (kind UPDATE, to the customer; id None until stored)."""
        why = (
            "new estimate after the previous promise was missed"
            if self.late
            else f"announced revision of promise {self.promise_id} before it broke"
        )
        made = make_promise(
            self.case_id, PromiseKind.UPDATE, PromiseAudience.CUSTOMER, at, self.window, why
        )
        return replace(made, due_at=self.new_due_at)


@dataclass(frozen=True, slots=True)
class BreachRecord:
    """A promise past due: record it broken; `silent` if the customer was never told."""

    case_id: int
    promise_id: int
    due_at: datetime
    silent: bool
    reason: str

    @property
    def key(self) -> str:
        return breach_key(self.case_id, self.promise_id)


@dataclass(frozen=True, slots=True)
class UnreachableNotice:
    """ "The customer never got our mail": to the owner, once per refused mail (rule 7)."""

    case_id: int
    refusal: Refusal
    recipients: tuple[str, ...]

    @property
    def key(self) -> str:
        return unreachable_key(self.refusal)

    @property
    def reason(self) -> str:
        return self.refusal.describe()


def held_back_note(promise_id: int) -> str:
    """How the case timeline starts the note that the limit held an update back."""
    return f"update for promise {promise_id} held back by the rate limit"


ChaseAction = Reminder | Escalation | CustomerUpdate | BreachRecord | UnreachableNotice


def update_lead_minutes(total: float, settings: ChaseSettings) -> float:
    """Business minutes before due at which the customer update is planned (rule 3).

    Never less than two chase intervals (or the whole promise, if shorter): a wall
    minute is at most one business minute, so one missed chase step can never skip the
    zone and leave the promise to break unannounced.
    """
    wanted = max(float(settings.update_before_minutes), settings.update_before_fraction * total)
    floor = min(2 * settings.interval_seconds / 60, total)
    return max(min(wanted, total / 2), floor)


def update_refusal(
    customer: str, mail_from_customer: Iterable[MessageFacts], own_addresses: frozenset[str]
) -> str | None:
    """Why no customer update may go to `customer`, or None if it may.

    An update is an automatic mail about an unanswered case: it must never go to a
    machine (RFC 3834), least of all to another keepword, which would answer with
    updates of its own for as long as both cases run. Decided from the address itself
    and the stored mail it sent us (re-classified from its headers). A person's
    out-of-office reply is automatic too, but the person still deserves the update.
    """
    address = customer.strip().lower()
    robot = robot_reason(MessageFacts(pk=0, mailbox="", message_id="", sender=Address(address)))
    if robot is not None:
        return f"{address} is a robot ({robot})"
    for facts in mail_from_customer:
        if facts.sender is None or facts.sender.address.lower() != address:
            continue
        verdict = classify(facts, team=frozenset(), own_addresses=own_addresses)
        if verdict.kind is not Kind.AUTOMATED:
            continue
        if facts.header(LOOP_HEADER):
            return f"{address} is another keepword installation ({verdict.reason})"
        if out_of_office_reason(facts) is None:
            return f"{address} is a robot ({verdict.reason})"
    return None


def plan(
    snapshot: CaseSnapshot,
    now: datetime,
    clock: BusinessClock,
    settings: ChaseSettings,
    *,
    done: frozenset[str] = frozenset(),
    new_window: WindowLike | None = None,
) -> list[ChaseAction]:
    """The actions due for this case at `now` that are not in `done` (rules: module doc).

    `new_window` is the honest window for a customer update, computed by the shell as
    for an acknowledgement; without it no customer update can be planned.
    """
    if snapshot.status in PAUSED_STATUSES:
        return []
    promises = snapshot.open_promises()
    actions: list[ChaseAction] = [
        UnreachableNotice(snapshot.id, refusal, _owner_recipients(snapshot))
        for refusal in notices_due(snapshot.id, snapshot.refusals, done)
    ]
    if not promises:
        actions.extend(_unpromised_escalation(snapshot, settings))
    case = _CaseAt(snapshot, now, clock, settings, done, new_window)
    for promise in promises:
        actions.extend(_plan_promise(case, promise))
    return [a for a in actions if a.key not in done]


def _lead_recipients(snapshot: CaseSnapshot) -> tuple[str, ...]:
    return (snapshot.lead,) if snapshot.lead else snapshot.team


def _owner_recipients(snapshot: CaseSnapshot) -> tuple[str, ...]:
    return (snapshot.owner,) if snapshot.owner else snapshot.team


def _case_trigger(snapshot: CaseSnapshot, settings: ChaseSettings) -> tuple[str, str] | None:
    """A case-level escalation trigger (contacts, ping-pong) and its reason, if any."""
    contacts = snapshot.customer_contacts_since_team_reply
    if contacts >= settings.escalate_after_contacts:
        return "contacts", f"the customer wrote {contacts} times without a team reply"
    if snapshot.owner_changes >= settings.escalate_after_owners:
        return "owners", f"the owner changed {snapshot.owner_changes} times"
    return None


def _unpromised_escalation(snapshot: CaseSnapshot, settings: ChaseSettings) -> list[ChaseAction]:
    trigger = _case_trigger(snapshot, settings)
    if trigger is None:
        return []
    name, why = trigger
    return [Escalation(snapshot.id, None, name, _lead_recipients(snapshot), why + " (no promise)")]


@dataclass(frozen=True, slots=True)
class _CaseAt:
    """One case planned at `now` (plan's arguments): what each of its promises shares."""

    snapshot: CaseSnapshot
    now: datetime
    clock: BusinessClock
    settings: ChaseSettings
    done: frozenset[str]
    new_window: WindowLike | None


def _plan_promise(case: _CaseAt, promise: Promise) -> list[ChaseAction]:
    snapshot, now, clock, settings = case.snapshot, case.now, case.clock, case.settings
    done, new_window = case.done, case.new_window
    if now > promise.due_at:
        return _past_due(snapshot, promise, clock, done, new_window)
    total = clock.minutes_between(promise.made_at, promise.due_at)
    left = clock.minutes_between(now, promise.due_at)
    elapsed_share = 1.0 if total <= 0 else (total - left) / total
    actions: list[ChaseAction] = []
    # Only a customer promise is revised; a team target just runs on to its escalation.
    revising = promise.to_customer and left <= update_lead_minutes(total, settings)
    if revising and new_window is not None:
        why = f"{left:.0f} business minutes left of {total:.0f}: tell the customer now"
        actions.append(_update(snapshot, promise, clock, new_window, late=False, reason=why))
    escalation = _escalation(snapshot, promise, elapsed_share, revising, settings)
    if escalation is not None:
        actions.append(escalation)
    if not revising and elapsed_share < settings.escalate_at:
        actions.extend(_reminder(snapshot, promise, elapsed_share, settings))
    return actions


def _update(
    snapshot: CaseSnapshot,
    promise: Promise,
    clock: BusinessClock,
    new_window: WindowLike,
    *,
    late: bool,
    reason: str,
) -> CustomerUpdate:
    """The honest word to the customer, carrying the new promise that revises `promise`."""
    due = _new_due(promise, clock, new_window)
    return CustomerUpdate(
        snapshot.id, _promise_id(promise), promise.due_at, due, new_window, late=late, reason=reason
    )


def _escalation(
    snapshot: CaseSnapshot,
    promise: Promise,
    elapsed_share: float,
    revising: bool,
    settings: ChaseSettings,
) -> Escalation | None:
    recipients = _lead_recipients(snapshot)
    pid = _promise_id(promise)
    if elapsed_share >= settings.escalate_at:
        why = f"{elapsed_share:.0%} of the promised business time has passed"
        return Escalation(snapshot.id, pid, "time", recipients, why)
    if revising:
        return Escalation(snapshot.id, pid, "update", recipients, "the promise is about to break")
    trigger = _case_trigger(snapshot, settings)
    if trigger is not None:
        return Escalation(snapshot.id, pid, trigger[0], recipients, trigger[1])
    return None


def _reminder(
    snapshot: CaseSnapshot, promise: Promise, elapsed_share: float, settings: ChaseSettings
) -> list[ChaseAction]:
    reached = [f for f in settings.reminders if elapsed_share >= f]
    if not reached:
        return []
    fraction = max(reached)
    why = f"{elapsed_share:.0%} of the promised business time has passed"
    return [
        Reminder(
            snapshot.id,
            _promise_id(promise),
            fraction,
            _owner_recipients(snapshot),
            promise.due_at,
            why,
        )
    ]


def _past_due(
    snapshot: CaseSnapshot,
    promise: Promise,
    clock: BusinessClock,
    done: frozenset[str],
    new_window: WindowLike | None,
) -> list[ChaseAction]:
    pid = _promise_id(promise)
    silent = promise.to_customer and update_key(snapshot.id, pid) not in done
    lateness = f"due {promise.due_at:%Y-%m-%d %H:%M} UTC passed"
    actions: list[ChaseAction] = [
        BreachRecord(
            snapshot.id,
            pid,
            promise.due_at,
            silent,
            ("silent breach: " if silent else "breach: ") + lateness,
        )
    ]
    if promise.to_customer and new_window is not None:
        why = f"{lateness}: say we missed it, with a new time"
        actions.append(_update(snapshot, promise, clock, new_window, late=True, reason=why))
    actions.append(
        Escalation(snapshot.id, pid, "breach", _lead_recipients(snapshot), lateness + " unanswered")
    )
    return actions


def _new_due(promise: Promise, clock: BusinessClock, window: WindowLike) -> datetime:
    """The update's due time: the window's, but always after the old due time.

    An estimate that ends before the promise being revised would be no revision at all;
    then the window counts from the old due time instead.
    """
    if window.due_at > promise.due_at:
        return window.due_at
    return clock.add(promise.due_at, window.minutes)
