"""Which case a message belongs to, and why: pure, explainable rules.

The shell extracts the lookup keys with the functions here (`find_case_reference`,
`referenced_ids`, `subject_key`, `external_correspondent`), looks the candidate cases up
in the database and hands them to `choose_case`, which decides in this order:

1. TAG: a case reference `[KW-42]` in the subject. Accepted only from one of the
   case's correspondents, a team member, or a message that also references the case:
   otherwise anyone could inject mail into a case by typing its number (osTicket's
   lesson) and we fall through to the next rules.
2. REFERENCES: In-Reply-To / References naming a Message-ID the case has seen.
   BODY_TAG: keepword's body marker "Case reference: KW-42" (same trust rule), which
   survives providers that rewrite Message-IDs. It comes after References because a
   body may quote an older mail than the one being answered.
3. SUBJECT (only if the window is > 0): the same external correspondent and the same
   normalized subject, with activity inside the window. Never across customers, never
   on an empty or generic subject, never for robots.
4. FORWARD_NEW: a team member forwarded a customer's mail into the shared inbox.
5. NEW: nothing matched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import getaddresses
from enum import StrEnum
from functools import lru_cache

from keepword.domain.model import MAX_ADDRESS_CHARS, Address, Kind, MessageFacts, Origin


@dataclass(frozen=True, slots=True)
class CaseCandidate:
    case_id: int
    reference: str
    correspondents: frozenset[str]
    subject_key: str
    last_activity: datetime
    closed: bool


@dataclass(frozen=True, slots=True)
class Candidates:
    by_tag: CaseCandidate | None = None
    # cases that saw any of the referenced ids, in reference order (newest first)
    by_reference: tuple[CaseCandidate, ...] = ()
    # same correspondent + same subject_key (any age)
    by_subject: tuple[CaseCandidate, ...] = ()


class ThreadRule(StrEnum):
    TAG = "tag"
    BODY_TAG = "body_tag"
    REFERENCES = "references"
    SUBJECT = "subject"
    NEW = "new"
    FORWARD_NEW = "forward_new"


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    case_id: int | None  # None: open a new case (or none at all, for robots)
    rule: ThreadRule
    explanation: str


# -- subject normalization ---------------------------------------------------------

# Reply/forward markers of common mail clients and languages: Re, Fwd, AW/WG (de),
# SV/VS (nordic), VB/Antw (nl), Ref/Rif/R (it), RV (es), TR (fr), Odp/PD (pl), YNT/İLT
# (tr), Enc/Res (pt), ΑΠ/ΣΧΕΤ/ΠΡΘ (el), Отв/Ответ/Пересл (ru), HA (hu), 回复/转发/答复
# (zh), also with counters "Re[2]:", "Re(3):", "Re^2:" and full-width colons.
_REPLY_WORDS = (
    r"re|fwd?|aw|wg|sv|vs|vb|antw|antwort|ref|rif|r|rv|tr|odp|pd|ynt|ilt|İlt|enc|res|"
    r"fs|vl|ats|trs|doorst|doorgestuurd|wtrs|答复|回复|回覆|转发|轉寄|轉發|"
    r"ΑΠ|ΣΧΕΤ|ΠΡΘ|отв|ответ|пересл|fw"
)
_PREFIX = re.compile(
    rf"^\s*(?:(?:{_REPLY_WORDS})\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]+|\[[^\[\]]*\])\s*",
    re.IGNORECASE,
)
# A case tag anywhere (keepword appends it: "Re: Invoice [KW-42]").
_ANY_TAG = re.compile(r"\[\s*[a-z][a-z0-9]{0,9}\s*[-#]\s*\d+\s*\]", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_NO_SUBJECT = frozenset(
    {"no subject", "(no subject)", "kein betreff", "(kein betreff)", "sans objet", "untitled"}
)


# The longest subject key kept. It is stored and indexed with the mailbox and customer
# (ix_case_customer_subject): 200 characters are at most 800 bytes of UTF-8, so the
# index row stays far below PostgreSQL's btree limit (~2,700 bytes) whatever the
# subject. Cut here, where keys are made, so storing and looking up always agree.
MAX_SUBJECT_KEY_CHARS = 200


def subject_key(subject: str) -> str:
    """The subject with reply/forward prefixes, tags and case removed; "" if nothing is left.

    Applied until nothing changes, so it is idempotent and `Re: Fwd: AW: x` == `x`.
    At most MAX_SUBJECT_KEY_CHARS: two subjects alike in their first 200 characters
    (after the prefixes) are one subject.
    """
    if len(subject) <= _CACHED_SUBJECT_CHARS:
        return _cached_subject_key(subject)
    return _subject_key(subject)


# Triage keys a message's subject three times (candidates, threading, a new case); only
# subjects of a usual length are kept, so a hostile one never sits in memory.
_CACHED_SUBJECT_CHARS = 1000


@lru_cache(maxsize=256)
def _cached_subject_key(subject: str) -> str:
    return _subject_key(subject)


def _subject_key(subject: str) -> str:
    key = subject
    while True:
        step = _normalize_once(key)
        if step == key:
            return _bounded(key)
        key = step


def _bounded(key: str) -> str:
    if len(key) <= MAX_SUBJECT_KEY_CHARS:
        return key
    # Cutting may end on a space, or on a character that normalizes differently alone.
    cut = key[:MAX_SUBJECT_KEY_CHARS].rstrip()
    for _ in range(8):  # settles at once in practice; bounded so it can never hang
        again = _normalize_once(cut)[:MAX_SUBJECT_KEY_CHARS].rstrip()
        if again == cut:
            break
        cut = again
    return cut


def _normalize_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _ANY_TAG.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _SPACES.sub(" ", text).strip()


def is_generic_subject(key: str) -> bool:
    """Subjects that say nothing about a conversation must never join cases."""
    return key in _NO_SUBJECT or not any(char.isalnum() for char in key)


# -- case references ----------------------------------------------------------------


@lru_cache(maxsize=64)
def _alternatives(prefixes: tuple[str, ...]) -> str:
    """The prefixes as a regex alternation, the longest first (built once per set of
    prefixes: triage asks for every message's subject and body)."""
    names = sorted({p.strip() for p in prefixes if p.strip()}, key=lambda p: (-len(p), p))
    return "|".join(re.escape(name) for name in names)


@lru_cache(maxsize=64)
def _tag_pattern(prefixes: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = _alternatives(prefixes)
    if not alternatives:
        return None
    return re.compile(rf"\[\s*({alternatives})\s*[-#\s]?\s*(\d{{1,12}})\s*\]", re.IGNORECASE)


def _tags_pattern_for(text: str, prefixes: Collection[str]) -> re.Pattern[str] | None:
    """The tag pattern, or None where `text` can hold no tag: without a "[" (most
    subjects) no regex runs at all."""
    return _tag_pattern(tuple(prefixes)) if "[" in text else None


def tag_matches(text: str, prefixes: Collection[str]) -> Iterator[re.Match[str]]:
    """Every `[KW-42]`-shaped tag in `text`, in order: group 1 the prefix as written,
    group 2 the number."""
    pattern = _tags_pattern_for(text, prefixes)
    return iter(()) if pattern is None else pattern.finditer(text)


def without_tags(text: str, prefixes: Collection[str]) -> str:
    """`text` with every tag of these prefixes replaced by a space."""
    pattern = _tags_pattern_for(text, prefixes)
    return text if pattern is None else pattern.sub(" ", text)


def _reference(prefix: str, number: str) -> str:
    return f"{prefix.upper()}-{int(number)}"


def find_tag(subject: str, prefixes: Collection[str]) -> str | None:
    """`[KW-42]` (also `[ kw - 42 ]`, `[KW#42]`, `[KW 42]`) in a subject -> "KW-42"."""
    match = next(tag_matches(subject, prefixes), None)
    return _reference(match.group(1), match.group(2)) if match else None


_BODY_LABELS = (
    r"case\s+reference|case|reference|ref\.?|referenz|vorgangsnummer|vorgang|fallnummer|"
    r"r[ée]f[ée]rence|riferimento|referencia|referentie|sygnatura"
)


def find_tag_in_body(body: str, prefixes: Collection[str]) -> str | None:
    """keepword's body marker ("Case reference: KW-42") or a `[KW-42]` in the body text.

    The first occurrence wins: a reply quotes the newest mail first, so the first
    marker is the one of the mail being answered.
    """
    patterns = _body_patterns(tuple(prefixes))
    if patterns is None or not body:
        return None
    # Cheap pre-checks: most bodies hold no reference, and the labelled search below tries
    # every position of a long body.
    if not _may_name(body, prefixes):
        return None
    named, label = patterns
    if not named.search(body):
        return None
    labelled = label.search(body)
    if labelled:
        return _reference(labelled.group(1), labelled.group(2))
    return find_tag(body, prefixes)


@lru_cache(maxsize=64)
def _body_patterns(prefixes: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    """(a prefix followed by a number, a labelled reference) for these prefixes."""
    alternatives = _alternatives(prefixes)
    if not alternatives:
        return None
    named = re.compile(rf"(?:{alternatives})\s*[-#\s]?\s*\d", re.IGNORECASE)
    label = rf"(?:{_BODY_LABELS})\s*[:#]?\s*({alternatives})-(\d{{1,12}})\b"
    return named, re.compile(label, re.IGNORECASE)


def _may_name(body: str, prefixes: Collection[str]) -> bool:
    """False only where no prefix occurs in `body`, in any case. For ASCII text (prefixes
    are ASCII: config) a substring test of the lower-cased body, ~4x faster than the
    engine's case-blind search; other text may match a prefix through Unicode's case
    folding (the Kelvin sign is a "k"), so it is left to the search."""
    if not body.isascii():
        return True
    lowered = body.lower()
    return any(name.strip().lower() in lowered for name in prefixes if name.strip())


def find_case_reference(facts: MessageFacts, prefixes: Collection[str]) -> str | None:
    """The reference to look up as `Candidates.by_tag`: subject tag first, then body."""
    return find_tag(facts.subject, prefixes) or find_tag_in_body(facts.body_text, prefixes)


# -- references and correspondents ---------------------------------------------------


def referenced_ids(facts: MessageFacts) -> tuple[str, ...]:
    """In-Reply-To, then References newest first, without duplicates or our own id."""
    ordered = dict.fromkeys((*facts.in_reply_to, *reversed(facts.references)))
    ordered.pop(facts.message_id, None)  # a broken client may reference itself
    return tuple(ordered)


_FORWARD_MARKERS = re.compile(
    r"^[\s>]*(?:-{2,}\s*(?:forwarded\s+message|original\s+message|weitergeleitete\s+nachricht|"
    r"ursprüngliche\s+nachricht|originalnachricht|message\s+transféré|message\s+d'origine|"
    r"mensaje\s+original|mensaje\s+reenviado|messaggio\s+inoltrato|messaggio\s+originale|"
    r"doorgestuurd\s+bericht|oorspronkelijk\s+bericht|videresendt\s+melding|"
    r"vidarebefordrat\s+meddelande|ursprungligt\s+meddelande|wiadomość\s+przekazana|"
    r"oryginalna\s+wiadomość)\s*-{2,}|begin\s+forwarded\s+message\s*:|"
    r"anfang\s+der\s+weitergeleiteten\s+nachricht\s*:|début\s+du\s+message\s+réexpédié\s*:)",
    re.IGNORECASE | re.MULTILINE,
)
_FROM_LINE_REST = r"[\s>*]*(?:from|von|de|da|van|från|fra|od|від|от)\s*\*?\s*:\s*\*?\s*(.+)$"
_FROM_LINE = re.compile("^" + _FROM_LINE_REST, re.IGNORECASE | re.MULTILINE)
# The same matches, each found from the newline before it (the text gets one in front):
# the engine skips to the next newline instead of trying `^` at every position, ~2.5x
# faster on the ~10 KB of a reply quoting its thread.
_FROM_AFTER_NEWLINE = re.compile("\n" + _FROM_LINE_REST, re.IGNORECASE | re.MULTILINE)
_ADDR_SPEC = re.compile(r"[^\s<>()\"'\[\]:;,*]+@[^\s<>()\"'\[\]:;,*]+")


# Other lines of a quoted header block ("Sent:", "Gesendet:", "Objet :" ...).
_HEADER_LABEL = re.compile(
    r"^[\s>*]*(?:sent|date|to|cc|subject|gesendet|datum|an|betreff|envoy[ée]|objet|[àa]|"
    r"enviado|asunto|para|inviato|oggetto|verzonden|onderwerp|aan|skickat|ämne|till|"
    r"wysłano|temat|do)\s*\*?\s*:",
    re.IGNORECASE,
)
_SCAN_CHARS = 20_000  # forwarded header blocks sit near the top; bodies can be huge


def forwarded_senders(body_text: str) -> tuple[Address, ...]:
    """Senders of the mails forwarded or quoted inline in a body, newest first.

    A "From:" line counts after a forward marker ("---------- Forwarded message
    ---------", "Begin forwarded message:", "-----Original Message-----" ...) or inside
    a quoted header block (Outlook and webmail forward without a marker: "From: ...",
    "Sent: ...", "To: ...", "Subject: ..." lines together).
    """
    text = body_text[:_SCAN_CHARS]
    # Triage asks this of every mail and most have no "From:" line: find those lines in
    # one pass over the text (not a match per line), and the rest only if there is one.
    # A match found so may start lines earlier (blank lines before it); each is judged
    # as the one line its address is on, as a line-by-line reading would judge it.
    scanned = "\n" + text  # every line, the first too, follows a newline
    starts = [scanned.count("\n", 0, m.start(1)) - 1 for m in _FROM_AFTER_NEWLINE.finditer(scanned)]
    if not starts:
        return ()
    lines = text.split("\n")
    marker = _FORWARD_MARKERS.search(text)
    marker_line = text.count("\n", 0, marker.start()) if marker else len(lines)
    found: dict[str, Address] = {}
    for number in starts:
        match = _FROM_LINE.match(lines[number])
        if match is None:
            continue
        after_marker = marker_line <= number <= marker_line + 12
        if not (after_marker or _in_header_block(lines, number)):
            continue
        address = _parse_from_line(match.group(1).strip())
        if address is not None and len(address.address) <= MAX_ADDRESS_CHARS:
            found.setdefault(address.address, address)
    return tuple(found.values())


def _in_header_block(lines: list[str], number: int) -> bool:
    near = [line for line in lines[max(0, number - 4) : number + 6] if line.strip()]
    return sum(1 for line in near if _HEADER_LABEL.match(line)) >= 2


def forwarded_original_sender(body_text: str) -> Address | None:
    """The sender of the newest inline-forwarded (or quoted) mail, if the body has one."""
    senders = forwarded_senders(body_text)
    return senders[0] if senders else None


_OUTLOOK_FROM = re.compile(r"^(.*?)\s*\[mailto:([^\]\s]+@[^\]\s]+)\]")


def _parse_from_line(value: str) -> Address | None:
    outlook = _OUTLOOK_FROM.match(value)  # Outlook: "Doe, Jane [mailto:jane@example.com]"
    if outlook:
        return Address(address=outlook.group(2).lower(), name=outlook.group(1).strip(' "'))
    for name, address in getaddresses([value]):
        cleaned = address.strip().strip("<>").lower()
        if _ADDR_SPEC.fullmatch(cleaned):
            return Address(address=cleaned, name=name.strip().strip('"'))
    # Not RFC 5322 shaped ("Jane Doe jane@x.example", "Jane (jane@x.example)"): take
    # the first addr-spec and what precedes it as the name.
    match = _ADDR_SPEC.search(value)
    if match is None:
        return None
    name = value[: match.start()].strip().strip('"<(').strip()
    return Address(address=match.group(0).lower().rstrip("."), name=name)


def external_correspondent(facts: MessageFacts, kind: Kind, team: frozenset[str]) -> Address | None:
    """The customer this message is about, or None if it names nobody outside the team.

    Customer mail: the first non-team Reply-To (web forms send from one address for
    everyone and put the customer there), else the sender. Staff and own mail: the first
    non-team recipient; a team member's forward into the shared inbox: the original
    sender of the forwarded mail. Robots: the sender (shown, never used for subjects).
    """
    members = frozenset(address.lower() for address in team)
    if kind is Kind.CUSTOMER:
        return _outside(facts.reply_to, members) or facts.sender
    if kind is Kind.AUTOMATED:
        return facts.sender
    recipient = _outside((*facts.to, *facts.cc), members)
    if recipient is not None:
        return recipient
    return next((a for a in forwarded_senders(facts.body_text) if a.address not in members), None)


def correspondents_in_headers(facts: MessageFacts, team: frozenset[str]) -> tuple[Address, ...]:
    """What `external_correspondent` names for a customer's mail and for a member's, as far
    as the headers tell (a forwarded mail's original sender is in the body: left out)."""
    members = frozenset(address.lower() for address in team)
    named = (
        _outside(facts.reply_to, members) or facts.sender,
        _outside((*facts.to, *facts.cc), members),
    )
    return tuple(a for a in named if a is not None)


def _outside(addresses: tuple[Address, ...], members: frozenset[str]) -> Address | None:
    return next((a for a in addresses if a.address.lower() not in members), None)


def is_forward_into_inbox(facts: MessageFacts, kind: Kind, team: frozenset[str]) -> bool:
    """A team member forwarded someone's mail to the shared inbox (not a staff reply)."""
    if kind is not Kind.STAFF or facts.origin is not Origin.INBOX:
        return False
    members = frozenset(address.lower() for address in team)
    if any(a.address.lower() not in members for a in (*facts.to, *facts.cc)):
        return False
    return any(a.address not in members for a in forwarded_senders(facts.body_text))


# -- the decision ---------------------------------------------------------------------


def choose_case(
    facts: MessageFacts,
    kind: Kind,
    candidates: Candidates,
    *,
    now: datetime,
    subject_window: timedelta,
    team: frozenset[str] = frozenset(),
) -> ThreadMatch:
    """Decide which case `facts` joins; see the module docstring for the rules."""
    correspondent = external_correspondent(facts, kind, team)
    tagged = _by_tag(facts, kind, candidates, correspondent, team)
    if tagged is not None and tagged.rule is ThreadRule.TAG:
        return tagged
    if candidates.by_reference:
        return _by_reference(candidates.by_reference)
    if tagged is not None:  # the body marker: a quote may be older than the thread
        return tagged
    if kind is not Kind.AUTOMATED and subject_window > timedelta(0):
        by_subject = _by_subject(facts, candidates.by_subject, now, subject_window, correspondent)
        if by_subject is not None:
            return by_subject
    return _new(facts, kind, correspondent, candidates.by_tag)


def _by_tag(
    facts: MessageFacts,
    kind: Kind,
    candidates: Candidates,
    correspondent: Address | None,
    team: frozenset[str],
) -> ThreadMatch | None:
    case = candidates.by_tag
    if case is None:
        return None
    in_subject = find_tag(facts.subject, [_prefix_of(case.reference)]) == case.reference
    rule = ThreadRule.TAG if in_subject else ThreadRule.BODY_TAG
    where = "the subject" if in_subject else "the body"
    trust = _tag_trust(facts, kind, case, correspondent, candidates.by_reference, team)
    if trust is None:
        return None
    closed = " (closed; the message reopens it)" if case.closed else ""
    return ThreadMatch(case.case_id, rule, f"{case.reference} in {where}, {trust}{closed}")


def _tag_trust(
    facts: MessageFacts,
    kind: Kind,
    case: CaseCandidate,
    correspondent: Address | None,
    by_reference: tuple[CaseCandidate, ...],
    team: frozenset[str],
) -> str | None:
    """Why the tag may be believed, or None for a stranger quoting a case number."""
    sender = facts.sender.address.lower() if facts.sender else None
    correspondents = frozenset(address.lower() for address in case.correspondents)
    # Deliberately the sender, not the correspondent: Reply-To is free text, and a
    # stranger naming the customer there must not get into the case either.
    if sender is not None and sender in correspondents:
        return f"from its correspondent {sender}"
    if kind in (Kind.STAFF, Kind.OWN) or (sender is not None and sender in _lower(team)):
        return "from the team"
    if any(other.case_id == case.case_id for other in by_reference):
        return "and the message references the case"
    return None


def _by_reference(cases: tuple[CaseCandidate, ...]) -> ThreadMatch:
    case = cases[0]
    others = sorted({c.reference for c in cases[1:] if c.case_id != case.case_id})
    also = f"; it also references {', '.join(others)}" if others else ""
    closed = " (closed; the message reopens it)" if case.closed else ""
    return ThreadMatch(
        case.case_id,
        ThreadRule.REFERENCES,
        f"replies to a message of {case.reference}{closed}{also}",
    )


def _by_subject(
    facts: MessageFacts,
    cases: tuple[CaseCandidate, ...],
    now: datetime,
    window: timedelta,
    correspondent: Address | None,
) -> ThreadMatch | None:
    key = subject_key(facts.subject)
    if correspondent is None or is_generic_subject(key):
        return None
    who = correspondent.address.lower()
    fitting = [
        case
        for case in cases
        if case.subject_key == key
        and who in {address.lower() for address in case.correspondents}
        and now - case.last_activity <= window
    ]
    if not fitting:
        return None
    case = max(fitting, key=lambda c: (c.last_activity, c.case_id))
    days = max(0, (now - case.last_activity).days)
    closed = "; closed, the message reopens it" if case.closed else ""
    return ThreadMatch(
        case.case_id,
        ThreadRule.SUBJECT,
        f"same correspondent {who} and subject {key!r} as {case.reference}, "
        f"last active {days} day(s) ago (window {window.days} days){closed}",
    )


def _new(
    facts: MessageFacts,
    kind: Kind,
    correspondent: Address | None,
    ignored_tag: CaseCandidate | None,
) -> ThreadMatch:
    stranger = (
        f"; ignored {ignored_tag.reference}: the sender is not one of its correspondents"
        if ignored_tag is not None
        else ""
    )
    if kind is Kind.AUTOMATED:
        return ThreadMatch(None, ThreadRule.NEW, f"automated mail matching no case{stranger}")
    if kind is Kind.STAFF and facts.origin is Origin.INBOX and correspondent is not None:
        forwarded = {a.address for a in forwarded_senders(facts.body_text)}
        if correspondent.address in forwarded:
            return ThreadMatch(
                None,
                ThreadRule.FORWARD_NEW,
                f"forwarded by the team; new case for the original sender "
                f"{correspondent.address}{stranger}",
            )
    who = f" from {correspondent.address}" if correspondent else ""
    return ThreadMatch(None, ThreadRule.NEW, f"new conversation{who}{stranger}")


def _prefix_of(reference: str) -> str:
    return reference.rpartition("-")[0] or reference


def _lower(addresses: frozenset[str]) -> frozenset[str]:
    return frozenset(address.lower() for address in addresses)
