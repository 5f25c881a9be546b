"""Outgoing mail as RFC 5322 messages, with everything a robot or a retry needs to know.

Every mail keepword sends carries:

- a deterministic Message-ID derived from its outbox dedup key
  (`deterministic_message_id`), so after a crash the sender can look for it in the Sent
  folder instead of sending twice;
- `Auto-Submitted` (RFC 3834): `auto-replied` on mail to customers (acknowledgement,
  follow-up note, customer update), `auto-generated` on team mail;
- `X-Auto-Response-Suppress: All`, so Exchange/Outlook send no out-of-office to us;
- no `Precedence` header: it was never standardized, and RFC 3834 defines
  Auto-Submitted as the way to mark automatic mail; `Precedence: bulk` would also make
  some clients file a personal answer as bulk mail;
- keepword's loop header (`X-Keepword-Loop: <mailbox address>`), `X-Keepword-Case` and
  `X-Keepword-Kind`, so keepword knows its own mail again (Sent folder, Cc) and never
  threads a team mail into a case as a customer's message;
- a "Case reference: KW-42" line in the body, because some providers (Microsoft 365,
  Amazon SES) rewrite Message-IDs: the body marker keeps threading working.

Values taken from incoming mail (subjects, names, Message-IDs) are stripped of CR, LF
and other control characters before they become headers: no header injection.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Protocol

from keepword.config import MailboxSettings
from keepword.domain.message_ids import keyed_message_id
from keepword.domain.model import LOOP_HEADER, OutboxKind
from keepword.domain.trust import own_subject
from keepword.mail import wire
from keepword.mail.render import Rendered

CASE_HEADER = "X-Keepword-Case"
KIND_HEADER = "X-Keepword-Kind"
CASE_MARKER = "Case reference: {reference}"
MAX_REFERENCES = 20  # RFC 5322 allows trimming; long threads must not grow headers forever

CUSTOMER_KINDS = frozenset(
    {OutboxKind.ACKNOWLEDGEMENT, OutboxKind.FOLLOW_UP_NOTE, OutboxKind.CUSTOMER_UPDATE}
)
TEAM_LABELS = {
    OutboxKind.REMINDER: "Reminder",
    OutboxKind.ESCALATION: "Escalation",
    OutboxKind.LEAD_ALERT: "We are behind",
    OutboxKind.DIGEST: "Daily digest",
    OutboxKind.AWAY_NOTICE: "Away",
    OutboxKind.COMMAND_REPLY: "Commands",
    OutboxKind.CUSTOMER_UNREACHABLE: "Customer unreachable",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|r|wg)\s*:", re.IGNORECASE)
_MSGID_JUNK = re.compile(r"[\s<>\x00-\x1f\x7f]+")


def clean_header(value: str) -> str:
    """A header value taken from mail: CR, LF and control characters become one space."""
    return " ".join(_CONTROL.sub(" ", value).split())


def clean_message_id(value: str) -> str:
    """A bare Message-ID (no brackets, no whitespace or controls) or '' if nothing is left."""
    return _MSGID_JUNK.sub("", value)


def deterministic_message_id(dedup_key: str, domain: str) -> str:
    """`kw.<24 hex of sha256(dedup_key)>@domain`, bare (as message.message_id stores ids).

    The header is written with angle brackets: `<kw.…@domain>`.
    """
    digest = hashlib.sha256(dedup_key.encode("utf-8")).hexdigest()[:24]
    return f"kw.{digest}@{domain.lower()}"


def mailbox_domain(box: MailboxSettings) -> str:
    return box.address.rpartition("@")[2]


def reply_subject(original: str, reference: str) -> str:
    """`Re: <original> [KW-42]`: keep the original subject, never double Re: or the tag.

    Every other tag of ours is taken out of the original (domain.trust.own_subject): a
    stranger's "[KW-1] hello" is answered as "Re: hello [KW-2]", never with a KW-1 claim.
    """
    prefix = reference.rpartition("-")[0] or reference
    subject = own_subject(clean_header(original), reference, [prefix])
    if not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    return subject


def team_subject(kind: OutboxKind, reference: str | None, about: str) -> str:
    """`[KW-42] Reminder: <subject>`; the digest and other case-less mails have no tag."""
    label = TEAM_LABELS.get(kind, kind.value.replace("_", " ").capitalize())
    text = f"{label}: {clean_header(about)}" if about else label
    return f"[{reference}] {text}" if reference else text


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """Everything about one outgoing mail except its text."""

    kind: OutboxKind
    dedup_key: str
    from_address: str
    from_name: str | None
    to: Sequence[str]
    subject: str  # final, e.g. from reply_subject / team_subject
    reference: str | None
    date: datetime
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    # The installation secret (store.secret): keys the Message-ID so nobody outside can
    # compute it. Without it (tests, previews) the old plain hash.
    id_secret: bytes | None = None

    @property
    def message_id(self) -> str:
        domain = self.from_address.rpartition("@")[2]
        if self.id_secret is not None:
            return keyed_message_id(self.id_secret, self.dedup_key, domain)
        return deterministic_message_id(self.dedup_key, domain)

    @property
    def auto_submitted(self) -> str:
        return "auto-replied" if self.kind in CUSTOMER_KINDS else "auto-generated"


@dataclass(frozen=True, slots=True)
class About:
    """What a mail is about, as its subject line names it: the case's reference (its
    [KW-42] tag; None for a mail about no case) and a subject."""

    reference: str | None
    subject: str


class _Threaded(Protocol):
    """A stored message that can be answered: its Message-ID and References."""

    @property
    def message_id(self) -> str | None: ...

    @property
    def references(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Answering:
    """The customer's message a mail answers: the address the answer goes to and the
    threading headers (In-Reply-To, References) that keep it in their thread."""

    to: str
    in_reply_to: str | None = None
    references: Sequence[str] = ()

    @classmethod
    def last(cls, to: str, message: _Threaded | None) -> Answering:
        """An answer to `message` (None: the case's thread is not known)."""
        if message is None or not message.message_id:
            return cls(to, message.message_id if message else None)
        return cls(to, message.message_id, (*message.references, message.message_id))


def _from_box(
    box: MailboxSettings, kind: OutboxKind, dedup_key: str, now: datetime
) -> OutgoingMail:
    """A mail of `kind` from the shared address, to nobody yet."""
    return OutgoingMail(
        kind, dedup_key, box.address, box.display_name, to=(), subject="", reference=None, date=now
    )


def customer_mail(
    box: MailboxSettings,
    kind: OutboxKind,
    *,
    dedup_key: str,
    about: About,
    now: datetime,
    answering: Answering,
) -> OutgoingMail:
    """A mail to the customer in the thread of their message."""
    if about.reference is None:
        raise ValueError("a mail to a customer names its case")
    return replace(
        _from_box(box, kind, dedup_key, now),
        to=(answering.to,),
        subject=reply_subject(about.subject, about.reference),
        reference=about.reference,
        in_reply_to=answering.in_reply_to,
        references=answering.references,
    )


def team_mail(
    box: MailboxSettings,
    kind: OutboxKind,
    *,
    dedup_key: str,
    to: Sequence[str],
    about: About,
    now: datetime,
) -> OutgoingMail:
    """A reminder, escalation, lead alert or digest, from the shared address to people."""
    subject = team_subject(kind, about.reference, about.subject)
    return replace(
        _from_box(box, kind, dedup_key, now),
        to=tuple(to),
        subject=subject,
        reference=about.reference,
    )


def compose(mail: OutgoingMail, body: Rendered, separator: str | None = None) -> EmailMessage:
    """The RFC 5322 message (policy SMTP: CRLF line ends, encoded headers) through the
    email package; `separator`: the multipart boundary (else drawn when written)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _sender(mail)
    for name, value in _headers(mail):
        _put(msg, name, value)
    msg.set_content(with_marker(body.text, mail.reference))
    if body.html:
        msg.add_alternative(body.html, subtype="html")
        if separator is not None:
            msg.set_boundary(separator)
    return msg


def compose_bytes(mail: OutgoingMail, body: Rendered) -> bytes:
    """The message's bytes: written straight when it is plain (mail.wire: the same bytes,
    at a thirtieth of the time), else through the email package."""
    text = with_marker(body.text, mail.reference)
    separator = wire.boundary(text, body.html or "")
    sender = _plain_sender(mail)
    if sender is not None and all(_ADDR_SPEC.fullmatch(a) for a in mail.to):
        headers = [("From", sender), *_headers(mail)]
        plain = wire.plain_bytes(headers, text, body.html or None, separator)
        if plain is not None:
            return plain
    return compose(mail, body, separator).as_bytes()


def _sender(mail: OutgoingMail) -> HeaderAddress:
    return HeaderAddress(
        display_name=clean_header(mail.from_name or ""), addr_spec=mail.from_address
    )


def _plain_sender(mail: OutgoingMail) -> str | None:
    """The From line as the registry writes it, when that needs no quoting or encoding."""
    name = clean_header(mail.from_name or "")
    if not _ADDR_SPEC.fullmatch(mail.from_address) or (name and not _ATOMS.fullmatch(name)):
        return None
    return f"{name} <{mail.from_address}>" if name else mail.from_address


def _headers(mail: OutgoingMail) -> list[tuple[str, str]]:
    """The message's own header lines after From, in order (the MIME ones follow)."""
    lines = [
        ("To", ", ".join(clean_header(a) for a in mail.to)),
        ("Subject", clean_header(mail.subject)),
        ("Date", format_datetime(mail.date)),
        ("Message-ID", f"<{mail.message_id}>"),
        *_thread_headers(mail.in_reply_to, mail.references),
        ("Auto-Submitted", mail.auto_submitted),
        ("X-Auto-Response-Suppress", "All"),
        (LOOP_HEADER, mail.from_address),
    ]
    if mail.reference:
        lines.append((CASE_HEADER, clean_header(mail.reference)))
    lines.append((KIND_HEADER, mail.kind.value))
    return lines


def _put(msg: EmailMessage, name: str, value: str) -> None:
    """`msg[name] = value`, without the header registry's parse where it would hand back
    the same line: a short single line of plain ASCII tokens (ids, keywords, an address)
    goes out as it is (`set_raw`; policy SMTP refolds only long lines). Parsing and
    folding every header was a third of composing an acknowledgement (issue 14)."""
    short = len(name) + 2 + len(value) <= _FOLD_AT
    if short and _PLAIN.fullmatch(value) and "=?" not in value:
        msg.set_raw(name, value)
    else:
        msg[name] = value


# What the registry leaves as it is on a line of its own: printable ASCII without
# spaces, quotes, parentheses, commas, semicolons or backslashes (RFC 5322 specials that
# it may re-quote or fold at) and nothing that could start an encoded word.
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@<>\[\]:]+")
_FOLD_AT = 78
# A display name and addresses the registry writes as they are (RFC 5322 atext).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ATOMS = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_ADDR_SPEC = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def with_marker(text: str, reference: str | None) -> str:
    """Make sure the body says "Case reference: KW-42" (templates normally do)."""
    if not reference:
        return text
    marker = CASE_MARKER.format(reference=reference)
    if marker in text:
        return text
    return text.rstrip("\n") + f"\n\n{marker}\n"


def _thread_headers(in_reply_to: str | None, references: Sequence[str]) -> list[tuple[str, str]]:
    parent = clean_message_id(in_reply_to or "")
    chain = [clean_message_id(r) for r in references]
    chain = list(dict.fromkeys(r for r in chain if r and r != parent))
    lines = []
    if parent:
        chain.append(parent)
        lines.append(("In-Reply-To", f"<{parent}>"))
    if len(chain) > MAX_REFERENCES:  # keep the thread's root and the newest ones
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    if chain:
        lines.append(("References", " ".join(f"<{r}>" for r in chain)))
    return lines
