"""Every lookup of stored mail by Message-ID is an index search, never a scan of the
mailbox's mail: the store's duplicate check and the mail triage finds referenced, as a
generated day of a shared inbox runs them (the identity index serves both, migration
0013)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from tests.unit.test_triage_batches import _inbox, _run

# A SELECT that filters the message table by Message-ID (an IN list).
_BY_MESSAGE_ID = re.compile(r"\bmessage\.message_id IN \(", re.IGNORECASE)


def test_lookups_by_message_id_search_an_index(tmp_path: Path) -> None:
    deliveries, passes = _inbox(0)
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and _BY_MESSAGE_ID.search(statement):
            seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        desk = _run(tmp_path, deliveries, passes, batch=50)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert len({statement for statement, _ in seen}) >= 2  # the store's, and triage's
    with desk.engine.connect() as conn:
        for statement, parameters in seen:
            plan = [
                row[3]
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
            on_message = [step for step in plan if re.search(r"\bmessage\b", step)]
            assert on_message, plan
            for step in on_message:
                assert "USING" in step and "INDEX" in step, (statement, plan)
                assert not step.startswith("SCAN"), (statement, plan)
