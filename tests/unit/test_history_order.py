"""A first import oldest first (pipeline.history): the floors it orders mail by, the
horizon triage may go up to while it runs, and the cursor of an out-of-order import."""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from keepword.adapters.imap import _dated, _internaldate, uid_set
from keepword.mail.parse import header_date, parse_message
from keepword.pipeline.history import (
    BEFORE_ALL,
    HistoryImport,
    Horizon,
    StoredPrefix,
    floor_of,
    oldest_first,
)
from tests.corpora import CORPORA, PRESENT

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Dated:
    uid: int
    size: int
    internaldate: datetime | None
    date_header: bytes | None


def dated(uid: int, date: str | None, internal: datetime | None = T0) -> Dated:
    header = f"Date: {date}\r\n\r\n".encode() if date is not None else None
    return Dated(uid, 100, internal, header)


def test_the_floor_is_the_earlier_of_date_and_internaldate() -> None:
    assert floor_of(dated(1, "Mon, 2 Mar 2026 08:00:00 +0000")) == T0 - timedelta(hours=1)
    # A Date after the delivery (a sender's clock ahead): the INTERNALDATE is the floor.
    assert floor_of(dated(2, "Mon, 2 Mar 2026 11:00:00 +0100")) == T0
    assert floor_of(dated(3, None)) == T0  # no Date: the INTERNALDATE counts, as in triage
    assert floor_of(dated(4, "not a date")) == T0
    assert floor_of(dated(5, None, internal=None)) is None


def test_unknown_floors_come_first_then_oldest_then_by_uid() -> None:
    floors = {1: T0, 2: None, 3: T0 - timedelta(days=400), 4: T0, 5: None}
    assert oldest_first(floors) == [2, 5, 3, 1, 4]


def test_the_horizon_is_the_oldest_unstored_floor_of_every_folder() -> None:
    horizon = Horizon()
    horizon.expect("INBOX", {1: T0, 2: T0 + timedelta(hours=1), 3: T0 + timedelta(hours=3)})
    horizon.expect("Sent", {7: T0 + timedelta(hours=2)})
    assert horizon.through() == T0
    horizon.stored("INBOX", [1, 2])
    assert horizon.through() == T0 + timedelta(hours=2)  # the Sent folder's reply first
    horizon.stored("Sent", [7])
    assert horizon.through() == T0 + timedelta(hours=3)
    horizon.stored("INBOX", [3])
    assert horizon.through() is None  # all stored: any mail may be triaged
    horizon.expect("Done", {9: None})  # a floor unknown: nothing may be triaged
    assert horizon.through() == BEFORE_ALL


def test_expecting_a_folder_again_replaces_its_plan() -> None:
    horizon = Horizon()
    horizon.expect("INBOX", {1: T0})
    horizon.expect("INBOX", {5: T0 + timedelta(days=1)})  # UIDVALIDITY changed meanwhile
    assert horizon.through() == T0 + timedelta(days=1)


def test_the_cursor_of_an_out_of_order_import_stays_below_what_is_missing() -> None:
    prefix = StoredPrefix.of(10, [11, 12, 13, 14, 15])
    assert prefix.stored([13, 15]) == 10
    assert prefix.stored([11]) == 11
    assert prefix.stored([12]) == 13
    assert prefix.stored([14]) == 15
    assert prefix.stored([]) == 15


def test_triage_runs_after_a_batch_only_when_the_horizon_allows_and_never_fails_it() -> None:
    calls: list[datetime | None] = []
    history = HistoryImport(calls.append)
    history.plan("INBOX", [dated(1, None, internal=None), dated(2, "Mon, 2 Mar 2026 09:00 +0000")])
    history.stored("INBOX", [2])
    assert calls == []  # UID 1 might be older than anything: wait for it
    history.stored("INBOX", [1])
    assert calls == [None]

    def broken(through: datetime | None) -> None:
        raise RuntimeError("a bug in triage")

    failing = HistoryImport(broken)
    failing.plan("INBOX", [dated(1, None)])
    failing.stored("INBOX", [1])  # logged; the import goes on, triage after it
    assert failing.triage is None


def test_a_uid_set_writes_runs_as_ranges() -> None:
    assert uid_set([1, 2, 3, 5, 7, 8, 20]) == "1:3,5,7:8,20"
    assert uid_set([4]) == "4"
    assert uid_set([]) == ""


def test_internaldate_is_read_without_the_locale() -> None:
    assert _internaldate(b" 4-Dec-2026 07:02:30 +0100") == datetime(
        2026, 12, 4, 6, 2, 30, tzinfo=UTC
    )
    assert _internaldate(b"04-dec-2026 07:02:30 -0230") == datetime(
        2026, 12, 4, 9, 32, 30, tzinfo=UTC
    )
    assert _internaldate(b"31-Feb-2026 07:02:30 +0000") is None
    assert _internaldate(b"yesterday") is None


def test_the_raw_fetch_answer_is_read_item_by_item() -> None:
    answer = [
        (
            b'1 (UID 7 RFC822.SIZE 512 INTERNALDATE "02-Mar-2026 09:00:00 +0000" '
            b"BODY[HEADER.FIELDS (DATE)] {40}",
            b"Date: Mon, 2 Mar 2026 08:00:00 +0000\r\n\r\n",
        ),
        b")",
        (
            b'2 (UID 9 RFC822.SIZE 80 INTERNALDATE "02-Mar-2026 09:00:00 +0000" '
            b"BODY[HEADER.FIELDS (DATE)] {2}",
            b"\r\n",
        ),
        b")",
        b'3 (UID 11 RFC822.SIZE 80 INTERNALDATE "02-Mar-2026 09:00:00 +0000" '
        b'BODY[HEADER.FIELDS (DATE)] "")',
        b"4 (FLAGS (\\Seen))",  # an unsolicited update: no UID, no size
    ]
    read = list(_dated(answer))
    assert [(d.uid, d.size, d.internaldate) for d in read] == [
        (7, 512, T0),
        (9, 80, T0),
        (11, 80, T0),
    ]
    assert [d.date_header for d in read] == [
        b"Date: Mon, 2 Mar 2026 08:00:00 +0000\r\n\r\n",
        None,
        None,
    ]


def _date_lines(raw: bytes) -> bytes:
    """What an IMAP server answers to HEADER.FIELDS (DATE): the header's Date fields."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head = text.split(b"\n\n", 1)[0]
    lines = re.split(rb"\n(?![ \t])", head)
    return b"\r\n".join(line for line in lines if line[:5].lower() == b"date:") + b"\r\n\r\n"


@pytest.mark.skipif(not PRESENT, reason="corpora not available")
def test_on_real_mail_the_header_date_is_the_date_the_full_parse_reads() -> None:
    """The floor must never be later than when triage counts the mail as written: on
    every corpus file whose Date the full parse reads, the header-only read agrees."""
    with (CORPORA / "index.csv").open(newline="") as index:
        rows = [row for row in csv.DictReader(index) if row["kind"] == "rfc822"]
    checked = 0
    for row in rows:
        raw = (CORPORA / row["file"]).read_bytes()
        if row["file"].endswith(".gz"):
            raw = gzip.decompress(raw)
        parsed = parse_message(raw)
        if parsed.quarantined or parsed.date is None:
            continue
        assert header_date(_date_lines(raw)) == parsed.date, row["file"]
        checked += 1
    assert checked >= 50
