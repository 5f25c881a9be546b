"""Commands by mail, carried out: the shell around `domain.commands`.

Triage hands over a team member's mail about a case (a reply to a reminder, an
escalation, a digest or a customer copy, or a mail to the shared address with the tag)
when its body starts with command lines. Everything happens in the message's own triage
transaction, so a command mail is carried out exactly once, or not at all and tried
again (a case changed meanwhile by the chase or `keepword assign` is read again then;
no update is lost):

- `read`: the commands at the top of the body, and whether the mail went to someone
  outside the team (the customer then already has the command lines).
- `decide`: the case after the commands, with every change on the timeline under its
  actor. A mail that holds only commands and notes, or that went to the shared mailbox
  only, is never the team's answer to the customer: it changes nothing but what its
  commands change.
- `carry_out`: a promise a person set (#promise, #waiting) replaces the open promises in
  the ledger; the customer gets an honest update when told a new time (#waiting, or a
  #promise later than the time they were given); and ONE confirmation, or clear
  refusal, goes back to the sender (never to the customer).

keepword forwards nothing: text below the commands of a mail to the shared address is
kept on the case, not sent; the confirmation says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType

from sqlalchemy import Connection

from keepword.domain.cases import CaseState, Change, Event, EventKind
from keepword.domain.commands import (
    Command,
    Context,
    Outcome,
    Parsed,
    PromiseRequest,
    Verb,
    decide_all,
    parse,
    reply_recipient,
)
from keepword.domain.model import (
    CaseStatus,
    MessageFacts,
    OutboxKind,
    PromiseAudience,
    PromiseKind,
)
from keepword.domain.outbox_keys import command_reply_key, command_update_key
from keepword.domain.promises import Promise, break_if_due, supersede
from keepword.domain.trust import Sender, Standing
from keepword.mail.compose import About, Answering, OutgoingMail, customer_mail, team_mail
from keepword.mail.render import CommandReplyContext, NewTimeContext, customer_due
from keepword.pipeline.context import MailboxContext
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store
from keepword.store.messages import last_customer_message
from keepword.timefmt import moment


@dataclass(frozen=True, slots=True)
class CommandMail:
    """A team member's mail with command lines at the top of its body."""

    facts: MessageFacts
    parsed: Parsed
    sender: Sender
    to_customer: bool  # addressed to someone outside the team: they got the command lines

    @property
    def answers_customer(self) -> bool:
        """The team's answer to the customer: it went to them and says more than commands."""
        return self.to_customer and not self.parsed.only_commands

    @property
    def knows_a_verb(self) -> bool:
        return any(c.verb is not Verb.UNKNOWN for c in self.parsed.commands)


def read(facts: MessageFacts, sender: Sender, team: frozenset[str]) -> CommandMail | None:
    """The command mail in `facts`, or None when its body starts with no command line."""
    parsed = parse(facts.body_text or "")
    if not parsed.commands:
        return None
    members = {a.lower() for a in team}
    outside = any(a.address.lower() not in members for a in (*facts.to, *facts.cc))
    command = CommandMail(facts, parsed, sender, outside)
    if outside and not command.knows_a_verb:
        return None  # a reply to a customer that starts with "#Order 123 shipped": no command
    return command


def staff(desk: MailboxContext) -> frozenset[str]:
    """Who may own a case: the members and the lead (not the shared address)."""
    people = {a.lower() for a in desk.box.team}
    if desk.box.lead:
        people.add(desk.box.lead.lower())
    return frozenset(people)


def received(command: CommandMail, case: CaseState, at: datetime) -> Change:
    """The command mail itself on the case's timeline: no answer, no customer contact."""
    verbs = ", ".join(c.line.split()[0] for c in command.parsed.commands)
    detail = f"command mail: {verbs}"
    if command.to_customer:
        detail += " (also sent to the customer)"
    event = Event(EventKind.COMMAND, at, command.sender.address, detail, command.facts.pk)
    return Change(case, (event,))


def decide(
    command: CommandMail, folded: Change, desk: MailboxContext
) -> tuple[Change, tuple[Outcome, ...]]:
    """The case after the commands, on top of what the mail itself did (`folded`)."""
    context = Context(
        staff=staff(desk), now=desk.now, calendar=desk.calendar, message_pk=command.facts.pk
    )
    final, outcomes = decide_all(command.parsed.commands, folded.case, command.sender, context)
    events = list(folded.events)
    for outcome in outcomes:
        if outcome.change is not None:
            events.extend(outcome.change.events)
        events.extend(outcome.events)
    return Change(final, tuple(events)), outcomes


def carry_out(
    conn: Connection,
    desk: MailboxContext,
    case: CaseState,
    command: CommandMail,
    outcomes: Sequence[Outcome],
) -> None:
    """The promises, the customer update and the confirmation of a decided command mail,
    in the caller's (the message's) transaction."""
    notices: list[str] = []
    requests = [o.promise for o in outcomes if o.accepted and o.promise is not None]
    if requests and case.status is CaseStatus.CLOSED:  # "#promise ...", then "#close"
        notices.append(f"{case.reference} is closed now: no promise was kept open for it.")
    elif requests:
        notices += _set_promise(conn, desk, case, command, requests)
    notices += _what_the_customer_got(command)
    confirm(conn, desk, case, command, outcomes, notices)


def refuse_caseless(conn: Connection, desk: MailboxContext, command: CommandMail) -> None:
    """Commands about no case keepword knows: a refusal back to the sender, nothing else."""
    if not command.knows_a_verb:
        return  # a line like "#hashtag" at the top of some internal mail: no command
    why = (
        "this mail belongs to no case: reply to a keepword mail about the case, or keep "
        "its reference like [KW-42] in the subject"
    )
    refused = tuple(_bare_refusal(c.line, why) for c in command.parsed.commands)
    confirm(conn, desk, None, command, refused, [])


def refuse_unproven(
    conn: Connection, desk: MailboxContext, case: CaseState | None, command: CommandMail
) -> None:
    """Commands from a team address that did not prove it (domain.trust: `claimed_team`):
    nothing is carried out; each refusal is on the timeline of the case it targeted, and
    the team address it claimed is told (the real member learns someone used their name;
    a stranger who merely wrote the address learns nothing of the case)."""
    if command.sender.standing is Standing.TEAM or not command.knows_a_verb:
        return
    why = command.sender.reason or "no proof that the team sent it"
    refused = tuple(_bare_refusal(c.line, why) for c in command.parsed.commands)
    who = command.sender.address or "a sender without an address"
    if case is not None and case.id is not None:
        events = [
            Event(EventKind.REFUSED, desk.now, command.sender.address,
                  f"refused: {c.line} from {who}: {why}", command.facts.pk)
            for c in command.parsed.commands
        ]  # fmt: skip
        case_store.add_events(conn, case.id, events)
    notice = (
        "Someone sent these commands in your name without proof that it was you, so "
        "nothing was changed. If it was you: send commands from the shared mailbox, or "
        "ask your administrator to set up dkim_domains (docs/trust.md)."
    )
    confirm(conn, desk, case, command, refused, [notice])


def _bare_refusal(line: str, why: str) -> Outcome:
    return Outcome(Command(Verb.UNKNOWN, "", line), False, f"Refused: {line} ({why})")


# -- promises a person set ----------------------------------------------------------------


def _set_promise(
    conn: Connection,
    desk: MailboxContext,
    case: CaseState,
    command: CommandMail,
    requests: Sequence[PromiseRequest],
) -> list[str]:
    """The last promise request of the mail replaces every open promise of the case.

    It is a customer promise when the customer is told (#waiting; a #promise later than
    the time they were given is told too: moving their time without a word would be a
    silent breach) or when it replaces a customer promise not yet due (an earlier time
    keeps their word); otherwise the team's own target. Open promises not yet due are
    superseded by it, those past due were broken and are recorded so.
    """
    assert case.id is not None
    now, zone = desk.now, desk.calendar.zone
    request = requests[-1]
    actor = request.set_by
    open_now = promise_store.open_promises(conn, case.id)
    customer_dues = [p.due_at for p in open_now if p.to_customer and p.due_at > now]
    told_before = max(customer_dues, default=None)
    reason = next((r.customer_reason for r in reversed(requests) if r.customer_reason), "")
    tell = any(r.tell_customer for r in requests) or (
        told_before is not None and request.due_at > told_before
    )
    notices: list[str] = []
    if tell and not case.customer:
        notices.append(f"{case.reference} has no customer address: nobody was told the new time.")
        tell = False
    to_customer = tell or told_before is not None
    new = Promise(
        id=None,
        case_id=case.id,
        # Like the chase's updates (never a first-response promise: those calibrate the
        # measured windows, and a person's time is no measurement); untold, a team target.
        kind=PromiseKind.UPDATE if to_customer else PromiseKind.NEXT_RESPONSE,
        audience=PromiseAudience.CUSTOMER if to_customer else PromiseAudience.TEAM,
        made_at=now,
        due_at=request.due_at,
        reason=request.reason,
        basis=MappingProxyType({"set_by": actor, "message": command.facts.pk}),
    )
    new_id = promise_store.insert_promise(conn, new)
    audience = "to the customer" if new.to_customer else "the team's own target"
    events = [
        Event(
            EventKind.PROMISE_MADE,
            now,
            actor,
            f"{request.reason}: due {moment(request.due_at, zone)} ({audience})",
            command.facts.pk,
        )
    ]
    for old in open_now:
        events.append(_replace_old(conn, old, new_id, request, now))
    case_store.add_events(conn, case.id, events)
    if tell and case.customer:
        if _tell_customer(conn, desk, case, command, _NewTime(new, told_before, reason)):
            notices.append(
                f"The customer ({case.customer}) gets an update: "
                + (f"we wait for {reason}; " if reason else "")
                + f"they will hear from us by {moment(new.due_at, zone)}."
            )
    elif told_before is not None:
        notices.append(
            f"The customer was told {moment(told_before, zone)}; your earlier time keeps "
            "that word, so they get no mail about it."
        )
    return notices


def _replace_old(
    conn: Connection, old: Promise, new_id: int, request: PromiseRequest, now: datetime
) -> Event:
    if now < old.due_at:
        settled = replace(
            supersede(old, new_id, now),
            reason=f"replaced by promise {new_id}: {request.reason}",
        )
        kind = EventKind.PROMISE_SUPERSEDED
    else:  # past due before the person set a new time: it was broken, and stays so
        queued = promise_store.update_queued_at(conn, old)
        announced = queued is not None and queued <= old.due_at
        held = not announced and promise_store.update_held_back(conn, old.case_id, old.id or 0)
        settled = break_if_due(old, now, announced=announced, held=held)
        kind = EventKind.PROMISE_BROKEN
    promise_store.update_state(conn, settled)
    return Event(kind, now, request.set_by, f"promise {old.id}: {settled.reason}")


@dataclass(frozen=True, slots=True)
class _NewTime:
    """A time a person set that the customer is told: the new promise, the time they were
    told before (None: never) and what we wait for ("": nothing named)."""

    promise: Promise
    told_before: datetime | None
    reason: str


def _tell_customer(
    conn: Connection, desk: MailboxContext, case: CaseState, command: CommandMail, time: _NewTime
) -> bool:
    """The honest update a person's new time owes the customer (a person decided it:
    no rate limit holds it back, but it counts for the limits of later automatic mail)."""
    assert case.id is not None and case.customer is not None
    new, told_before, reason = time.promise, time.told_before, time.reason
    zone = desk.calendar.zone
    last = last_customer_message(conn, case.id)
    context = NewTimeContext(
        reference=case.reference,
        customer_name=case.customer_name or (last.name if last else ""),
        subject=case.subject,
        reason=reason,
        promised_local=told_before.astimezone(zone) if told_before else None,
        due_local=new.due_at.astimezone(zone),
        due_customer=customer_due(new.due_at, zone, last.offset_minutes if last else None),
        team_name=desk.box.display_name or desk.box.address,
    )
    mail = customer_mail(
        desk.box,
        OutboxKind.CUSTOMER_UPDATE,
        dedup_key=command_update_key(case.id, command.facts.pk),
        about=About(case.reference, case.subject),
        now=desk.now,
        answering=Answering.last(case.customer, last),
    )
    body = desk.renderer.render("new_time", desk.box.language, context)
    if not outbox_store.enqueue_mail(conn, mail, body, mailbox=desk.box.name, case_id=case.id):
        return False
    desk.note_planned(case.customer, desk.now)  # later mail of this run counts it
    detail = (
        f"told {case.customer} by {command.sender.address}'s command: "
        + (f"waiting for {reason}, " if reason else "")
        + f"a reply by {moment(new.due_at, zone)}"
    )
    case_store.add_events(
        conn, case.id, [Event(EventKind.CUSTOMER_UPDATE, desk.now, command.sender.address, detail)]
    )
    return True


# -- the confirmation -----------------------------------------------------------------------


def _what_the_customer_got(command: CommandMail) -> list[str]:
    if command.to_customer:
        return [
            "Your mail went to the customer too, so they have read your command lines"
            + (" and notes" if any(c.verb is Verb.NOTE for c in command.parsed.commands) else "")
            + ". Next time send commands to the shared address or as a reply to a keepword "
            "mail, never to the customer."
        ]
    if command.parsed.only_commands:
        return []
    return [
        "The text below your commands was kept on the case but NOT sent to the customer: "
        "keepword forwards nothing. To answer the customer, reply to their mail."
    ]


def confirm(
    conn: Connection,
    desk: MailboxContext,
    case: CaseState | None,
    command: CommandMail,
    outcomes: Sequence[Outcome],
    notices: Sequence[str],
) -> bool:
    """ONE confirmation or refusal per command mail, to its sender only (a stranger gets
    nothing: `domain.commands.reply_recipient`); False if there is nobody to tell or it
    was queued before."""
    to = reply_recipient(command.sender)
    if to is None or to == (case.customer if case else None):
        return False
    facts = command.facts
    reference = case.reference if case else ""
    subject = case.subject if case else (facts.subject or "")
    context = CommandReplyContext(
        reference=reference,
        subject=subject,
        refused=[o.reply for o in outcomes if not o.accepted],
        done=[o.reply for o in outcomes if o.accepted],
        notices=list(notices),
        mailbox_address=desk.box.address,
    )
    mail: OutgoingMail = team_mail(
        desk.box,
        OutboxKind.COMMAND_REPLY,
        dedup_key=command_reply_key(facts.pk),
        to=(to,),
        about=About(reference or None, subject),
        now=desk.now,
    )
    if facts.message_id:
        mail = replace(mail, in_reply_to=facts.message_id, references=(facts.message_id,))
    body = desk.renderer.render("command_reply", "en", context)
    case_id = case.id if case else None
    return outbox_store.enqueue_mail(conn, mail, body, mailbox=desk.box.name, case_id=case_id)
