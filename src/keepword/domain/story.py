"""The whole story of a case, for escalations and reminders: nobody starts from nothing.

Every customer message (quoted, trimmed of the history it quotes), every team reply,
every promise with when it was made and what became of it, the updates and notes keepword
sent, assignments, internal notes, waits on third parties and refused attempts to join,
in time order. The order is total: entries at the same instant sort by what they are
(the customer's message before the answer to it, a promise before the update that told
it) and then by their stored id, so the same story always reads the same way.

Pure: the shell loads the messages, promises and events of one case and renders the
result with templates/en/_story.txt.j2 and _story.html.j2.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from enum import IntEnum

from mailparser_reply import EmailReplyParser  # type: ignore[import-untyped]

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import Kind, PromiseAudience, PromiseKind, PromiseState

# What a story quotes of one message: enough to understand it, short enough to read.
QUOTE_MAX_CHARS = 1500
QUOTE_MAX_LINES = 30
# The reply parser works on this much of a body: the new text is at the top, and a
# pasted log of megabytes must not cost seconds.
_PARSE_CHARS = 20_000
# Languages whose "On ... wrote:" / "Am ... schrieb:" lines the reply parser knows.
REPLY_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "sv", "da", "pl", "cs")
_QUOTED_LINE = re.compile(r"^\s*>")
# Characters that change how the text around them is shown, not what it says: control
# characters (but tab and newline) and the bidirectional overrides and isolates, with
# which a customer could make their text read as something else ("Trojan Source").
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")

# How much of a long case a team mail tells: the first message (the question) and the
# newest ones, the newest events and promises. A case with 500 messages must still make
# a mail people can read (and an outbox row of kilobytes, not megabytes).
STORY_MAX_MESSAGES = 25
STORY_MAX_EVENTS = 200
STORY_MAX_PROMISES = 50


def shown(text: str) -> str:
    """`text` as a team mail may show it: line ends made "\\n", and control characters and
    bidirectional overrides removed (hostile input cannot reorder or hide what it says)."""
    return _UNSHOWN.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def trim_quoted(
    text: str, max_chars: int = QUOTE_MAX_CHARS, max_lines: int = QUOTE_MAX_LINES
) -> str:
    """The new part of a mail body: quoted history, "On ... wrote:" blocks and "> " lines
    removed (mail-parser-reply finds the reply headers in many languages), then cut to
    `max_lines` / `max_chars` with a visible "[...]". A body that is nothing but a quote
    keeps its quote: better a quoted message than an empty one."""
    body = shown(text[:_PARSE_CHARS])
    latest = EmailReplyParser(languages=list(REPLY_LANGUAGES)).parse_reply(body) or ""
    unquoted = "\n".join(line for line in latest.split("\n") if not _QUOTED_LINE.match(line))
    kept = _tidy(unquoted) or _tidy(latest) or _tidy(body)
    return _cut(kept, max_chars, max_lines)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):  # collapse runs of blank lines
            tidy.append(line)
    return "\n".join(tidy).strip()


def _cut(text: str, max_chars: int, max_lines: int) -> str:
    lines = text.split("\n")
    kept: list[str] = []
    used = 0
    for line in lines[:max_lines]:
        if used + len(line) > max_chars:
            room = max_chars - used
            if room > 20:
                kept.append(line[:room].rstrip() + " [...]")
            break
        kept.append(line)
        used += len(line) + 1
    if len(kept) < len(lines) and not (kept and kept[-1].endswith("[...]")):
        kept.append("[...]")
    return "\n".join(kept)


# -- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoryMessage:
    pk: int
    at: datetime
    kind: Kind
    sender: str | None
    body_text: str
    sender_name: str = ""


@dataclass(frozen=True, slots=True)
class StoryPromise:
    id: int
    made_at: datetime
    due_at: datetime
    kind: PromiseKind
    audience: PromiseAudience
    state: PromiseState
    resolved_at: datetime | None = None
    reason: str = ""
    set_by: str | None = None  # a team member's #promise / #waiting; None: measured


# -- the story -----------------------------------------------------------------------------


class Part(IntEnum):
    """What an entry is; at the same instant they sort in this order."""

    CUSTOMER = 1
    TEAM_REPLY = 2
    REFUSED = 3
    ASSIGNMENT = 4
    NOTE = 5
    WAITING = 6
    PROMISE = 7
    UPDATE = 8
    STATUS = 9
    OTHER = 10


@dataclass(frozen=True, slots=True)
class StoryEntry:
    at: datetime
    part: Part
    actor: str | None
    title: str  # one line: "Customer wrote", "Promised an answer by ..."
    text: str = ""  # the trimmed message or the note, may be several lines
    fate: str = ""  # promises: "kept", "broken", "open, due ...", ...
    due_at: datetime | None = None  # promises and waits
    is_new: bool = False  # the promise made together with the mail that shows the story
    order: int = 0  # the tiebreak within one instant and part: stored id
    # What the entry is, stably (templates in other languages word the title from it):
    # "customer", "team_reply", "promise:<audience>:<kind>" or the event kind's value.
    key: str = ""
    who: str = ""  # messages: "Name <address>" of the sender; events: who did it


@dataclass(frozen=True, slots=True)
class Story:
    reference: str
    entries: tuple[StoryEntry, ...]
    just_promised: datetime | None = None  # the new time told to the customer right now
    # Messages of the case not in `entries` (a long case: the first and the newest are).
    messages_left_out: int = 0

    @property
    def customer_messages(self) -> int:
        return sum(1 for entry in self.entries if entry.part is Part.CUSTOMER)

    def in_zone(self, zone: tzinfo) -> Story:
        """The same story with every instant in `zone` (templates show instants in their
        own zone: the mailbox's, for the team)."""
        entries = tuple(
            replace(
                e,
                at=e.at.astimezone(zone),
                due_at=e.due_at.astimezone(zone) if e.due_at else None,
            )
            for e in self.entries
        )
        just = self.just_promised.astimezone(zone) if self.just_promised else None
        return Story(self.reference, entries, just, self.messages_left_out)


_EVENT_PARTS: dict[EventKind, tuple[Part, str]] = {
    EventKind.OWNER_CHANGED: (Part.ASSIGNMENT, "Owner changed"),
    EventKind.NOTE: (Part.NOTE, "Internal note"),
    EventKind.WAITING: (Part.WAITING, "Waiting on a third party"),
    EventKind.REFUSED: (Part.REFUSED, "Refused"),
    EventKind.ACKNOWLEDGEMENT: (Part.UPDATE, "Acknowledgement sent to the customer"),
    EventKind.FOLLOW_UP_NOTE: (Part.UPDATE, "Follow-up note sent to the customer"),
    EventKind.CUSTOMER_UPDATE: (Part.UPDATE, "Update sent to the customer"),
    # What became of queued mail, where it was not simply sent: the story stays honest.
    EventKind.DEFERRED: (Part.UPDATE, "Held back by a rate limit"),
    EventKind.WITHDRAWN: (Part.UPDATE, "Queued mail not sent"),
    EventKind.REMINDER: (Part.OTHER, "Reminder sent"),
    EventKind.CLOSED: (Part.STATUS, "Closed"),
    EventKind.REOPENED: (Part.STATUS, "Reopened"),
    EventKind.AWAY: (Part.ASSIGNMENT, "Team member away"),
    EventKind.COMMAND: (Part.OTHER, "Command by mail"),
    EventKind.DELIVERY_FAILED: (Part.OTHER, "Delivery failed"),
    EventKind.UNREACHABLE: (Part.OTHER, "Team told the customer cannot be reached"),
    EventKind.ESCALATION: (Part.OTHER, "Escalated"),
}


# The timeline events a story tells (the store loads only these).
STORY_EVENT_KINDS = frozenset(_EVENT_PARTS)


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """What the store holds of a case for its story: the messages it loaded (and how many
    of a long case it left out), the promises, and the timeline events in stored order
    (their index is the tiebreak)."""

    messages: Sequence[StoryMessage]
    promises: Sequence[StoryPromise]
    events: Sequence[Event]
    messages_left_out: int = 0


def build_story(
    reference: str,
    record: CaseRecord,
    *,
    now: datetime,
    new_promise: StoryPromise | None = None,
) -> Story:
    """The case's story in total order. `new_promise`: made in the same transaction as
    the mail showing the story (an escalation with a customer update), flagged and named
    up front."""
    kinds = (Kind.CUSTOMER, Kind.STAFF)
    entries = [_message_entry(m) for m in record.messages if m.kind in kinds]
    known = {p.id for p in record.promises}
    every = list(record.promises)
    if new_promise is not None and new_promise.id not in known:
        every.append(new_promise)
    new_id = new_promise.id if new_promise is not None else None
    entries += [_promise_entry(p, now, is_new=p.id == new_id) for p in every]
    events = enumerate(record.events)
    entries += [e for index, event in events if (e := _event_entry(event, index))]
    entries.sort(key=lambda e: (e.at, e.part, e.order, e.title))
    just = new_promise.due_at if new_promise is not None else None
    return Story(reference, tuple(entries), just, record.messages_left_out)


def _message_entry(message: StoryMessage) -> StoryEntry:
    who = shown(message.sender or "(no sender)")
    name = " ".join(shown(message.sender_name).split())
    named = f"{name} <{who}>" if name else who
    if message.kind is Kind.CUSTOMER:
        title, part, key = f"{named} wrote", Part.CUSTOMER, "customer"
    else:
        title, part, key = f"{named} replied", Part.TEAM_REPLY, "team_reply"
    text = trim_quoted(message.body_text)
    return StoryEntry(
        message.at, part, message.sender, title, text, order=message.pk, key=key, who=named
    )


_PROMISE_WORDS = {
    PromiseKind.FIRST_RESPONSE: "an answer",
    PromiseKind.NEXT_RESPONSE: "the next answer",
    PromiseKind.UPDATE: "an update",
}


def _promise_entry(promise: StoryPromise, now: datetime, *, is_new: bool) -> StoryEntry:
    what = _PROMISE_WORDS.get(promise.kind, "an answer")
    to = "the customer" if promise.audience is PromiseAudience.CUSTOMER else "the team (internal)"
    by = f" (set by {promise.set_by})" if promise.set_by else ""
    title = f"Promised {to} {what}{by}"
    return StoryEntry(
        promise.made_at,
        Part.PROMISE,
        promise.set_by,
        title,
        promise.reason,
        fate=promise_fate(promise, now),
        due_at=promise.due_at,
        is_new=is_new,
        order=promise.id,
        key=f"promise:{promise.audience.value}:{promise.kind.value}",
        who=promise.set_by or "",
    )


def promise_fate(promise: StoryPromise, now: datetime) -> str:
    """What became of a promise, in words: kept, broken, replaced, withdrawn or open."""
    state = promise.state
    if state is PromiseState.OPEN:
        return "open, overdue" if promise.due_at <= now else "open"
    if state is PromiseState.KEPT:
        return "kept"
    if state is PromiseState.BROKEN:
        return "broken"
    if state is PromiseState.SUPERSEDED:
        return "replaced by a later promise, announced in time"
    return "withdrawn"


def _event_entry(event: Event, index: int) -> StoryEntry | None:
    found = _EVENT_PARTS.get(event.kind)
    if found is None:
        return None  # messages and promises tell those themselves
    part, title = found
    detail = shown(event.detail)  # a refusal quotes what a stranger sent
    who = shown(event.actor or "")
    return StoryEntry(
        event.at, part, event.actor, title, detail, order=index, key=event.kind.value, who=who
    )
