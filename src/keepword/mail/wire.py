"""The bytes of a plain outgoing mail, written straight, as the email package writes them.

Composing an acknowledgement with `email.message.EmailMessage` (header registry, content
manager, generator) cost ~1 ms, 40% of triaging a new customer's mail in a surge (issue
14). Nearly every mail keepword sends is plain: short ASCII header lines and a text
body (with an HTML alternative) in UTF-8. For such a mail `plain_bytes` writes the same
bytes the email package writes (policy SMTP: CRLF, 7bit/8bit bodies when their lines are
short, quoted-printable where the package would choose it); for anything else (a
non-ASCII or long header line that needs encoding or folding, a body that would go out
in base64) it answers None and compose.py takes the email package's path. The tests
hold both paths to the same bytes on generated mail.
"""

from __future__ import annotations

import binascii
import random
import re
import sys
from collections.abc import Sequence
from email.quoprimime import body_encode as quoted_printable

CRLF = b"\r\n"
MAX_LINE = 78  # policy SMTP's max_line_length: longer header lines are folded
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_NEWLINES = re.compile(r"\r\n|\r|\n")
_SNIFF_LINES = 10  # how many lines the email package looks at to choose qp or base64

Header = tuple[str, str]


def boundary(*texts: str) -> str:
    """A MIME boundary in the email package's form that no text contains."""
    while True:
        # Only unique, not secret (the email package draws it the same way).
        drawn = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="  # noqa: S311
        if not any(drawn in text for text in texts):
            return drawn


def plain_bytes(
    headers: Sequence[Header], text: str, html: str | None, separator: str
) -> bytes | None:
    """The message (None: not plain, the email package must write it).

    `headers` are the message's own lines in order, values final as they go out;
    `separator` the multipart boundary when there is an `html` alternative."""
    if not all(_plain_line(name, value) for name, value in headers):
        return None
    text_part = _text_part("plain", text)
    if text_part is None:
        return None
    head = CRLF.join(f"{name}: {value}".encode("ascii") for name, value in headers) + CRLF
    if html is None:
        return head + text_part[0] + b"MIME-Version: 1.0\r\n\r\n" + text_part[1]
    html_part = _text_part("html", html)
    if html_part is None:
        return None
    dash = f"--{separator}".encode("ascii")
    return b"".join(
        (
            head,
            b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n",
            f' boundary="{separator}"\r\n\r\n'.encode("ascii"),
            dash + CRLF,
            text_part[0] + CRLF + text_part[1],
            CRLF + dash + CRLF,
            html_part[0] + b"MIME-Version: 1.0\r\n\r\n" + html_part[1],
            CRLF + dash + b"--" + CRLF,
        )
    )


def _plain_line(name: str, value: str) -> bool:
    """A header line the registry would write as it is: printable ASCII words with single
    spaces between them, nothing that reads as an encoded word, not folded."""
    return (
        len(name) + 2 + len(value) <= MAX_LINE
        and _PLAIN_VALUE.fullmatch(value) is not None
        and "=?" not in value
    )


def _text_part(subtype: str, content: str) -> tuple[bytes, bytes] | None:
    """(Content-Type and Content-Transfer-Encoding lines, the encoded body) as the content
    manager writes a text part in UTF-8; None where it would choose base64."""
    lines = content.encode("utf-8").splitlines()
    if max((len(line) for line in lines), default=0) <= MAX_LINE:
        encoding = "7bit" if all(line.isascii() for line in lines) else "8bit"
        body = CRLF.join(lines) + CRLF
    else:
        encoded = _quoted_printable(lines)
        if encoded is None:
            return None
        encoding, body = "quoted-printable", encoded
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    return (head + f"Content-Transfer-Encoding: {encoding}\r\n").encode("ascii"), body


def _quoted_printable(lines: list[bytes]) -> bytes | None:
    """The body in quoted-printable when the content manager would pick it over base64
    (it compares both on the first ten lines)."""
    sniff = CRLF.join(lines[:_SNIFF_LINES]) + CRLF
    sniffed = quoted_printable(sniff.decode("latin-1"), MAX_LINE)
    if len(sniffed) > len(binascii.b2a_base64(sniff)):
        return None
    if len(lines) > _SNIFF_LINES:  # each line is encoded on its own: the rest goes on
        rest = b"\n".join(lines[_SNIFF_LINES:]) + b"\n"
        sniffed += quoted_printable(rest.decode("latin-1"), MAX_LINE)
    return _crlf(sniffed)


def _crlf(payload: str) -> bytes:
    """A str payload as the generator writes it: every line end CRLF."""
    return _NEWLINES.sub("\r\n", payload).encode("ascii")
