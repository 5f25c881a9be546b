"""Reading a help desk's history from CSV (docs/promises.md shows how to export one).

One row per case, with a header: `opened_at`, `first_response_at` (empty while
unanswered) and optionally `kind` ("new" or "reopened"). The usual export names are
accepted too (`created_at`, `first_response`, ...; see `_ALIASES`). Times are ISO 8601;
a time without an offset is local time in `zone` (the mailbox's calendar).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from keepword.domain.predict import HistoryCase
from keepword.errors import KeepwordError

_ALIASES = {
    "opened_at": ("opened_at", "created_at", "created", "opened", "date", "created at"),
    "first_response_at": (
        "first_response_at",
        "first_response",
        "first_reply_at",
        "first_responded_at",
        "first response",
        "first response at",
    ),
    "kind": ("kind", "type"),
}


class HistoryFileError(KeepwordError):
    """The CSV cannot be read as a history of cases."""


def _column(header: list[str], name: str, *, required: bool) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for alias in _ALIASES[name]:
        if alias in lowered:
            return lowered.index(alias)
    if required:
        raise HistoryFileError(
            f"the CSV has no {name} column (looked for {', '.join(_ALIASES[name])}; "
            f"found {', '.join(header)})"
        )
    return None


def parse_time(text: str, zone: ZoneInfo) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("/", "-"))
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def read_rows(rows: Iterable[list[str]], zone: ZoneInfo) -> list[HistoryCase]:
    it = iter(rows)
    header = next(it, None)
    if header is None:
        raise HistoryFileError("the CSV is empty")
    opened = _column(header, "opened_at", required=True)
    answered = _column(header, "first_response_at", required=True)
    kind = _column(header, "kind", required=False)
    assert opened is not None and answered is not None
    cases: list[HistoryCase] = []
    for line, row in enumerate(it, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            opened_at = parse_time(row[opened], zone)
            text = row[answered].strip() if answered < len(row) else ""
            response = parse_time(text, zone) if text else None
        except (ValueError, IndexError) as exc:
            raise HistoryFileError(f"line {line}: {exc}") from None
        label = row[kind].strip().lower() if kind is not None and kind < len(row) else ""
        cases.append(HistoryCase(opened_at, response, label or "new", line))
    if not cases:
        raise HistoryFileError("the CSV has a header but no cases")
    return cases


def read_history(path: Path, zone: ZoneInfo) -> list[HistoryCase]:
    """The cases of a CSV file, keyed by line number."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(4096)
            handle.seek(0)
            try:
                dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
                    sample, delimiters=",;\t"
                )
            except csv.Error:
                dialect = csv.excel
            return read_rows(csv.reader(handle, dialect), zone)
    except OSError as exc:
        raise HistoryFileError(f"cannot read {path}: {exc.strerror}") from None
