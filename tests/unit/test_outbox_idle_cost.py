"""The drain's "anything to do?" stays flat in the outbox's size: years of sent mail
must not make every idle drain read them all (store.outbox.has_due_work)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, insert

from keepword.store import outbox as store
from keepword.store.db import open_store
from keepword.store.tables import outbox

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def sent_rows(engine: Engine, first: int, count: int, sent_copy: str = "done") -> None:
    rows = [
        {
            "mailbox": "support",
            "kind": "acknowledgement",
            "dedup_key": f"ack:{n}",
            "message_id": f"m{n}@example.com",
            "recipients": [f"c{n}@example.org"],
            "raw": b"x",
            "state": "sent",
            "sent_copy": sent_copy,
            "attempts": 1,
            "created_at": NOW,
            "sent_at": NOW,
        }
        for n in range(first, first + count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(outbox), rows)


def steps_of_has_due_work(engine: Engine) -> int:
    """SQLite virtual machine steps (in hundreds) the question takes: a count, not a time."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(count, 100)  # type: ignore[attr-defined]
        try:
            store.has_due_work(conn, NOW, "support")
        finally:
            raw.set_progress_handler(None, 100)  # type: ignore[attr-defined]
    return steps


def test_an_idle_drains_question_costs_the_same_on_100_and_on_5000_sent_mails(
    tmp_path: Path,
) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    sent_rows(engine, 0, 100)
    small = steps_of_has_due_work(engine)
    sent_rows(engine, 100, 4900)
    large = steps_of_has_due_work(engine)
    assert large <= small + 5, (small, large)


def test_the_question_still_finds_a_copy_that_failed_or_waits(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    sent_rows(engine, 0, 1000)
    with engine.connect() as conn:
        assert not store.has_due_work(conn, NOW, "support")
    sent_rows(engine, 1000, 1, sent_copy="deferred")
    with engine.connect() as conn:
        assert store.has_due_work(conn, NOW, "support")
        assert store.missing_sent_copies(conn, "support") == 1
