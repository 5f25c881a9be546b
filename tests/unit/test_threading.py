from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepword.domain import threads
from keepword.domain.model import MAX_ADDRESS_CHARS, Address, Kind, MessageFacts, Origin
from keepword.domain.threads import (
    MAX_SUBJECT_KEY_CHARS,
    Candidates,
    CaseCandidate,
    ThreadRule,
    choose_case,
    external_correspondent,
    find_case_reference,
    find_tag,
    find_tag_in_body,
    forwarded_original_sender,
    forwarded_senders,
    is_forward_into_inbox,
    is_generic_subject,
    referenced_ids,
    subject_key,
)
from tests.fixtures.facts import message_facts

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WINDOW = timedelta(days=14)
TEAM = frozenset({"support@shop.example", "bob@shop.example"})
ANN = Address("ann@customer.example", "Ann")
CARL = Address("carl@other.example", "Carl")


def message(
    sender: Address | None = ANN,
    *,
    subject: str = "Re: Invoice",
    to: tuple[Address, ...] = (Address("support@shop.example"),),
    cc: tuple[Address, ...] = (),
    reply_to: tuple[Address, ...] = (),
    in_reply_to: tuple[str, ...] = (),
    references: tuple[str, ...] = (),
    body: str = "",
    origin: Origin = Origin.INBOX,
) -> MessageFacts:
    return message_facts(
        sender,
        pk=7,
        message_id="new@customer.example",
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=subject,
        in_reply_to=in_reply_to,
        references=references,
        body_text=body,
        origin=origin,
    )


def case(
    case_id: int = 42,
    *,
    correspondents: frozenset[str] = frozenset({ANN.address}),
    key: str = "invoice",
    age: timedelta = timedelta(days=1),
    closed: bool = False,
) -> CaseCandidate:
    return CaseCandidate(
        case_id=case_id,
        reference=f"KW-{case_id}",
        correspondents=correspondents,
        subject_key=key,
        last_activity=NOW - age,
        closed=closed,
    )


def choose(
    facts: MessageFacts,
    candidates: Candidates,
    kind: Kind = Kind.CUSTOMER,
    window: timedelta = WINDOW,
) -> tuple[int | None, ThreadRule, str]:
    match = choose_case(facts, kind, candidates, now=NOW, subject_window=window, team=TEAM)
    return match.case_id, match.rule, match.explanation


# -- subject_key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("Invoice", "invoice"),
        ("Re: Invoice", "invoice"),
        ("RE: RE: Invoice", "invoice"),
        ("Re:Re:Invoice", "invoice"),
        ("Re[2]: Invoice", "invoice"),
        ("Re(3): Invoice", "invoice"),
        ("Re^2: Invoice", "invoice"),
        ("Fwd: Invoice", "invoice"),
        ("Fw: FW: Invoice", "invoice"),
        ("AW: WG: Rechnung", "rechnung"),
        ("SV: VS: Faktura", "faktura"),
        ("VB: Antw: Factuur", "factuur"),
        ("R: Rif: Fattura", "fattura"),
        ("Ref: Fattura", "fattura"),
        ("RV: Factura", "factura"),
        ("TR: Facture", "facture"),
        ("Odp: PD: Faktura", "faktura"),
        ("YNT: Fatura", "fatura"),
        ("Enc: Res: Fatura", "fatura"),
        ("ΑΠ: τιμολόγιο", "τιμολόγιο"),
        ("Отв: Счёт", "счёт"),
        ("回复：发票", "发票"),
        ("Re: Invoice [KW-42]", "invoice"),
        ("[KW-42] Re: Invoice", "invoice"),
        ("Re: [shop-users] Re: Invoice", "invoice"),
        ("  Re:   Invoice   for\tMarch ", "invoice for march"),
        ("Re: Re: [KW-7] AW: Invoice [KW-7]", "invoice"),
        ("Re:", ""),
        ("", ""),
        ("Regarding the invoice", "regarding the invoice"),  # "Re" only counts with a colon
        ("Fwdx: Invoice", "fwdx: invoice"),
    ],
)
def test_subject_key(subject: str, key: str) -> None:
    assert subject_key(subject) == key


_PREFIXES = ["Re: ", "RE: ", "Fwd: ", "AW: ", "SV: ", "Re[2]: ", "[list] ", "TR: ", "Odp: "]


@given(st.text(max_size=60))
def test_subject_key_is_idempotent(subject: str) -> None:
    key = subject_key(subject)
    assert subject_key(key) == key


@given(st.text(min_size=150, max_size=600))
def test_long_subject_keys_are_bounded_and_idempotent(subject: str) -> None:
    key = subject_key(subject)
    assert len(key) <= MAX_SUBJECT_KEY_CHARS
    assert subject_key(key) == key


@given(st.text(max_size=300))
def test_a_kept_subject_key_is_the_key_computed_afresh(subject: str) -> None:
    assert subject_key(subject) == subject_key(subject) == threads._subject_key(subject)


def test_only_subjects_of_a_usual_length_are_kept_for_the_next_ask() -> None:
    threads._cached_subject_key.cache_clear()
    subject_key("Re: Order 4711 [KW-9]")
    long = "Re: " + "x" * (threads._CACHED_SUBJECT_CHARS + 1)
    assert subject_key(long) == threads._subject_key(long)
    assert threads._cached_subject_key.cache_info().currsize == 1  # the short one alone


def test_a_3kb_subject_keeps_a_key_that_fits_any_index() -> None:
    # Stored with mailbox and customer in ix_case_customer_subject: PostgreSQL refuses
    # index rows above ~2,700 bytes, so the key stays well below in UTF-8 bytes too.
    subject = "Re: " + "Rechnung für Bestellung Nr. 4711 – Überweisung ✓ " * 60
    key = subject_key(subject)
    assert len(key) == MAX_SUBJECT_KEY_CHARS
    assert len(key.encode()) <= 4 * MAX_SUBJECT_KEY_CHARS <= 800
    # a reply to it, with more prefixes and a tag, still finds the same key
    assert subject_key(f"AW: Re: {subject} [KW-7]") == key


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ]{0,30}", fullmatch=True),
    st.lists(st.sampled_from(_PREFIXES), max_size=6),
    st.booleans(),
)
def test_prefix_stacking_keeps_the_key(subject: str, prefixes: list[str], tagged: bool) -> None:
    stacked = "".join(prefixes) + subject + (" [KW-12]" if tagged else "")
    assert subject_key(stacked) == subject_key(subject)


@pytest.mark.parametrize("key", ["", "no subject", "(no subject)", "kein betreff", "???", " - "])
def test_generic_subjects(key: str) -> None:
    assert is_generic_subject(key)


def test_real_subject_is_not_generic() -> None:
    assert not is_generic_subject("invoice")


# -- tags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "found"),
    [
        ("Re: Invoice [KW-42]", "KW-42"),
        ("[kw-42] Invoice", "KW-42"),
        ("Invoice [ KW - 42 ]", "KW-42"),
        ("Invoice [KW#0042]", "KW-42"),
        ("Invoice [KW 42]", "KW-42"),
        ("Invoice [SUP-3] and [KW-4]", "SUP-3"),
        ("Invoice KW-42", None),  # only in brackets: "KW-42" can be a part number
        ("Invoice [XY-42]", None),
        ("Invoice [KWX-42]", None),
        ("Invoice [KW-]", None),
    ],
)
def test_find_tag(subject: str, found: str | None) -> None:
    assert find_tag(subject, ["KW", "SUP"]) == found


def test_find_tag_without_prefixes() -> None:
    assert find_tag("[KW-1]", []) is None


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ("Thanks!\n\nCase reference: KW-42\n", "KW-42"),
        ("Danke\n> Case reference: KW-42", "KW-42"),
        ("Vorgangsnummer: kw-7", "KW-7"),
        ("see [KW-9] below", "KW-9"),
        ("first\n> Case reference: KW-5\n>> Case reference: KW-2", "KW-5"),
        ("we ordered part KW-42 yesterday", None),
        ("", None),
    ],
)
def test_find_tag_in_body(body: str, found: str | None) -> None:
    assert find_tag_in_body(body, ["KW"]) == found


_TAG_TEXT = st.lists(
    st.sampled_from(
        ("KW", "kw", "Kw", "\u212aw", "SUP", "sup", "\u017fup", "K9", "k9", "-", "#", " ", "42")
    )
    | st.sampled_from((*"Kkw:\né", "Case reference")),
    max_size=12,
).map("".join)


@given(_TAG_TEXT, st.sampled_from(["KW", "SUP", "K9"]))
def test_the_quick_check_for_a_prefix_never_hides_a_body_tag(body: str, prefix: str) -> None:
    """The substring pre-check (ASCII bodies only) says no only where the engine's
    case-blind search finds no prefix either: the Kelvin sign (a "k" to the engine) and
    the long s keep their bodies on the engine's path."""
    if not threads._may_name(body, [prefix]):
        assert re.search(re.escape(prefix), body, re.IGNORECASE) is None


def test_a_body_spelling_a_prefix_with_the_kelvin_sign_is_still_read() -> None:
    found = find_tag_in_body("Case reference: \u212aW-42", ["KW"])
    assert found is not None
    assert found.endswith("W-42")
    # The long s lower-cases to itself, yet the engine reads it as an "s".
    assert threads._may_name("\u017fup-42", ["SUP"])
    assert not threads._may_name("support-42", ["KW"])


_FROM_LINES = st.tuples(
    st.text(alphabet=" \t\r>*", max_size=3),
    st.sampled_from(["From", "from", "De", "von", "x", ""]),
    st.sampled_from(["", " ", "*", " *", "\t"]),
    st.sampled_from([":", ": ", ""]),
    st.sampled_from(["", "a@b.c", "x", "\r", " "]),
).map("".join)
_FROM_TEXT = st.lists(_FROM_LINES, max_size=8).map("\n".join)


@given(_FROM_TEXT)
def test_from_lines_found_after_newlines_are_the_lines_found_at_line_starts(text: str) -> None:
    """The newline-anchored scan finds the same "From:" lines, at the same places, as the
    `^` scan it replaced (the text given a newline in front)."""
    at_starts = [(m.start(), m.end(), m.group(1)) for m in threads._FROM_LINE.finditer(text)]
    scanned = threads._FROM_AFTER_NEWLINE.finditer("\n" + text)
    after = [(m.start(), m.end() - 1, m.group(1)) for m in scanned]
    assert after == at_starts


def test_find_case_reference_prefers_the_subject() -> None:
    facts = message(subject="Re: x [KW-1]", body="Case reference: KW-2")
    assert find_case_reference(facts, ["KW"]) == "KW-1"
    assert find_case_reference(message(subject="x", body="Case reference: KW-2"), ["KW"]) == "KW-2"
    assert find_case_reference(message(subject="x"), ["KW"]) is None


# -- references and correspondents -----------------------------------------------------


def test_referenced_ids_newest_first() -> None:
    facts = message(in_reply_to=("c@x",), references=("a@x", "b@x", "c@x"))
    assert referenced_ids(facts) == ("c@x", "b@x", "a@x")


def test_referenced_ids_drop_self_and_duplicates() -> None:
    facts = message(in_reply_to=("new@customer.example",), references=("a@x", "a@x"))
    assert referenced_ids(facts) == ("a@x",)


def test_correspondent_of_customer_mail_is_sender() -> None:
    assert external_correspondent(message(), Kind.CUSTOMER, TEAM) == ANN


def test_correspondent_prefers_reply_to_of_web_forms() -> None:
    facts = message(Address("forms@web.example"), reply_to=(ANN,))
    assert external_correspondent(facts, Kind.CUSTOMER, TEAM) == ANN


def test_reply_to_the_team_is_ignored() -> None:
    facts = message(ANN, reply_to=(Address("support@shop.example"),))
    assert external_correspondent(facts, Kind.CUSTOMER, TEAM) == ANN


def test_correspondent_of_staff_mail_is_first_outside_recipient() -> None:
    facts = message(
        Address("bob@shop.example"),
        to=(Address("support@shop.example"),),
        cc=(CARL, ANN),
        origin=Origin.SENT,
    )
    assert external_correspondent(facts, Kind.STAFF, TEAM) == CARL
    assert external_correspondent(facts, Kind.OWN, TEAM) == CARL


def test_correspondent_of_robot_is_its_sender() -> None:
    daemon = Address("mailer-daemon@mx.example")
    assert external_correspondent(message(daemon), Kind.AUTOMATED, TEAM) == daemon


FORWARDS = [
    "FYI\n\n---------- Forwarded message ---------\nFrom: Ann <Ann@Customer.example>\n"
    "Date: Mon, 23 Nov 2026\nSubject: Invoice\n",
    'Begin forwarded message:\n\nFrom: "Ann" <ann@customer.example>\nSubject: Invoice\n',
    "-----Original Message-----\nFrom: Ann [mailto:ann@customer.example]\nSent: Monday\n",
    "-----Ursprüngliche Nachricht-----\nVon: Ann <ann@customer.example>\nGesendet: Montag\n",
    "> ---------- Forwarded message ---------\n> From: *Ann* <ann@customer.example>\n",
    "-------- Message transféré --------\nDe : Ann <ann@customer.example>\n",
    "---------- Forwarded message ---------\nFrom: ann@customer.example\n",
]


@pytest.mark.parametrize("body", FORWARDS)
def test_forwarded_original_sender(body: str) -> None:
    found = forwarded_original_sender(body)
    assert found is not None
    assert found.address == "ann@customer.example"


def test_header_block_without_marker() -> None:
    # Outlook forwards: no marker line, just the quoted header block
    body = (
        "please handle\n\nFrom: Ann <ann@customer.example>\nSent: Monday\n"
        "To: bob@shop.example\nSubject: Invoice\n\ntext"
    )
    assert forwarded_original_sender(body) == Address("ann@customer.example", "Ann")
    webmail = "--\nGesendet: Mittwoch\n\nVon: Ann <ann@customer.example>\n\nAn: x@y.example\n"
    assert forwarded_original_sender(webmail) == Address("ann@customer.example", "Ann")


def test_newest_outside_sender_of_a_forward_chain() -> None:
    body = (
        "---------- Forwarded message ---------\nFrom: Bob <bob@shop.example>\n"
        "Date: Monday\n\n> From: Ann <ann@customer.example>\n> Sent: Sunday\n> To: bob\n"
    )
    assert [a.address for a in forwarded_senders(body)] == [
        "bob@shop.example",
        "ann@customer.example",
    ]
    facts = message(Address("carol@shop.example"), body=body)
    assert external_correspondent(facts, Kind.STAFF, TEAM) == Address("ann@customer.example", "Ann")
    assert is_forward_into_inbox(facts, Kind.STAFF, TEAM)


def test_outlook_from_line_keeps_the_name() -> None:
    body = "-----Original Message-----\nFrom: Doe, Jane [mailto:jane@x.example]\n"
    assert forwarded_original_sender(body) == Address("jane@x.example", "Doe, Jane")


@pytest.mark.parametrize(
    ("line", "address", "name"),
    [
        ("Jane Doe jane@x.example", "jane@x.example", "Jane Doe"),
        ("Jane Doe (jane@x.example)", "jane@x.example", "Jane Doe"),
        ('"Doe, Jane" <Jane@X.example>', "jane@x.example", "Doe, Jane"),
        ("Jane <jane@x.example> on behalf of Bob", "jane@x.example", "Jane"),
        ("jane@localhost", "jane@localhost", ""),
    ],
)
def test_forwarded_from_line_shapes(line: str, address: str, name: str) -> None:
    found = forwarded_original_sender(f"Begin forwarded message:\n\nFrom: {line}\nTo: x\n")
    assert found == Address(address, name)


def _senders_line_by_line(body_text: str) -> tuple[Address, ...]:
    """forwarded_senders as it read a body before: each line matched on its own."""
    text = body_text[: threads._SCAN_CHARS]
    lines = text.split("\n")
    marker = threads._FORWARD_MARKERS.search(text)
    marker_line = text.count("\n", 0, marker.start()) if marker else len(lines)
    found: dict[str, Address] = {}
    for number, line in enumerate(lines):
        match = threads._FROM_LINE.match(line)
        if match is None:
            continue
        after_marker = marker_line <= number <= marker_line + 12
        if not (after_marker or threads._in_header_block(lines, number)):
            continue
        address = threads._parse_from_line(match.group(1).strip())
        if address is not None and len(address.address) <= MAX_ADDRESS_CHARS:
            found.setdefault(address.address, address)
    return tuple(found.values())


_BODY_LINES = st.sampled_from(
    [
        "",
        " ",
        "  \t",
        ">",
        "> ",
        "*",
        "From: Ann <ann@customer.example>",
        "from:",
        "From:   ",
        "> From: bob@x.example",
        "**From:** Jane Doe <jane@x.example>",
        "Von: Kurt <kurt@x.de>\r",
        "From",
        ": carl@y.example",
        "Sent: Monday",
        "To: support@shop.example",
        "Subject: Invoice",
        "---------- Forwarded message ---------",
        "-----Original Message-----",
        "Begin forwarded message:",
        "Hello, my order has not arrived.",
        "De : Marie <marie@z.fr>",
    ]
)


@given(st.lists(_BODY_LINES, max_size=30))
def test_forwarded_senders_reads_every_line_as_line_by_line(lines: list[str]) -> None:
    """One pass over the body for its "From:" lines finds what a match per line found,
    blank and quoted lines around them included (a match may start lines earlier)."""
    body = "\n".join(lines)
    assert forwarded_senders(body) == _senders_line_by_line(body)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "From: Ann <ann@customer.example>\n(no forward marker)",
        "---------- Forwarded message",
        "Begin forwarded message:\n\nSubject: no sender line\n",
        "Begin forwarded message:\n\nFrom: Jane Doe\n",
    ],
)
def test_no_forwarded_sender(body: str) -> None:
    assert forwarded_original_sender(body) is None


def test_forward_into_the_inbox_names_the_original_sender() -> None:
    facts = message(Address("bob@shop.example"), subject="Fwd: Invoice", body=FORWARDS[0])
    assert is_forward_into_inbox(facts, Kind.STAFF, TEAM)
    assert external_correspondent(facts, Kind.STAFF, TEAM) == Address("ann@customer.example", "Ann")


def test_forward_of_team_mail_names_nobody() -> None:
    body = "---------- Forwarded message ---------\nFrom: Bob <bob@shop.example>\n"
    facts = message(Address("bob@shop.example"), body=body)
    assert not is_forward_into_inbox(facts, Kind.STAFF, TEAM)
    assert external_correspondent(facts, Kind.STAFF, TEAM) is None


def test_staff_reply_to_customer_is_not_a_forward_into_inbox() -> None:
    facts = message(Address("bob@shop.example"), to=(CARL,), body=FORWARDS[0])
    assert not is_forward_into_inbox(facts, Kind.STAFF, TEAM)
    assert not is_forward_into_inbox(message(body=FORWARDS[0]), Kind.CUSTOMER, TEAM)


# -- choose_case ------------------------------------------------------------------------


def test_nothing_matches_opens_a_new_case() -> None:
    case_id, rule, why = choose(message(subject="Invoice"), Candidates())
    assert (case_id, rule) == (None, ThreadRule.NEW)
    assert "ann@customer.example" in why


def test_tag_from_correspondent() -> None:
    case_id, rule, why = choose(message(subject="Re: Invoice [KW-42]"), Candidates(by_tag=case()))
    assert (case_id, rule) == (42, ThreadRule.TAG)
    assert "KW-42 in the subject" in why


def test_body_tag() -> None:
    facts = message(subject="Re: Invoice", body="ok\n> Case reference: KW-42")
    case_id, rule, why = choose(facts, Candidates(by_tag=case()))
    assert (case_id, rule) == (42, ThreadRule.BODY_TAG)
    assert "in the body" in why


def test_references_win_over_the_body_tag() -> None:
    facts = message(subject="Re: Invoice", body="> Case reference: KW-42", in_reply_to=("a@x",))
    candidates = Candidates(by_tag=case(42), by_reference=(case(7),))
    assert choose(facts, candidates)[:2] == (7, ThreadRule.REFERENCES)


def test_body_tag_from_a_stranger_is_ignored() -> None:
    facts = message(CARL, subject="hello", body="Case reference: KW-42")
    assert choose(facts, Candidates(by_tag=case(42)))[:2] == (None, ThreadRule.NEW)


def test_tag_wins_over_references() -> None:
    candidates = Candidates(by_tag=case(42), by_reference=(case(7),))
    assert choose(message(subject="[KW-42]"), candidates)[:2] == (42, ThreadRule.TAG)


def test_tag_from_a_stranger_is_ignored() -> None:
    stranger = message(CARL, subject="Re: Invoice [KW-42]")
    case_id, rule, why = choose(stranger, Candidates(by_tag=case()))
    assert (case_id, rule) == (None, ThreadRule.NEW)
    assert "ignored KW-42" in why


def test_tag_from_a_stranger_naming_the_customer_in_reply_to() -> None:
    stranger = message(CARL, subject="Re: Invoice [KW-42]", reply_to=(ANN,))
    assert choose(stranger, Candidates(by_tag=case()))[:2] == (None, ThreadRule.NEW)


def test_subject_match_on_a_closed_case_says_it_reopens() -> None:
    candidates = Candidates(by_subject=(case(3, closed=True),))
    case_id, rule, why = choose(message(), candidates)
    assert (case_id, rule) == (3, ThreadRule.SUBJECT)
    assert "reopens" in why


def test_tag_from_a_stranger_falls_through_to_references() -> None:
    stranger = message(CARL, subject="Re: Invoice [KW-42]", in_reply_to=("x@y",))
    candidates = Candidates(by_tag=case(42), by_reference=(case(9),))
    assert choose(stranger, candidates)[:2] == (9, ThreadRule.REFERENCES)


def test_tag_from_a_stranger_who_references_the_case() -> None:
    # e.g. a colleague of the customer, answering in the same thread
    stranger = message(CARL, subject="Re: Invoice [KW-42]", in_reply_to=("x@y",))
    candidates = Candidates(by_tag=case(42), by_reference=(case(42),))
    case_id, rule, why = choose(stranger, candidates)
    assert (case_id, rule) == (42, ThreadRule.TAG)
    assert "references the case" in why


def test_tag_from_the_team() -> None:
    staff = message(Address("bob@shop.example"), to=(ANN,), subject="Re: Invoice [KW-42]")
    assert choose(staff, Candidates(by_tag=case()), Kind.STAFF)[:2] == (42, ThreadRule.TAG)


def test_tag_on_a_staff_mail_to_someone_new() -> None:
    staff = message(Address("bob@shop.example"), to=(CARL,), subject="[KW-42] Invoice")
    case_id, _, why = choose(staff, Candidates(by_tag=case()), Kind.STAFF)
    assert case_id == 42
    assert "team" in why


def test_tag_of_a_closed_case_says_it_reopens() -> None:
    _, _, why = choose(message(subject="[KW-42]"), Candidates(by_tag=case(closed=True)))
    assert "reopens" in why


def test_references() -> None:
    facts = message(subject="something else", in_reply_to=("a@shop",))
    candidates = Candidates(by_reference=(case(5), case(6), case(5)))
    case_id, rule, why = choose(facts, candidates)
    assert (case_id, rule) == (5, ThreadRule.REFERENCES)
    assert "KW-5" in why
    assert "also references KW-6" in why


def test_references_join_even_from_a_stranger() -> None:
    facts = message(CARL, subject="other", in_reply_to=("a@shop",))
    assert choose(facts, Candidates(by_reference=(case(5),)))[:2] == (5, ThreadRule.REFERENCES)


def test_subject_fallback_same_correspondent() -> None:
    candidates = Candidates(by_subject=(case(3, age=timedelta(days=13)),))
    case_id, rule, why = choose(message(subject="RE: Invoice"), candidates)
    assert (case_id, rule) == (3, ThreadRule.SUBJECT)
    assert "'invoice'" in why
    assert "13 day(s)" in why


def test_subject_fallback_prefers_the_latest_case() -> None:
    candidates = Candidates(by_subject=(case(3, age=timedelta(days=5)), case(4)))
    assert choose(message(), candidates)[0] == 4


def test_subject_fallback_outside_the_window() -> None:
    candidates = Candidates(by_subject=(case(3, age=timedelta(days=15)),))
    assert choose(message(), candidates)[:2] == (None, ThreadRule.NEW)


def test_subject_fallback_switched_off() -> None:
    candidates = Candidates(by_subject=(case(3),))
    assert choose(message(), candidates, window=timedelta(0))[:2] == (None, ThreadRule.NEW)


def test_never_merge_two_customers_on_subject() -> None:
    anns_case = case(3, correspondents=frozenset({ANN.address}))
    carls_mail = message(CARL, subject="Invoice")
    assert choose(carls_mail, Candidates(by_subject=(anns_case,)))[:2] == (None, ThreadRule.NEW)


def test_subject_must_be_equal_not_similar() -> None:
    candidates = Candidates(by_subject=(case(3, key="invoice 2"),))
    assert choose(message(subject="Invoice"), candidates)[0] is None


@pytest.mark.parametrize("subject", ["", "Re:", "(no subject)", "Re: ???"])
def test_generic_subject_never_matches(subject: str) -> None:
    key = subject_key(subject)
    candidates = Candidates(by_subject=(case(3, key=key),))
    assert choose(message(subject=subject), candidates)[:2] == (None, ThreadRule.NEW)


def test_robots_never_join_by_subject() -> None:
    ooo = message(ANN, subject="Automatic reply: Invoice")
    candidates = Candidates(by_subject=(case(3, key="automatic reply: invoice"),))
    case_id, rule, why = choose(ooo, candidates, Kind.AUTOMATED)
    assert (case_id, rule) == (None, ThreadRule.NEW)
    assert "automated" in why


def test_robots_join_by_references() -> None:
    bounce = message(Address("mailer-daemon@mx.example"), in_reply_to=("ours@shop",))
    assert choose(bounce, Candidates(by_reference=(case(8),)), Kind.AUTOMATED)[0] == 8


def test_robots_join_by_tag_from_the_correspondent() -> None:
    ooo = message(ANN, subject="Automatic reply: Re: Invoice [KW-42]")
    assert choose(ooo, Candidates(by_tag=case()), Kind.AUTOMATED)[:2] == (42, ThreadRule.TAG)


def test_forward_into_the_inbox_opens_a_case_for_the_original_sender() -> None:
    facts = message(Address("bob@shop.example"), subject="Fwd: Invoice", body=FORWARDS[0])
    case_id, rule, why = choose(facts, Candidates(), Kind.STAFF)
    assert (case_id, rule) == (None, ThreadRule.FORWARD_NEW)
    assert "ann@customer.example" in why


def test_forward_joins_the_customers_case_by_subject() -> None:
    facts = message(Address("bob@shop.example"), subject="Fwd: Invoice", body=FORWARDS[0])
    candidates = Candidates(by_subject=(case(3),))
    assert choose(facts, candidates, Kind.STAFF)[:2] == (3, ThreadRule.SUBJECT)


def test_staff_mail_from_sent_without_match_is_new() -> None:
    facts = message(Address("bob@shop.example"), to=(CARL,), subject="Offer", origin=Origin.SENT)
    assert choose(facts, Candidates(), Kind.STAFF)[:2] == (None, ThreadRule.NEW)


@given(
    window_days=st.integers(min_value=0, max_value=30),
    age_days=st.integers(min_value=0, max_value=60),
    same_person=st.booleans(),
)
def test_subject_rule_property(window_days: int, age_days: int, same_person: bool) -> None:
    candidate = case(3, age=timedelta(days=age_days))
    sender = ANN if same_person else CARL
    case_id, rule, _ = choose(
        message(sender), Candidates(by_subject=(candidate,)), window=timedelta(days=window_days)
    )
    expected = same_person and window_days > 0 and age_days <= window_days
    assert (case_id == 3) is expected
    assert (rule is ThreadRule.SUBJECT) is expected


@given(
    kind=st.sampled_from([Kind.CUSTOMER, Kind.AUTOMATED]),
    in_subject=st.booleans(),
    closed=st.booleans(),
    other_cases=st.lists(st.integers(min_value=1, max_value=40), max_size=3),
)
def test_a_strangers_tag_never_joins_the_case(
    kind: Kind, in_subject: bool, closed: bool, other_cases: list[int]
) -> None:
    subject = "Re: Invoice [KW-42]" if in_subject else "Invoice"
    body = "" if in_subject else "Case reference: KW-42"
    stranger = message(CARL, subject=subject, body=body, in_reply_to=("x@y",))
    candidates = Candidates(
        by_tag=case(42, closed=closed),
        by_reference=tuple(case(other) for other in other_cases),
    )
    case_id, rule, _ = choose(stranger, candidates, kind)
    assert case_id != 42
    assert rule not in (ThreadRule.TAG, ThreadRule.BODY_TAG)
