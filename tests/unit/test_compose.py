"""Composing outgoing mail: headers robots and retries rely on, and no header injection."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from keepword.config import MailboxSettings
from keepword.domain.model import LOOP_HEADER, OutboxKind
from keepword.mail import compose as compose_module
from keepword.mail.compose import (
    MAX_REFERENCES,
    About,
    Answering,
    clean_header,
    compose,
    compose_bytes,
    customer_mail,
    deterministic_message_id,
    reply_subject,
    team_mail,
    team_subject,
)
from keepword.mail.render import Rendered
from keepword.store.outbox import message_id_of

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def box(**changes: Any) -> MailboxSettings:
    values: dict[str, Any] = {
        "name": "support",
        "address": "support@example.com",
        "display_name": "Example Support",
        "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password": "p"},
    }
    values.update(changes)
    return MailboxSettings.model_validate(values)


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


ANN_ANSWERED = Answering("ann@example.org")


def ack_mail(
    about: About,
    answering: Answering = ANN_ANSWERED,
    *,
    dedup_key: str = "ack:9",
    now: datetime = NOW,
    mailbox: MailboxSettings | None = None,
) -> compose_module.OutgoingMail:
    """An acknowledgement from the test mailbox, as triage queues one."""
    return customer_mail(
        mailbox or box(),
        OutboxKind.ACKNOWLEDGEMENT,
        dedup_key=dedup_key,
        about=about,
        now=now,
        answering=answering,
    )


def ack_raw(
    subject: str = "Printer on fire",
    *,
    dedup_key: str = "ack:1",
    now: datetime = NOW,
    in_reply_to: str = "orig-1@example.org",
    references: tuple[str, ...] = ("root@example.org",),
) -> bytes:
    answering = Answering("ann@example.org", in_reply_to, references)
    mail = ack_mail(About("KW-42", subject), answering, dedup_key=dedup_key, now=now)
    return compose_bytes(mail, Rendered("Hello.\n\nCase reference: KW-42\n"))


def test_deterministic_message_id() -> None:
    digest = hashlib.sha256(b"ack:1").hexdigest()[:24]
    assert deterministic_message_id("ack:1", "Example.COM") == f"kw.{digest}@example.com"
    assert deterministic_message_id("ack:1", "example.com") == deterministic_message_id(
        "ack:1", "example.com"
    )
    assert deterministic_message_id("ack:2", "example.com") != deterministic_message_id(
        "ack:1", "example.com"
    )


def test_customer_mail_headers() -> None:
    raw = ack_raw()
    msg = parse(raw)
    digest = hashlib.sha256(b"ack:1").hexdigest()[:24]
    assert msg["Message-ID"] == f"<kw.{digest}@example.com>"
    assert message_id_of(raw) == f"kw.{digest}@example.com"
    assert msg["Subject"] == "Re: Printer on fire [KW-42]"
    assert msg["From"] == "Example Support <support@example.com>"
    assert msg["To"] == "ann@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[LOOP_HEADER] == "support@example.com"
    assert msg["X-Keepword-Case"] == "KW-42"
    assert msg["X-Keepword-Kind"] == "acknowledgement"
    assert msg["In-Reply-To"] == "<orig-1@example.org>"
    assert msg["References"] == "<root@example.org> <orig-1@example.org>"
    assert msg["Precedence"] is None  # RFC 3834: Auto-Submitted, not Precedence
    assert msg["Date"] is not None
    assert b"\r\n" in raw  # policy SMTP
    assert "Case reference: KW-42" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_same_decision_composes_the_same_message_id() -> None:
    assert message_id_of(ack_raw()) == message_id_of(ack_raw(now=datetime(2027, 1, 1, tzinfo=UTC)))
    assert message_id_of(ack_raw()) != message_id_of(ack_raw(dedup_key="ack:2"))


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Printer on fire", "Re: Printer on fire [KW-42]"),
        ("Re: Printer on fire", "Re: Printer on fire [KW-42]"),
        ("RE: Printer on fire [KW-42]", "RE: Printer on fire [KW-42]"),
        ("AW: Drucker [kw-42]", "AW: Drucker [KW-42]"),
        ("Printer [KW-42] on fire", "Re: Printer on fire [KW-42]"),
        ("", "Re: (no subject) [KW-42]"),
        # issue 12: another case's tag is never echoed (it would read as a claim)
        ("Invoice [KW-7]", "Re: Invoice [KW-42]"),
        ("[KW-1] hello", "Re: hello [KW-42]"),
    ],
)
def test_reply_subject_never_doubles(original: str, expected: str) -> None:
    assert reply_subject(original, "KW-42") == expected
    assert reply_subject(expected, "KW-42") == expected  # idempotent


def test_header_injection_is_stripped() -> None:
    evil = "Hello\r\nBcc: victim@example.net\r\nX-Evil: 1"
    raw = ack_raw(subject=evil, in_reply_to="a@b>\r\nBcc: x@y")
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert msg["Subject"] == "Re: Hello Bcc: victim@example.net X-Evil: 1 [KW-42]"
    assert msg["In-Reply-To"] == "<a@bBcc:x@y>"


@given(st.text(max_size=200))
def test_clean_header_never_leaves_line_breaks(value: str) -> None:
    cleaned = clean_header(value)
    assert "\r" not in cleaned and "\n" not in cleaned
    reply = reply_subject(value, "KW-1")
    assert "\n" not in reply and "[kw-1]" in reply.lower()


def test_non_ascii_subject_is_encoded() -> None:
    raw = ack_raw(subject="Drucker brennt – schnell! 🔥")
    assert all(b < 128 for b in raw.split(b"\r\n\r\n", 1)[0])
    assert parse(raw)["Subject"] == "Re: Drucker brennt – schnell! 🔥 [KW-42]"


def test_references_are_bounded_and_unique() -> None:
    refs = (*(f"m{i}@example.org" for i in range(50)), "m3@example.org")
    msg = parse(ack_raw(references=refs, in_reply_to="m49@example.org"))
    chain = msg["References"].split()
    assert len(chain) == MAX_REFERENCES
    assert chain[0] == "<m0@example.org>"  # the root stays
    assert chain[-1] == "<m49@example.org>"  # the parent is last
    assert len(set(chain)) == len(chain)


def test_team_mail_headers_and_subject() -> None:
    mail = team_mail(
        box(),
        OutboxKind.REMINDER,
        dedup_key="reminder:1:0.5",
        to=["alice@example.com"],
        about=About("KW-42", "Printer on fire\r\nBcc: x@y"),
        now=NOW,
    )
    msg = parse(compose_bytes(mail, Rendered("Remind\n")))
    assert msg["Subject"] == "[KW-42] Reminder: Printer on fire Bcc: x@y"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg[LOOP_HEADER] == "support@example.com"
    assert msg["X-Keepword-Kind"] == "reminder"
    assert msg["In-Reply-To"] is None
    body = msg.get_body(("plain",))
    assert body is not None
    assert "Case reference: KW-42" in body.get_content()  # added when the text lacks it
    assert team_subject(OutboxKind.DIGEST, None, "support") == "Daily digest: support"


def test_html_makes_multipart_alternative() -> None:
    mail = ack_mail(About("KW-9", "Hi"))
    msg = compose(mail, Rendered("text\nCase reference: KW-9\n", "<p>html</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert msg["References"] is None


# Message-IDs as mail clients and servers write them, and what hostile mail puts there.
_ID = st.one_of(
    st.from_regex(r"[A-Za-z0-9.$_%+=?-]{1,70}@[a-z0-9.-]{1,30}", fullmatch=True),
    st.text(min_size=1, max_size=120),
)


@given(
    ids=st.lists(_ID, max_size=4),
    reference=st.one_of(st.just("KW-12"), st.text(max_size=30)),
    local=st.from_regex(r"[a-z][a-z+=?-]{0,60}", fullmatch=True),
)
def test_headers_written_as_they_are_come_out_as_the_registry_writes_them(
    ids: list[str], reference: str, local: str
) -> None:
    """`_put` skips the header registry's parse for plain short lines: the bytes are the
    same as parsing every header (the way before), whatever the ids, tag and address."""
    mail = ack_mail(
        About(reference.strip() or "KW-1", "Printer on fire"),
        Answering("ann@example.org", ids[0] if ids else None, tuple(ids)),
        dedup_key="ack:7",
        mailbox=box(address=f"{local}@example.com"),
    )
    body = Rendered("Thanks.\n", "<p>Thanks.</p>")
    random.seed(4)  # the MIME boundary is drawn at random: the same for both
    fast = compose_bytes(mail, body)

    def parse_every_header(msg: EmailMessage, name: str, value: str) -> None:
        msg[name] = value

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_module, "_put", parse_every_header)
        random.seed(4)
        assert fast == compose_bytes(mail, body)


_PLAIN_ADDRESS = st.from_regex(
    r"[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,12}(\.[a-z]{2,6}){1,2}", fullmatch=True
)
_ADDRESS = st.one_of(_PLAIN_ADDRESS, st.text(min_size=1, max_size=40))
_ASCII = st.characters(max_codepoint=0x7F)
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=_ASCII, max_size=300),
    st.lists(st.text(max_size=120), max_size=30).map("\n".join),
    # templates' HTML: a dozen lines and more, some longer than a header line may be
    *(
        st.tuples(
            st.text(alphabet=letters, min_size=79, max_size=200),
            st.lists(st.text(alphabet=letters, max_size=90), min_size=8, max_size=20),
            st.text(alphabet=letters, min_size=79, max_size=200),
        ).map(lambda parts: "\n".join([parts[0], *parts[1], parts[2]]))
        for letters in (_PRINTABLE, st.characters(codec="utf-8"))
    ),
)


@settings(max_examples=300)
@given(
    subject=st.one_of(st.text(max_size=100), st.text(alphabet=_ASCII, max_size=100)),
    name=st.one_of(
        st.none(), st.text(max_size=40), st.text(alphabet=_ASCII, max_size=40), st.just("Shop")
    ),
    sender=st.sampled_from(["support@shop.example", "help+de@example.co.uk"]),
    to=st.one_of(
        st.lists(_PLAIN_ADDRESS, min_size=1, max_size=3),
        st.lists(_ADDRESS, min_size=1, max_size=3),
    ),
    ids=st.lists(_ID, max_size=3),
    reference=st.one_of(st.none(), st.just("KW-12"), st.text(max_size=20)),
)
def test_headers_written_straight_are_the_email_packages(
    subject: str,
    name: str | None,
    sender: str,
    to: list[str],
    ids: list[str],
    reference: str | None,
) -> None:
    """compose_bytes writes plain mail itself (mail.wire) and the rest through the email
    package: on any headers the bytes are the email package's."""
    mail = compose_module.OutgoingMail(
        OutboxKind.ACKNOWLEDGEMENT,
        "ack:9",
        sender,
        name,
        tuple(to),
        subject,
        reference,
        NOW,
        ids[0] if ids else None,
        tuple(ids),
    )
    _assert_written_as_the_email_package_writes(mail, Rendered("Thanks.\n", "<p>Thanks.</p>"))


@settings(max_examples=300)
@given(text=_TEXT, html=st.one_of(st.none(), _TEXT))
def test_bodies_written_straight_are_the_email_packages(text: str, html: str | None) -> None:
    """The same on any text and HTML body (7bit, 8bit, quoted-printable, base64)."""
    mail = ack_mail(
        About("KW-9", "Is the shop down?"), Answering("ann@example.org", "m1@example.org")
    )
    _assert_written_as_the_email_package_writes(mail, Rendered(text, html))


def _assert_written_as_the_email_package_writes(
    mail: compose_module.OutgoingMail, body: Rendered
) -> None:
    random.seed(11)  # the boundary is drawn at random: the same for both
    separator = compose_module.wire.boundary(
        compose_module.with_marker(body.text, mail.reference), body.html or ""
    )
    try:
        expected = compose(mail, body, separator).as_bytes()
    except Exception:
        assume(False)
    random.seed(11)
    written = compose_bytes(mail, body)
    event("straight" if _written_straight(mail, body) else "through the email package")
    assert written == expected


def _written_straight(mail: compose_module.OutgoingMail, body: Rendered) -> bool:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compose_module, "compose", None)
        try:
            compose_bytes(mail, body)
        except TypeError:  # None is not callable: the email package's path was taken
            return False
    return True


def test_an_acknowledgement_is_written_straight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual acknowledgement (ASCII headers, a text and an HTML part with long lines)
    never takes the email package's path: that path is 30 times slower (issue 14)."""
    answering = Answering("ann@example.org", "m1@example.org", ("m0@example.org",))
    mail = ack_mail(About("KW-7", "Is the shop down?"), answering)
    html = "<p>" + "We will answer by Tuesday 3 December, 14:00 (Europe/Berlin). " * 4 + "</p>"
    body = Rendered("Hello Ann,\n\nwe have your message.\n", html)

    def refuse(*_: object) -> EmailMessage:
        raise AssertionError("composed through the email package")

    monkeypatch.setattr(compose_module, "compose", refuse)
    parsed = message_from_bytes(compose_bytes(mail, body), policy=default_policy)
    assert parsed["Subject"] == "Re: Is the shop down? [KW-7]"
    assert parsed.get_body(("html",)).get_content().rstrip() == html  # type: ignore[union-attr]
