"""An idle poll's success is written only when it changes something."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from keepword.store import messages as store
from keepword.store.db import open_store
from keepword.store.tables import folder_state

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_a_fresh_success_is_not_written_again(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    with engine.begin() as conn:
        store.record_poll_success(conn, "support", "INBOX", now=NOW)
    with engine.begin() as conn:
        cursor = store.get_cursor(conn, "support", "INBOX")
        assert not store.poll_success_due(cursor, NOW + timedelta(seconds=5))
        store.record_poll_success(conn, "support", "INBOX", now=NOW + timedelta(seconds=5))
        seen = conn.execute(select(folder_state.c.last_success_at)).scalar_one()
    assert seen == NOW  # nothing changed: the row stays as it was
    later = NOW + store.POLL_SUCCESS_REFRESH
    with engine.begin() as conn:
        assert store.poll_success_due(store.get_cursor(conn, "support", "INBOX"), later)
        store.record_poll_success(conn, "support", "INBOX", now=later)
        assert conn.execute(select(folder_state.c.last_success_at)).scalar_one() == later


def test_an_error_is_cleared_by_the_next_success_at_once(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    with engine.begin() as conn:
        store.record_poll_success(conn, "support", "INBOX", now=NOW)
        store.record_poll_error(conn, "support", "INBOX", "down", now=NOW + timedelta(seconds=1))
        cursor = store.get_cursor(conn, "support", "INBOX")
        assert store.poll_success_due(cursor, NOW + timedelta(seconds=2))
        store.record_poll_success(conn, "support", "INBOX", now=NOW + timedelta(seconds=2))
        row = conn.execute(select(folder_state.c.last_error, folder_state.c.last_success_at)).one()
    assert row == (None, NOW + timedelta(seconds=2))
