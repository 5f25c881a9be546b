"""Logging to stderr that reads well both in a terminal and in the journal.

Under systemd (stderr is the stream named by $JOURNAL_STREAM) every line starts with an
sd-daemon(3) `<N>` priority and carries no timestamp, because journald adds both.
Elsewhere lines look like
`2026-11-23 12:01:03 CET INFO keepword.runtime.daemon [support/KW-42] ...`, in the
configured zone (`set_log_zone`).

The mailbox and case come from context variables (`log_context`) or from `extra=`, so
code deep in a poll does not have to pass them along. Secrets registered with
`register_secret` are masked in the final text, tracebacks included: a last line of
defence behind `Secret`'s own repr.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, tzinfo
from typing import Final, TextIO

MASK: Final = "***"
MIN_SECRET_LENGTH: Final = 4  # masking shorter values would shred ordinary words
JOURNAL_STREAM_ENV: Final = "JOURNAL_STREAM"

_mailbox: ContextVar[str | None] = ContextVar("keepword_mailbox", default=None)
_case: ContextVar[str | None] = ContextVar("keepword_case", default=None)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# sd-daemon(3): <3> error, <4> warning, <6> info, <7> debug.
_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


@contextmanager
def log_context(*, mailbox: str | None = None, case: str | None = None) -> Iterator[None]:
    """Name the mailbox and/or case in every line logged inside the block (also in tasks)."""
    tokens = []
    if mailbox is not None:
        tokens.append((_mailbox, _mailbox.set(mailbox)))
    if case is not None:
        tokens.append((_case, _case.set(case)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def register_secret(value: str) -> None:
    """Mask `value` wherever it would appear in a log line from now on."""
    if len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def forget_secrets() -> None:
    with _secrets_lock:
        _secrets.clear()


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class ContextFilter(logging.Filter):
    """Puts `mailbox`, `case` and the rendered `context` ("[support/KW-42] ") on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        mailbox = getattr(record, "mailbox", None) or _mailbox.get()
        case = getattr(record, "case", None) or _case.get()
        record.mailbox = mailbox
        record.case = case
        parts = [p for p in (mailbox, case) if p]
        record.context = f"[{'/'.join(parts)}] " if parts else ""
        return True


_zone: tzinfo = UTC


def set_log_zone(zone: tzinfo) -> None:
    """Show terminal log times in this zone (the configured keepword.timezone)."""
    global _zone
    _zone = zone


class KeepwordFormatter(logging.Formatter):
    """Readable or journal format; redacts registered secrets from the whole output.

    Terminal lines carry their time in the configured zone with the zone named
    (`2026-11-30 09:05:03 CET`), as every other view of keepword does.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        at = datetime.fromtimestamp(record.created, _zone)
        return f"{at:%Y-%m-%d %H:%M:%S} {at.tzname() or at.strftime('UTC%z')}"

    def __init__(self, *, journal: bool) -> None:
        if journal:
            super().__init__("%(name)s %(context)s%(message)s")
        else:
            super().__init__("%(asctime)s %(levelname)s %(name)s %(context)s%(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            ContextFilter().filter(record)
        text = redact(super().format(record))
        if not self.journal:
            return text
        # One journal entry per line: each line (tracebacks too) keeps the priority.
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the journal connection systemd set up ($JOURNAL_STREAM=dev:ino)."""
    env = os.environ if environ is None else environ
    value = env.get(JOURNAL_STREAM_ENV)
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False  # redirected or unreadable: not the journal
    return (info.st_dev, info.st_ino) == (device, inode)


_HANDLER_NAME: Final = "keepword"


def setup_logging(
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
    journal: bool | None = None,
) -> logging.Handler:
    """Install (or replace) keepword's stderr handler on the root logger."""
    out = stream if stream is not None else sys.stderr
    is_journal = stream_is_journal(out) if journal is None else journal
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(KeepwordFormatter(journal=is_journal))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries' chatter at INFO (APScheduler runs a job every few seconds; flufl.bounce
    # names each of its ~17 detectors for every delivery report read) is noise here.
    noisy_level = logging.WARNING if root.level > logging.DEBUG else logging.DEBUG
    for noisy in ("alembic", "apscheduler", "aiosmtplib", "imapclient", "asyncio", "flufl"):
        logging.getLogger(noisy).setLevel(noisy_level)
    return handler
