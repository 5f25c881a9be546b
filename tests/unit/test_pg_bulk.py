"""store.pg_bulk: which statements PostgreSQL gets as one COPY or one UPDATE .. FROM
unnest(..), planned from the SQL SQLAlchemy compiles (no server needed; the rows they
write are compared with SQLAlchemy's in tests/integration/test_postgres.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.sql.compiler import SQLCompiler

from keepword.store import bulk
from keepword.store.cases import _UPDATE as SAVE_CASE
from keepword.store.pg_bulk import plan_copy, plan_unnest
from keepword.store.tables import case_event, message, message_content
from keepword.store.triage_state import _TRIAGED
from tests.fixtures.bulk_rows import TRIAGED, message_rows

PG = PGDialect_psycopg()
KEYS = tuple(message_rows("m", 1)[0])


def compiled(statement: object, keys: tuple[str, ...] = ()) -> SQLCompiler:
    done = statement.compile(dialect=PG, column_keys=list(keys), for_executemany=True)  # type: ignore[attr-defined]
    assert isinstance(done, SQLCompiler)
    return done


def test_an_insert_of_bound_values_is_one_binary_copy_of_the_same_columns() -> None:
    plan = bulk._plan(PG, insert(message), KEYS)
    assert plan is not None and plan.copy is not None
    assert plan.copy.sql.startswith(
        "COPY message (mailbox, message_id, "
    ) and plan.copy.sql.endswith(") FROM STDIN (FORMAT BINARY)")
    assert '"references"' in plan.copy.sql  # a reserved word, quoted as in the INSERT
    types = dict(zip(plan.copy.binds, plan.copy.types, strict=True))
    assert types["to_addrs"] == "json" and types["date"] == "timestamptz"
    assert types["size"] == "int4" and types["quarantined"] == "bool"
    [row] = plan.parameters(message_rows("m", 1))
    assert isinstance(row, tuple) and len(row) == len(plan.copy.binds)
    # The defaults of the columns left out are in the rows too, as the INSERT binds them.
    fewer = message_rows("m", 1, defaults=True)
    plain = bulk._plan(PG, insert(message), tuple(fewer[0]))
    assert plain is not None and plain.copy is not None and "is_history" not in fewer[0]
    [row] = plain.parameters(fewer)
    assert row[plain.copy.binds.index("is_history")] is False
    content = bulk._plan(PG, insert(message_content), ("message_pk", "raw", "body_text"))
    assert content is not None and content.copy is not None
    assert content.copy.types == ("int4", "bytea", "text")


@pytest.mark.parametrize(
    "statement",
    [
        insert(case_event).values(at=func.now()),  # a value that is SQL
        postgresql.insert(case_event).on_conflict_do_nothing(),
        insert(case_event).returning(case_event.c.id),
    ],
    ids=["sql-value", "on-conflict", "returning"],
)
def test_an_insert_with_more_than_bound_values_is_no_copy(statement: object) -> None:
    keys = ("case_id", "kind", "actor", "detail", "message_pk")
    assert plan_copy(PG, statement, compiled(statement, keys).string) is None


def test_nothing_is_planned_for_another_database() -> None:
    lite = sqlite.dialect()
    plan = bulk._plan(lite, insert(message), KEYS)
    assert plan is not None and plan.copy is None and plan.unnest is None


def test_an_update_by_primary_key_is_one_update_from_arrays() -> None:
    plan = plan_unnest(PG, _TRIAGED, compiled(_TRIAGED))
    assert plan is not None and plan.key == "pk"
    assert plan.sql.startswith('UPDATE message SET kind=v."v_kind", kind_reason=v."v_reason"')
    assert "%(v_at)s::TIMESTAMP WITH TIME ZONE[]" in plan.sql
    assert plan.sql.endswith('WHERE message.id = v."pk"')
    saved = plan_unnest(PG, SAVE_CASE, compiled(SAVE_CASE))
    assert saved is not None and saved.key == "b_id"
    assert saved.sql.endswith('WHERE "case".id = v."b_id" AND "case".version = v."b_version"')
    reserved = plan_unnest(PG, TRIAGED, compiled(TRIAGED))
    assert reserved is not None and '"references"=v."v_refs"' in reserved.sql


@pytest.mark.parametrize(
    "statement",
    [
        update(message).where(message.c.mailbox == bindparam("b")).values(kind=bindparam("k")),
        update(message)
        .where(message.c.id == bindparam("pk"))
        .values(triage_attempts=message.c.triage_attempts + 1),
        update(message).where(message.c.id == bindparam("pk")).values(headers=bindparam("h")),
        update(message)
        .where(message.c.id == bindparam("pk"))
        .values(kind=bindparam("k"), kind_reason=bindparam("k")),
    ],
    ids=["not-by-key", "sql-value", "json", "bound-twice"],
)
def test_any_other_update_is_made_row_by_row(statement: object) -> None:
    assert plan_unnest(PG, statement, compiled(statement)) is None
