"""Who a message speaks for: the one place triage asks (docs/trust.md).

The decisions are domain.trust's; this module gathers the facts they need from the
store and the raw bytes:

- keepword's own mail: its Message-ID is a row of the outbox (store.outbox.own_mail);
- team mail: a team address in From and a proof: the watched mailbox's own Sent folder
  (the message's locations: `facts.origin`), or, only when `[mailbox.trust]` configures
  them, a DKIM signature of a team domain or an Authentication-Results header of a
  trusted authserv-id (mail.authentication: it costs CPU and DNS, so it runs only for a
  team From, or for a Reply-To that a join may have to vet);
- the case a join targets, with its correspondents and, for References, everyone the
  referenced mail was from or sent to (domain.trust.JoinTarget).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection

from keepword.domain.model import Classification, Kind, MessageFacts
from keepword.domain.threads import Candidates, ThreadMatch, ThreadRule
from keepword.domain.trust import (
    NOT_VERIFIED,
    Authentication,
    JoinTarget,
    Refusal,
    Sender,
    Standing,
    TrustPolicy,
    Verdict,
    from_authenticated,
    judge_sender,
    own_mail,
    team_member,
    vet_join,
)
from keepword.mail.authentication import verify_as_configured
from keepword.pipeline.context import MailboxContext
from keepword.store import cases as case_store
from keepword.store.messages import raw_message
from keepword.store.outbox import OwnMail
from keepword.trust_settings import TrustSettings

_NOT_CHECKED = Verdict(False, "not checked: no Reply-To to vet")


@dataclass(frozen=True, slots=True)
class Judged:
    """A message's sender standing and what triage goes on with."""

    sender: Sender
    verdict: Classification  # domain.classify's verdict with the standing's Kind
    own_case: int | None = None  # keepword's own mail: the case of its outbox row


def policy_of(desk: MailboxContext) -> TrustPolicy:
    """The mailbox's trust policy. The team's domains are `dkim_domains`, or, when none
    are listed, the domain of the mailbox's own address: a trusted authserv-id vouches
    for those. (DKIM itself is verified only when `dkim_domains` is set: `_authentication`.)
    Built once a run: every message asks."""
    if desk.trust is None:
        box = desk.box
        policy = box.trust.policy(box.team_addresses(), desk.own_addresses)
        if not policy.dkim_domains:
            domain = box.address.rpartition("@")[2].lower()
            policy = replace(policy, dkim_domains=frozenset({domain}))
        desk.trust = policy
    return desk.trust


def judge(
    conn: Connection,
    desk: MailboxContext,
    facts: MessageFacts,
    classified: Classification,
    row: OwnMail | None,
) -> Judged:
    """The standing of `facts`' sender, once per message (`classified`: domain.classify;
    `row`: the outbox row of its Message-ID, store.outbox.own_mail, if keepword sent it)."""
    policy = policy_of(desk)
    own = own_mail(
        facts,
        in_outbox=row is not None,
        policy=policy,
    )
    trust = desk.box.trust
    auth = NOT_VERIFIED if own.proven else _authentication(conn, facts, policy, trust)
    team = team_member(facts, auth, policy)
    from_auth = from_authenticated(facts, auth, policy) if facts.reply_to else _NOT_CHECKED
    sender = judge_sender(facts, classified.kind, policy, own=own, team=team, from_auth=from_auth)
    reason = classified.reason
    if sender.standing in (Standing.TEAM, Standing.OWN):
        reason = sender.reason  # the proof says it all (no "found in the Sent folder" twice)
    elif sender.kind is not classified.kind:
        reason = f"{classified.reason}; {sender.reason}"
    own_case = row.case_id if row is not None and sender.standing is Standing.OWN else None
    return Judged(sender, Classification(sender.kind, reason), own_case)


def _authentication(
    conn: Connection, facts: MessageFacts, policy: TrustPolicy, settings: TrustSettings
) -> Authentication:
    """What can be verified of the raw message, only as far as the config asks for it and
    only when it can matter (a team From, or a Reply-To a join may have to vet)."""
    if not (settings.dkim_domains or settings.trusted_authserv_ids):
        return NOT_VERIFIED
    address = facts.sender.address.lower() if facts.sender else None
    if address is None or (address not in policy.team and not facts.reply_to):
        return NOT_VERIFIED
    raw = raw_message(conn, facts.pk)
    if raw is None:
        return NOT_VERIFIED
    return verify_as_configured(
        raw, dkim=bool(settings.dkim_domains), results=bool(settings.trusted_authserv_ids)
    )


def own_match(judged: Judged, reference: str | None) -> ThreadMatch:
    """keepword's own mail goes to the case of its outbox row; its subject is never read."""
    if judged.own_case is None:
        return ThreadMatch(None, ThreadRule.NEW, "keepword's own mail about no case")
    return ThreadMatch(
        judged.own_case,
        ThreadRule.REFERENCES,
        f"filed in {reference or 'its case'} by its outbox row",
    )


def as_vetted(chosen: ThreadMatch, sender: Sender, candidates: Candidates) -> ThreadMatch:
    """The rule a join is vetted under. A robot's mail (a bounce, an auto-reply) that
    names a case's tag AND references a mail of that case reaches it by the reference:
    a robot's mail never changes a case (domain.trust.JOIN_NEEDS)."""
    tagged = chosen.rule in (ThreadRule.TAG, ThreadRule.BODY_TAG)
    if not tagged or sender.kind is not Kind.AUTOMATED or chosen.case_id is None:
        return chosen
    if any(c.case_id == chosen.case_id for c in candidates.by_reference):
        return replace(chosen, rule=ThreadRule.REFERENCES)
    return chosen


def join_target(
    conn: Connection,
    match: ThreadMatch,
    candidates: Candidates,
    referenced: case_store.ReferencedMail,
) -> JoinTarget | None:
    """The case `match` picked, as domain.trust.vet_join weighs it (None: a new case);
    `referenced`: the stored mail the message's References name."""
    if match.case_id is None:
        return None
    every = [candidates.by_tag, *candidates.by_reference, *candidates.by_subject]
    found = next((c for c in every if c is not None and c.case_id == match.case_id), None)
    if found is None:  # threading only picks candidates; be strict if it ever does not
        loaded = case_store.case_candidates(conn, [match.case_id])
        found = loaded[match.case_id]
    participants: frozenset[str] = frozenset()
    if match.rule is ThreadRule.REFERENCES:
        participants = referenced.participants(match.case_id)
    return JoinTarget(found.case_id, found.reference, found.correspondents, participants)


def ignored_tag(
    facts: MessageFacts,
    sender: Sender,
    candidates: Candidates,
    chosen: ThreadMatch,
    *,
    now: datetime,
) -> Refusal | None:
    """The refusal of a tag threading passed over (domain.threads ignores a stranger's
    `[KW-1]`): the attempt still belongs on the timeline of the case it named."""
    tagged = candidates.by_tag
    if tagged is None or chosen.case_id == tagged.case_id:
        return None
    in_subject = tagged.reference.lower() in facts.subject.lower()
    rule = ThreadRule.TAG if in_subject else ThreadRule.BODY_TAG
    attempt = ThreadMatch(tagged.case_id, rule, f"{tagged.reference} named")
    target = JoinTarget(tagged.case_id, tagged.reference, tagged.correspondents)
    return vet_join(facts, attempt, sender, target, now=now).refusal
