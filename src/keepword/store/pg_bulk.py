"""Many rows of one plain INSERT or UPDATE sent to PostgreSQL as one statement.

psycopg's executemany sends every row as its own statement: PostgreSQL binds it, starts
an executor, writes the row and ends it, ~30-60 us of the server's CPU a row, on the
machine that also fetches and parses. A 20,000-message history writes ~155,000 rows
(messages, their contents and locations; triage's cases, events, correspondents and the
messages' verdicts). Here:

- an INSERT goes as one binary COPY: the same rows as one stream of typed values, about
  half the server's CPU (a quarter less on the mails' raw bytes, which COPY's text
  format would double as hex);
- an UPDATE of rows by primary key goes as one `UPDATE .. FROM unnest(arrays)`: one
  executor for the batch. Only when each row names another key: two changes of one row
  are applied one after the other, as executemany does (the second sees the first).

Only a statement that is exactly bound values is sent this way (`col = %(name)s`, no SQL
expression, no ON CONFLICT, no RETURNING), with columns of the types below; anything
else goes to psycopg's executemany as before. The values are those store.bulk would have
bound, so what is stored is the same (tests/integration/test_postgres.py compares every
kind of value), constraints, foreign keys and column defaults hold as they did, and the
rowcount is the rows changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Dialect, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update

# PostgreSQL's type (as SQLAlchemy writes it in DDL, without a length) -> the binary
# format psycopg writes for it in a COPY. A JSON value is psycopg's Json wrapper
# (SQLAlchemy's bind processor makes it), which the json dumper serialises.
BINARY_TYPES = {
    "SMALLINT": "int2",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "BOOLEAN": "bool",
    "VARCHAR": "varchar",
    "TEXT": "text",
    "BYTEA": "bytea",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSON": "json",
}
# The types an UPDATE's arrays may hold (psycopg sends a list of them as an array).
ARRAY_TYPES = frozenset(BINARY_TYPES) - {"JSON", "BYTEA"}

_INSERT = re.compile(
    r"INSERT INTO (?P<table>\S+) \((?P<columns>[^()]*)\) VALUES \((?P<values>.*)\)"
)
_UPDATE = re.compile(r"UPDATE (?P<table>\S+) SET (?P<sets>.*) WHERE (?P<where>.*)")
_COLUMN = r'(?:\w+|"[^"]+")'
_BIND = re.compile(r"%\((?P<name>\w+)\)s(?:::[A-Z][A-Z ]*(?:\(\d+\))?)?")
_SET = re.compile(rf"(?P<column>{_COLUMN})=(?P<bind>.+)")
_CONDITION = re.compile(rf"(?P<table>{_COLUMN})\.(?P<column>{_COLUMN}) = (?P<bind>.+)")


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """The COPY for one INSERT: its SQL, each column's binary type, and the name of the
    bound value each column takes, in the COPY's column order."""

    sql: str
    types: tuple[str, ...]
    binds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnnestPlan:
    """The one UPDATE for many rows: its SQL, the bound values (each an array), and the
    one among them that names the row (the primary key)."""

    sql: str
    binds: tuple[str, ...]
    key: str


def plan_copy(dialect: Dialect, statement: object, sql: str) -> CopyPlan | None:
    """The COPY that writes what `sql` (the INSERT compiled from `statement` for
    executemany) writes, or None where this module does not apply."""
    if not _psycopg(dialect) or not isinstance(statement, Insert):
        return None
    found = _INSERT.fullmatch(sql)
    if found is None or not isinstance(statement.table, Table):
        return None
    columns = found["columns"].split(", ")
    binds = [_bind(value) for value in found["values"].split(", ")]
    if len(columns) != len(binds) or not all(re.fullmatch(_COLUMN, c) for c in columns):
        return None
    by_name = {column.name: column for column in statement.table.columns}
    types = []
    for name in columns:
        column = by_name.get(name.strip('"'))
        binary = BINARY_TYPES.get(_ddl(column.type, dialect)) if column is not None else None
        if binary is None:
            return None
        types.append(binary)
    names = tuple(bind for bind in binds if bind is not None)
    if len(names) != len(columns):
        return None  # a value that is SQL, not a bound parameter
    copy = f"COPY {found['table']} ({found['columns']}) FROM STDIN (FORMAT BINARY)"
    return CopyPlan(copy, tuple(types), names)


def plan_unnest(dialect: Dialect, statement: object, compiled: SQLCompiler) -> UnnestPlan | None:
    """The one UPDATE .. FROM unnest(..) that makes the changes of `compiled` (an UPDATE
    whose first condition is the table's primary key), or None."""
    if not _psycopg(dialect) or not isinstance(statement, Update):
        return None
    table = statement.table
    found = _UPDATE.fullmatch(compiled.string)
    if found is None or not isinstance(table, Table) or len(table.primary_key) != 1:
        return None
    sets = [_SET.fullmatch(s) for s in found["sets"].split(", ")]
    conditions = [_CONDITION.fullmatch(c) for c in found["where"].split(" AND ")]
    assigned = [(m["column"], _bind(m["bind"])) for m in sets if m is not None]
    compared = [(f"{m['table']}.{m['column']}", _bind(m["bind"])) for m in conditions if m]
    names = tuple(name for _, name in (*assigned, *compared) if name is not None)
    if len(names) != len(sets) + len(conditions) or len(set(names)) != len(names):
        return None  # a part that is not `column = one parameter of its own`
    [primary] = table.primary_key
    if compared[0][0] != f"{found['table']}.{primary.name}":
        return None
    originals = {compiled.escaped_bind_names.get(n, n): n for n in compiled.binds}
    types = [_ddl(compiled.binds[originals[name]].type, dialect) for name in names]
    if not all(t in ARRAY_TYPES for t in types):
        return None
    arrays = ", ".join(f"%({name})s::{t}[]" for name, t in zip(names, types, strict=True))
    listed = ", ".join(f'"{name}"' for name in names)
    # Every part comes from SQLAlchemy's own compiled SQL, matched whole above.
    sql = (
        f"UPDATE {found['table']} SET "  # noqa: S608
        + ", ".join(f'{column}=v."{name}"' for column, name in assigned)
        + f" FROM unnest({arrays}) AS v({listed}) WHERE "
        + " AND ".join(f'{column} = v."{name}"' for column, name in compared)
    )
    return UnnestPlan(sql, names, names[len(assigned)])


def _psycopg(dialect: Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def _bind(value: str) -> str | None:
    """The name of the parameter `value` is exactly, None if it is anything else."""
    found = _BIND.fullmatch(value)
    return found["name"] if found is not None else None


def _ddl(type_: Any, dialect: Dialect) -> str:
    """The type's name in PostgreSQL's DDL, without a length: VARCHAR(320) -> VARCHAR."""
    return str(type_.compile(dialect=dialect)).split("(")[0].strip()


def copy_rows(conn: Connection, plan: CopyPlan, rows: Sequence[Sequence[Any]]) -> int:
    """Write `rows` (one value per column of `plan`, as bound for the INSERT) in this
    connection's transaction; errors raised as SQLAlchemy raises the INSERT's. The rows
    written: all of them, or an error."""
    if not conn.in_transaction():
        conn.begin()  # SQLAlchemy's autobegin: the caller's commit() writes them
    dialect = conn.dialect
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    conn.dispatch.before_cursor_execute(conn, cursor, plan.sql, rows, None, True)
    try:
        with cursor.copy(plan.sql) as copy:
            copy.set_types(list(plan.types))
            for row in rows:
                copy.write_row(row)
    except Exception as exc:
        lost = isinstance(exc, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            exc, conn.connection.dbapi_connection, cursor
        )
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            plan.sql,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from exc
    finally:
        cursor.close()
    conn.dispatch.after_cursor_execute(conn, cursor, plan.sql, rows, None, True)
    return len(rows)


def unnest_rows(
    conn: Connection, plan: UnnestPlan, rows: Sequence[Mapping[str, Any]]
) -> CursorResult[Any] | None:
    """Make the changes of `rows` (each as bound for the UPDATE) in one statement; None
    (nothing done) if two of them name the same row."""
    if len({row[plan.key] for row in rows}) != len(rows):
        return None
    arrays = {name: [row[name] for row in rows] for name in plan.binds}
    return conn.exec_driver_sql(plan.sql, arrays)
