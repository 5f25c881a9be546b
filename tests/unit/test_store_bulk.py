"""store.bulk: many rows of one statement written as SQLAlchemy writes them, with the
per-row work done once per statement."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import StatementError

from keepword.store import bulk
from keepword.store.bulk import execute_many
from keepword.store.db import open_store
from keepword.store.tables import case, folder_state, message
from tests.fixtures.bulk_rows import INSERT, TRIAGED, message_rows, written_both_ways
from tests.fixtures.statements import recorded


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_store(f"sqlite:///{tmp_path}/kw.db")


def test_bulk_writes_every_value_as_sqlalchemy_does(engine: Engine) -> None:
    plain, fast = written_both_ways(engine)
    assert len(plain) == 40 and plain == fast
    # The values were processed, not passed through: dates as UTC text, JSON as text.
    dates = {row[12] for row in fast}
    assert "2026-03-28 23:01:00.000000" in dates  # 01:01 at +02:00
    assert all(isinstance(row[9], str) for row in fast)


def test_bulk_fills_in_the_columns_defaults_as_sqlalchemy_does(engine: Engine) -> None:
    plain, fast = written_both_ways(engine, defaults=True)
    assert len(plain) == 40 and plain == fast
    assert {row[8] for row in fast} == {"[]"}  # to_addrs: its default, list(), as JSON


def test_a_batch_is_one_statement_with_the_drivers_executemany(engine: Engine) -> None:
    with recorded(engine) as statements, engine.begin() as conn:
        execute_many(conn, INSERT, message_rows("m", 30))
    assert len(statements) == 1 and statements[0].startswith("INSERT INTO message")
    with engine.connect() as conn:
        assert conn.execute(select(message.c.id).where(message.c.mailbox == "m")).all()


def test_rowcount_counts_the_rows_changed(engine: Engine) -> None:
    """store.deferred holds a case's save to its version by the rowcount."""
    with engine.begin() as conn:
        execute_many(conn, INSERT, message_rows("m", 20))
        pks = conn.execute(select(message.c.id)).scalars().all()
        changes = [{"pk": pk, "v_kind": "x", "v_refs": None, "v_at": None} for pk in pks]
        changes += [{"pk": -1, "v_kind": "x", "v_refs": None, "v_at": None}] * 3
        assert execute_many(conn, TRIAGED, changes) == 20


def test_a_value_its_type_refuses_is_a_statement_error(engine: Engine) -> None:
    rows = message_rows("m", 20)
    rows[7]["stored_at"] = datetime(2026, 1, 1)  # naive
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        execute_many(conn, INSERT, rows)
    with engine.connect() as conn:
        assert conn.execute(select(message.c.id)).first() is None


def test_what_it_does_not_plan_for_goes_to_sqlalchemy(engine: Engine) -> None:
    """RETURNING, and fewer rows than are worth a plan: SQLAlchemy's own executemany."""
    returning = insert(folder_state).returning(folder_state.c.id)
    assert bulk._plan(engine.dialect, returning, ("mailbox", "folder", "last_uid")) is None
    rows = [{"mailbox": "m", "folder": f"F{n}", "last_uid": n} for n in range(20)]
    with engine.begin() as conn:
        assert execute_many(conn, returning, rows) == 20
        assert len(conn.execute(select(folder_state.c.id)).all()) == 20
        few = message_rows("few", bulk.MIN_ROWS - 1)
        execute_many(conn, INSERT, few)
        assert len(conn.execute(select(message.c.id).where(message.c.mailbox == "few")).all()) == (
            bulk.MIN_ROWS - 1
        )


def test_a_plan_is_made_once_per_statement_and_keys(engine: Engine) -> None:
    keys = tuple(message_rows("m", 1)[0])
    first = bulk._plan(engine.dialect, INSERT, keys)
    assert first is not None and bulk._plan(engine.dialect, INSERT, keys) is first
    other = insert(message)  # another statement: its own plan, never another's
    assert bulk._plan(engine.dialect, other, keys) is not first
    assert keys[-1] == "quarantined"  # a column with a default: without it, the default
    fewer = bulk._plan(engine.dialect, INSERT, keys[:-1])
    assert fewer is not None and fewer is not first
    assert [(v.key, v.fixed) for v in fewer.values if v.name == "quarantined"] == [(None, False)]


def test_plans_of_statements_built_per_call_do_not_pile_up(engine: Engine) -> None:
    """A long-running daemon keeps at most MAX_PLANS plans (and their statements)."""
    keys = tuple(message_rows("m", 1)[0])
    for _ in range(bulk.MAX_PLANS + 10):
        assert bulk._plan(engine.dialect, insert(message), keys) is not None
    assert len(bulk._PLANS) <= bulk.MAX_PLANS


def test_a_name_bound_twice_goes_to_sqlalchemy_on_a_positional_driver(engine: Engine) -> None:
    """SQLite's parameters are positional: a name bound twice is left to SQLAlchemy, which
    repeats its value, and the rows are written as without this module."""
    bump = (
        update(case)
        .where(case.c.version == bindparam("v"))
        .values(owner_changes=bindparam("v"), subject=bindparam("s"))
    )
    assert bulk._plan(engine.dialect, bump, ("v", "s")) is None
    with engine.begin() as conn:
        assert execute_many(conn, bump, [{"v": n, "s": "x"} for n in range(10)]) == 0
