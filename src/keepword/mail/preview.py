"""A composed mail as a person reads it in a mail client: the headers that matter and
the text part decoded (no MIME boundaries, no quoted-printable, no HTML twin).

For `keepword run --dry-run` and the demo: what would the customer, the owner or the
lead see?
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Final

#: The headers a reader sees at the top of a mail, in this order.
SHOWN: Final = ("From", "To", "Cc", "Subject", "Date")


def text_part(msg: EmailMessage) -> str:
    """The plain-text body (the HTML part's twin); the HTML if there is no text part."""
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = body.get_content()
    except (LookupError, ValueError):  # an unknown charset: show what can be shown
        payload = body.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return str(content)


def preview(raw: bytes, *, indent: str = "") -> str:
    """`raw` as a reader sees it: headers that matter, a blank line, the text."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    lines = [f"{name}: {msg[name]}" for name in SHOWN if msg[name] is not None]
    lines.append("")
    lines.extend(text_part(msg).rstrip("\n").splitlines())
    return "\n".join(f"{indent}{line}".rstrip() for line in lines)
