"""Case numbers on SQLite when mailboxes triage in threads of their own: two mailboxes
that share a prefix never take the same number."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import OperationalError

from keepword.domain.cases import CaseState
from keepword.domain.model import CaseStatus
from keepword.store import cases as case_store
from keepword.store.db import open_store
from keepword.store.tables import job_run

AT = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)


def _case(mailbox: str, n: int) -> CaseState:
    return CaseState(
        id=None,
        mailbox=mailbox,
        reference="KW",
        status=CaseStatus.NEW,
        opened_at=AT,
        updated_at=AT,
        customer=f"c{n}@example.org",
        subject=f"Help {n}",
    )


def _engine(tmp: Path) -> Engine:
    return open_store(f"sqlite:///{tmp / 'kw.db'}")


def test_the_number_is_read_under_the_write_lock(tmp_path: Path) -> None:
    """While one transaction has read the next number, no other may write: a reader
    that took the same MAX could not insert the same number afterwards."""
    engine = _engine(tmp_path)
    with engine.begin() as first:
        assert case_store.next_number(first, "support", "KW") == 1
        with engine.connect() as other:
            other.exec_driver_sql("PRAGMA busy_timeout=0")
            with pytest.raises(OperationalError, match="locked"):
                other.execute(
                    insert(job_run).values(
                        mailbox="sales", job="poll", interval_seconds=60.0, failures=0
                    )
                )
            other.rollback()


def test_two_mailboxes_opening_cases_at_once_take_distinct_numbers(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def open_cases(mailbox: str) -> None:
        start.wait()
        for n in range(60):
            try:
                with engine.begin() as conn:
                    case_store.save_case(conn, _case(mailbox, n), prefix="KW")
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=open_cases, args=(m,)) for m in ("support", "sales")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        numbers = sorted(case_store.load_case(conn, i).reference for i in range(1, 121))
    assert len(set(numbers)) == 120
