"""The trust model (domain.trust), keyed Message-IDs and DKIM/ARC verification.

Each hijack route of issue 12 is played twice: domain.threads alone (what triage does
today: the stranger gets in) and then through `vet_join` (refused, on the timeline of
the targeted case, a case of its own for the real sender).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import pytest

from keepword.domain.cases import EventKind
from keepword.domain.message_ids import (
    MIN_SECRET_BYTES,
    is_keyed_message_id,
    keyed_message_id,
)
from keepword.domain.model import LOOP_HEADER, Address, Kind, MessageFacts, Origin
from keepword.domain.threads import (
    Candidates,
    CaseCandidate,
    ThreadMatch,
    ThreadRule,
    choose_case,
)
from keepword.domain.trust import (
    NOT_VERIFIED,
    ArcChain,
    Authentication,
    AuthResult,
    DkimSignature,
    JoinTarget,
    Proof,
    Sender,
    Standing,
    TrustPolicy,
    customer_recipient,
    from_authenticated,
    judge_sender,
    own_mail,
    own_subject,
    salvage_sender,
    subject_claim,
    tags_in,
    team_member,
    usable_sender,
    vet_join,
)
from keepword.mail import authentication
from keepword.mail.compose import deterministic_message_id

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SHARED = "support@shop.example"
ALICE = "alice@shop.example"
ANN = Address("ann@customer.example", "Ann")
MALLORY = Address("mallory@evil.test", "Mallory")
POLICY = TrustPolicy.of(
    team={SHARED, ALICE},
    own_addresses={SHARED},
    dkim_domains={"shop.example"},
    trusted_authserv_ids={"mx.shop.example"},
)
KW1 = CaseCandidate(1, "KW-1", frozenset({ANN.address}), "hello", NOW - timedelta(hours=1), False)
KW1_TARGET = JoinTarget(1, "KW-1", frozenset({ANN.address}))


def threads_choice(
    facts: MessageFacts,
    kind: Kind,
    candidates: Candidates,
    *,
    subject_days: int = 0,
    team: bool = False,
) -> ThreadMatch:
    """domain.threads' choice for `facts` at NOW, before vet_join: the old rule alone.

    `subject_days`: how long a subject match counts; `team`: POLICY's team is known.
    """
    return choose_case(
        facts,
        kind,
        candidates,
        now=NOW,
        subject_window=timedelta(days=subject_days),
        team=POLICY.team if team else frozenset(),
    )


def facts(
    sender: Address | None,
    *,
    subject: str = "[KW-1] hello",
    reply_to: tuple[Address, ...] = (),
    origin: Origin = Origin.INBOX,
    headers: dict[str, tuple[str, ...]] | None = None,
    in_reply_to: tuple[str, ...] = (),
    message_id: str = "m1@x.example",
) -> MessageFacts:
    return MessageFacts(
        pk=7,
        mailbox="support",
        message_id=message_id,
        sender=sender,
        to=(Address(SHARED),),
        reply_to=reply_to,
        subject=subject,
        origin=origin,
        headers=headers or {},
        in_reply_to=in_reply_to,
    )


def judge(
    message: MessageFacts,
    classified: Kind,
    auth: Authentication = NOT_VERIFIED,
    *,
    in_outbox: bool = False,
) -> Sender:
    return judge_sender(
        message,
        classified,
        POLICY,
        own=own_mail(message, in_outbox=in_outbox, policy=POLICY),
        team=team_member(message, auth, POLICY),
        from_auth=from_authenticated(message, auth, POLICY),
    )


def dkim_pass(domain: str) -> Authentication:
    return Authentication(dkim=(DkimSignature(domain, True, "sel"),))


# -- team proof ----------------------------------------------------------------------------


def test_a_forged_team_from_without_proof_is_not_the_team() -> None:
    forged = facts(Address(ALICE), subject="[KW-1] #close")
    sender = judge(forged, Kind.STAFF)
    assert sender.standing is Standing.PERSON
    assert sender.kind is Kind.CUSTOMER
    assert sender.claimed_team
    assert "without proof" in sender.reason


def test_old_threading_lets_a_forged_team_from_into_any_case_and_vet_join_refuses() -> None:
    forged = facts(Address(ALICE))
    old = threads_choice(forged, Kind.STAFF, Candidates(by_tag=KW1), subject_days=14, team=True)
    assert old.case_id == 1  # the old rule: "from the team"
    decision = vet_join(forged, old, judge(forged, Kind.STAFF), KW1_TARGET, now=NOW)
    assert decision.refused
    assert decision.match.case_id is None and decision.match.rule is ThreadRule.NEW
    assert decision.refusal is not None
    assert decision.refusal.event.kind is EventKind.REFUSED
    assert decision.refusal.event.detail.startswith("refused: alice@shop.example")
    assert "unproven team address" in decision.refusal.reason


@pytest.mark.parametrize(
    ("auth", "proof"),
    [
        (dkim_pass("shop.example"), Proof.DKIM),
        (
            Authentication(
                results=(AuthResult("mx.shop.example", "dmarc", "pass", "", "shop.example"),)
            ),
            Proof.AUTHENTICATION_RESULTS,
        ),
        (
            Authentication(
                results=(AuthResult("mx.shop.example", "dkim", "pass", "shop.example"),)
            ),
            Proof.AUTHENTICATION_RESULTS,
        ),
        (
            Authentication(
                arc=ArcChain(True, (AuthResult("mx.shop.example", "dkim", "pass", "shop.example"),))
            ),
            Proof.ARC,
        ),
    ],
)
def test_team_proofs(auth: Authentication, proof: Proof) -> None:
    verdict = team_member(facts(Address(ALICE)), auth, POLICY)
    assert verdict.proven and verdict.proof is proof and verdict.who == ALICE


@pytest.mark.parametrize(
    "auth",
    [
        dkim_pass("gmail.example"),  # valid, but not a team domain and not aligned
        Authentication(dkim=(DkimSignature("shop.example", False),)),  # does not verify
        Authentication(  # a header any sender can write: authserv-id not trusted
            results=(AuthResult("mx.evil.test", "dmarc", "pass", "", "shop.example"),)
        ),
        Authentication(  # trusted verifier, but it failed
            results=(AuthResult("mx.shop.example", "dkim", "fail", "shop.example"),)
        ),
        Authentication(  # broken ARC chain: its results mean nothing
            arc=ArcChain(False, (AuthResult("mx.shop.example", "dkim", "pass", "shop.example"),))
        ),
    ],
)
def test_no_team_proof(auth: Authentication) -> None:
    assert not team_member(facts(Address(ALICE)), auth, POLICY).proven


def test_a_valid_dkim_of_an_unlisted_domain_proves_no_team_member() -> None:
    policy = TrustPolicy.of({"bob@gmail.example"}, {SHARED}, dkim_domains={"shop.example"})
    message = facts(Address("bob@gmail.example"))
    assert not team_member(message, dkim_pass("gmail.example"), policy).proven


def test_sent_folder_needs_a_team_address_too() -> None:
    assert team_member(facts(Address(ALICE), origin=Origin.SENT), NOT_VERIFIED, POLICY).proven
    other = facts(Address("someone@else.example"), origin=Origin.SENT)
    sender = judge(other, Kind.STAFF)
    assert sender.standing is Standing.PERSON and sender.kind is Kind.AUTOMATED


def test_team_out_of_office_stays_automated_but_proven() -> None:
    sender = judge(facts(Address(ALICE)), Kind.AUTOMATED, dkim_pass("shop.example"))
    assert sender.standing is Standing.TEAM and sender.kind is Kind.AUTOMATED


# -- own mail -------------------------------------------------------------------------------


def test_a_forged_loop_header_is_not_own_mail() -> None:
    forged = facts(MALLORY, headers={LOOP_HEADER.lower(): (SHARED,)})
    verdict = own_mail(forged, in_outbox=False, policy=POLICY)
    assert not verdict.proven
    sender = judge(forged, Kind.OWN)
    assert sender.kind is Kind.AUTOMATED and sender.standing is Standing.PERSON


def test_own_mail_needs_the_outbox() -> None:
    ours = facts(Address(SHARED), headers={LOOP_HEADER.lower(): (SHARED,)})
    verdict = own_mail(ours, in_outbox=True, policy=POLICY)
    assert verdict.proven and verdict.proof is Proof.OUTBOX
    assert judge(ours, Kind.OWN, in_outbox=True).standing is Standing.OWN


def test_own_subjects_are_never_read_back_as_a_claim() -> None:
    # The acknowledgement of a stranger's "[KW-1] hello", as the old code titled it.
    seen_again = facts(
        Address(SHARED),
        subject="Re: [KW-1] hello [KW-2]",
        headers={LOOP_HEADER.lower(): (SHARED,)},
        origin=Origin.SENT,
    )
    from keepword.domain.threads import find_case_reference

    assert find_case_reference(seen_again, ["KW"]) == "KW-1"  # the old reading
    sender = judge(seen_again, Kind.OWN, in_outbox=True)
    assert subject_claim(seen_again.subject, ["KW"], sender) is None


def test_two_different_tags_claim_nothing() -> None:
    sender = judge(facts(ANN), Kind.CUSTOMER)
    assert subject_claim("Re: [KW-1] hello [KW-2]", ["KW"], sender) is None
    assert subject_claim("Re: hello [KW-2] [kw 2]", ["KW"], sender) == "KW-2"
    assert tags_in("[KW-1] a [kw#1] b [KW-3]", ["KW"]) == ("KW-1", "KW-3")


def test_own_subject_takes_foreign_tags_out() -> None:
    assert own_subject("[KW-1] hello", "KW-2", ["KW"]) == "hello [KW-2]"
    assert own_subject("  ", "KW-2", ["KW"]) == "(no subject) [KW-2]"


# -- customers and Reply-To ------------------------------------------------------------------


def test_forged_customer_from_with_a_strangers_reply_to_is_refused() -> None:
    forged = facts(ANN, reply_to=(MALLORY,))
    old = threads_choice(forged, Kind.CUSTOMER, Candidates(by_tag=KW1), subject_days=14, team=True)
    assert old.case_id == 1  # the old rule trusted the (forged) From
    decision = vet_join(forged, old, judge(forged, Kind.CUSTOMER), KW1_TARGET, now=NOW)
    assert decision.refused and decision.match.case_id is None
    assert decision.new_correspondents == ()
    assert "Reply-To mallory@evil.test" in decision.refusal.reason  # type: ignore[union-attr]


def test_authenticated_customer_with_another_reply_to_joins_but_reply_to_learns_nothing() -> None:
    real = facts(ANN, reply_to=(Address("ann.private@home.example"),))
    sender = judge(real, Kind.CUSTOMER, dkim_pass("customer.example"))
    assert sender.authenticated
    match = threads_choice(real, Kind.CUSTOMER, Candidates(by_tag=KW1))
    decision = vet_join(real, match, sender, KW1_TARGET, now=NOW)
    assert not decision.refused
    assert decision.new_correspondents == ()  # Ann is known; the Reply-To never joins
    assert customer_recipient("ann@customer.example", {"ann@customer.example"}) == ANN.address


def test_a_stranger_quoting_a_case_number_gets_a_case_of_their_own() -> None:
    stranger = facts(MALLORY)
    match = threads_choice(stranger, Kind.CUSTOMER, Candidates(by_tag=KW1))
    assert match.case_id is None  # domain.threads already refuses this one
    decision = vet_join(stranger, match, judge(stranger, Kind.CUSTOMER), None, now=NOW)
    assert not decision.refused and decision.new_correspondents == (MALLORY.address,)


def test_in_reply_to_an_acknowledgement_needs_a_participant() -> None:
    computed = deterministic_message_id("ack:1", "shop.example")  # anyone can compute it
    stranger = facts(MALLORY, subject="hi", in_reply_to=(computed,))
    old = threads_choice(stranger, Kind.CUSTOMER, Candidates(by_reference=(KW1,)))
    assert old.case_id == 1 and old.rule is ThreadRule.REFERENCES  # the old hijack
    target = JoinTarget(1, "KW-1", frozenset({ANN.address}), frozenset({ANN.address, SHARED}))
    decision = vet_join(stranger, old, judge(stranger, Kind.CUSTOMER), target, now=NOW)
    assert decision.refused
    assert "never sent the mail it answers" in decision.refusal.reason  # type: ignore[union-attr]
    # someone the mail was sent to (Ann's colleague in Cc) may answer it
    colleague = Address("bob@customer.example")
    cc_target = JoinTarget(1, "KW-1", frozenset({ANN.address}), frozenset({colleague.address}))
    reply = facts(colleague, subject="hi", in_reply_to=(computed,))
    ok = vet_join(reply, old, judge(reply, Kind.CUSTOMER), cc_target, now=NOW)
    assert not ok.refused and ok.new_correspondents == (colleague.address,)


def test_subject_rule_needs_the_sender_not_the_reply_to() -> None:
    stranger = facts(MALLORY, subject="hello", reply_to=(ANN,))
    old = threads_choice(stranger, Kind.CUSTOMER, Candidates(by_subject=(KW1,)), subject_days=14)
    assert old.case_id == 1 and old.rule is ThreadRule.SUBJECT
    decision = vet_join(stranger, old, judge(stranger, Kind.CUSTOMER), KW1_TARGET, now=NOW)
    assert decision.refused


def test_proven_team_joins_any_case() -> None:
    reply = facts(Address(ALICE), subject="Re: hello [KW-1]")
    sender = judge(reply, Kind.STAFF, dkim_pass("shop.example"))
    match = threads_choice(reply, Kind.STAFF, Candidates(by_tag=KW1), team=True)
    decision = vet_join(reply, match, sender, KW1_TARGET, now=NOW)
    assert not decision.refused and decision.new_correspondents == ()


def test_customer_recipient_is_the_customer_of_record() -> None:
    assert customer_recipient("Ann@Customer.example", ()) == ANN.address
    assert customer_recipient(None, ()) is None
    assert customer_recipient(ANN.address, {"other@x.example"}) is None


# -- identity -------------------------------------------------------------------------------


def test_usable_sender() -> None:
    assert usable_sender(facts(None)) == "no usable sender address"
    assert usable_sender(facts(Address("nobody"))) is not None
    assert usable_sender(facts(ANN)) is None


@pytest.mark.parametrize(
    "raw",
    [
        "=?utf-8?q?Evil=0D=0ABcc=3A_x=40y.z?= <ann@customer.example>",
        "=?utf-8?b?////?= <ann@customer.example>",
        "=?x-unknown?q?abc?= <Ann@Customer.example>",
        '"Ann\r\n Doe" <ann@customer.example>',
        "ann@customer.example",
    ],
)
def test_an_undecodable_display_name_never_costs_the_address(raw: str) -> None:
    found = salvage_sender(raw)
    assert found is not None and found.address == ANN.address
    assert "\r" not in found.name and "\n" not in found.name


def test_salvage_sender_without_address() -> None:
    assert salvage_sender("=?utf-8?q?nobody?=") is None


# -- keyed Message-IDs ----------------------------------------------------------------------

SECRET = bytes(range(32))


def test_keyed_message_ids_are_stable_and_unguessable() -> None:
    first = keyed_message_id(SECRET, "ack:1", "Shop.example")
    assert first == keyed_message_id(SECRET, "ack:1", "shop.example")  # a retry: same id
    assert first != keyed_message_id(SECRET, "ack:2", "shop.example")
    assert first != keyed_message_id(bytes(32), "ack:1", "shop.example")  # another install
    assert first != deterministic_message_id("ack:1", "shop.example")
    assert first.startswith("kw2.") and first.endswith("@shop.example")
    assert len(first.split("@")[0]) == 4 + 32
    assert is_keyed_message_id(SECRET, "ack:1", "shop.example", f"<{first}>")
    assert not is_keyed_message_id(SECRET, "ack:2", "shop.example", first)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=str(MIN_SECRET_BYTES)):
        keyed_message_id(b"short", "ack:1", "shop.example")


# -- real signatures (dkimpy; DNS answered by the test, no network) --------------------------


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test key")
    folder: Path = tmp_path_factory.mktemp("dkim")
    private, public = folder / "k.pem", folder / "pub.der"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(private), "2048"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    return private.read_bytes(), base64.b64encode(public.read_bytes())


def dns_for(public: bytes, domains: set[str]) -> authentication.DnsLookup:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        host = name.decode().rstrip(".")
        if any(host == f"sel._domainkey.{d}" for d in domains):
            return b"v=DKIM1; k=rsa; p=" + public
        return None

    return lookup


MESSAGE = (
    b"From: Alice <alice@shop.example>\r\n"
    b"To: support@shop.example\r\n"
    b"Subject: Re: hello [KW-1]\r\n"
    b"Message-ID: <r1@shop.example>\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
    b"\r\n"
    b"#take\r\nOn it.\r\n"
)
SIGNED = (b"from", b"to", b"subject", b"message-id", b"date")


def test_dkim_signed_team_mail_is_proven(rsa_key: tuple[bytes, bytes]) -> None:
    private, public = rsa_key
    signed = dkim.sign(MESSAGE, b"sel", b"shop.example", private, include_headers=list(SIGNED))
    auth = authentication.verify(signed + MESSAGE, dns_for(public, {"shop.example"}))
    assert auth.dkim == (DkimSignature("shop.example", True, "sel", ""),)
    assert team_member(facts(Address(ALICE)), auth, POLICY).proof is Proof.DKIM


def test_tampered_or_foreign_signatures_prove_nothing(rsa_key: tuple[bytes, bytes]) -> None:
    private, public = rsa_key
    signature = dkim.sign(MESSAGE, b"sel", b"shop.example", private, include_headers=list(SIGNED))
    tampered = signature + MESSAGE.replace(b"On it.", b"#assign mallory@evil.test")
    auth = authentication.verify(tampered, dns_for(public, {"shop.example"}))
    assert len(auth.dkim) == 1 and not auth.dkim[0].valid and auth.dkim[0].reason
    assert not team_member(facts(Address(ALICE)), auth, POLICY).proven
    # Mallory signs with her own domain: valid, but not aligned with the team From.
    own = dkim.sign(MESSAGE, b"sel", b"evil.test", private, include_headers=list(SIGNED))
    auth = authentication.verify(own + MESSAGE, dns_for(public, {"evil.test"}))
    assert auth.dkim[0].valid and auth.dkim[0].domain == "evil.test"
    assert not team_member(facts(Address(ALICE)), auth, POLICY).proven
    # No key published (DNS says nothing): not verified, no exception.
    auth = authentication.verify(signature + MESSAGE, dns_for(public, set()))
    assert not auth.dkim[0].valid


def test_authentication_results_parsed_with_authres() -> None:
    raw = (
        b"Authentication-Results: mx.shop.example;\r\n"
        b" dkim=pass header.d=shop.example header.i=@shop.example;\r\n"
        b" dmarc=pass (p=reject) header.from=shop.example\r\n"
        b"Authentication-Results: garbage ;;; ==\r\n" + MESSAGE
    )
    auth = authentication.verify(raw, dns_for(b"", set()))
    assert auth.dkim == () and auth.arc is None
    assert AuthResult("mx.shop.example", "dkim", "pass", "shop.example", "") in auth.results
    assert AuthResult("mx.shop.example", "dmarc", "pass", "", "shop.example") in auth.results
    assert len(auth.results) == 2  # the unparsable header is skipped
    assert team_member(facts(Address(ALICE)), auth, POLICY).proof is Proof.AUTHENTICATION_RESULTS
    untrusted = TrustPolicy.of(POLICY.team, POLICY.own_addresses, {"shop.example"}, ())
    assert not team_member(facts(Address(ALICE)), auth, untrusted).proven


def test_arc_sealed_mail(rsa_key: tuple[bytes, bytes]) -> None:
    private, public = rsa_key
    dns = dns_for(public, {"shop.example", "relay.example"})
    signed = dkim.sign(MESSAGE, b"sel", b"shop.example", private, include_headers=list(SIGNED))
    results = (
        b"Authentication-Results: mx.shop.example; dkim=pass header.d=shop.example;"
        b" dmarc=pass header.from=shop.example\r\n"
    )
    received = results + signed + MESSAGE
    seal = dkim.arc_sign(received, b"sel", b"relay.example", private, b"mx.shop.example")
    sealed = b"".join(seal) + received
    auth = authentication.verify(sealed, dns)
    assert auth.arc is not None and auth.arc.valid, auth.arc
    assert AuthResult("mx.shop.example", "dmarc", "pass", "", "shop.example") in auth.arc.results
    only_arc = Authentication(arc=auth.arc)
    assert team_member(facts(Address(ALICE)), only_arc, POLICY).proof is Proof.ARC
    broken = authentication.verify(sealed.replace(b"On it.", b"Off it."), dns)
    assert broken.arc is not None and not broken.arc.valid


# -- identity of incoming mail ------------------------------------------------------------


def test_same_message_id_and_body_from_another_sender_is_another_message() -> None:
    from keepword.domain.message_ids import identity_digest, sender_digest

    body = "ab" * 32
    assert identity_digest(body, ANN.address, {}) == body  # first copy
    assert identity_digest(body, "Ann@Customer.example", {body: ANN.address}) is None  # a copy
    other = identity_digest(body, MALLORY.address, {body: ANN.address})
    assert other == sender_digest(body, MALLORY.address) and other != body
    stored = {body: ANN.address, other: MALLORY.address}
    assert identity_digest(body, MALLORY.address, stored) is None  # Mallory's copy again
    assert identity_digest(body, None, {body: ANN.address}) == sender_digest(body, None)


def test_a_bounce_reaches_its_case_by_references_but_learns_nothing() -> None:
    bounce = facts(Address("mailer-daemon@mx.customer.example"), subject="Undelivered")
    match = threads_choice(bounce, Kind.AUTOMATED, Candidates(by_reference=(KW1,)))
    decision = vet_join(bounce, match, judge(bounce, Kind.AUTOMATED), KW1_TARGET, now=NOW)
    assert not decision.refused and decision.new_correspondents == ()
