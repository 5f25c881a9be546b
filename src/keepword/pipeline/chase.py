"""The chase step the daemon runs every minute: apply `domain.chase.plan` to stored cases.

For each case of a mailbox that waits on the team or still has open promises: read the
case, its open promises and the dedup keys already in its outbox, and plan; then apply
each action in its own transaction - queue its mail (dedup key = the action's key),
record the new promise of a customer update and supersede the old one, record a breach
honestly - with the case events. Running it twice at the same `now` queues nothing
new: every mail is keyed, and a recorded breach closes its promise.

Every case, every action of a case and the digest are isolated (`keepword.pipeline.isolation`):
one failure is logged, counted and tried again next step, and never stops the others.

A customer update is an automatic mail like an acknowledgement: it counts against the
same per-address limits (`domain.limits`). Held back, it goes out at the limit's slot
if that is still before the due time, and its new promise runs from then; otherwise it
is not sent, that is said once on the case, and the breach is recorded as held back by
the limit (broken, not silent). No update goes to a robot or another keepword
installation (`domain.chase.update_refusal`), nor to an address that refused our mail
for good and has not written since (`domain.reachability`): the customer promise is
withdrawn and the team keeps it as its own target; for a refused address the owner is
told once per refused mail.

Paused cases (closed, waiting on the customer) that still hold open promises are settled
here too: past due they are broken, otherwise withdrawn. Once a business day per
mailbox, at `chase.digest_time` local time, the digest goes to the team and the lead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection, Engine

from keepword.config import MailboxSettings
from keepword.domain import cases
from keepword.domain.chase import (
    PAUSED_STATUSES,
    BreachRecord,
    CaseSnapshot,
    ChaseAction,
    CustomerUpdate,
    Escalation,
    Reminder,
    UnreachableNotice,
    held_back_note,
    plan,
    update_lead_minutes,
    update_refusal,
)
from keepword.domain.limits import DAY, Slot, next_slot
from keepword.domain.model import (
    CaseStatus,
    OutboxKind,
    PromiseAudience,
    PromiseKind,
    PromiseState,
)
from keepword.domain.outbox_keys import chase_key_ranges, digest_key
from keepword.domain.owners import OwnerPolicy, policy_of
from keepword.domain.promises import Promise, WindowLike, break_if_due, supersede, withdraw
from keepword.domain.reachability import Refusal, standing_refusal, unreachable_reason
from keepword.domain.story import Story
from keepword.domain.windows import Window
from keepword.errors import StaleCaseError
from keepword.mail.compose import CUSTOMER_KINDS, About, Answering, customer_mail, team_mail
from keepword.mail.render import (
    CustomerUpdateContext,
    DigestCase,
    DigestContext,
    TeamCaseContext,
    customer_due,
    window_duration_text,
)
from keepword.pipeline import owners
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.isolation import each_isolated, isolated
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store
from keepword.store import refusals as refusal_store
from keepword.store import story as story_store
from keepword.store.messages import last_customer_message
from keepword.store.refusals import RefusedIn
from keepword.timefmt import moment

log = logging.getLogger(__name__)

AWAITING_TEAM = (CaseStatus.NEW, CaseStatus.WAITING_ON_TEAM)
# The case event each chase mail to the team writes on its timeline.
TEAM_MAIL_EVENTS = {
    OutboxKind.REMINDER: cases.EventKind.REMINDER,
    OutboxKind.ESCALATION: cases.EventKind.ESCALATION,
    OutboxKind.CUSTOMER_UNREACHABLE: cases.EventKind.UNREACHABLE,
}


@dataclass(slots=True)
class ChaseResult:
    cases: int = 0
    reminders: int = 0
    escalations: int = 0
    notices: int = 0  # "the customer cannot be reached" (domain.reachability)
    updates: int = 0
    breaches: int = 0
    silent_breaches: int = 0
    withdrawn: int = 0
    digests: int = 0
    failed: int = 0

    @property
    def queued(self) -> int:
        return self.reminders + self.escalations + self.notices + self.updates + self.digests

    @property
    def changed(self) -> bool:
        return bool(self.queued or self.breaches or self.withdrawn)

    def add(self, other: ChaseResult) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def chase_mailbox(desk: MailboxContext) -> ChaseResult:
    """One chase step for one mailbox at `now` (blocking; idempotent at a given `now`).

    Every case, and the digest, is isolated (`keepword.pipeline.isolation`): a failure is logged,
    counted in `failed` and tried again next step; it never stops the others.
    """
    box, engine = desk.box, desk.engine
    result = ChaseResult()
    # Absences first (a planned one starts today): reminders then go to the new owners.
    moves = isolated(
        partial(_absences_step, desk),
        what=f"mailbox {box.name}: absences",
        log=log,
        expected=(StaleCaseError,),  # `keepword assign` meanwhile: moved next step
    )
    result.failed += int(moves.failed)
    with engine.connect() as conn:
        case_ids = cases_to_chase(conn, box.name)
        refused = refusal_store.refused_in(conn, box.name)
    outcome = each_isolated(
        case_ids,
        partial(_chase_case, desk, refused),
        what=lambda case_id: f"mailbox {box.name}: chasing case {case_id}",
        log=log,
        expected=(StaleCaseError,),  # `keepword close/assign` meanwhile: plan again next step
    )
    for _, done in outcome.done:
        result.add(done)
    result.failed += len(outcome.failed)
    if box.chase.digest:
        digest = isolated(partial(_digest_step, desk), what=f"mailbox {box.name}: digest", log=log)
        result.digests += digest.value or 0
        result.failed += int(digest.failed)
    if result.queued or result.breaches or result.withdrawn:
        log.info(
            "mailbox %s: chase queued %d reminder(s), %d escalation(s), %d notice(s), "
            "%d update(s), %d digest(s); recorded %d breach(es) (%d silent), withdrew %d "
            "promise(s)",
            box.name,
            result.reminders,
            result.escalations,
            result.notices,
            result.updates,
            result.digests,
            result.breaches,
            result.silent_breaches,
            result.withdrawn,
        )
    return result


def _absences_step(desk: MailboxContext) -> int:
    with desk.engine.begin() as conn:
        return owners.settle_absences(conn, desk)


def cases_to_chase(conn: Connection, mailbox: str) -> list[int]:
    """Live cases waiting on the team, and any case that still holds an open promise."""
    ids = case_store.live_case_ids(conn, mailbox, AWAITING_TEAM)
    ids.update(promise_store.case_ids_with_open_promises(conn, mailbox))
    return sorted(ids)


# -- one case ----------------------------------------------------------------------------

# One write of the chase about one case: applied in its own transaction.
_Step = Callable[[Connection, ChaseResult], None]


def _chase_case(desk: MailboxContext, refused: RefusedIn, case_id: int) -> ChaseResult:
    """Plan one case, then apply each step (a breach, a mail, a settled promise) in its
    own transaction, isolated from the others: a broken template for the update never
    keeps the breach from being recorded or the lead from being told.

    Each step is refused (StaleCaseError, skipped) if the case changed since it was
    read, so no mail goes out on a decision about a case that is no longer so. The case
    counts in `cases` only when every step went through.
    """
    engine = desk.engine
    with engine.connect() as conn:
        state = case_store.load_case(conn, case_id)
        open_now = promise_store.open_promises(conn, case_id)
    steps: list[_Step]
    if state.status in PAUSED_STATUSES:
        steps = [partial(_settle_paused, desk, state, value) for value in open_now]
    else:
        steps = _plan_case(engine, desk, state, open_now, refused)
    result = ChaseResult()
    outcome = each_isolated(
        steps,
        partial(_apply_step, engine, state),
        what=lambda _: f"mailbox {desk.box.name}: case {state.reference}",
        log=log,
        expected=(StaleCaseError,),
    )
    for _, done in outcome.done:
        result.add(done)
    result.failed += len(outcome.failed)
    result.cases += int(not outcome.failed and not outcome.skipped)
    return result


def _apply_step(engine: Engine, state: cases.CaseState, step: _Step) -> ChaseResult:
    done = ChaseResult()  # counted only once its transaction commits
    with engine.begin() as conn:
        step(conn, done)
        if done.changed:
            case_store.confirm_unchanged(conn, state)
    return done


def _plan_case(
    engine: Engine,
    desk: MailboxContext,
    state: cases.CaseState,
    open_now: list[Promise],
    refused_in: RefusedIn,
) -> list[_Step]:
    assert state.id is not None
    with engine.connect() as conn:
        done = _done_keys(conn, state.id)
        refused = _refusals(conn, desk, state) if refused_in.touches(state) else []
        unreachable = _unreachable(conn, state, refused)
        window = None if unreachable else _update_window(conn, desk, state, open_now)
        refusal = unreachable
        if refusal is None and window is not None:
            refusal = _update_refusal(conn, desk, state)
    if refusal is not None and any(_revisable(desk, p) for p in open_now):
        # No update to a robot or an address the relay refuses: the promise becomes the
        # team's own target (same due time), so reminders and escalations go on; the
        # customer hears nothing more.
        _apply_step(engine, state, partial(_no_updates_to, desk, state, open_now, refusal))
        with engine.connect() as conn:
            open_now = promise_store.open_promises(conn, state.id)
    if refusal is not None:
        window = None
    snapshot = CaseSnapshot.of(
        state,
        open_now,
        team=unowned_recipients(desk.box),
        lead=desk.box.lead,
        refusals=[r for r in refused if r.case_id == state.id],
    )
    by_id = {p.id: p for p in open_now}
    actions = plan(snapshot, desk.now, desk.calendar, desk.box.chase, done=done, new_window=window)
    return [partial(_apply, desk, state, by_id, action) for action in actions]


def unowned_recipients(box: MailboxSettings) -> tuple[str, ...]:
    """Who hears a reminder when nobody owns the case. With an owner policy a case has
    one from the start, and a case without (nobody on duty for weeks) goes to the lead:
    reminders never go to the whole team. Policy `none` keeps the old way: the members
    (else the lead)."""
    lead = (box.lead,) if box.lead else ()
    if policy_of(box) is not OwnerPolicy.NONE and lead:
        return lead
    return tuple(box.team) or lead


def _done_keys(conn: Connection, case_id: int) -> frozenset[str]:
    """The chase keys already in the outbox for this case (only its chase mails, read
    as key ranges, not all its outgoing mail)."""
    return outbox_store.keys_in_ranges(conn, chase_key_ranges(case_id))


def _update_window(
    conn: Connection, desk: MailboxContext, state: cases.CaseState, open_now: list[Promise]
) -> Window | None:
    """The new time for a customer update (the case's residual time, given how long
    it has waited already), measured only when an update may be planned."""
    for p in open_now:
        if not p.to_customer:
            continue
        total = desk.calendar.minutes_between(p.made_at, p.due_at)
        left = desk.calendar.minutes_between(desk.now, p.due_at)
        if desk.now > p.due_at or left <= update_lead_minutes(total, desk.box.chase):
            assert state.id is not None
            return desk.residual_window(conn, state.id, state.opened_at)
    return None


def _apply(
    desk: MailboxContext,
    state: cases.CaseState,
    by_id: dict[int | None, Promise],
    action: ChaseAction,
    conn: Connection,
    result: ChaseResult,
) -> None:
    if isinstance(action, BreachRecord):
        _record_breach(conn, desk, state, by_id[action.promise_id], result)
    elif isinstance(action, CustomerUpdate):
        _send_update(conn, desk, state, by_id[action.promise_id], action, result)
    elif isinstance(action, Reminder):
        promised = by_id.get(action.promise_id)
        if _team_mail(conn, desk, state, promised, OutboxKind.REMINDER, action):
            result.reminders += 1
    elif isinstance(action, Escalation):
        promised = by_id.get(action.promise_id) if action.promise_id is not None else None
        if _team_mail(conn, desk, state, promised, OutboxKind.ESCALATION, action):
            result.escalations += 1
    elif isinstance(action, UnreachableNotice):
        kind = OutboxKind.CUSTOMER_UNREACHABLE
        result.notices += int(_team_mail(conn, desk, state, None, kind, action))


def _event(
    conn: Connection, case_id: int, kind: cases.EventKind, at: datetime, detail: str
) -> None:
    case_store.add_events(conn, case_id, [cases.Event(kind, at, None, detail)])


def _announced(conn: Connection, value: Promise) -> bool:
    """The customer was told before the due time: its update was queued by then."""
    queued = promise_store.update_queued_at(conn, value)
    return queued is not None and queued <= value.due_at


def _record_breach(
    conn: Connection,
    desk: MailboxContext,
    state: cases.CaseState,
    value: Promise,
    result: ChaseResult,
) -> None:
    assert state.id is not None and value.id is not None
    announced = _announced(conn, value)
    held = not announced and promise_store.update_held_back(conn, state.id, value.id)
    broken = break_if_due(value, desk.now, announced=announced, held=held)
    if broken.is_open:
        return
    promise_store.update_state(conn, broken)
    _event(conn, state.id, cases.EventKind.PROMISE_BROKEN, desk.now, broken.reason)
    result.breaches += 1
    if broken.to_customer and not announced and not held:
        result.silent_breaches += 1
        log.warning("case %s: %s", state.reference, broken.reason)


def _settle_paused(
    desk: MailboxContext,
    state: cases.CaseState,
    value: Promise,
    conn: Connection,
    result: ChaseResult,
) -> None:
    """A closed case or one waiting on the customer owes nothing more; a breach stays one."""
    assert state.id is not None
    if desk.now > value.due_at:
        _record_breach(conn, desk, state, value, result)
        return
    why = f"case {state.status.value.replace('_', ' ')}: nothing is owed any more"
    promise_store.update_state(conn, withdraw(value, desk.now, why))
    _event(conn, state.id, cases.EventKind.PROMISE_WITHDRAWN, desk.now, why)
    result.withdrawn += 1


# -- robots and other keepwords -----------------------------------------------------------


def _update_refusal(conn: Connection, desk: MailboxContext, state: cases.CaseState) -> str | None:
    """Why no update may go to this case's customer (a robot, another keepword), if so."""
    if not state.customer:
        return None
    mail = promise_store.automated_mail_from(conn, state.customer)
    return update_refusal(state.customer, mail, desk.own_addresses)


def _refusals(conn: Connection, desk: MailboxContext, state: cases.CaseState) -> list[Refusal]:
    """Refusals of this case's mail and of its customer's address (on any case)."""
    assert state.id is not None
    return refusal_store.refusals_about(conn, desk.box.name, state.id, state.customer)


def _unreachable(conn: Connection, state: cases.CaseState, refused: list[Refusal]) -> str | None:
    """Why the customer's address gets no automatic mail now, if the relay refused it
    and it has not written since (domain.reachability)."""
    customer = (state.customer or "").strip().lower()
    mine = [r for r in refused if r.address == customer]
    if not mine:
        return None
    standing = standing_refusal(mine, refusal_store.last_heard_from(conn, customer))
    return unreachable_reason(standing) if standing is not None else None


def _revisable(desk: MailboxContext, value: Promise) -> bool:
    """A customer promise not yet due: one `_no_updates_to` turns into a team target."""
    return value.to_customer and desk.now <= value.due_at


def _no_updates_to(
    desk: MailboxContext,
    state: cases.CaseState,
    open_now: list[Promise],
    refusal: str,
    conn: Connection,
    result: ChaseResult,
) -> None:
    """Withdraw the customer promises not yet due, each replaced by a team target.

    A promise already past due stays what it is: the plan records its breach.
    """
    assert state.id is not None
    why = f"no customer update: {refusal}"
    for value in open_now:
        if not _revisable(desk, value):
            continue
        promise_store.update_state(conn, withdraw(value, desk.now, why))
        _event(conn, state.id, cases.EventKind.PROMISE_WITHDRAWN, desk.now, why)
        target = replace(
            value,
            id=None,
            kind=PromiseKind.NEXT_RESPONSE,
            audience=PromiseAudience.TEAM,
            made_at=desk.now,
            reason=f"internal target in place of promise {value.id} ({refusal})",
        )
        promise_store.insert_promise(conn, target)
        _event(conn, state.id, cases.EventKind.PROMISE_MADE, desk.now, target.reason)
        result.withdrawn += 1


# -- customer update ----------------------------------------------------------------------


def _what_is_happening(state: cases.CaseState) -> str:
    lead = "and our team lead has been asked to make sure it is answered."
    if state.owner:
        return f"your case is with {state.owner}, {lead}"
    return f"your case is waiting for the next free person on our team, {lead}"


def _update_slot(conn: Connection, desk: MailboxContext, customer: str) -> Slot:
    """When the update may go out: every automatic mail to the address counts (one
    per-address limit for acknowledgements, notes and updates), and the mailbox's."""
    to_address, from_mailbox = outbox_store.automatic_mail_times(
        conn, desk.box.name, customer, [k.value for k in CUSTOMER_KINDS], since=desk.now - DAY
    )
    return next_slot(
        desk.now, to_address=to_address, from_mailbox=from_mailbox, limits=desk.box.limits
    )


def _hold_back(
    conn: Connection, desk: MailboxContext, state: cases.CaseState, old: Promise, slot: Slot
) -> None:
    """The limit has no slot before the due time: no update, said once on the timeline.

    The breach, when it comes, is recorded as broken (held back, not silent) and the
    late update is planned for the limit's slot then.
    """
    assert state.id is not None and old.id is not None
    if promise_store.update_held_back(conn, state.id, old.id):
        return
    detail = (
        f"{held_back_note(old.id)}: {slot.reason}; next slot {moment(slot.at, desk.calendar.zone)} "
        f"is after due {moment(old.due_at, desk.calendar.zone)}, so the promise will break"
    )
    _event(conn, state.id, cases.EventKind.CUSTOMER_UPDATE, desk.now, detail)
    log.warning("case %s: %s", state.reference, detail)


def _send_update(
    conn: Connection,
    desk: MailboxContext,
    state: cases.CaseState,
    old: Promise,
    action: CustomerUpdate,
    result: ChaseResult,
) -> None:
    assert state.id is not None
    if not state.customer:
        log.warning("case %s: no customer address for an update", state.reference)
        return
    slot = _update_slot(conn, desk, state.customer)
    if slot.deferred and not action.late and slot.at >= old.due_at:
        _hold_back(conn, desk, state, old, slot)
        return
    # The promise the update makes runs from when it goes out, not from this decision.
    sent_at = slot.at
    new_due = max(action.new_due_at, desk.calendar.add(sent_at, action.window.minutes))
    action = replace(action, new_due_at=new_due)
    last = last_customer_message(conn, state.id)
    zone = desk.calendar.zone
    context = CustomerUpdateContext(
        reference=state.reference,
        customer_name=state.customer_name or (last.name if last else ""),
        subject=state.subject,
        promised_local=old.due_at.astimezone(zone),
        due_local=new_due.astimezone(zone),
        due_customer=customer_due(new_due, zone, last.offset_minutes if last else None),
        window_text=window_duration_text(
            desk.calendar.minutes_between(sent_at, new_due), desk.box.language
        ),
        is_default=action.window.is_default,
        what_is_happening=_what_is_happening(state),
        opening_hours=desk.calendar.describe_hours(desk.box.language),
        team_name=desk.box.display_name or desk.box.address,
        late=action.late,
        waited_text=_waited_text(desk, action.window),
    )
    mail = customer_mail(
        desk.box,
        OutboxKind.CUSTOMER_UPDATE,
        dedup_key=action.key,
        about=About(state.reference, state.subject),
        now=sent_at,
        answering=Answering.last(state.customer, last),
    )
    body = desk.renderer.render("customer_update", desk.box.language, context)
    not_before = slot.at if slot.deferred else None
    if not outbox_store.enqueue_mail(
        conn, mail, body, mailbox=desk.box.name, case_id=state.id, not_before=not_before
    ):
        return
    result.updates += 1
    new = action.new_promise(sent_at)
    new_id = promise_store.insert_promise(conn, new)
    told = f"told {state.customer} a reply is due by {moment(new_due, desk.calendar.zone)}"
    if slot.deferred:
        told += (
            f" (held by the rate limit until {moment(sent_at, desk.calendar.zone)}: {slot.reason})"
        )
    _event(conn, state.id, cases.EventKind.CUSTOMER_UPDATE, desk.now, f"{action.reason}: {told}")
    _event(conn, state.id, cases.EventKind.PROMISE_MADE, desk.now, new.reason)
    if not action.late and sent_at < old.due_at:
        superseded = supersede(old, new_id, sent_at)
        promise_store.update_state(conn, superseded)
        _event(conn, state.id, cases.EventKind.PROMISE_SUPERSEDED, desk.now, superseded.reason)


# -- reminders and escalations ------------------------------------------------------------


def age_text(delta: timedelta) -> str:
    """A case's age as people say it: '45 min', '3 h 20 min', '1 day 3 h'."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours} h"
    if hours:
        return f"{hours} h {mins} min"
    return f"{mins} min"


def _team_mail(
    conn: Connection,
    desk: MailboxContext,
    state: cases.CaseState,
    promised: Promise | None,
    kind: OutboxKind,
    action: Reminder | Escalation | UnreachableNotice,
) -> bool:
    assert state.id is not None
    recipients = tuple(r for r in action.recipients if r)
    if not recipients:
        log.warning("case %s: nobody to send a %s to", state.reference, kind.value)
        return False
    zone = desk.calendar.zone
    last = last_customer_message(conn, state.id)
    context = TeamCaseContext(
        reference=state.reference,
        customer=state.customer or "",
        customer_name=state.customer_name or "",
        subject=state.subject,
        opened_local=state.opened_at.astimezone(zone),
        age_text=age_text(desk.now - state.opened_at),
        promised_local=promised.due_at.astimezone(zone) if promised else None,
        promise_made_local=promised.made_at.astimezone(zone) if promised else None,
        is_default=promised.is_default if promised else False,
        owner=state.owner,
        reason=action.reason,
        last_message=last.body if last else "",
        last_message_at=last.at.astimezone(zone) if last and last.at else None,
        mailbox_address=desk.box.address,
        done_folder=desk.box.done_folder,
        story=_story(conn, desk, state, action),
    )
    mail = team_mail(
        desk.box,
        kind,
        dedup_key=action.key,
        to=recipients,
        about=About(state.reference, state.subject),
        now=desk.now,
    )
    body = desk.renderer.render(kind.value, desk.box.language, context)
    if not outbox_store.enqueue_mail(conn, mail, body, mailbox=desk.box.name, case_id=state.id):
        return False
    event = TEAM_MAIL_EVENTS[kind]
    _event(conn, state.id, event, desk.now, f"{action.reason}: to {', '.join(recipients)}")
    return True


def _story(
    conn: Connection,
    desk: MailboxContext,
    state: cases.CaseState,
    action: Reminder | Escalation | UnreachableNotice,
) -> Story:
    """The whole story of the case, in the mailbox's zone: read only for the cases that
    get a reminder or an escalation now. An escalation queued right after the customer
    update for its promise names the new time that update just told the customer."""
    assert state.id is not None
    just = None
    if isinstance(action, Escalation) and action.promise_id is not None:
        just = story_store.promise_of_update(conn, state.id, action.promise_id)
    story = story_store.load_story(
        conn, state.id, state.reference, now=desk.now, just_promised=just
    )
    return story.in_zone(desk.calendar.zone)


# -- daily digest ---------------------------------------------------------------------------


def _digest_step(desk: MailboxContext) -> int:
    with desk.engine.begin() as conn:
        return _digest(conn, desk)


def _digest(conn: Connection, desk: MailboxContext) -> int:
    """The day's digest once the local digest time has passed (at most one a day).

    Business days only: on a weekend or holiday nobody is there to act on it, and the
    next business day's digest lists everything that is still open.
    """
    box, zone = desk.box, desk.calendar.zone
    local = desk.now.astimezone(zone)
    if local.time() < box.chase.digest_time or not desk.calendar.day_intervals(local.date()):
        return 0
    key = digest_key(box.name, local.date())
    recipients = sorted({*box.team, *([box.lead] if box.lead else [])})
    if not recipients or outbox_store.exists(conn, key):
        return 0
    context = digest_context(conn, desk)
    mail = team_mail(
        box, OutboxKind.DIGEST, dedup_key=key, to=recipients, about=About(None, ""), now=desk.now
    )
    body = desk.renderer.render("digest", "en", context)
    return int(outbox_store.enqueue_mail(conn, mail, body, mailbox=box.name, case_id=None))


def digest_context(conn: Connection, desk: MailboxContext) -> DigestContext:
    box, zone, now = desk.box, desk.calendar.zone, desk.now
    today = now.astimezone(zone).date()
    open_cases = case_store.list_cases(conn, mailbox=box.name, statuses=list(AWAITING_TEAM))
    due = promise_store.next_due_by_case(conn, [c.id for c in open_cases if c.id is not None])
    entries: list[tuple[datetime | None, datetime, int, DigestCase]] = []
    for c in open_cases:
        if c.is_history:
            continue
        at = due.get(c.id) if c.id is not None else None
        entry = DigestCase(
            reference=c.reference,
            customer=c.customer or "",
            subject=c.subject,
            owner=c.owner,
            due_local=at.astimezone(zone) if at else None,
        )
        entries.append((at, c.opened_at, c.id or 0, entry))
    far = datetime.max.replace(tzinfo=now.tzinfo)
    # Total: cases due and opened in the same second are listed by case number.
    entries.sort(key=lambda e: (e[0] or far, e[1], e[2]))
    overdue = [e[3] for e in entries if e[0] is not None and e[0] < now]
    due_today = [
        e[3]
        for e in entries
        if e[0] is not None and e[0] >= now and e[0].astimezone(zone).date() == today
    ]
    kept, broken = _resolved_yesterday(conn, desk)
    return DigestContext(
        mailbox_name=box.display_name or box.name,
        mailbox_address=box.address,
        day=today,
        open_by_urgency=[e[3] for e in entries],
        due_today=due_today,
        overdue=overdue,
        kept_yesterday=kept,
        broken_yesterday=broken,
        done_folder=box.done_folder,
    )


def _resolved_yesterday(conn: Connection, desk: MailboxContext) -> tuple[int, int]:
    zone = desk.calendar.zone
    today = desk.now.astimezone(zone).date()
    start = datetime.combine(today - timedelta(days=1), datetime.min.time(), zone)
    end = datetime.combine(today, datetime.min.time(), zone)
    states = promise_store.states_resolved_between(conn, desk.box.name, start, end)
    return states.count(PromiseState.KEPT.value), states.count(PromiseState.BROKEN.value)


def _waited_text(desk: MailboxContext, window: WindowLike) -> str:
    """How long the case has waited, when the new time was measured from that wait."""
    waited = window.basis.get("waited_minutes")
    if not isinstance(waited, int | float) or isinstance(waited, bool):
        return ""
    return window_duration_text(float(waited), desk.box.language)
