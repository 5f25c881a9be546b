"""`keepword stats` over a real SQLite store: the ledger from stored cases, promises, outbox.

Cases and promises are written with the store functions (the scenarios in
test_chasing.py produce them through real mail); here the arithmetic and the output
are checked against rows whose outcome is known.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from sqlalchemy import Engine

from keepword.cli import main
from keepword.domain.model import PromiseAudience, PromiseKind, PromiseState
from keepword.domain.outbox_keys import update_key
from keepword.domain.promises import Promise, break_if_due, keep, supersede, withdraw
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store
from tests.fixtures import reports
from tests.fixtures.reports import engine as engine  # the fixture
from tests.fixtures.reports import report_config

MONDAY = datetime(2026, 11, 2, 9, tzinfo=UTC)  # business hours Mon-Fri 09-17 UTC
NOW = MONDAY + timedelta(days=4)  # Friday 09:00


def config(tmp_path: Path, engine: Engine) -> Path:
    return report_config(tmp_path, engine, ("support", "sales"))


def stored_case(
    engine: Engine, mailbox: str, opened: datetime, answered: datetime | None = None
) -> int:
    with engine.begin() as conn:
        return reports.stored_case(conn, mailbox, opened, answered, reference=mailbox[:2].upper())


def stored_promise(
    engine: Engine, case_id: int, made: datetime, due: datetime, **kw: Any
) -> Promise:
    value = Promise(
        id=None,
        case_id=case_id,
        kind=kw.pop("kind", PromiseKind.FIRST_RESPONSE),
        audience=kw.pop("audience", PromiseAudience.CUSTOMER),
        made_at=made,
        due_at=due,
    )
    with engine.begin() as conn:
        return replace(value, id=promise_store.insert_promise(conn, value))


def resolve(engine: Engine, value: Promise) -> None:
    with engine.begin() as conn:
        promise_store.update_state(conn, value)


def sent(engine: Engine, case_id: int, kind: str, key: str, at: datetime) -> None:
    with engine.begin() as conn:
        entry = outbox_store.OutboxEntry(
            "support", case_id, kind, key, ["x@example.com"], kind, b"x",
            message_id=f"<{key}@example.com>",
        )  # fmt: skip
        outbox_store.enqueue(conn, entry, at)
        row_id = max(r.id for r in outbox_store.pending(conn, at + timedelta(days=30), 1000))
        outbox_store.mark_sent(conn, row_id, at)


@pytest.fixture
def week(engine: Engine) -> dict[str, int]:
    """A week of the support mailbox with one of every outcome, and a quiet sales box."""
    h = timedelta(hours=1)
    # answered in 2 business hours, promise kept
    a = stored_case(engine, "support", MONDAY, MONDAY + 2 * h)
    resolve(engine, keep(stored_promise(engine, a, MONDAY, MONDAY + 8 * h), MONDAY + 2 * h))
    sent(engine, a, "reminder", f"reminder:case:{a}:promise:1:50", MONDAY + 1 * h)
    # revised in time (update before due), answered next day 10:00 (9 business hours)
    b = stored_case(engine, "support", MONDAY, MONDAY + 25 * h)
    old = stored_promise(engine, b, MONDAY, MONDAY + 8 * h)
    new = stored_promise(engine, b, MONDAY + 7 * h, MONDAY + 31 * h, kind=PromiseKind.UPDATE)
    assert new.id is not None and old.id is not None
    sent(engine, b, "customer_update", update_key(b, old.id), MONDAY + 7 * h)
    sent(engine, b, "escalation", f"escalation:case:{b}:promise:{old.id}", MONDAY + 7 * h)
    resolve(engine, supersede(old, new.id, MONDAY + 7 * h))
    resolve(engine, keep(new, MONDAY + 25 * h))
    # nobody answered and nobody told the customer: a silent breach, recorded
    c = stored_case(engine, "support", MONDAY + 24 * h)
    due = MONDAY + 32 * h
    resolve(engine, break_if_due(stored_promise(engine, c, MONDAY + 24 * h, due), NOW))
    # closed without a reply: withdrawn
    d = stored_case(engine, "support", MONDAY + 48 * h)
    promised = stored_promise(engine, d, MONDAY + 48 * h, MONDAY + 56 * h)
    resolve(engine, withdraw(promised, MONDAY + 49 * h, "closed"))
    # an internal target, still open past due at NOW: a missed team target
    stored_promise(
        engine, a, MONDAY + 48 * h, MONDAY + 50 * h, audience=PromiseAudience.TEAM,
        kind=PromiseKind.NEXT_RESPONSE,
    )  # fmt: skip
    return {"a": a, "b": b, "c": c, "d": d}


def run_stats(
    tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    capsys.readouterr()
    with time_machine.travel(NOW, tick=False):
        code = main(["--config", str(config(tmp_path, engine)), "stats", *args])
    return code, capsys.readouterr().out


def test_json_ledger_counts_every_outcome(
    week: dict[str, int], engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_stats(tmp_path, engine, capsys, "--json", "--days", "7")
    assert code == 0
    ledgers = {row["mailbox"]: row for row in json.loads(out)}
    assert set(ledgers) == {"sales", "support"}
    support = ledgers["support"]
    assert support["cases"] == 4 and support["answered"] == 2
    assert support["median_first_response_minutes"] == pytest.approx(5.5 * 60)  # 2 h, 9 h
    assert support["p90_first_response_minutes"] == pytest.approx(9 * 60)
    assert support["promises_made"] == 5  # a, b and its update, c, d
    assert support["promises_kept"] == 2
    assert support["promises_superseded"] == 1
    assert support["promises_broken"] == 1 and support["silent_breaches"] == 1
    assert support["promises_withdrawn"] == 1
    assert support["team_targets_made"] == 1 and support["team_targets_missed"] == 1
    assert support["reminders_sent"] == 1 and support["escalations_sent"] == 1
    assert support["customer_updates_sent"] == 1
    assert ledgers["sales"]["cases"] == 0 and ledgers["sales"]["silent_breaches"] == 0


def test_period_and_mailbox_filter(
    week: dict[str, int], engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the last day only (Thursday 09:00 - Friday 09:00): nothing was opened or made then
    code, out = run_stats(tmp_path, engine, capsys, "--json", "--days", "1", "--mailbox", "support")
    assert code == 0
    [support] = json.loads(out)
    assert support["mailbox"] == "support"
    assert support["cases"] == 0 and support["promises_made"] == 0


def test_table_shows_silent_breaches(
    week: dict[str, int], engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_stats(tmp_path, engine, capsys, "--days", "7")
    assert code == 0
    assert "Promise ledger, last 7 days" in out
    line = next(row for row in out.splitlines() if "silent breaches" in row)
    assert "1" in line.split("silent breaches (must be 0)")[1]
    median = next(row for row in out.splitlines() if "median first response" in row)
    assert "5 h 30 min" in median


def test_unknown_mailbox_is_an_error(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with time_machine.travel(NOW, tick=False):
        code = main(["--config", str(config(tmp_path, engine)), "stats", "--mailbox", "nope"])
    assert code == 1
    assert "no mailbox named 'nope'" in capsys.readouterr().err


def test_a_promise_still_open_past_due_counts_as_broken(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case_id = stored_case(engine, "support", MONDAY)
    stored_promise(engine, case_id, MONDAY, MONDAY + timedelta(hours=8))
    code, out = run_stats(tmp_path, engine, capsys, "--json")
    [_sales, support] = json.loads(out)
    assert code == 0 and support["promises_open"] == 0
    assert support["promises_broken"] == 1 and support["silent_breaches"] == 1
    with engine.connect() as conn:  # reading the ledger never writes
        [still] = promise_store.promises_of_case(conn, case_id)
    assert still.state is PromiseState.OPEN


def test_a_breach_the_rate_limit_held_back_is_counted_apart_not_silent(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case_id = stored_case(engine, "support", MONDAY)
    value = stored_promise(engine, case_id, MONDAY, MONDAY + timedelta(hours=8))
    resolve(engine, break_if_due(value, MONDAY + timedelta(hours=9), held=True))
    code, out = run_stats(tmp_path, engine, capsys, "--json")
    [_sales, support] = json.loads(out)
    assert code == 0 and support["promises_broken"] == 1
    assert (support["breaches_held_back"], support["silent_breaches"]) == (1, 0)
    code, out = run_stats(tmp_path, engine, capsys)
    line = next(row for row in out.splitlines() if "held by the rate limit" in row)
    assert "1" in line.split("held by the rate limit")[1]
