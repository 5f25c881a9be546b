"""One owner from the start: who gets a new case, who is away, where their cases go.

Policies (config `owner_policy`):

- `round_robin`: the next member on duty after the one who got the last case;
- `least_open`: the member on duty with the fewest open cases (ties: roster order);
- `none`: no owner until someone takes the case (the old behaviour).

"On duty" is per the business calendar: a case that arrives at night goes to someone
working when the team next opens (a holiday is skipped like a weekend), never to a
member marked away that day or to a part-timer on a day off.

A team member's own out-of-office auto-reply (RFC 3834; it must pass the team proof of
domain.trust: a forged out-of-office must not move cases) marks them away until the
return date it states, read from common English and German phrasings; without a date,
until they next write themselves. Their open cases move to someone on duty, each move on
the timeline; the lead is told once.

Pure: the shell passes the roster, open-case counts and the calendar.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from keepword.config import WEEKDAYS, MailboxSettings
from keepword.domain import cases
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.cases import CaseState, Change, Event, EventKind
from keepword.domain.classify import out_of_office_reason
from keepword.domain.model import Kind, MessageFacts

# How far ahead `on_duty` looks for an open day with someone working.
LOOKAHEAD_DAYS = 21
# A stated return date further away than this is a misreading, not a vacation.
MAX_AWAY_DAYS = 366


class OwnerPolicy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_OPEN = "least_open"
    NONE = "none"


# Why the absence of a member whose address the relay refuses is recorded
# (domain.reachability.member_unreachable): the lead line says it instead of out-of-office.
MEMBER_REFUSED = "mail to them is refused for good"


@dataclass(frozen=True, slots=True)
class AwayPeriod:
    """`address` is away from `start` up to (not including) `back_on`; None: until they
    write again themselves."""

    address: str
    start: date
    back_on: date | None
    why: str = ""

    def covers(self, day: date) -> bool:
        return self.start <= day and (self.back_on is None or day < self.back_on)


@dataclass(frozen=True, slots=True)
class Roster:
    """Who may own cases, in the configured order, and when they do not work."""

    staff: tuple[str, ...]
    away: tuple[AwayPeriod, ...] = ()
    # weekday numbers (0 = Monday) a part-timer works; absent: every open day
    working_days: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def works_on(self, address: str, day: date) -> bool:
        days = self.working_days.get(address)
        if days is not None and day.weekday() not in days:
            return False
        return not any(p.address == address and p.covers(day) for p in self.away)


@dataclass(frozen=True, slots=True)
class Sharing:
    """How new cases are shared out: the policy and what it goes by (each member's open
    cases for `least_open`, who got the last case for `round_robin`)."""

    policy: OwnerPolicy
    open_counts: Mapping[str, int] = field(default_factory=dict)
    last_assigned: str | None = None

    def gave(self, owner: str) -> Sharing:
        """The sharing after `owner` got one more case."""
        counts = {**self.open_counts, owner: self.open_counts.get(owner, 0) + 1}
        return Sharing(self.policy, counts, owner)


@dataclass(frozen=True, slots=True)
class OwnerChoice:
    owner: str | None
    reason: str


def on_duty(
    roster: Roster, calendar: BusinessCalendar, at: datetime
) -> tuple[date, tuple[str, ...]]:
    """The first open day from `at` on with anyone working, and who works that day.

    (`at`'s own day counts only if the calendar is still open at or after `at`.)
    """
    try:
        start = calendar.next_open(at)
    except ValueError:
        return at.astimezone(calendar.zone).date(), ()
    day = start.astimezone(calendar.zone).date()
    for offset in range(LOOKAHEAD_DAYS):
        current = day + timedelta(days=offset)
        if offset and not calendar.day_intervals(current):
            continue
        working = tuple(a for a in roster.staff if roster.works_on(a, current))
        if working:
            return current, working
    return day, ()


def choose_owner(
    sharing: Sharing,
    roster: Roster,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude: Collection[str] = (),
) -> OwnerChoice:
    """The owner of a case opened at `now` (or moved away from someone in `exclude`)."""
    policy, open_counts, last_assigned = sharing.policy, sharing.open_counts, sharing.last_assigned
    if policy is OwnerPolicy.NONE:
        return OwnerChoice(None, "owner policy none: the first to take it owns it")
    day, working = on_duty(roster, calendar, now)
    candidates = [a for a in working if a not in set(exclude)]
    if not candidates:
        return OwnerChoice(None, "nobody on the team is on duty in the next weeks")
    when = f"on duty {day.isoformat()}"
    if policy is OwnerPolicy.ROUND_ROBIN:
        owner = _next_after(roster.staff, candidates, last_assigned)
        return OwnerChoice(owner, f"round robin after {last_assigned or 'nobody'}, {when}")
    order = {address: i for i, address in enumerate(roster.staff)}
    owner = min(candidates, key=lambda a: (open_counts.get(a, 0), order[a]))
    return OwnerChoice(owner, f"fewest open cases ({open_counts.get(owner, 0)}), {when}")


def _next_after(staff: Sequence[str], candidates: Sequence[str], last: str | None) -> str:
    if last not in staff:
        return candidates[0]
    start = staff.index(last)
    ring = [*staff[start + 1 :], *staff[: start + 1]]
    return next(a for a in ring if a in candidates)


def assign_on_open(case: CaseState, choice: OwnerChoice, at: datetime) -> Change:
    """The owner on the timeline of a case just opened (none: a line saying why)."""
    if choice.owner is None:
        return Change(
            case, (Event(EventKind.OWNER_CHANGED, at, None, f"no owner: {choice.reason}"),)
        )
    return cases.assign(case, choice.owner, at=at, actor=None, why=f"owner policy: {choice.reason}")


def policy_of(box: MailboxSettings) -> OwnerPolicy:
    return OwnerPolicy(box.owners.policy)


def roster_for(box: MailboxSettings, recorded: Iterable[AwayPeriod] = ()) -> Roster:
    """The mailbox's roster: `team` in its order, with the planned absences of
    `[mailbox.owners]` and the `recorded` ones (out-of-office replies, from the store)."""
    owners = box.owners
    days = {a: frozenset(WEEKDAYS.index(d) for d in ds) for a, ds in owners.working_days.items()}
    planned = tuple(AwayPeriod(a.address, a.start, a.back_on, a.why) for a in owners.away)
    return Roster(tuple(box.team), (*planned, *recorded), days)


def away_share(
    roster: Roster, calendar: BusinessCalendar, now: datetime, *, lookback_days: int = 7
) -> float:
    """The predictor's `away` input (domain.predict divides the measured pace by the
    share still on duty): how much smaller the staff on the next open day is than on the
    open days of the last `lookback_days`, over which the pace was measured.

    The pace already carries an absence that started a while ago: counting it again
    would promise twice its effect. So a vacation raises promises from its first day,
    and stops adding to them once the measured pace has caught up; a return (more staff
    than recently) gives 0: the pace shows it as soon as the answers come. 0 without
    staff. Days off of part-timers count like absences.
    """
    if not roster.staff:
        return 0.0
    try:
        day = calendar.next_open(now).astimezone(calendar.zone).date()
    except ValueError:
        return 0.0
    today = now.astimezone(calendar.zone).date()
    recent = [
        _on_duty(roster, d)
        for d in (today - timedelta(days=n) for n in range(1, lookback_days + 1))
        if calendar.day_intervals(d)
    ]
    usual = sum(recent) / len(recent) if recent else 1.0
    if usual <= 0:
        return 0.0
    return max(0.0, 1.0 - _on_duty(roster, day) / usual)


def _on_duty(roster: Roster, day: date) -> float:
    return sum(1 for a in roster.staff if roster.works_on(a, day)) / len(roster.staff)


def away_now(roster: Roster, day: date) -> tuple[AwayPeriod, ...]:
    """The absences covering `day`, one per member (the one ending last), roster order."""
    latest: dict[str, AwayPeriod] = {}
    for p in roster.away:
        if p.covers(day):
            known = latest.get(p.address)
            if known is None or _ends(p) > _ends(known):
                latest[p.address] = p
    return tuple(latest[a] for a in roster.staff if a in latest)


def _ends(period: AwayPeriod) -> date:
    return period.back_on or date.max


# -- away -------------------------------------------------------------------------------


def staff_out_of_office(facts: MessageFacts, kind: Kind, staff: Collection[str]) -> str | None:
    """Why this message is a team member's own out-of-office reply (None: it is not).

    Automatic mail (classify) from a member of `staff`, either marked as an RFC 3834
    auto-reply (`Auto-Submitted: auto-replied`, what Sieve vacation and most
    responders write) or carrying a vacation header or subject. History (mail from
    before keepword watched the mailbox) states no current absence.
    """
    if kind is not Kind.AUTOMATED or facts.is_history or facts.sender is None:
        return None
    if facts.sender.address.lower() not in {a.lower() for a in staff}:
        return None
    for value in facts.header("auto-submitted"):
        if value.split(";")[0].split("(")[0].strip().lower() == "auto-replied":
            return f"Auto-Submitted: {value.strip()} from {facts.sender.address}"
    reason = out_of_office_reason(facts)
    return f"{reason} from {facts.sender.address}" if reason else None


def absence_from_auto_reply(
    address: str,
    auto_reply_text: str,
    *,
    received: datetime,
    zone: ZoneInfo,
    recorded: Iterable[AwayPeriod],
    default_days: int,
) -> AwayPeriod | None:
    """The absence an out-of-office of `address` states, to record; None when the one
    already recorded says the same (so the lead is told once per absence).

    No stated return date: away for `default_days` (or until they write themselves). An
    absence already covering today keeps its start (the same absence, told once) and
    takes a newly stated return date.
    """
    today = received.astimezone(zone).date()
    stated = return_date(auto_reply_text, today)
    why = "out-of-office auto-reply"
    if stated is None:
        why += f"; no return date stated: {default_days} days or until they write"
    back = stated or today + timedelta(days=default_days)
    for existing in recorded:
        if existing.address == address and existing.covers(today):
            if stated is None or existing.back_on == stated:
                return None
            return AwayPeriod(address, existing.start, stated, why)
    return AwayPeriod(address, today, back, why)


@dataclass(frozen=True, slots=True)
class AwayNotice:
    """A member is away: the period to record, the moves of their open cases, and the
    one line the lead is told (None when nothing had to move)."""

    period: AwayPeriod
    moves: tuple[Change, ...]
    lead_message: str | None


def mark_away(
    address: str,
    auto_reply_text: str,
    *,
    received: datetime,
    zone: ZoneInfo,
    known: Iterable[AwayPeriod] = (),
) -> AwayPeriod | None:
    """The away period an out-of-office of `address` states; None when one already
    covers it (the lead is told once per absence, not once per auto-reply)."""
    today = received.astimezone(zone).date()
    back = return_date(auto_reply_text, today)
    period = AwayPeriod(address, today, back, "out-of-office auto-reply")
    for existing in known:
        if existing.address == address and existing.covers(today) and existing.back_on == back:
            return None
    return period


def move_cases(
    period: AwayPeriod,
    open_cases: Sequence[CaseState],
    sharing: Sharing,
    roster: Roster,
    calendar: BusinessCalendar,
    now: datetime,
) -> AwayNotice:
    """Move the away member's open cases to others on duty, one timeline line each
    (by the sharing's policy; `none`: to the one with the fewest open cases)."""
    away_roster = Roster(roster.staff, (*roster.away, period), roster.working_days)
    if sharing.policy is OwnerPolicy.NONE:
        sharing = replace(sharing, policy=OwnerPolicy.LEAST_OPEN)
    moves: list[Change] = []
    until = period.back_on.isoformat() if period.back_on else "they write again"
    for case in open_cases:
        if case.owner != period.address:
            continue
        choice = choose_owner(sharing, away_roster, calendar, now, exclude=(period.address,))
        note = Event(EventKind.AWAY, now, period.address, f"{period.address} is away until {until}")
        if choice.owner is None:
            moves.append(Change(case, (note,)))
            continue
        change = cases.assign(
            case, choice.owner, at=now, actor=None, why=f"{period.address} is away; {choice.reason}"
        )
        moves.append(Change(change.case, (note, *change.events)))
        sharing = sharing.gave(choice.owner)
    lead = _lead_line(period, moves, until) if moves else None
    return AwayNotice(period, tuple(moves), lead)


def _lead_line(period: AwayPeriod, moves: Sequence[Change], until: str) -> str:
    moved = [m.case for m in moves if m.case.owner != period.address]
    stuck = [m.case.reference for m in moves if m.case.owner == period.address]
    parts = [f"{period.address} is away until {until} ({away_label(period)})."]
    if moved:
        parts.append("Moved: " + ", ".join(f"{c.reference} -> {c.owner}" for c in moved) + ".")
    if stuck:
        parts.append("Nobody on duty to take: " + ", ".join(stuck) + ".")
    return " ".join(parts)


def away_label(period: AwayPeriod) -> str:
    """Why a member is away, as the lead reads it: "out-of-office" unless the absence
    stands for an address that refuses mail (domain.reachability), which says so."""
    return period.why if period.why.startswith(MEMBER_REFUSED) else "out-of-office"


def back_again(away: Iterable[AwayPeriod], address: str, today: date) -> tuple[AwayPeriod, ...]:
    """A member wrote themselves (not an auto-reply): open-ended absences end today."""
    return tuple(
        AwayPeriod(p.address, p.start, today, p.why)
        if p.address == address and p.back_on is None and p.covers(today)
        else p
        for p in away
    )


# -- return dates in out-of-office text ------------------------------------------------------

_MONTHS = {
    "january": 1, "jan": 1, "januar": 1, "jänner": 1,
    "february": 2, "feb": 2, "februar": 2,
    "march": 3, "mar": 3, "märz": 3, "maerz": 3, "mrz": 3,
    "april": 4, "apr": 4,
    "may": 5, "mai": 5,
    "june": 6, "jun": 6, "juni": 6,
    "july": 7, "jul": 7, "juli": 7,
    "august": 8, "aug": 8,
    "september": 9, "sep": 9, "sept": 9,
    "october": 10, "oct": 10, "oktober": 10, "okt": 10,
    "november": 11, "nov": 11,
    "december": 12, "dec": 12, "dezember": 12, "dez": 12,
}  # fmt: skip
_MONTH = "|".join(sorted((re.escape(m) for m in _MONTHS), key=len, reverse=True))
_DATE_PATTERNS = (
    ("iso", re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")),
    ("dmy_dots", re.compile(r"\b(\d{1,2})\.\s?(\d{1,2})\.(?:\s?(\d{2,4}))?(?!\d)")),
    ("slash", re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2,4})\b")),
    (
        "day_month",
        re.compile(
            rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\.?\s+(?:of\s+)?({_MONTH})\.?(?:,?\s+(\d{{4}}))?\b",
            re.I,
        ),
    ),
    (
        "month_day",
        re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", re.I),
    ),
)
# Words before a date that say it is the first day back, or the last day away.
_BACK_WORDS = re.compile(
    r"(back|return|returning|in the office|available|reachable|wieder|zurück|zurueck|ab)"
    r"[^.\n]{0,40}$",
    re.I,
)
_UNTIL_WORDS = re.compile(
    r"(until|till|til|through|thru|to|bis(?:\s+einschlie(?:ß|ss)lich)?|bis\s+zum|einschlie(?:ß|ss)lich)"
    r"[^.\n]{0,25}$",
    re.I,
)


def return_date(text: str, today: date) -> date | None:
    """The first day back that an out-of-office states, or None if it states none.

    "back on March 10" / "wieder im Büro am 10.03." -> March 10; "out until March 7" /
    "bis einschließlich 7. März" -> March 8 (the last day away is not a day back). Dates
    without a year are the next such date from `today`; dates in the past, and ambiguous
    ones (3/4/2025), are ignored. The latest stated day back wins ("from March 3 until
    March 7" -> March 8).
    """
    found: list[date] = []
    for kind, pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text[:5000]):
            day = _as_date(kind, match, today)
            if day is None:
                continue
            before = text[max(0, match.start() - 60) : match.start()]
            back = _back_on(day, before)
            if back is not None and today < back <= today + timedelta(days=MAX_AWAY_DAYS):
                found.append(back)
    return max(found) if found else None


def _back_on(day: date, before: str) -> date | None:
    back = _BACK_WORDS.search(before)
    until = _UNTIL_WORDS.search(before)
    if until and (back is None or until.start() > back.start()):
        return day + timedelta(days=1)
    if back:
        return day
    return None


def _as_date(kind: str, match: re.Match[str], today: date) -> date | None:
    groups = match.groups()
    try:
        if kind == "iso":
            return date(int(groups[0]), int(groups[1]), int(groups[2]))
        if kind == "dmy_dots":
            return _with_year(int(groups[0]), int(groups[1]), groups[2], today)
        if kind == "slash":
            first, second = int(groups[0]), int(groups[1])
            if first > 12 >= second:
                return _with_year(first, second, groups[2], today)
            if second > 12 >= first:
                return _with_year(second, first, groups[2], today)
            return None  # 3/4/2025: March 4 or April 3? Better no date than a wrong one
        if kind == "day_month":
            return _with_year(int(groups[0]), _MONTHS[groups[1].lower()], groups[2], today)
        return _with_year(int(groups[1]), _MONTHS[groups[0].lower()], groups[2], today)
    except (ValueError, KeyError):
        return None


def _with_year(day: int, month: int, year: str | None, today: date) -> date:
    if year:
        value = int(year)
        return date(value + 2000 if value < 100 else value, month, day)
    candidate = date(today.year, month, day)
    if candidate < today - timedelta(days=7):  # "until 5 January", written in December
        candidate = date(today.year + 1, month, day)
    return candidate
