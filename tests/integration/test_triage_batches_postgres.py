"""Triage in batches on PostgreSQL decides what one transaction a message decides.

A batch writes the cases it opens and saves at its end (store.deferred: a round trip
each otherwise), their ids taken ahead, some at a time: on PostgreSQL from the sequence,
on SQLite past the highest (the batch holds the write lock). tests/unit/
test_triage_batches.py holds the same comparisons on SQLite, where the stores agree id
for id; here a case's id may skip numbers the batch took ahead and did not use, so
cases are compared in the order they were opened. The write-order tests below run on
both stores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Table, select

import tests.unit.test_triage_batches as batches
from keepword.domain.cases import CaseState, Event, EventKind
from keepword.domain.model import CaseStatus
from keepword.errors import StaleCaseError
from keepword.pipeline import triage as triage_module
from keepword.store import cases as case_store
from keepword.store.db import open_store, write_transaction
from keepword.store.deferred import deferring
from keepword.store.tables import case, case_correspondent, case_event, message, outbox, promise
from tests.fixtures.postgres import Postgres
from tests.fixtures.statements import recorded, recorded_rows

pytestmark = pytest.mark.integration

_TABLES: dict[str, Table] = {
    "message": message,
    "case": case,
    "case_event": case_event,
    "case_correspondent": case_correspondent,
    "promise": promise,
}


@pytest.fixture(autouse=True)
def _retry_without_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = triage_module.TRIAGE_RETRY
    monkeypatch.setattr(
        triage_module, "TRIAGE_RETRY", batches._MidwayRetry(policy.first, policy.cap)
    )


def _columns(name: str) -> list[str]:
    if name == "outbox":
        return [c.name for c in outbox.c if c.name not in batches.PER_INSTALLATION]
    return list(_TABLES[name].c.keys())


# A case's id within an outbox row's dedup key (domain.outbox_keys).
_KEYED_CASE = re.compile(r"(?<=^ack:)\d+|(?<=^note:)\d+|(?<=:case:)\d+")


def _cases_in_opening_order(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything triage wrote (batches._snapshot), each case id (also within an outbox
    key) replaced by the case's place in the order the cases were opened."""
    dumped = batches._snapshot(engine)
    place = {row[0]: n for n, row in enumerate(dumped["case"], start=1)}

    def renumbered(name: str, column: str, value: Any) -> Any:
        if column == "case_id" or (name, column) == ("case", "id"):
            return place.get(value, value)
        if (name, column) == ("outbox", "dedup_key"):
            return _KEYED_CASE.sub(lambda found: f"#{place[int(found.group())]}", value)
        return value

    return {
        name: [
            tuple(renumbered(name, c, v) for c, v in zip(_columns(name), row, strict=True))
            for row in rows
        ]
        for name, rows in dumped.items()
    }


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
@pytest.mark.parametrize("seed", range(3))
def test_batches_on_postgres_decide_what_one_message_at_a_time_decides(
    postgres: Postgres, tmp_path: Path, seed: int, history: bool, caplog: pytest.LogCaptureFixture
) -> None:
    deliveries, passes = batches._inbox(seed)
    stores = {}
    for name, size in (("one", 1), ("batched", 7)):
        url = postgres.create_database(f"kw_batches_{seed}_{int(history)}_{name}")
        desk = batches._run(
            tmp_path / name, deliveries, passes, batch=size, history=history, database_url=url
        )
        try:
            stores[name] = _cases_in_opening_order(desk.engine)
        finally:
            desk.engine.dispose()
    assert "rolled back" not in caplog.text  # no batch went again one message at a time
    for table, rows in stores["one"].items():
        assert stores["batched"][table] == rows, table
    assert len(stores["batched"]["case"]) >= 10
    assert bool(stores["batched"]["outbox"]) is not history  # imported mail sends nothing


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keepword.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = open_store(store_url)
    yield engine
    engine.dispose()


def _case(at: datetime, customer: str) -> CaseState:
    return CaseState(
        id=None, mailbox="support", reference="KW", status=CaseStatus.NEW, opened_at=at,
        updated_at=at, customer=customer, subject="Help",
    )  # fmt: skip


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = select(case.c.reference, case.c.subject, case.c.version).order_by(case.c.id)
        return [tuple(row) for row in conn.execute(query)]


def _ann(engine: Engine, at: datetime) -> CaseState:
    """A case of before the batch (KW-1)."""
    with engine.begin() as conn:
        return case_store.save_case(conn, _case(at, "ann@example.org"), prefix="KW")


def _bob_opens(conn: Connection, at: datetime) -> CaseState:
    """A case the batch opens (KW-2)."""
    numbers = case_store.CaseNumbers()
    return case_store.save_case(conn, _case(at, "bob@example.org"), prefix="KW", numbers=numbers)


def test_a_batch_writes_its_cases_at_its_end_and_refuses_a_stale_save(engine: Engine) -> None:
    """A batch's cases wait for its end: opened (an id taken ahead), saved again, and a
    case of before saved, all in one flush, each case before the saves and events that
    name it. A save on a case changed meanwhile fails the batch as it failed alone."""
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    before = _ann(engine, at)
    with recorded(engine) as statements, write_transaction(engine) as conn, deferring(conn):
        new = _bob_opens(conn, at)
        case_store.add_events(conn, new.id or 0, [Event(EventKind.OPENED, at, "t", "")])
        case_store.save_case(conn, replace(new, subject="Help, again"))
        case_store.save_case(conn, replace(before, subject="Ann's help"))
        waited = list(statements)
    assert new.id is not None and new.version == 0 and new.reference == "KW-2"
    assert not [s for s in waited if '"case" (' in s or 'UPDATE "case"' in s]
    assert _stored(engine) == [("KW-1", "Ann's help", 1), ("KW-2", "Help, again", 1)]

    with engine.begin() as conn:  # `keepword assign` meanwhile
        case_store.save_case(conn, replace(before, subject="Assigned", version=1))
    with pytest.raises(StaleCaseError), write_transaction(engine) as conn, deferring(conn):
        case_store.save_case(conn, replace(before, subject="Stale", version=1))
    assert _stored(engine)[0] == ("KW-1", "Assigned", 2)


def test_a_case_saved_again_in_its_batch_is_written_once(engine: Engine) -> None:
    """A case saved again while the batch's row for it still waits folds into that row:
    a new case is one INSERT at its last version, a case of before one UPDATE from the
    version it was read at; a save on an older version still fails the batch."""
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    before = _ann(engine, at)
    with recorded_rows(engine) as sent, write_transaction(engine) as conn, deferring(conn):
        new = _bob_opens(conn, at)
        for subject in ("Help, again", "Help, thrice"):
            new = case_store.save_case(conn, replace(new, subject=subject))
            before = case_store.save_case(conn, replace(before, subject=f"Ann: {subject}"))
    writes = [(s[:15], rows) for s, rows in sent if '"case" (' in s or 'UPDATE "case" ' in s]
    assert writes == [('INSERT INTO "ca', 1), ('UPDATE "case" S', 1)]
    assert new.version == 2 and before.version == 2
    assert _stored(engine) == [("KW-1", "Ann: Help, thrice", 2), ("KW-2", "Help, thrice", 2)]

    with pytest.raises(StaleCaseError), write_transaction(engine) as conn, deferring(conn):
        saved = case_store.save_case(conn, replace(before, subject="Once more"))
        case_store.save_case(conn, replace(saved, subject="Folded"))
        case_store.save_case(conn, replace(before, subject="Stale"))  # on version 2
    assert _stored(engine)[0] == ("KW-1", "Ann: Help, thrice", 2)


def test_a_batch_opens_more_cases_than_it_takes_ids_for_at_once(engine: Engine) -> None:
    """Ids are taken some at a time: the batch that needs more takes more, and every
    case it opened is written under its own id, after the ids of before."""
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    count = 2 * case_store.CASE_IDS_AT_ONCE + 3
    with engine.begin() as conn:
        first = case_store.save_case(conn, _case(at, "first@example.org"), prefix="KW")
    opened: list[CaseState] = []
    for batch in (count, 2):  # the second batch's ids come after the first's
        with write_transaction(engine) as conn, deferring(conn):
            numbers = case_store.CaseNumbers()
            ids_before = [c.id or 0 for c in opened] or [first.id or 0]
            new = [
                case_store.save_case(
                    conn,
                    _case(at, f"c{len(opened) + n}@example.org"),
                    prefix="KW",
                    numbers=numbers,
                )
                for n in range(batch)
            ]
        assert min(c.id or 0 for c in new) > max(ids_before)
        opened += new
    ids = [c.id for c in opened]
    assert len(set(ids)) == count + 2
    with engine.connect() as conn:
        stored = {row.id: row.customer for row in conn.execute(select(case.c.id, case.c.customer))}
    assert len(stored) == count + 3
    assert all(stored[c.id or 0] == c.customer for c in opened)


def test_a_batch_takes_the_ids_of_the_cases_it_may_open_at_once(engine: Engine) -> None:
    """Told how many cases it may open (one a message: pipeline.triage), a batch takes
    their ids in one statement as its first case opens, not CASE_IDS_AT_ONCE at a time;
    a second batch's ids follow the first's unused ones, and every case is stored."""
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    most = 3 * case_store.CASE_IDS_AT_ONCE
    opened: list[CaseState] = []
    for batch in (most - 5, 4):
        with write_transaction(engine) as conn, deferring(conn), recorded(engine) as sent:
            case_store.expect_openings(conn, most)
            numbers = case_store.CaseNumbers()
            new = [
                case_store.save_case(
                    conn, _case(at, f"c{len(opened) + n}@example.org"), numbers=numbers
                )
                for n in range(batch)
            ]
        if engine.dialect.name == "postgresql":
            assert sum("nextval" in statement for statement in sent) == 1
        assert min(c.id or 0 for c in new) > max((c.id or 0 for c in opened), default=0)
        opened += new
    with engine.connect() as conn:
        stored = {row.id: row.customer for row in conn.execute(select(case.c.id, case.c.customer))}
    assert len(stored) == most - 1 == len({c.id for c in opened})
    assert all(stored[c.id or 0] == c.customer for c in opened)
