"""Many rows of one INSERT or UPDATE, with the driver's executemany and Python's own work
done once per statement instead of once per row.

SQLAlchemy's `conn.execute(statement, rows)` builds, for every row, the full parameter
set of the compiled statement and then runs each value through its type's processor:
~20 us a row, ~1.7 s of the main thread's GIL for a 20,000-message history (its
messages, contents, locations, and the events, triage records and cases of triage), on
the process that fetches, stores and triages. Here the statement is compiled once per
dialect and set of keys, its processors and column defaults looked up once, and each
row becomes the tuple (or dict) the driver takes: the same SQL, the same values, the
same rowcount, the same cursor events.

Statements that need more per row than that (RETURNING, an `onupdate`, a SQL default
run per row, expanding parameters) go to SQLAlchemy as before. On PostgreSQL the rows
of a plain INSERT go as one COPY, and those of an UPDATE by primary key as one
statement (store.pg_bulk): not a statement a row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Dialect, Executable
from sqlalchemy.exc import StatementError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

from keepword.store.pg_bulk import (
    CopyPlan,
    UnnestPlan,
    copy_rows,
    plan_copy,
    plan_unnest,
    unnest_rows,
)

# Below this many rows SQLAlchemy's own path costs as little, and keeps its checks.
MIN_ROWS = 8

_Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Value:
    """Where one parameter's value comes from: the row's `key`, or a column default
    (`fixed`, or `make()` each row); then `processor`, the type's bind processor (run on
    None too, as SQLAlchemy does: JSON makes it 'null')."""

    name: str
    key: str | None
    fixed: Any = None
    make: Callable[[], Any] | None = None
    processor: _Processor | None = None

    def constant(self) -> tuple[bool, Any]:
        """(True, the value as sent) for a default the same every row: a fixed one, or one
        made anew whose processed form cannot be changed (a JSON default's text)."""
        if self.key is not None:
            return False, None
        made = self.make() if self.make is not None else self.fixed
        sent = made if self.processor is None else self.processor(made)
        immutable = sent is None or isinstance(sent, (str, bytes, int, float))
        return (self.make is None or immutable), sent


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    values: tuple[_Value, ...]
    of: Callable[[Mapping[str, Any]], Any]  # a row's parameters as the driver takes them
    # PostgreSQL: the same rows as one statement (store.pg_bulk).
    copy: CopyPlan | None = None
    unnest: UnnestPlan | None = None

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        of = self.of
        return [of(row) for row in rows]


def _row_function(values: Sequence[_Value], positional: bool) -> Callable[[Mapping[str, Any]], Any]:
    """One function that turns a row into its parameters, generated as dataclasses
    generates __init__: each value read, processed and placed inline, no Python call a
    value but its processor's (a call a value was ~1 s of a 20,000-message import)."""
    env: dict[str, Any] = {}
    sources = []
    for n, value in enumerate(values):
        fixed, sent = value.constant()
        if fixed:
            env[f"c{n}"] = sent
            source = f"c{n}"
        else:
            if value.key is None:  # a column default made anew for every row
                env[f"m{n}"] = value.make
                source = f"m{n}()"
            else:
                source = f"row[{value.key!r}]"
            if value.processor is not None:
                env[f"p{n}"] = value.processor
                source = f"p{n}({source})"
        sources.append(source if positional else f"{value.name!r}: {source}")
    listed = ", ".join(sources)
    body = f"({listed},)" if positional else f"{{{listed}}}"
    exec(f"def of(row):\n    return {body}\n", env)  # noqa: S102 - names and keys as repr()
    made: Callable[[Mapping[str, Any]], Any] = env["of"]
    return made


_PLANS: dict[tuple[int, str, tuple[str, ...]], tuple[Executable, _Plan | None]] = {}
# The statements are module constants (a few dozen plans); a caller that built one per
# call would otherwise grow this for as long as the daemon runs.
MAX_PLANS = 256


def execute_many(conn: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> int:
    """`conn.execute(statement, rows)`, with the per-row work done once (see above): the
    rows it changed (its rowcount). Every row must have the keys of the first."""
    if len(rows) < MIN_ROWS:
        return _rowcount(conn.execute(statement, list(rows)))
    plan = _plan(conn.dialect, statement, tuple(rows[0]))
    if plan is None:
        return _rowcount(conn.execute(statement, list(rows)))
    try:
        parameters = plan.parameters(rows)
    except Exception as exc:  # a value its type refuses: as SQLAlchemy reports it
        raise StatementError(str(exc), plan.sql, None, exc) from exc
    if plan.copy is not None:
        return copy_rows(conn, plan.copy, parameters)
    if plan.unnest is not None:
        made = unnest_rows(conn, plan.unnest, parameters)
        if made is not None:
            return _rowcount(made)
    return _rowcount(conn.exec_driver_sql(plan.sql, parameters))


def _rowcount(result: CursorResult[Any]) -> int:
    count = result.rowcount
    result.close()
    return count


def _plan(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> _Plan | None:
    # Keyed by the statement's identity, the statement kept alive with its plan: the
    # statements given here are module constants, built once.
    memo = (id(statement), dialect.name, keys)
    found = _PLANS.get(memo)
    if found is not None and found[0] is statement:
        return found[1]
    plan = _make_plan(dialect, statement, keys)
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[memo] = (statement, plan)
    return plan


def _make_plan(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> _Plan | None:
    if not isinstance(statement, UpdateBase):
        return None
    # As for executemany: a single row's INSERT would return its new id (PostgreSQL's
    # implicit RETURNING), which sent every insert there back to SQLAlchemy's path.
    compiled = statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    assert isinstance(compiled, SQLCompiler)
    if compiled.effective_returning or compiled.update_prefetch:
        return None
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None
    if any(b.expanding for b in compiled.binds.values()):
        return None
    defaults = {c.key: c for c in compiled.insert_prefetch}
    names = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
    if names is None:
        return None
    values = []
    for name in dict.fromkeys(names):  # a name bound twice is one key of a dict
        value = _value(dialect, compiled, name, keys, defaults)
        if value is None:
            return None
        values.append(value)
    if compiled.positional and len(values) != len(names):
        return None  # a positional name bound twice: not worth handling here
    of = _row_function(values, compiled.positional)
    copy = plan_copy(dialect, statement, compiled.string)
    named = {value.name: value for value in values}
    if copy is not None and set(copy.binds) == set(named):
        # The rows as COPY takes them: the same values, in its columns' order.
        of = _row_function([named[name] for name in copy.binds], positional=True)
    else:
        copy = None
    unnest = plan_unnest(dialect, statement, compiled)
    return _Plan(compiled.string, tuple(values), of, copy, unnest)


def _value(
    dialect: Dialect,
    compiled: SQLCompiler,
    name: str,
    keys: tuple[str, ...],
    defaults: Mapping[str, Any],
) -> _Value | None:
    """Where parameter `name` comes from; None if from nowhere this module handles."""
    bind = compiled.binds[name]
    processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
    # The driver's name for it (one with characters its paramstyle cannot carry is
    # escaped in the SQL, and so in the parameters).
    escaped = compiled.escaped_bind_names.get(name, name)
    if name in keys:
        return _Value(escaped, name, processor=processor)
    column = defaults.get(name)
    default = getattr(column, "default", None)
    if default is not None and default.is_scalar:
        return _Value(escaped, None, fixed=default.arg, processor=processor)
    if default is not None and default.is_callable:
        made = default.arg  # SQLAlchemy's wrapper: takes the execution context
        return _Value(escaped, None, make=lambda: made(None), processor=processor)
    if bind.value is not None and not bind.required:
        return _Value(escaped, None, fixed=bind.value, processor=processor)
    return None
