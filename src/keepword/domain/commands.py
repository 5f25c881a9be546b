"""Commands by mail: a team member steers a case from any mail client.

Command lines stand at the top of the body of a mail about a case (a reply to a
reminder, an escalation, a digest or a customer copy, or a new mail to the shared
address with the tag in the subject):

    #take                        I own this case now
    #assign bob@example.com      Bob owns it (only team members)
    #close                       closed (a new customer mail reopens it)
    #reopen                      open again
    #note text...                an internal note; the lines below it, up to a blank
                                 line, belong to it. Never mailed to the customer
    #waiting 2025-03-14 reason   waiting on a third party: the customer is told the
                                 reason and the new time; the chase follows that time
    #promise <time>              a promise a person set; replaces the measured one

`<time>`: `2025-03-14 15:00`, `2025-03-14` (the end of that business day), `15:00`
(today), `tomorrow`, `tomorrow 10:00`, `+4h`, `+2d` (the end of that business day).

The block ends at the first line that is not a command, a note's line or blank; what
follows is the reply text. A line that looks like a command but is not one (`#asign`)
is stripped and refused, never sent to a customer. Quoted history is cut off before
parsing: commands in a quoted mail are not the sender's.

Pure: `parse` reads a body, `decide` says what one command does to a CaseState for a
given sender. Only a proven team member (domain.trust, Standing.TEAM) may command; a
refusal says why and goes back to the sender only if the sender is (or claims to be)
on the team: a stranger learns nothing of the case from it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from email.utils import parseaddr
from enum import StrEnum
from zoneinfo import ZoneInfo

from keepword.domain import cases
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState, Change, Event, EventKind
from keepword.domain.model import CaseStatus
from keepword.domain.story import trim_quoted
from keepword.domain.trust import Sender, Standing


class Verb(StrEnum):
    TAKE = "take"
    ASSIGN = "assign"
    CLOSE = "close"
    REOPEN = "reopen"
    NOTE = "note"
    WAITING = "waiting"
    PROMISE = "promise"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Command:
    verb: Verb
    argument: str  # the rest of the line (a note: its whole text)
    line: str  # as written, for confirmations


@dataclass(frozen=True, slots=True)
class Parsed:
    commands: tuple[Command, ...]
    reply_text: str  # the new text after the commands: what a customer copy may carry

    @property
    def only_commands(self) -> bool:
        """Nothing but commands, notes and a signature: never forwarded to the customer."""
        return bool(self.commands) and not without_signature(self.reply_text)


_SIGNATURE_START = re.compile(r"^(?:--\s*|sent from my .*|von meinem .* gesendet)$", re.I)


def without_signature(text: str) -> str:
    """The text above a signature delimiter ("-- ") or a phone's "Sent from my ..." line."""
    kept: list[str] = []
    for line in text.split("\n"):
        if _SIGNATURE_START.match(line.strip()):
            break
        kept.append(line)
    return "\n".join(kept).strip()


_COMMAND_LINE = re.compile(r"^\s*#([A-Za-z][A-Za-z-]{0,19})(?:[ \t:]+(.*))?\s*$")
# Long enough for a week of opening days; a waiting date far off is no promise.
MAX_PROMISE_AHEAD = timedelta(days=120)
# The notes' own maximum (the case_event detail is Text, but a note is not a document).
MAX_NOTE_CHARS = 4000


def parse(body: str) -> Parsed:
    """The command lines at the top of `body` and the reply text below them.

    Quoted history is cut off first (domain.story.trim_quoted, without its length cap).
    """
    text = trim_quoted(body, max_chars=1_000_000, max_lines=100_000)
    lines = text.split("\n")
    commands: list[Command] = []
    note: list[str] | None = None
    index = 0
    for index, line in enumerate(lines):  # noqa: B007 (the index is where the block ends)
        if not line.strip():
            _end_note(commands, note)
            note = None
            continue
        match = _COMMAND_LINE.match(line)
        if match:
            _end_note(commands, note)
            note = None
            verb = _verb(match.group(1))
            argument = (match.group(2) or "").strip()
            if verb is Verb.NOTE:
                note = [argument] if argument else []
                commands.append(Command(Verb.NOTE, "", line.strip()))
            else:
                commands.append(Command(verb, argument, line.strip()))
            continue
        if note is not None:
            note.append(line.strip())
            continue
        break
    else:
        index = len(lines)
    _end_note(commands, note)
    reply = "\n".join(lines[index:]).strip() if commands else text.strip()
    return Parsed(tuple(commands), reply)


def _verb(word: str) -> Verb:
    try:
        return Verb(word.lower())
    except ValueError:
        return Verb.UNKNOWN


def _end_note(commands: list[Command], note: list[str] | None) -> None:
    if note is not None:
        text = "\n".join(note).strip()[:MAX_NOTE_CHARS]
        commands[-1] = replace(commands[-1], argument=text)


def strip_commands(body: str) -> str:
    """What a customer copy of a staff reply may contain: no commands, no quoted history."""
    return parse(body).reply_text


# -- deciding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromiseRequest:
    """A promise a person set: the shell supersedes the open customer promise with it."""

    due_at: datetime
    made_at: datetime
    reason: str
    set_by: str
    tell_customer: bool  # #waiting: an honest update with the reason and the new time
    customer_reason: str = ""  # #waiting: what we wait for, as the customer reads it


@dataclass(frozen=True, slots=True)
class Outcome:
    command: Command
    accepted: bool
    reply: str  # one line for the confirmation or refusal mail
    change: Change | None = None  # the case after the command, with its events
    promise: PromiseRequest | None = None
    events: tuple[Event, ...] = field(default=())  # REFUSED / NOTE / COMMAND lines


@dataclass(frozen=True, slots=True)
class Context:
    """What deciding needs besides the case: the team, the clock, the calendar."""

    staff: frozenset[str]  # who may own cases (team members, lower case)
    now: datetime
    calendar: BusinessCalendar
    message_pk: int | None = None


def reply_recipient(sender: Sender) -> str | None:
    """Where confirmations and refusals go: the sender if it is or claims the team.

    A stranger gets nothing back (not even "refused"): the case stays invisible.
    """
    if sender.address is None:
        return None
    if sender.standing is Standing.TEAM or sender.claimed_team:
        return sender.address
    return None


def decide_all(
    commands: Collection[Command], case: CaseState, sender: Sender, context: Context
) -> tuple[CaseState, tuple[Outcome, ...]]:
    """Every command in order, each on the case as the previous one left it."""
    outcomes: list[Outcome] = []
    current = case
    for command in commands:
        outcome = decide(command, current, sender, context)
        if outcome.change is not None:
            current = outcome.change.case
        outcomes.append(outcome)
    return current, tuple(outcomes)


def decide(command: Command, case: CaseState, sender: Sender, context: Context) -> Outcome:
    """What `command` does to `case` when `sender` sends it."""
    if sender.standing is not Standing.TEAM or sender.address is None:
        why = sender.reason if sender.claimed_team else "commands are taken from the team only"
        return _refuse(command, case, sender, context, why)
    actor = sender.address
    handler = _HANDLERS.get(command.verb)
    if handler is None:
        return _refuse(command, case, sender, context, f"unknown command {command.line!r}")
    return handler(command, case, actor, context)


def _refuse(
    command: Command, case: CaseState, sender: Sender, context: Context, why: str
) -> Outcome:
    who = sender.address or "a sender without an address"
    detail = f"refused: {command.line} from {who}: {why}"
    event = Event(EventKind.REFUSED, context.now, sender.address, detail, context.message_pk)
    return Outcome(command, False, f"Refused: {command.line} ({why})", events=(event,))


def _accepted(command: Command, reply: str, change: Change, context: Context) -> Outcome:
    return Outcome(command, True, reply, change=change)


def _take(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    if actor not in context.staff:
        return _refused_by_rule(command, actor, context, f"{actor} is not a team member")
    change = cases.assign(case, actor, at=context.now, actor=actor, why="#take by mail")
    reply = f"{case.reference} is yours now." if change.events else f"{case.reference} was yours."
    return _accepted(command, reply, change, context)


def _assign(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    target = assign_target(command.argument, context.staff)
    if isinstance(target, Refused):
        return _refused_by_rule(command, actor, context, target.reason)
    change = cases.assign(case, target, at=context.now, actor=actor, why=f"#assign by {actor}")
    return _accepted(command, f"{case.reference} is now owned by {target}.", change, context)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def assign_target(argument: str, staff: Collection[str]) -> str | Refused:
    """The team member an `assign` names, or why not (also for the CLI's `assign`)."""
    _name, address = parseaddr(argument.strip())
    address = address.strip().lower()
    if not address or "@" not in address:
        return Refused(f"{argument.strip() or 'nothing'} is not an address")
    if address not in {a.lower() for a in staff}:
        return Refused(f"{address} is not on the team")
    return address


def _close(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    why = f"#close by {actor}" + (f": {command.argument}" if command.argument else "")
    change = cases.close(case, at=context.now, actor=actor, why=why)
    done = "closed" if change.events else "was already closed"
    return _accepted(command, f"{case.reference} {done}.", change, context)


def _reopen(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    why = f"#reopen by {actor}" + (f": {command.argument}" if command.argument else "")
    change = cases.reopen(case, at=context.now, actor=actor, why=why)
    if change.events:  # a person reopened it to work on it: it waits on the team
        change = Change(replace(change.case, status=CaseStatus.WAITING_ON_TEAM), change.events)
    done = "is open again and waits on the team" if change.events else "was open"
    return _accepted(command, f"{case.reference} {done}.", change, context)


def _note(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    if not command.argument:
        return _refused_by_rule(command, actor, context, "the note is empty")
    event = Event(EventKind.NOTE, context.now, actor, command.argument, context.message_pk)
    change = Change(case, (event,))
    return _accepted(
        command, f"Note added to {case.reference} (never sent to the customer).", change, context
    )


def _waiting(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    day_text, _, reason = command.argument.partition(" ")
    reason = reason.strip()
    try:
        day = date.fromisoformat(day_text.strip())
    except ValueError:
        return _refused_by_rule(command, actor, context, "write the date as YYYY-MM-DD")
    if not reason:
        return _refused_by_rule(command, actor, context, "say what we are waiting for")
    if case.status is CaseStatus.CLOSED:
        return _refused_by_rule(command, actor, context, f"{case.reference} is closed")
    due = end_of_business_day(context.calendar, day)
    problem = _too_early_or_late(due, context.now)
    if problem:
        return _refused_by_rule(command, actor, context, problem)
    detail = f"waiting until {day.isoformat()}: {reason}"
    event = Event(EventKind.WAITING, context.now, actor, detail, context.message_pk)
    promise = PromiseRequest(
        due, context.now, f"#waiting by {actor}: {reason}", actor, True, reason
    )
    reply = (
        f"{case.reference}: the customer is told we wait for {reason} and will hear from us "
        f"by {_local(due, context.calendar.zone)}."
    )
    return Outcome(command, True, reply, change=Change(_owed(case), (event,)), promise=promise)


def _owed(case: CaseState) -> CaseState:
    """A case with a promise a person set waits on the team (a case waiting on the
    customer is never chased: its promises would be withdrawn, not followed)."""
    if case.status is CaseStatus.WAITING_ON_CUSTOMER:
        return replace(case, status=CaseStatus.WAITING_ON_TEAM)
    return case


def _promise(command: Command, case: CaseState, actor: str, context: Context) -> Outcome:
    if case.status is CaseStatus.CLOSED:
        return _refused_by_rule(command, actor, context, f"{case.reference} is closed")
    due = parse_when(command.argument, context.now, context.calendar)
    if isinstance(due, Refused):
        return _refused_by_rule(command, actor, context, due.reason)
    problem = _too_early_or_late(due, context.now)
    if problem:
        return _refused_by_rule(command, actor, context, problem)
    when = _local(due, context.calendar.zone)
    event = Event(
        EventKind.COMMAND, context.now, actor, f"#promise {when} by {actor}", context.message_pk
    )
    promise = PromiseRequest(due, context.now, f"#promise by {actor}", actor, False)
    reply = f"{case.reference}: promised by {when}; the chase follows this time."
    return Outcome(command, True, reply, change=Change(_owed(case), (event,)), promise=promise)


def _refused_by_rule(command: Command, actor: str, context: Context, why: str) -> Outcome:
    detail = f"refused: {command.line} from {actor}: {why}"
    event = Event(EventKind.REFUSED, context.now, actor, detail, context.message_pk)
    return Outcome(command, False, f"Refused: {command.line} ({why})", events=(event,))


_HANDLERS = {
    Verb.TAKE: _take,
    Verb.ASSIGN: _assign,
    Verb.CLOSE: _close,
    Verb.REOPEN: _reopen,
    Verb.NOTE: _note,
    Verb.WAITING: _waiting,
    Verb.PROMISE: _promise,
}


# -- times ----------------------------------------------------------------------------------


def end_of_business_day(calendar: BusinessCalendar, day: date) -> datetime:
    """The close of the last open interval of `day`, or of the next open day after it
    (a wait until a Sunday ends on Monday evening); the end of `day` if none is near."""
    for offset in range(15):
        intervals = calendar.day_intervals(day + timedelta(days=offset))
        if intervals:
            return intervals[-1][1]
    return datetime.combine(day + timedelta(days=1), time(0), calendar.zone)


_RELATIVE = re.compile(r"^\+\s*(\d{1,3})\s*(h|hours?|d|days?)$", re.IGNORECASE)
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_ISO_T = re.compile(r"^(\d{4}-\d{2}-\d{2})t(\d)")


def parse_when(text: str, now: datetime, calendar: BusinessCalendar) -> datetime | Refused:
    """A `#promise` time in the mailbox's zone -> an aware instant (or why not)."""
    spec = " ".join(_ISO_T.sub(r"\1 \2", text.strip().lower()).split())
    if not spec:
        return Refused("say when, e.g. #promise 2025-03-14 15:00, #promise tomorrow, #promise +4h")
    zone = calendar.zone
    today = now.astimezone(zone).date()
    relative = _RELATIVE.match(spec)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)[0]
        if unit == "h":
            return now + timedelta(hours=amount)
        return end_of_business_day(calendar, today + timedelta(days=amount))
    words = spec.split(" ")
    if words[0] in ("today", "tomorrow"):
        day = today + timedelta(days=1 if words[0] == "tomorrow" else 0)
        return _on_day(day, words[1:], calendar)
    try:
        day = date.fromisoformat(words[0])
    except ValueError:
        if _CLOCK.match(words[0]) and len(words) == 1:
            return _on_day(today, words, calendar)
        return Refused(f"cannot read {text.strip()!r} as a time")
    return _on_day(day, words[1:], calendar)


def _on_day(day: date, rest: list[str], calendar: BusinessCalendar) -> datetime | Refused:
    if not rest:
        return end_of_business_day(calendar, day)
    clock = _CLOCK.match(rest[0]) if len(rest) == 1 else None
    if clock is None:
        return Refused(f"cannot read {' '.join(rest)!r} as a time of day (use HH:MM)")
    hour, minute = int(clock.group(1)), int(clock.group(2))
    if hour > 23 or minute > 59:
        return Refused(f"{rest[0]} is no time of day")
    return datetime.combine(day, time(hour, minute), calendar.zone)


def _too_early_or_late(due: datetime, now: datetime) -> str | None:
    if due <= now:
        return "that time has passed"
    if due - now > MAX_PROMISE_AHEAD:
        return f"more than {MAX_PROMISE_AHEAD.days} days ahead is no promise"
    return None


def _local(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


def confirmation_text(reference: str, outcomes: Collection[Outcome]) -> str:
    """The body of the mail back to the sender: one line per command, refusals first."""
    refused = [o.reply for o in outcomes if not o.accepted]
    done = [o.reply for o in outcomes if o.accepted]
    lines = [f"Commands for {reference}:", ""]
    lines += [f"  {line}" for line in refused + done]
    if refused:
        lines += ["", "Nothing was sent to the customer for the refused commands."]
    return "\n".join(lines) + "\n"
