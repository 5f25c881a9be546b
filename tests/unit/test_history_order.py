"""A first import oldest first (pipeline.history): the floors it orders mail by, the
horizon triage may go up to while it runs, and the cursor of an out-of-order import."""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from keepword.adapters.imap import _dated, _fetched, _internaldate, uid_set
from keepword.mail.parse import header_date, parse_message
from keepword.pipeline.history import (
    UNKNOWN,
    FolderPlan,
    HistoryImport,
    StoredPrefix,
    TriageBehind,
    floor_of,
)
from tests.corpora import PRESENT, corpus_rfc822

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
    hour = 3600.0
    assert floor_of(dated(1, "Mon, 2 Mar 2026 08:00:00 +0000")) == T0.timestamp() - hour
    # A Date after the delivery (a sender's clock ahead): the INTERNALDATE is the floor.
    assert floor_of(dated(2, "Mon, 2 Mar 2026 11:00:00 +0100")) == T0.timestamp()
    assert floor_of(dated(3, None)) == T0.timestamp()  # no Date: the INTERNALDATE counts
    assert floor_of(dated(4, "not a date")) == T0.timestamp()
    assert floor_of(dated(5, None, internal=None)) == UNKNOWN


def plan_of(*floors: tuple[int, datetime | None]) -> FolderPlan:
    return FolderPlan(
        np.array([uid for uid, _ in floors], np.int64),
        np.array([100 * uid for uid, _ in floors], np.int64),
        np.array([f.timestamp() if f else UNKNOWN for _, f in floors], np.float64),
    )


def test_unknown_floors_come_first_then_oldest_then_by_uid() -> None:
    plan = plan_of((1, T0), (2, None), (3, T0 - timedelta(days=400)), (4, T0), (5, None))
    ordered = plan.oldest_first()
    assert ordered.uids.tolist() == [2, 5, 3, 1, 4]
    assert [uid for uid, _ in ordered.pairs(chunk=2)] == [2, 5, 3, 1, 4]
    assert dict(ordered.pairs()) == {1: 100, 2: 200, 3: 300, 4: 400, 5: 500}


def test_a_plan_is_read_a_chunk_at_a_time_and_joined_in_uid_order() -> None:
    read = FolderPlan.read([[dated(9, None)], [dated(4, "Mon, 2 Mar 2026 08:00:00 +0000")]])
    assert read.uids.tolist() == [4, 9]
    assert read.only(np.array([9], np.int64)).uids.tolist() == [9]
    assert read.missing(np.array([4, 5, 9], np.int64)).tolist() == [5]
    assert read.joined(plan_of((5, T0))).uids.tolist() == [4, 5, 9]
    assert FolderPlan.read([]).lowest == math.inf


def test_the_horizon_is_the_oldest_unstored_floor_of_every_folder() -> None:
    history = HistoryImport()
    inbox = plan_of((1, T0), (2, T0 + timedelta(hours=1)), (3, T0 + timedelta(hours=3)))
    history.plan("INBOX", inbox)
    history.plan("Sent", plan_of((7, T0 + timedelta(hours=2)), (8, T0 + timedelta(hours=5))))
    horizon = history.horizon
    assert horizon.through() == T0.timestamp()
    history.begin("INBOX", inbox)
    history.stored("INBOX", 2)
    # The Sent folder's oldest reply first; until its own import only its oldest counts.
    assert horizon.through() == (T0 + timedelta(hours=2)).timestamp()
    history.begin("Sent", plan_of((7, T0 + timedelta(hours=2)), (8, T0 + timedelta(hours=5))))
    history.stored("Sent", 1)
    assert horizon.through() == (T0 + timedelta(hours=3)).timestamp()
    history.stored("INBOX", 1)
    history.stored("Sent", 1)
    assert horizon.through() is None  # all stored: any mail may be triaged
    history.plan("Done", plan_of((9, None)))  # a floor unknown: nothing may be triaged
    assert horizon.through() == UNKNOWN


def test_the_cursor_of_an_out_of_order_import_stays_below_what_is_missing() -> None:
    prefix = StoredPrefix.of(10, np.array([15, 11, 12, 13, 14], np.int64))
    assert prefix.stored([13, 15]) == 10
    assert prefix.stored([11]) == 11
    assert prefix.stored([12]) == 13
    assert prefix.stored([14]) == 15
    assert prefix.stored([]) == 15


def test_triage_runs_after_a_batch_only_when_the_horizon_allows_and_never_fails_it() -> None:
    calls: list[datetime | None] = []
    history = HistoryImport(calls.append)
    both = FolderPlan.read(
        [[dated(1, None, internal=None), dated(2, "Mon, 2 Mar 2026 09:00 +0000")]]
    )
    ordered = history.begin("INBOX", both)
    assert ordered.uids.tolist() == [1, 2]  # the unknown first
    history.plan("Sent", plan_of((5, T0 + timedelta(hours=1))))
    history.stored("INBOX", 1)
    assert calls == [T0]  # up to UID 2's floor, stored or not: it is the lowest unstored
    history.stored("INBOX", 1)
    assert calls == [T0, T0 + timedelta(hours=1)]  # the Sent folder's mail still waits

    waiting = HistoryImport(calls.append)
    waiting.plan("Sent", plan_of((5, None)))
    waiting.begin("INBOX", plan_of((1, T0)))
    waiting.stored("INBOX", 1)
    assert len(calls) == 2  # the Sent folder's mail might be older than anything: wait

    def broken(through: datetime | None) -> None:
        raise RuntimeError("a bug in triage")

    failing = HistoryImport(broken)
    failing.begin("INBOX", plan_of((1, T0)))
    failing.stored("INBOX", 1)  # logged; the import goes on, triage after it
    assert failing.triage is None


_MAILBOX: contextvars.ContextVar[str] = contextvars.ContextVar("mailbox", default="none")


def test_triage_behind_runs_a_pass_in_its_own_thread_and_merges_what_waits() -> None:
    """A pass runs beside the import; the instants handed in meanwhile make one pass, up
    to the latest; finish() returns once that one is triaged."""
    passes: list[tuple[datetime | None, str, str]] = []
    first_began, release = threading.Event(), threading.Event()

    def triage(through: datetime | None) -> None:
        passes.append((through, threading.current_thread().name, _MAILBOX.get()))
        first_began.set()
        assert release.wait(10)

    _MAILBOX.set("shop")  # the caller's context (its log context, its fence) goes along
    behind = TriageBehind(triage)
    behind(T0)
    assert first_began.wait(10)  # the caller is not held up by the pass
    for hours in (1, 2, 3):
        behind(T0 + timedelta(hours=hours))
    behind(None)  # all of it: the latest
    release.set()
    behind.finish()
    assert [through for through, _, _ in passes] == [T0, None]
    assert {thread for _, thread, _ in passes} == {"kw-history-triage"}
    assert {mailbox for _, _, mailbox in passes} == {"shop"}


def test_triage_behind_stops_at_a_failing_pass_and_the_import_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[datetime | None] = []

    def broken(through: datetime | None) -> None:
        calls.append(through)
        raise RuntimeError("a bug in triage")

    history = HistoryImport(broken)
    history.begin("INBOX", plan_of((1, T0), (2, T0 + timedelta(hours=1))))
    with caplog.at_level(logging.ERROR), history.triaging_behind(True):
        history.stored("INBOX", 1)
        behind = history.triage
        assert isinstance(behind, TriageBehind)
        deadline = time.monotonic() + 10
        while not behind.failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert behind.failed
        history.stored("INBOX", 1)  # after a failure: nothing runs, nothing raised
    assert calls == [T0 + timedelta(hours=1)]  # the lowest floor unstored, then no more
    assert history.triage is None  # triage after the import takes the rest
    assert "triage during the import failed" in caplog.text


@pytest.mark.parametrize("concurrent", [False, True])
def test_an_import_triages_behind_only_where_the_store_takes_concurrent_writers(
    concurrent: bool,
) -> None:
    """SQLite's one writer would make store and triage take turns: there triage runs in
    the import's own thread, as before."""
    here = threading.current_thread().name
    threads: list[str] = []
    history = HistoryImport(lambda _: threads.append(threading.current_thread().name))
    history.begin("INBOX", plan_of((1, T0), (2, T0 + timedelta(hours=1))))
    with history.triaging_behind(concurrent):
        history.stored("INBOX", 1)
        history.stored("INBOX", 1)
    # All of it ran by the end of the import, in its own thread where it may.
    assert threads and set(threads) == {"kw-history-triage" if concurrent else here}
    threads.clear()
    history.stored("INBOX", 0)  # after it: in the caller's thread again
    assert threads == [here]


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


def test_the_raw_body_fetch_is_read_with_items_before_and_after_the_body() -> None:
    answer = [
        (b'1 (UID 7 INTERNALDATE "02-Mar-2026 09:00:00 +0000" BODY[] {9}', b"Subject: a"),
        b")",
        (b"2 (BODY[] {9}", b"Subject: b"),  # the server sent UID and date after the body
        b' UID 9 INTERNALDATE "02-Mar-2026 09:00:00 +0000")',
        b"3 (FLAGS (\\Seen))",  # an unsolicited update
        (b"4 (UID 12 BODY[] {9}", b"Subject: d"),  # no INTERNALDATE: read without one
        b")",
    ]
    read = _fetched(answer)
    assert {uid: (m.raw, m.internaldate) for uid, m in read.items()} == {
        7: (b"Subject: a", T0),
        9: (b"Subject: b", T0),
        12: (b"Subject: d", None),
    }


def test_a_raw_body_fetch_leaves_out_what_it_cannot_read() -> None:
    """A body as a quoted string or NIL, a literal that is not the body: left out, for
    ImapSession.fetch to ask imapclient again (tests/integration/test_imap_adapter.py)."""
    answer = [
        b'5 (UID 20 BODY[] "" INTERNALDATE "02-Mar-2026 09:00:00 +0000")',
        b"6 (UID 21 BODY[] NIL)",
        (b"7 (UID 22 BODY[HEADER] {9}", b"Subject: e"),
        b")",
        (b"8 (BODY[] {9}", b"Subject: f"),  # no UID anywhere on its line
        b")",
    ]
    assert _fetched(answer) == {}


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
    checked = 0
    for name, raw in corpus_rfc822():
        parsed = parse_message(raw)
        if parsed.quarantined or parsed.date is None:
            continue
        assert header_date(_date_lines(raw)) == parsed.date, name
        checked += 1
    assert checked >= 50


def test_a_plan_that_fails_leaves_the_folder_to_its_own_poll(tmp_path: Path) -> None:
    """Planning only lets triage start early: a bug in it never stops the import."""
    from keepword.config import MailboxSettings
    from keepword.domain.model import Origin
    from keepword.pipeline.ingest import Folder, plan_history
    from keepword.store.db import open_store

    class Session:
        unselected = 0

        def new_uids(self, folder: str, after_uid: int) -> list[int]:
            return [1, 2]

        def message_dates(self, uids: object) -> list[Dated]:
            raise RuntimeError("a bug reading dates")

        def unselect(self) -> None:
            self.unselected += 1

    box = MailboxSettings.model_validate(
        {
            "name": "support",
            "address": "support@example.com",
            "imap": {"host": "127.0.0.1", "username": "support", "password": "pw"},
        }
    )
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    history = HistoryImport()
    session = Session()
    where = Folder(engine, box, "", Origin.INBOX, lambda: T0, history=history)
    plan_history(session, where, [("INBOX", Origin.INBOX)])  # type: ignore[arg-type]
    assert history.planned == {} and history.horizon.through() is None
    assert session.unselected == 1
    engine.dispose()


def test_a_first_import_takes_the_folder_with_the_least_mail_first() -> None:
    from keepword.domain.model import Origin
    from keepword.pipeline.ingest import smallest_first

    history = HistoryImport()
    for name, count in (("INBOX", 300), ("Sent", 40), ("Archive", 40)):
        history.plan(name, plan_of(*((uid, T0) for uid in range(1, count + 1))))
    folders = [
        ("INBOX", Origin.INBOX),
        ("Done", Origin.DONE),  # not planned: imported already, or its plan failed
        ("Sent", Origin.SENT),
        ("Archive", Origin.INBOX),
    ]
    assert [name for name, _ in smallest_first(folders, history)] == [
        "Done",
        "Sent",
        "Archive",
        "INBOX",
    ]
    assert smallest_first(folders, None) == folders  # after the first import: as configured
