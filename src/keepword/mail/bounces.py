"""Reading a bounce: which addresses a delivery failure report says failed for good, and
which mail of ours it is about.

The relay takes most mail and only later does a server on the way give up on it; what
comes back is a delivery status notification (RFC 3464) or one of the many older
formats. flufl.bounce (Mailman's bounce detectors) reads them all and says which
recipients failed permanently; a warning ("still trying") names none. Which mail
bounced comes from the report's own In-Reply-To/References and from the headers of the
returned mail it carries (message/rfc822 or text/rfc822-headers).
"""

from __future__ import annotations

import email
import logging
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from flufl.bounce import all_failures

from keepword.mail.parse import MAX_PARSE_BYTES, message_ids

log = logging.getLogger(__name__)

MAX_SUMMARY_CHARS = 300
# Message-IDs a report may name: the returned mail's own comes first; a hostile report
# with thousands of References must not become a query too large for the database
# (which would fail, and retry, that mail's triage for good).
MAX_NAMED = 50


@dataclass(frozen=True, slots=True)
class Bounce:
    failed: frozenset[str]  # the recipients that failed for good, lower-cased
    about: tuple[str, ...]  # bare Message-IDs of the mail that bounced, as named in it
    summary: str  # the report's status and diagnostic, or its subject


def read_bounce(raw: bytes) -> Bounce | None:
    """The permanent failures a delivery report names; None when it names none (a
    warning, or no bounce at all) or cannot be read. Never raises: hostile mail is no
    bounce, and a failure here must not hold up the triage of the mail behind it."""
    try:
        return _read(raw[:MAX_PARSE_BYTES])  # a report is small; a returned mail may not be
    except Exception:  # a detector choking on hostile mail
        log.warning("a delivery report could not be read", exc_info=True)
        return None


def _read(raw: bytes) -> Bounce | None:
    msg = email.message_from_bytes(raw)
    _, permanent = all_failures(msg)
    failed = frozenset(filter(None, (_address(a) for a in permanent)))
    if not failed:
        return None
    return Bounce(failed, _about(msg), _summary(msg))


def _address(value: bytes) -> str | None:
    text = value.decode("utf-8", "replace").strip().strip("<>").strip().lower()
    return text if "@" in text and " " not in text else None


def _about(msg: Message) -> tuple[str, ...]:
    """The returned mail's Message-IDs, then the report's In-Reply-To and References; at
    most MAX_NAMED."""
    values: list[str] = []
    for part in msg.walk():
        returned = _returned_headers(part)
        if returned is not None:
            values.extend(str(v) for v in returned.get_all("message-id", []))
    values += [str(v) for name in ("in-reply-to", "references") for v in msg.get_all(name, [])]
    return message_ids(values)[:MAX_NAMED]


def _returned_headers(part: Message) -> Message | None:
    """The headers of the returned mail a report part carries, if it is one."""
    kind = part.get_content_type()
    if kind == "message/rfc822":
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return None
    if kind == "text/rfc822-headers":
        body = part.get_payload(decode=True)
        if isinstance(body, bytes):
            return HeaderParser().parsestr(body.decode("utf-8", "replace"))
    return None


def _summary(msg: Message) -> str:
    """ "5.1.1 smtp; 550 no such user" from the first failed recipient's fields, else the
    report's subject."""
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, Message):
                continue
            status = str(block.get("status", "")).strip()
            if status.startswith("5"):
                diagnostic = " ".join(str(block.get("diagnostic-code", "")).split())
                return f"{status} {diagnostic}".strip()[:MAX_SUMMARY_CHARS]
    subject = " ".join(str(msg.get("subject", "")).split())
    return (subject or "a delivery failure report")[:MAX_SUMMARY_CHARS]
