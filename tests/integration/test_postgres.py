"""keepword's store on a real PostgreSQL (a private server from tests/fixtures/postgres.py).

The schema promises nothing SQLite-only: here the migrations run on PostgreSQL and must
build exactly tables.py, datetimes keep their zone, and the real flows (ingestion from
Dovecot, triage, acknowledgement, chasing and sending through aiosmtpd) run with the
engine on PostgreSQL instead of SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, StatementError

from keepword.store.db import make_engine, migrate, open_store, table_names
from keepword.store.tables import folder_state, metadata

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    store = open_store(postgres_url)
    yield store
    store.dispose()


# -- schema --------------------------------------------------------------------------------


def test_migrations_build_exactly_the_declared_schema_on_postgres(postgres_url: str) -> None:
    engine = open_store(postgres_url)
    try:
        assert engine.dialect.name == "postgresql"
        assert set(metadata.tables) <= table_names(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        migrate(engine)  # again: nothing to do
        with engine.connect() as conn:
            again = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert again == [(head,)]
    finally:
        engine.dispose()


def test_upgrade_from_the_first_revision_keeps_the_data_on_postgres(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        migrate(engine, "0001")
        with engine.begin() as conn:
            conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX", last_uid=7))
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(select(folder_state.c.last_uid)).scalar_one() == 7
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_datetimes_round_trip_as_aware_utc(engine: Engine) -> None:
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX", last_poll_at=berlin))
        got = conn.execute(select(folder_state.c.last_poll_at)).scalar_one()
        # Stored as timestamptz: the server itself knows the instant, whatever its TimeZone.
        conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")
        seen = conn.exec_driver_sql("SELECT last_poll_at FROM folder_state").scalar_one()
    assert got == berlin and got.tzinfo == UTC
    assert seen == berlin


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            insert(folder_state).values(mailbox="m", folder="I", last_poll_at=datetime(2026, 1, 1))
        )


def test_folder_cursor_is_unique_per_mailbox_folder(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))
