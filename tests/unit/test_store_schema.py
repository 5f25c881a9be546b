from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, StatementError

from keepword.store.db import make_engine, open_store, table_names
from keepword.store.outbox import OutboxRow
from keepword.store.tables import folder_state, metadata, outbox
from tests.fixtures.schema import schema_drift, upgrade_from_0001


def test_migration_creates_every_table_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state/kw.db"
    engine = open_store(url)
    assert set(metadata.tables) <= table_names(engine)
    open_store(url)  # second run: nothing to do, no error
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_every_field_of_an_outbox_row_is_read_from_its_column() -> None:
    assert {f.name for f in fields(OutboxRow)} <= set(outbox.c.keys())


def test_datetimes_round_trip_as_aware_utc(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX", last_poll_at=berlin))
        got = conn.execute(select(folder_state.c.last_poll_at)).scalar_one()
    assert got == berlin and got.tzinfo == UTC


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            insert(folder_state).values(mailbox="m", folder="I", last_poll_at=datetime(2026, 1, 1))
        )


def test_folder_cursor_is_unique_per_mailbox_folder(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))


def test_migrations_build_exactly_the_declared_schema(tmp_path: Path) -> None:
    """Every change to tables.py needs its migration: alembic finds nothing to add."""
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with engine.connect() as conn:
        assert schema_drift(conn) == []


def test_upgrade_from_the_first_revision_keeps_the_data(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/kw.db")
    assert upgrade_from_0001(engine) == (7, ("SUP", 0))
    with engine.connect() as conn:
        indexes = {row[1] for row in conn.exec_driver_sql("PRAGMA index_list('outbox')")}
    assert "ix_outbox_case_id" in indexes
