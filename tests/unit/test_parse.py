"""parse_message: never raises, stable identities, the fields the core needs."""

from __future__ import annotations

import csv
import gzip
import mailbox
import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import mailparser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepword.domain.model import Address
from keepword.mail import parse as parse_module
from keepword.mail.parse import (
    DERIVED_ID_DOMAIN,
    MAX_BODY_CHARS,
    ParsedMessage,
    content_digest,
    html_to_text,
    message_ids,
    normalize_message_id,
    parse_date,
    parse_message,
)
from tests.corpora import CORPORA, PRESENT, corpus_rfc822


def corpus_messages() -> Iterator[tuple[str, bytes]]:
    """Every rfc822 file and every message of every mbox listed in index.csv."""
    with (CORPORA / "index.csv").open(newline="") as index:
        rows = list(csv.DictReader(index))
    for row in rows:
        path = CORPORA / row["file"]
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        if row["kind"] == "rfc822":
            yield row["file"], data
        elif row["kind"] == "mbox":
            yield from _split_mbox(row["file"], data)


def _split_mbox(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mbox") as tmp:
        tmp.write(data)
        tmp.flush()
        box = mailbox.mbox(tmp.name, create=False)
        for number, message in enumerate(box):
            yield f"{name}#{number}", message.as_bytes()
        box.close()


def corpus_file(name: str) -> bytes:
    return (CORPORA / name).read_bytes()


needs_corpora = pytest.mark.skipif(not PRESENT, reason="shared corpora not present")


@needs_corpora
def test_every_corpus_message_parses_without_raising() -> None:
    messages = list(corpus_messages())
    assert len(messages) > 1300  # 817 rfc822 files + 330 mbox messages at least
    started = time.perf_counter()
    results = [(name, parse_message(raw)) for name, raw in messages]
    elapsed = time.perf_counter() - started
    print(f"\nparsed {len(results)} corpus messages at {len(results) / elapsed:.0f} msgs/s")
    for name, parsed in results:
        assert isinstance(parsed, ParsedMessage), name
        assert parsed.message_id, name
        assert len(parsed.content_digest) == 64, name
        assert parsed.quarantined == (parsed.quarantine_reason is not None)
        assert len(parsed.body_text) <= MAX_BODY_CHARS
        if parsed.date is not None:
            assert parsed.date.tzinfo is not None, name
    quarantined = [name for name, parsed in results if parsed.quarantined]
    # Bare MIME entities and header-less text are quarantined; real mail is not.
    assert len(quarantined) < len(results) // 10
    assert "spamscope-mail-parser/mail_outlook_1" in quarantined
    assert not any(name.startswith("notmuch/lkml/") for name in quarantined)


@needs_corpora
def test_every_parsed_corpus_message_crosses_the_process_boundary_unchanged() -> None:
    """A parse worker pickles what it parsed (ParsedMessage.__reduce__, Address's): every
    corpus message, quarantined ones too, comes back equal, field for field."""
    parsed = [parse_message(raw) for _, raw in corpus_messages()]
    back = pickle.loads(pickle.dumps(parsed, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == parsed
    assert all(type(a) is type(b) for a, b in zip(back, parsed, strict=True))
    assert any(m.quarantined for m in back) and any(m.to for m in back)
    assert {type(address) for m in back for address in m.to} == {Address}


@needs_corpora
def test_skipping_mail_parsers_summaries_changes_no_parse_on_the_corpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parser skips mail-parser's `mail`/`mail_partial` summaries; every corpus
    message parses to the same fields as with mail-parser's own parse."""
    messages = list(corpus_messages())
    lean = [parse_message(raw) for _, raw in messages]
    monkeypatch.setattr(parse_module, "_MailParser", mailparser.MailParser)
    whole = [parse_message(raw) for _, raw in messages]
    assert [name for (name, _), a, b in zip(messages, lean, whole, strict=True) if a != b] == []


def test_the_parse_builds_no_mail_parser_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[bool] = []
    original = mailparser.MailParser._make_mail

    def counted(self: mailparser.MailParser, complete: bool = True) -> dict[str, object]:
        built.append(complete)
        return dict(original(self, complete))

    monkeypatch.setattr(mailparser.MailParser, "_make_mail", counted)
    parsed = parse_message(b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n")
    assert (parsed.subject, parsed.body_text.strip(), built) == ("hi", "body", [])


@needs_corpora
def test_missing_message_id_gets_a_stable_derived_id() -> None:
    raw = corpus_file("discourse/missing_message_id.eml")
    first, again = parse_message(raw), parse_message(raw)
    assert first.message_id_derived
    assert first.message_id.startswith("derived-")
    assert first.message_id.endswith("@" + DERIVED_ID_DOMAIN)
    assert first.message_id == again.message_id
    assert first.sender == Address("foo@bar.com", "Foo Bar")
    assert first.date == datetime(2016, 1, 14, 23, 12, 43, tzinfo=UTC)
    assert first.date_offset_minutes == 60
    # A different sender with the same everything else derives a different id.
    other = parse_message(raw.replace(b"foo@bar.com", b"else@bar.com"))
    assert other.message_id != first.message_id


@needs_corpora
def test_cr_only_newlines_parse_like_lf_and_crlf() -> None:
    variants = [
        parse_message(corpus_file(f"sisimai-set-of-emails/{flavour}/rfc3834-01.eml"))
        for flavour in ("bsd", "dos", "mac")
    ]
    lf, crlf, cr = variants
    assert cr.message_id == lf.message_id == "200503142138.j3QNaaaa222222@neko.example.org"
    assert cr.content_digest == lf.content_digest == crlf.content_digest
    assert cr.subject == lf.subject == "Away until May 5"
    assert cr.headers["auto-submitted"] == ("auto-replied",)
    assert cr.sender == Address("kijitora@example.net")
    assert "currently away" in cr.body_text
    assert "\r" not in cr.body_text


@needs_corpora
def test_duplicate_message_ids_with_different_bodies_stay_apart() -> None:
    one = parse_message(corpus_file("notmuch/duplicate/msg-1-1:2,"))
    two = parse_message(corpus_file("notmuch/duplicate/msg-1-2:2,"))
    assert one.message_id == two.message_id
    assert not one.message_id_derived
    assert one.headers["precedence"] == ("list",)
    assert "list-id" in one.headers
    assert two.headers["x-loop"] == ("owner@bugs.debian.org", "owner@bugs.debian.org")
    # Different identity unless the bodies really are the same bytes.
    same_body = one.content_digest == two.content_digest
    assert same_body == (
        _body(corpus_file("notmuch/duplicate/msg-1-1:2,"))
        == _body(corpus_file("notmuch/duplicate/msg-1-2:2,"))
    )


def _body(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1].rstrip(b"\n")


@needs_corpora
def test_non_utf8_headers_and_bodies_are_decoded() -> None:
    parsed = parse_message(corpus_file("zammad/mail091.box"))
    assert parsed.subject == "メルマガ解除"
    assert parsed.sender == Address("mail@domain.jp", "岡本和正")
    assert "メルマガを解除" in parsed.body_text


@needs_corpora
def test_html_only_mail_yields_text() -> None:
    parsed = parse_message(corpus_file("jhillyerd-enmime/low-quality/html-only-inline.raw"))
    assert "Test of HTML section" in parsed.body_text
    assert "<" not in parsed.body_text
    assert parsed.date_offset_minutes == -420


def test_hand_made_reply_fields() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen@Example.COM>\r\n"
        b'To: support@shop.test, "Doe, Jane" <jane@shop.test>\r\n'
        b"Cc: <boss@shop.test>\r\n"
        b"Reply-To: replies@example.com\r\n"
        b"Subject: Re: =?iso-8859-1?q?Bestellung_f=FCr?=\r\n\tnext week\r\n"
        b"Date: Tue, 3 Mar 2026 10:15:00 +0530\r\n"
        b"Message-ID:  <AbC.123@Example.com> \r\n"
        b"In-Reply-To: <first@shop.test> (sent by someone)\r\n"
        b"References: junk <first@shop.test>\r\n <second@shop.test> <first@shop.test>\r\n"
        b"Auto-Submitted: no\r\n"
        b"X-Keepword-Loop: support@shop.test\r\n"
        b"X-Unrelated: dropped\r\n"
        b"\r\n"
        b"Hello,\r\nwhere is my order?\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.message_id == "AbC.123@Example.com"
    assert not parsed.message_id_derived
    assert parsed.sender == Address("juergen@example.com", "Jürgen Müller")
    assert parsed.to == (Address("support@shop.test"), Address("jane@shop.test", "Doe, Jane"))
    assert parsed.cc == (Address("boss@shop.test"),)
    assert parsed.reply_to == (Address("replies@example.com"),)
    assert parsed.subject == "Re: Bestellung für next week"
    assert parsed.date == datetime(2026, 3, 3, 4, 45, tzinfo=UTC)
    assert parsed.date_offset_minutes == 330
    assert parsed.in_reply_to == ("first@shop.test",)
    assert parsed.references == ("first@shop.test", "second@shop.test")
    assert parsed.headers == {
        "auto-submitted": ("no",),
        "x-keepword-loop": ("support@shop.test",),
    }
    assert parsed.body_text == "Hello,\nwhere is my order?\n"
    assert parsed.quarantine_reason is None


def test_identity_ignores_line_endings_but_not_content() -> None:
    lf = b"From: a@b.test\nMessage-ID: <x@y>\n\nbody line\n"
    crlf = lf.replace(b"\n", b"\r\n")
    assert parse_message(lf).content_digest == parse_message(crlf).content_digest
    changed = parse_message(lf.replace(b"body line", b"body lime"))
    assert changed.content_digest != parse_message(lf).content_digest


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"   \r\n\r\n", "empty message"),
        (b"just some text\nwithout any header\n", "no headers"),
    ],
)
def test_unreadable_input_is_quarantined_with_a_reason(raw: bytes, reason: str) -> None:
    parsed = parse_message(raw)
    assert parsed.quarantine_reason is not None
    assert parsed.quarantine_reason.startswith(reason)
    assert parsed.message_id_derived


def test_huge_message_is_parsed_from_its_head_and_keeps_its_whole_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import keepword.mail.parse as parse

    attachment = b"QUJD" * 19 + b"\r\n"
    raw = (
        b"From: Big <big@x.test>\r\nMessage-ID: <big@x.test>\r\nSubject: Large\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nThe scan is attached.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment * 200
        + b"--b--\r\n"
    )
    whole = parse_message(raw)
    monkeypatch.setattr(parse, "MAX_PARSE_BYTES", 1000)
    cut = parse_message(raw)
    assert cut.quarantine_reason is None  # a big mail is a mail: answered like any other
    assert (cut.message_id, cut.subject) == ("big@x.test", "Large")
    assert cut.sender == Address("big@x.test", "Big")
    assert cut.body_text.strip() == "The scan is attached."
    assert cut.content_digest == whole.content_digest  # identity over every byte


def reference_digest(raw: bytes) -> str:
    """The digest as first defined: one regex over the whole body (see the docstring)."""
    import hashlib
    import re

    match = re.search(rb"\r\n\r\n|\n\n|\r\r|\n\r\n", raw)
    body = b"" if match is None else raw[match.end() :]
    return hashlib.sha256(re.sub(rb"\r\n|\r", b"\n", body).rstrip(b"\n")).hexdigest()


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"bc", b" "]), max_size=40),
    st.integers(min_value=1, max_value=5),
)
def test_chunked_digest_equals_the_whole_body_digest(parts: list[bytes], chunk: int) -> None:
    import keepword.mail.parse as parse

    raw = b"Subject: x\r\n\r\n" + b"".join(parts)
    original = parse._DIGEST_CHUNK
    parse._DIGEST_CHUNK = chunk  # CRs and newline runs across every chunk boundary
    try:
        assert content_digest(raw) == reference_digest(raw)
    finally:
        parse._DIGEST_CHUNK = original


def test_body_text_is_capped() -> None:
    raw = b"From: a@b.test\r\nSubject: long\r\n\r\n" + b"x" * (MAX_BODY_CHARS + 500)
    assert len(parse_message(raw).body_text) == MAX_BODY_CHARS


def test_message_id_helpers_tolerate_junk() -> None:
    assert normalize_message_id(" <a@b> ") == "a@b"
    assert normalize_message_id("a@b") == "a@b"
    assert normalize_message_id("") is None
    assert normalize_message_id("<>") is None
    assert normalize_message_id(None) is None
    assert message_ids(["<a@b> junk <c@d>", "nothing", "<a@b>"]) == ("a@b", "c@d")
    assert message_ids(["bare.id@host.example"]) == ("bare.id@host.example",)
    assert message_ids(["message of Mon, 2 Mar 2026 from joe"]) == ()


def test_parse_date_variants() -> None:
    assert parse_date("Mon, 2 Mar 2026 23:30:00 -0800") == (
        datetime(2026, 3, 3, 7, 30, tzinfo=UTC),
        -480,
    )
    assert parse_date("2 Mar 99 10:00 GMT") == (datetime(1999, 3, 2, 10, 0, tzinfo=UTC), 0)
    assert parse_date("not a date") == (None, None)
    assert parse_date("Mon, 32 Feb 2026 25:00:00 +0000") == (None, None)
    assert parse_date(None) == (None, None)


def test_html_to_text_skips_scripts_and_keeps_blocks() -> None:
    html = "<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p>"
    html += "<script>x()</script><div>Second</div></body>"
    assert html_to_text(html) == "Hi & bye\n\nSecond"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_message_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.message_id
    assert len(parsed.content_digest) == 64


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["From", "To", "Cc", "Date", "Subject", "Message-ID", "References", "Content-Type"]
            ),
            st.text(max_size=80),
        ),
        max_size=8,
    ),
    st.text(max_size=300),
)
def test_parse_message_never_raises_on_odd_headers(
    headers: list[tuple[str, str]], body: str
) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = (head + "\r\n" + body).encode("utf-8", "surrogateescape")
    parsed = parse_message(raw)
    assert parsed.message_id


def test_an_overlong_address_is_dropped_not_cut() -> None:
    long_address = "x" * 310 + "@example.org"  # 322 characters: no server accepts it
    raw = (
        f"From: Ann <ann@example.org>\r\nReply-To: {long_address}\r\n"
        f"To: support@shop.test, {long_address}\r\nSubject: hi\r\n\r\nbody\r\n"
    ).encode()
    parsed = parse_message(raw)
    assert parsed.reply_to == ()
    assert parsed.to == (Address("support@shop.test"),)
    assert parsed.sender == Address("ann@example.org", "Ann")


def _decoded_the_long_way(value: str) -> str:
    """decode_header_value's path for every string before its plain-text shortcut."""
    import email.header

    unfolded = parse_module._unfold(value)
    try:
        chunks = email.header.decode_header(unfolded)
    except Exception:
        return parse_module._unfold(unfolded)
    text = "".join(
        chunk if isinstance(chunk, str) else parse_module._bytes_to_text(chunk, charset)
        for chunk, charset in chunks
    )
    return parse_module._unfold(text)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(
                [
                    " ",
                    "\t",
                    "\r\n ",
                    "\n\t",
                    "\r",
                    "\0",
                    "=?",
                    "?=",
                    "=?utf-8?q?caf=C3=A9?=",
                    "=?iso-8859-1?b?4Q==?=",
                    "=?utf-8?b?4?=",  # bad base64: decode_header raises
                    "\u2028",
                    "\x85",
                    "\xa0",
                ]
            ),
        ),
        max_size=10,
    )
)
def test_a_plain_header_value_decodes_as_the_long_way_does(parts: list[str]) -> None:
    value = "".join(parts)
    assert parse_module.decode_header_value(value) == _decoded_the_long_way(value)


def test_the_plain_text_shortcut_is_taken_only_where_nothing_is_to_decode() -> None:
    assert parse_module.decode_header_value("  Printer broken \t") == "Printer broken"
    assert parse_module.decode_header_value("=?utf-8?q?caf=C3=A9?=") == "café"
    assert parse_module.decode_header_value("one\r\n two") == "one two"
    assert parse_module.decode_header_value("a\0b") == "a" + parse_module.NUL_REPLACEMENT + "b"


_SPLIT = ("from_", "to", "cc", "reply_to", "bcc", "delivered_to")


@needs_corpora
def test_address_headers_split_as_mail_parser_splits_them() -> None:
    """keepword's parser splits each distinct address header once (a cache); on every
    mail of the corpora, hostile ones included, to mail-parser's very result."""
    compared = 0
    for name, raw in corpus_rfc822():
        try:
            plain = mailparser.MailParser.from_bytes(raw)
        except Exception:
            continue  # mail-parser refuses it: keepword falls back to the stdlib
        ours = parse_module._MailParser.from_bytes(raw)
        for field in _SPLIT:
            assert getattr(ours, field) == getattr(plain, field), (name, field)
            raw_name = field.rstrip("_") + "_raw"  # the header's values, unsplit
            assert getattr(ours, raw_name) == getattr(plain, raw_name), (name, field)
        compared += 1
    assert compared > 100


def test_an_address_header_seen_before_is_not_split_again() -> None:
    parse_module._split_address_text.cache_clear()
    mails = [
        f"From: Customer {n} <c{n}@example.org>\r\nTo: Support <support@shop.example>\r\n"
        f"Subject: s{n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nhello\r\n".encode()
        for n in range(3)
    ]
    parsed = [parse_message(raw) for raw in mails]
    info = parse_module._split_address_text.cache_info()
    assert (info.hits, info.misses) == (2, 4)  # To once, each From once
    assert [p.to for p in parsed] == [(Address("support@shop.example", "Support"),)] * 3
    assert [p.sender for p in parsed] == [
        Address(f"c{n}@example.org", f"Customer {n}") for n in range(3)
    ]
    # A long value is split every time, never kept.
    many = ", ".join(f"p{n}@example.org" for n in range(200))
    long_one = parse_message(f"From: a@example.org\r\nTo: {many}\r\n\r\nhi\r\n".encode())
    assert len(long_one.to) == 200
    assert parse_module._split_address_text.cache_info().currsize == 5  # + a@example.org
