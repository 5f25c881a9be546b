"""The trust model in one place: whose mail is whose, and which joins it may make.

Pure: the shell verifies signatures (mail.authentication) and looks things up in the
store; this module decides on the facts it is handed. docs/trust.md is the prose.

Three kinds of standing, strongest first:

- OWN: keepword's own mail seen again. The loop header alone proves nothing (anyone can
  write it): the Message-ID must be one keepword put in its outbox. Keepword's ids are
  keyed with the installation secret (domain.message_ids), so nobody outside can make
  one up. Own mail belongs to the case of its outbox row, never to a tag in its subject
  (the subject quotes the customer's subject, tags included).
- TEAM: a team address in From AND proof that the team sent it: the watched mailbox's
  own Sent folder, a valid DKIM signature of a configured team domain aligned with From,
  or an Authentication-Results (or, under a valid ARC chain, an ARC-Authentication-
  Results) header from a configured authserv-id saying dkim/dmarc passed for that
  domain. A team address without proof is a claim, not a member: it gets a customer's
  standing (and a REFUSED event where it tried more).
- CORRESPONDENT / PARTICIPANT / STRANGER: everyone else. A correspondent is an address
  on the case through its own mail (From of a message in the case), or the address that
  opened it; a participant was sent the very message it answers (From/To/Cc of the
  referenced mail, or the recipients of keepword's mail). Reply-To never makes anyone a
  correspondent of an existing case: it is free text that any sender can write.

Which threading rules need which standing (`JOIN_NEEDS`):

  TAG, BODY_TAG  sender is a correspondent of the case, or TEAM/OWN
  REFERENCES     sender is a correspondent or a participant of the referenced mail, or TEAM/OWN;
                 robots (bounces) may: their mail never changes a case or is answered
  SUBJECT        the sender itself (From, not Reply-To) is a correspondent
  (any join)     a Reply-To naming someone outside the case needs an authenticated From

A refused join goes on the timeline of the case it targeted (`Refusal.event`) and the
message opens a case of its own for its real sender (`JoinDecision.match`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.utils import getaddresses
from enum import StrEnum

from keepword.domain.cases import Event, EventKind
from keepword.domain.model import (
    LOOP_HEADER,
    MAX_ADDRESS_CHARS,
    Address,
    Kind,
    MessageFacts,
    Origin,
)
from keepword.domain.threads import ThreadMatch, ThreadRule, tag_matches, without_tags

# -- verified facts (made by mail.authentication from the raw bytes) ----------------


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One DKIM-Signature of a message and whether it verified (d= is `domain`)."""

    domain: str
    valid: bool
    selector: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One result of an Authentication-Results header (RFC 8601), as authres parsed it."""

    authserv_id: str
    method: str  # dkim, dmarc, spf, arc ...
    result: str  # pass, fail, none ...
    header_d: str = ""  # dkim: the signing domain
    header_from: str = ""  # dmarc: the From domain it passed for


@dataclass(frozen=True, slots=True)
class ArcChain:
    """The ARC chain of a message: `valid` if dkimpy verified it end to end ("pass");
    `results` are the ARC-Authentication-Results of its newest instance."""

    valid: bool
    results: tuple[AuthResult, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Authentication:
    """Everything verified about where a message came from; empty when nothing is."""

    dkim: tuple[DkimSignature, ...] = ()
    results: tuple[AuthResult, ...] = ()  # from Authentication-Results headers, top first
    arc: ArcChain | None = None


NOT_VERIFIED = Authentication()


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What the configuration says the team is and which verifiers it believes."""

    team: frozenset[str]  # members, lead and the shared address (lower case)
    own_addresses: frozenset[str]  # keepword's own From addresses (all mailboxes)
    dkim_domains: frozenset[str] = frozenset()  # domains whose DKIM proves a team From
    trusted_authserv_ids: frozenset[str] = frozenset()  # e.g. "mx.example.com"

    @classmethod
    def of(
        cls,
        team: Iterable[str],
        own_addresses: Iterable[str],
        dkim_domains: Iterable[str] = (),
        trusted_authserv_ids: Iterable[str] = (),
    ) -> TrustPolicy:
        return cls(
            team=frozenset(a.lower() for a in team),
            own_addresses=frozenset(a.lower() for a in own_addresses),
            dkim_domains=frozenset(d.lower().strip(".") for d in dkim_domains),
            trusted_authserv_ids=frozenset(i.lower() for i in trusted_authserv_ids),
        )


# -- proofs -------------------------------------------------------------------------------


class Proof(StrEnum):
    OUTBOX = "outbox"  # keepword's own Message-ID, found in its outbox
    SENT_FOLDER = "sent_folder"
    DKIM = "dkim"
    AUTHENTICATION_RESULTS = "authentication_results"
    ARC = "arc"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a message proved something, which proof and why (shown on the timeline)."""

    proven: bool
    reason: str
    proof: Proof | None = None
    who: str | None = None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().strip(".")


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed alignment (DMARC): the same domain or the From is a subdomain of d=."""
    d, f = signing_domain.lower().strip("."), from_domain.lower().strip(".")
    return bool(d) and (f == d or f.endswith("." + d))


def domain_proof(address: str, auth: Authentication, policy: TrustPolicy) -> Verdict:
    """A verified statement that team mail from `address` came through a team domain:
    only signing domains in `policy.dkim_domains` count (a valid gmail.com signature
    proves a gmail user, not a team member)."""
    return _domain_proof(address, auth, policy, policy.dkim_domains)


def _domain_proof(
    address: str, auth: Authentication, policy: TrustPolicy, allowed: Collection[str] | None
) -> Verdict:
    from_domain = domain_of(address)

    def allowed_domain(domain: str) -> bool:
        return allowed is None or domain.lower().strip(".") in allowed

    for signature in auth.dkim:
        valid = signature.valid and aligned(signature.domain, from_domain)
        if valid and allowed_domain(signature.domain):
            return Verdict(True, f"valid DKIM signature of {signature.domain}", Proof.DKIM)
    trusted = [r for r in auth.results if r.authserv_id.lower() in policy.trusted_authserv_ids]
    found = _passing_result(trusted, from_domain, allowed_domain)
    if found is not None:
        return Verdict(
            True,
            f"Authentication-Results of {found.authserv_id}: {found.method}=pass",
            Proof.AUTHENTICATION_RESULTS,
        )
    if auth.arc is not None and auth.arc.valid:
        arc_trusted = [
            r for r in auth.arc.results if r.authserv_id.lower() in policy.trusted_authserv_ids
        ]
        found = _passing_result(arc_trusted, from_domain, allowed_domain)
        if found is not None:
            return Verdict(
                True, f"valid ARC chain, {found.authserv_id}: {found.method}=pass", Proof.ARC
            )
    return Verdict(False, f"no valid DKIM or trusted authentication result for {from_domain}")


def _passing_result(
    results: Iterable[AuthResult], from_domain: str, check: Callable[[str], bool]
) -> AuthResult | None:
    for result in results:
        if result.result.lower() != "pass":
            continue
        method = result.method.lower()
        dmarc = method == "dmarc" and result.header_from.lower().strip(".") == from_domain
        if dmarc and check(from_domain):
            return result
        dkim = method == "dkim" and bool(result.header_d) and aligned(result.header_d, from_domain)
        if dkim and check(result.header_d):
            return result
    return None


def from_authenticated(facts: MessageFacts, auth: Authentication, policy: TrustPolicy) -> Verdict:
    """The From address is verified for its own domain (any domain: customers too)."""
    if facts.sender is None:
        return Verdict(False, "no sender")
    return _domain_proof(facts.sender.address, auth, policy, None)


def own_mail(facts: MessageFacts, *, in_outbox: bool, policy: TrustPolicy) -> Verdict:
    """keepword's own mail: the loop header naming us AND a Message-ID from our outbox.

    `in_outbox`: the store found `facts.message_id` in the outbox (the shell files the
    mail in that row's case). A loop header on a mail keepword never sent is a forgery or a
    robot quoting us: not own mail, never a claim on any case.
    """
    named = _addresses_in(facts.header(LOOP_HEADER))
    if not named:
        return Verdict(False, "no keepword loop header")
    if not named & policy.own_addresses:
        return Verdict(False, f"loop header of another keepword ({', '.join(sorted(named))})")
    if not in_outbox:
        return Verdict(False, "keepword's loop header on a mail keepword never sent")
    return Verdict(True, "keepword's own mail (Message-ID in its outbox)", Proof.OUTBOX)


def team_member(facts: MessageFacts, auth: Authentication, policy: TrustPolicy) -> Verdict:
    """A team address in From AND proof that the team sent it."""
    sender = facts.sender.address.lower() if facts.sender else None
    if sender is None or sender not in policy.team:
        return Verdict(False, "the sender is not a team address")
    if facts.origin is Origin.SENT:
        return Verdict(True, f"{sender}, found in the Sent folder", Proof.SENT_FOLDER, sender)
    proof = domain_proof(sender, auth, policy)
    if proof.proven:
        return Verdict(True, f"{sender}, {proof.reason}", proof.proof, sender)
    return Verdict(False, f"claims team address {sender} without proof: {proof.reason}")


# -- standing of a sender -------------------------------------------------------------


class Standing(StrEnum):
    OWN = "own"
    TEAM = "team"
    PERSON = "person"  # a customer, a stranger or an unproven team claim


@dataclass(frozen=True, slots=True)
class Sender:
    """Who a message speaks for, decided once and used by every later rule."""

    standing: Standing
    kind: Kind  # the Kind triage should use from here on
    reason: str
    address: str | None  # the From address (lower case) or None without a usable one
    authenticated: bool = False  # From verified for its domain (customers: DKIM/DMARC)
    claimed_team: bool = False  # From is a team address that did not prove it


def judge_sender(
    facts: MessageFacts,
    classified: Kind,
    policy: TrustPolicy,
    *,
    own: Verdict,
    team: Verdict,
    from_auth: Verdict,
) -> Sender:
    """The standing of a message's sender and the Kind it may be treated as.

    `classified` is domain.classify's answer: robots stay robots (a team member's
    out-of-office is AUTOMATED, handled by domain.owners), STAFF needs a team proof,
    OWN needs keepword's outbox.
    """
    address = facts.sender.address.lower() if facts.sender else None
    if own.proven:
        return Sender(Standing.OWN, Kind.OWN, own.reason, address, True)
    if classified is Kind.OWN:  # loop header but not our outbox: a robot, never answered
        return Sender(Standing.PERSON, Kind.AUTOMATED, own.reason, address)
    if team.proven:
        kind = Kind.AUTOMATED if classified is Kind.AUTOMATED else Kind.STAFF
        return Sender(Standing.TEAM, kind, team.reason, address, True)
    claimed = address is not None and address in policy.team
    if facts.origin is Origin.SENT and classified is not Kind.AUTOMATED:
        # Someone with the mailbox's password sent it, but not as the team: it is on the
        # timeline where it belongs and counts for nothing (never a customer's mail).
        reason = f"found in the Sent folder but {team.reason}"
        return Sender(Standing.PERSON, Kind.AUTOMATED, reason, address, False, claimed)
    kind = Kind.CUSTOMER if classified is Kind.STAFF else classified
    reason = team.reason if claimed else "not from the team"
    return Sender(Standing.PERSON, kind, reason, address, from_auth.proven, claimed)


# -- joins ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinTarget:
    """The case a threading rule picked, with what trust needs to know about it.

    `correspondents`: addresses on the case through their own mail (case_correspondent).
    `participants`: for REFERENCES, every address the referenced mail was from or sent
    to (stored mail: From/To/Cc; keepword's mail: its outbox recipients).
    """

    case_id: int
    reference: str
    correspondents: frozenset[str]
    participants: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Refusal:
    case_id: int
    reference: str
    reason: str
    event: Event


@dataclass(frozen=True, slots=True)
class JoinDecision:
    """The match triage goes on with, and the refusal to record on the targeted case."""

    match: ThreadMatch
    refusal: Refusal | None = None
    # Addresses the case may learn as correspondents from this message (From only).
    new_correspondents: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return self.refusal is not None


JOIN_NEEDS: dict[ThreadRule, str] = {
    ThreadRule.TAG: "a correspondent of the case, or the team",
    ThreadRule.BODY_TAG: "a correspondent of the case, or the team",
    ThreadRule.REFERENCES: "a correspondent, someone the referenced mail was sent to, or the team",
    ThreadRule.SUBJECT: "the sender (not its Reply-To) a correspondent of the case",
}


def vet_join(
    facts: MessageFacts,
    match: ThreadMatch,
    sender: Sender,
    target: JoinTarget | None,
    *,
    now: datetime,
) -> JoinDecision:
    """Accept or refuse the case domain.threads chose; a refusal opens a case of its own.

    `target` describes `match.case_id` (None when the match opens a new case).
    """
    if match.case_id is None or target is None:
        return JoinDecision(match, None, _learnable(sender, None))
    why = _refusal_reason(facts, match.rule, sender, target)
    if why is None:
        return JoinDecision(match, None, _learnable(sender, target))
    who = sender.address or "a sender without an address"
    detail = f"refused: {who} tried to join by {match.rule.value}: {why}"
    event = Event(EventKind.REFUSED, now, sender.address, detail, facts.pk)
    replacement = ThreadMatch(
        None,
        ThreadRule.NEW,
        f"new case for the real sender; not let into {target.reference}: {why}",
    )
    refusal = Refusal(target.case_id, target.reference, why, event)
    return JoinDecision(replacement, refusal, ())


def _refusal_reason(
    facts: MessageFacts, rule: ThreadRule, sender: Sender, target: JoinTarget
) -> str | None:
    if sender.standing in (Standing.OWN, Standing.TEAM):
        return None
    address = sender.address
    correspondents = frozenset(a.lower() for a in target.correspondents)
    if address is None:
        return "the message has no usable sender"
    if rule in (ThreadRule.TAG, ThreadRule.BODY_TAG, ThreadRule.SUBJECT):
        if address not in correspondents:
            claim = " (an unproven team address)" if sender.claimed_team else ""
            return f"{address}{claim} is not a correspondent of {target.reference}"
    elif rule is ThreadRule.REFERENCES and sender.kind is Kind.AUTOMATED:
        # A bounce must reach its case, and a robot's mail changes nothing there: it is
        # never answered, never a correspondent, never in a story.
        return None
    elif rule is ThreadRule.REFERENCES:
        participants = frozenset(a.lower() for a in target.participants)
        if address not in correspondents and address not in participants:
            return f"{address} was never sent the mail it answers, nor writes on {target.reference}"
    foreign = _foreign_reply_to(facts, address, correspondents)
    if foreign is not None and not sender.authenticated:
        return (
            f"the From {address} is not authenticated and its Reply-To {foreign} "
            f"is not on {target.reference}"
        )
    return None


def _foreign_reply_to(
    facts: MessageFacts, address: str, correspondents: frozenset[str]
) -> str | None:
    for reply_to in facts.reply_to:
        other = reply_to.address.lower()
        if other != address and other not in correspondents:
            return other
    return None


def _learnable(sender: Sender, target: JoinTarget | None) -> tuple[str, ...]:
    """Only the From of a person's mail in the case joins its correspondents: never a
    Reply-To, never a team member, never keepword."""
    if sender.standing is not Standing.PERSON or sender.address is None:
        return ()
    if sender.kind is not Kind.CUSTOMER:
        return ()
    if target is not None and sender.address in target.correspondents:
        return ()
    return (sender.address,)


def customer_recipient(case_customer: str | None, correspondents: Collection[str]) -> str | None:
    """Where mail about an existing case goes: its customer of record, nothing else.

    The Reply-To of a later mail never redirects a case's mail (a forged From of the
    customer with a stranger's Reply-To would otherwise receive the case's subject and
    due time). `correspondents` is accepted so a caller can assert the customer is one.
    """
    if case_customer is None:
        return None
    address = case_customer.lower()
    known = {a.lower() for a in correspondents}
    return address if not known or address in known else None


# -- tags: claims in subjects ---------------------------------------------------------------


def tags_in(text: str, prefixes: Collection[str]) -> tuple[str, ...]:
    """Every distinct case tag (`[KW-42]`, `[kw #42]`) in a subject, in order."""
    found = (f"{m.group(1).upper()}-{int(m.group(2))}" for m in tag_matches(text, prefixes))
    return tuple(dict.fromkeys(found))


def subject_claim(subject: str, prefixes: Collection[str], sender: Sender) -> str | None:
    """The case a subject claims, or None when it claims nothing that may be read.

    Keepword's own subjects are never read back (their case is the outbox row's), and a
    subject with two different tags claims nothing: which one is the case is exactly
    what a stranger's "[KW-1] hello" acknowledged as "Re: [KW-1] hello [KW-2]" confuses.
    """
    if sender.standing is Standing.OWN:
        return None
    tags = tags_in(subject, prefixes)
    return tags[0] if len(tags) == 1 else None


def own_subject(original: str, reference: str, prefixes: Collection[str]) -> str:
    """The subject keepword writes on its mail about `reference`: the sender's subject
    with every tag of ours taken out, then the case's own tag once."""
    text = " ".join(without_tags(original, prefixes).split()) or "(no subject)"
    return f"{text} [{reference}]"


# -- identity -----------------------------------------------------------------------------


def usable_sender(facts: MessageFacts) -> str | None:
    """Why this message can open no case (None: it can). Such mail is kept and counted."""
    if facts.sender is None or not facts.sender.address:
        return "no usable sender address"
    local, at, domain = facts.sender.address.partition("@")
    if not at or not local or "." not in domain:
        return f"sender {facts.sender.address!r} is not a usable address"
    return None


_ADDR_IN_ANGLES = re.compile(r"<\s*([^<>\s@]+@[^<>\s@]+)\s*>")
_BARE_ADDR = re.compile(r"(?<![\w.+-])([\w.+'!#$%&*/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+)")


def salvage_sender(raw_from: str) -> Address | None:
    """The address of a From header whose display name cannot be decoded.

    An encoded-word that decodes to CR/LF (or does not decode at all) must never cost
    the address: the name is dropped (control characters removed), the addr-spec kept.
    """
    text = raw_from.replace("\r", " ").replace("\n", " ")
    match = _ADDR_IN_ANGLES.search(text) or _BARE_ADDR.search(text)
    if match is None:
        return None
    address = match.group(1).strip().lower()
    if len(address) > MAX_ADDRESS_CHARS:
        return None
    name_part = text[: match.start()].strip().strip('"').strip()
    return Address(address, _safe_name(name_part))


def _safe_name(raw: str) -> str:
    try:
        decoded = str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):
        decoded = ""
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in decoded)
    return " ".join(cleaned.split())[:200]


def _addresses_in(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(a.lower() for _name, a in getaddresses(list(values)) if "@" in a)
