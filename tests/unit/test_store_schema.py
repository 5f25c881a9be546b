from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import DateTime, insert, select
from sqlalchemy.exc import IntegrityError, StatementError

from keepword.errors import StoreError
from keepword.store.db import (
    MIGRATIONS,
    WAL_CHECKPOINT_BYTES,
    head_revision,
    known_revisions,
    make_engine,
    migrate,
    open_store,
    stored_revision,
    table_names,
)
from keepword.store.messages import load_facts, raw_message
from keepword.store.outbox import OutboxRow
from keepword.store.tables import folder_state, metadata, outbox
from tests.fixtures.schema import schema_drift, upgrade_from_0001, upgrade_mail_from_0011


def test_migration_creates_every_table_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state/kw.db"
    engine = open_store(url)
    assert set(metadata.tables) <= table_names(engine)
    open_store(url)  # second run: nothing to do, no error
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_the_wal_is_copied_into_the_database_every_64_mib_not_every_4(tmp_path: Path) -> None:
    """SQLite's default checkpoints the WAL once it passes 4 MiB, and writes it again from
    its start; keepword's connections let it grow to WAL_CHECKPOINT_BYTES first."""
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    mebibyte = bytes(range(256)) * 4096
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE filler (b BLOB)")
        conn.commit()
        for _ in range(12):  # 12 MiB in 12 commits
            conn.exec_driver_sql("INSERT INTO filler VALUES (?)", (mebibyte,))
            conn.commit()
        assert (tmp_path / "kw.db-wal").stat().st_size > 12 * 1024 * 1024
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_CHECKPOINT_BYTES


def test_every_field_of_an_outbox_row_is_read_from_its_column() -> None:
    assert {f.name for f in fields(OutboxRow)} <= set(outbox.c.keys())


def test_datetimes_round_trip_as_aware_utc(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX", last_poll_at=berlin))
        got = conn.execute(select(folder_state.c.last_poll_at)).scalar_one()
    assert got == berlin and got.tzinfo == UTC


def test_sqlite_text_is_read_as_the_default_chain_reads_it(tmp_path: Path) -> None:
    """UtcDateTime reads SQLite's text in one call; it gives what DateTime's own processor
    and process_result_value give: text SQLite wrote itself (CURRENT_TIMESTAMP, no
    fraction), microseconds, NULL."""
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    stored = ["2026-03-29 01:30:00", "2026-03-29 01:30:00.000250", "2026-12-31T23:59:59.5", None]
    with engine.begin() as conn:
        for n, text in enumerate(stored):
            conn.exec_driver_sql(
                "INSERT INTO folder_state (mailbox, folder, last_uid, history_done, last_poll_at)"
                " VALUES (?, ?, 0, 0, ?)",
                ("m", f"F{n}", text),
            )
        conn.exec_driver_sql(
            "UPDATE folder_state SET last_poll_at = CURRENT_TIMESTAMP WHERE folder = 'F0'"
        )
        got = conn.execute(select(folder_state.c.last_poll_at).order_by(folder_state.c.folder))
        read = list(got.scalars())
        raw = [
            r[0]
            for r in conn.exec_driver_sql("SELECT last_poll_at FROM folder_state ORDER BY folder")
        ]
    column = folder_state.c.last_poll_at.type
    default = DateTime().dialect_impl(engine.dialect).result_processor(engine.dialect, None)
    assert default is not None
    expected = [column.process_result_value(default(text), engine.dialect) for text in raw]
    assert read == expected and read[3] is None
    assert all(at.tzinfo == UTC for at in read[:3])
    assert read[1] == datetime(2026, 3, 29, 1, 30, 0, 250, tzinfo=UTC)
    assert abs(read[0] - datetime.now(UTC)) < timedelta(minutes=5)


def test_sqlite_text_is_written_as_the_default_chain_writes_it(tmp_path: Path) -> None:
    """UtcDateTime writes SQLite's text in one call; it stores what process_bind_param and
    DateTime's own processor store, so old rows and new compare and sort alike: other
    zones, no microseconds, a year below 1000 (a mail's broken Date)."""
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    values = [
        datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-11, minutes=-30))),
        datetime(1, 1, 1, 12, tzinfo=UTC),
    ]
    with engine.begin() as conn:
        for n, value in enumerate(values):
            conn.execute(
                insert(folder_state).values(mailbox="m", folder=f"F{n}", last_poll_at=value)
            )
        raw = [
            r[0]
            for r in conn.exec_driver_sql("SELECT last_poll_at FROM folder_state ORDER BY folder")
        ]
    column = folder_state.c.last_poll_at.type
    default = DateTime().dialect_impl(engine.dialect).bind_processor(engine.dialect)
    assert default is not None
    assert raw == [default(column.process_bind_param(v, engine.dialect)) for v in values]
    assert raw[2] == "0999-01-02 14:34:05.000006"


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


def test_the_upgrade_moves_every_mail_out_of_the_message_row(tmp_path: Path) -> None:
    """Migration 0012: the bytes and text move to message_content, byte for byte, and
    the message row (updated by triage) keeps none of it."""
    mails = {1: (b"Subject: a\r\n\r\nfirst\r\n", "first"), 7: (b"\x00\xff" * 5000, "")}
    engine = upgrade_mail_from_0011(make_engine(f"sqlite:///{tmp_path}/kw.db"), mails)
    with engine.connect() as conn:
        assert {pk: raw_message(conn, pk) for pk in mails} == {pk: m[0] for pk, m in mails.items()}
        assert [f.body_text for f in load_facts(conn, [1, 7])] == ["first", ""]
        columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info('message')")}
        assert schema_drift(conn) == []
    assert not {"raw", "body_text"} & columns


def test_a_failed_upgrade_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """The whole upgrade is one transaction, DDL included: a migration that fails after
    its CREATE TABLE (here 0012's DROP COLUMN, refused for a view that reads the column)
    leaves no table behind, so the next start can run it again."""
    engine = make_engine(f"sqlite:///{tmp_path}/kw.db")
    migrate(engine, "0011")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW sizes AS SELECT length(raw) AS n FROM message")
    with pytest.raises(StoreError, match="cannot migrate"):
        migrate(engine)
    assert "message_content" not in table_names(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0011"
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP VIEW sizes")
    migrate(engine)
    assert "message_content" in table_names(engine)


def test_the_revisions_read_from_the_file_names_are_alembics() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert head_revision() == scripts.get_current_head()
    assert known_revisions() == {script.revision for script in scripts.walk_revisions()}
    # Each migration's file is named after its revision (what head_revision relies on).
    for script in scripts.walk_revisions():
        assert script.path is not None and Path(script.path).name.startswith(script.revision + "_")


def test_a_store_at_the_head_is_opened_without_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path}/kw.db"
    engine = make_engine(url)
    migrate(engine, "0011")
    upgrades: list[str] = []
    real_upgrade = command.upgrade

    def counted(config: object, revision: str) -> None:
        upgrades.append(revision)
        real_upgrade(config, revision)  # type: ignore[arg-type]

    monkeypatch.setattr(command, "upgrade", counted)
    migrate(engine)  # 0011 -> head: alembic
    open_store(url)  # at the head: one query
    with engine.connect() as conn:
        assert stored_revision(conn) == head_revision()
    assert upgrades == ["head"]
    engine.dispose()


def test_a_new_store_has_no_revision(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/kw.db")
    with engine.connect() as conn:
        assert stored_revision(conn) is None
    engine.dispose()


def test_keepword_check_knows_a_store_at_the_head_and_one_newer_than_itself(
    tmp_path: Path,
) -> None:
    """`keepword check` (store.health) names the store's revision against the migrations
    this keepword ships: up to date at the head; refused when a newer keepword wrote it."""
    from sqlalchemy import text

    from keepword.store.health import check_store

    url = f"sqlite:///{tmp_path}/kw.db"
    open_store(url).dispose()
    current = check_store(url)
    assert current.ok and f"schema up to date ({head_revision()})" in current.detail
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    newer = check_store(url)
    assert not newer.ok
    assert f"schema 9999 is newer than this keepword knows ({head_revision()})" in newer.detail
