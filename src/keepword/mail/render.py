"""Mail text from Jinja2 templates: per language, overridable per mailbox, strict.

Lookup order for `<language>/<name>.txt.j2` (and the optional `.html.j2`): the mailbox's
templates_dir, keepword.templates_dir, the templates shipped in the package
(keepword/templates in the wheel) and the repository's top-level templates/ (editable
installs). A ChoiceLoader searches them in that order, so an override folder needs only
the files it changes. A language without a template falls back to English: team mails
(lead_alert, digest) exist in English only; reminders and escalations also in German,
and their included partials fall back to English the same way (`language ~ "/..."`
first, then "en/...").

Templates get typed context objects (below) and format instants with the `when` filter,
in the context's language and in the instant's own zone (the mailbox zone for
`due_local`, the customer's UTC offset for `due_customer`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    pass_context,
    select_autoescape,
)
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.runtime import Context as JinjaContext
from markupsafe import Markup, escape

from keepword.config import MailboxSettings, Settings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.model import MessageFacts
from keepword.domain.story import Story
from keepword.domain.windows import BUSINESS_DAY_MINUTES, Window
from keepword.errors import KeepwordError

FALLBACK_LANGUAGE = "en"
QUOTE_MAX_LINES = 25
QUOTE_MAX_CHARS = 2000


class TemplateError(KeepwordError):
    """A template is missing or uses something its context does not have."""


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    html: str | None = None


# -- contexts: one per template ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcknowledgementContext:
    """The one acknowledgement of a new case.

    `due_local` is in the mailbox zone; `due_customer` is the same instant at the
    customer's UTC offset, or None when it is the mailbox's (see `customer_due`).
    `is_default`: no measurement behind the window, so the mail must not claim one.
    `behind`: the honest window is above the configured maximum.
    """

    reference: str
    customer_name: str
    subject: str
    due_local: datetime
    due_customer: datetime | None
    window_text: str
    is_default: bool
    behind: bool
    opening_hours: Sequence[str]
    team_name: str


@dataclass(frozen=True, slots=True)
class FollowUpNoteContext:
    """ "Added to KW-42, still due by ...": a further customer mail in an open case."""

    reference: str
    customer_name: str
    subject: str
    due_local: datetime
    due_customer: datetime | None
    team_name: str


@dataclass(frozen=True, slots=True)
class CustomerUpdateContext:
    """An honest apology before a promise breaks (LATTE), with the new time."""

    reference: str
    customer_name: str
    subject: str
    promised_local: datetime  # the time we are about to miss
    due_local: datetime  # the new time
    due_customer: datetime | None
    window_text: str
    is_default: bool
    what_is_happening: str  # e.g. "Your case is with Alice, who is working on it."
    opening_hours: Sequence[str]
    team_name: str
    late: bool = False  # the promised time has already passed: say "we missed it"
    waited_text: str = ""  # how long the case has waited (the new time is the residual)


@dataclass(frozen=True, slots=True)
class TeamCaseContext:
    """Reminder (to the owner/team) and escalation (to the lead): one case to act on."""

    reference: str
    customer: str  # address
    customer_name: str
    subject: str
    opened_local: datetime
    age_text: str  # "1 day 3 h"
    promised_local: datetime | None  # when the customer was told to expect an answer
    promise_made_local: datetime | None
    is_default: bool
    owner: str | None
    reason: str  # why this mail: "50% of the window has passed", "written 3 times"
    last_message: str  # the last customer message, plain text (quoted and trimmed here)
    last_message_at: datetime | None
    mailbox_address: str
    done_folder: str | None
    # The whole story of the case (in the mailbox's zone); None: only the last message.
    story: Story | None = None


@dataclass(frozen=True, slots=True)
class NewTimeContext:
    """A new time a team member set by mail (#waiting, a later #promise): the customer
    is told why (if a reason was given) and when they will hear from us."""

    reference: str
    customer_name: str
    subject: str
    reason: str  # what we wait for ("" for a #promise)
    promised_local: datetime | None  # the time they were given before, if any
    due_local: datetime
    due_customer: datetime | None
    team_name: str


@dataclass(frozen=True, slots=True)
class CommandReplyContext:
    """The one confirmation of a command mail, to its sender only (never the customer)."""

    reference: str  # "" when the mail was about no case keepword knows
    subject: str
    refused: Sequence[str]  # one line per refused command
    done: Sequence[str]  # one line per carried-out command
    notices: Sequence[str]  # what else the sender must know (what the customer got)
    mailbox_address: str


@dataclass(frozen=True, slots=True)
class LeadAlertContext:
    """ "We are behind": the honest window is above the maximum."""

    reference: str
    customer: str
    subject: str
    window_text: str
    maximum_text: str
    due_local: datetime
    explanation: str  # Window.explain()
    mailbox_address: str
    team_name: str
    cases_waiting: int = 1  # for a first response, this case included


@dataclass(frozen=True, slots=True)
class DigestCase:
    reference: str
    customer: str
    subject: str
    owner: str | None
    due_local: datetime | None


@dataclass(frozen=True, slots=True)
class DigestContext:
    """Daily summary for one mailbox."""

    mailbox_name: str
    mailbox_address: str
    day: date
    open_by_urgency: Sequence[DigestCase]  # most urgent first
    due_today: Sequence[DigestCase]
    overdue: Sequence[DigestCase]
    kept_yesterday: int
    broken_yesterday: int
    done_folder: str | None = None
    notes: Sequence[str] = field(default_factory=tuple)


Context = (
    AcknowledgementContext
    | FollowUpNoteContext
    | CustomerUpdateContext
    | TeamCaseContext
    | LeadAlertContext
    | DigestContext
    | NewTimeContext
    | CommandReplyContext
)

TEMPLATE_NAMES = {
    "acknowledgement": AcknowledgementContext,
    "follow_up_note": FollowUpNoteContext,
    "customer_update": CustomerUpdateContext,
    "reminder": TeamCaseContext,
    "escalation": TeamCaseContext,
    "customer_unreachable": TeamCaseContext,
    "lead_alert": LeadAlertContext,
    "digest": DigestContext,
    "new_time": NewTimeContext,
    "command_reply": CommandReplyContext,
}


# -- template directories --------------------------------------------------------------


def shipped_template_dirs() -> list[Path]:
    """The wheel's keepword/templates, then the repository's templates/ (editable)."""
    dirs: list[Path] = []
    packaged = Path(str(resources.files("keepword").joinpath("templates")))
    if packaged.is_dir():
        dirs.append(packaged)
    repo = Path(__file__).resolve().parents[3] / "templates"
    if repo.is_dir() and repo not in dirs:
        dirs.append(repo)
    return dirs


class Renderer:
    """Renders templates; `mailbox_dir` and `global_dir` override single files."""

    def __init__(self, mailbox_dir: Path | None = None, global_dir: Path | None = None) -> None:
        search = [d for d in (mailbox_dir, global_dir) if d is not None]
        search += shipped_template_dirs()
        self.search_path = tuple(search)
        self._env = Environment(
            loader=ChoiceLoader([FileSystemLoader(str(d)) for d in search]),
            undefined=StrictUndefined,
            autoescape=select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=False, default=False
            ),
            keep_trailing_newline=True,
        )
        self._env.filters["when"] = _when_filter
        self._env.filters["day"] = _day_filter
        self._env.filters["quote"] = quote
        self._env.filters["lines"] = html_lines

    @classmethod
    def for_mailbox(cls, settings: Settings, mailbox: MailboxSettings) -> Renderer:
        """Mailbox templates_dir, then keepword.templates_dir, then the shipped ones."""
        return cls(mailbox.templates_dir, settings.keepword.templates_dir)

    def render(self, name: str, language: str, context: Context) -> Rendered:
        variables = _variables(context)
        text = self._render(name, language, "txt", variables)
        if text is None:
            raise TemplateError(f"no template {language}/{name}.txt.j2 (nor in English)")
        return Rendered(text=text, html=self._render(name, language, "html", variables))

    def _render(self, name: str, language: str, ext: str, variables: dict[str, Any]) -> str | None:
        for lang in dict.fromkeys((language, FALLBACK_LANGUAGE)):
            path = f"{lang}/{name}.{ext}.j2"
            try:
                template = self._env.get_template(path)
            except TemplateNotFound:
                continue
            try:
                return template.render(variables, language=lang)
            except JinjaTemplateError as exc:  # StrictUndefined lands here too
                raise TemplateError(f"template {path}: {exc}") from exc
        return None


def _variables(context: Context) -> dict[str, Any]:
    # Shallow on purpose: nested dataclasses (DigestCase) stay objects for the template.
    return {f.name: getattr(context, f.name) for f in dataclasses.fields(context)}


# -- formatting ------------------------------------------------------------------------


def format_when(at: datetime, language: str) -> str:
    """'Tuesday, November 24, 2026, 12:00 (Europe/Berlin)' in the instant's own zone.

    A fixed offset (the customer's, from their Date header) is shown as 'UTC-05:00'.
    """
    if at.tzinfo is None:
        raise TemplateError(f"naive datetime {at!r} in a mail template")
    return _format_when(at, at.tzinfo, language)


@functools.lru_cache(maxsize=256)
def _format_when(at: datetime, zone: tzinfo, language: str) -> str:
    """Cached: a surge's acknowledgements promise a handful of times, and Babel's full
    date format was a tenth of an acknowledgement. The zone is part of the key (equal
    instants in two zones compare equal but read differently)."""
    day = format_date(at, format="full", locale=language)
    clock = format_time(at, "HH:mm", locale=language)
    return f"{day}, {clock} ({zone_label(at)})"


def zone_label(at: datetime) -> str:
    if isinstance(at.tzinfo, ZoneInfo):
        return at.tzinfo.key
    offset = at.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{rest:02d}"


def customer_due(due: datetime, zone: ZoneInfo, offset_minutes: int | None) -> datetime | None:
    """`due` at the customer's UTC offset, or None when unknown or the same as ours."""
    if offset_minutes is None:
        return None
    ours = due.astimezone(zone).utcoffset()
    if ours is not None and int(ours.total_seconds() // 60) == offset_minutes:
        return None
    return due.astimezone(timezone(timedelta(minutes=offset_minutes)))


def quote(text: str, max_lines: int = QUOTE_MAX_LINES, max_chars: int = QUOTE_MAX_CHARS) -> str:
    """The customer's text as a '> ' quote, trimmed so a team mail stays readable."""
    lines = text.strip().splitlines()
    kept: list[str] = []
    used = 0
    for line in lines[:max_lines]:
        if used + len(line) > max_chars:
            break
        kept.append(line.rstrip())
        used += len(line)
    trimmed = len(kept) < len(lines)
    quoted = "\n".join(f"> {line}" if line else ">" for line in kept)
    return quoted + ("\n> [...]" if trimmed else "")


def html_lines(text: str) -> Markup:
    """Text as escaped HTML lines joined by <br>: clients that ignore `white-space: pre`
    (Outlook) still show the line breaks, and no character of `text` becomes markup."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return Markup("<br>\n").join(escape(line) for line in lines)


_UNITS = {
    "en": (("business minute", "business minutes"), ("business hour", "business hours"),
           ("business day", "business days")),
    "de": (("Geschäftsminute", "Geschäftsminuten"), ("Geschäftsstunde", "Geschäftsstunden"),
           ("Geschäftstag", "Geschäftstage")),
}  # fmt: skip


def window_duration_text(minutes: float, language: str) -> str:
    """A window as a duration people say: '45 business minutes', '4.5 business hours',
    '2 business days' (a business day is BUSINESS_DAY_MINUTES, as in domain.windows)."""
    units = _UNITS.get(language, _UNITS[FALLBACK_LANGUAGE])
    if minutes < 60:
        count: float = max(1, round(minutes))
        names = units[0]
    elif minutes < BUSINESS_DAY_MINUTES:
        count, names = math.ceil(minutes / 30) / 2, units[1]
    else:
        count, names = math.ceil(minutes / (BUSINESS_DAY_MINUTES / 2)) / 2, units[2]
    number = f"{count:g}"
    if language == "de":
        number = number.replace(".", ",")
    return f"{number} {names[0] if count == 1 else names[1]}"


def acknowledgement_context(
    window: Window,
    calendar: BusinessCalendar,
    question: MessageFacts,
    *,
    reference: str,
    team_name: str,
    language: str,
) -> AcknowledgementContext:
    """The acknowledgement of `question`, from the promised window and the calendar."""
    return AcknowledgementContext(
        reference=reference,
        customer_name=question.sender.name if question.sender and question.sender.name else "",
        subject=question.subject,
        due_local=window.due_at.astimezone(calendar.zone),
        due_customer=customer_due(window.due_at, calendar.zone, question.date_offset_minutes),
        window_text=window_duration_text(window.minutes, language),
        is_default=window.is_default,
        behind=window.behind,
        opening_hours=calendar.describe_hours(language),
        team_name=team_name,
    )


@pass_context
def _when_filter(ctx: JinjaContext, at: datetime) -> str:
    return format_when(at, str(ctx.get("language", FALLBACK_LANGUAGE)))


@pass_context
def _day_filter(ctx: JinjaContext, day: date) -> str:
    return format_date(day, format="full", locale=str(ctx.get("language", FALLBACK_LANGUAGE)))
