"""`keepword backtest` over a real SQLite store, and over the same history as a CSV.

The cases are written with the store functions; the CSV is what a team moving from
another help desk would export (local times without an offset, an unanswered case as
an empty cell). Both must give the same figures.
"""

from __future__ import annotations

import csv
import json
import random
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from keepword.cli import main
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.model import PromiseAudience, PromiseKind
from keepword.domain.predict import predict_window
from keepword.domain.promises import Promise
from keepword.store import history as history_store
from keepword.store import promises as promise_store
from tests.fixtures.reports import engine as engine  # the fixture
from tests.fixtures.reports import report_config, stored_case

BERLIN = ZoneInfo("Europe/Berlin")
FIRST = datetime(2026, 6, 1, 7, tzinfo=UTC)  # Monday 09:00 Berlin
DAYS = 100


def config(tmp_path: Path, engine: Engine) -> Path:
    return report_config(tmp_path, engine, timezone="Europe/Berlin")


def calendar() -> BusinessCalendar:
    from keepword.config import CalendarSettings

    return BusinessCalendar.from_settings(CalendarSettings(), "Europe/Berlin")


def history(seed: int = 5) -> list[tuple[datetime, datetime | None]]:
    """~8 cases a business day answered after ~2 business hours; a slow week in the
    middle; the last day's cases still open."""
    rng = random.Random(seed)
    cal = calendar()
    out: list[tuple[datetime, datetime | None]] = []
    for day in range(DAYS):
        morning = FIRST + timedelta(days=day)
        if not cal.is_open(morning):
            continue
        slow = 50 <= day < 57
        for _ in range(8):
            at = morning + timedelta(minutes=rng.uniform(0, 470))
            minutes = rng.lognormvariate(4.8, 0.5) * (6 if slow else 1)
            answered = cal.add(at, minutes)
            out.append((at, answered if day < DAYS - 1 else None))
    return sorted(out, key=lambda case: case[0])


def store(engine: Engine, cases: list[tuple[datetime, datetime | None]]) -> list[int]:
    ids = []
    with engine.begin() as conn:
        for n, (opened, answered) in enumerate(cases):
            customer = f"customer{n}@example.org"  # people, not one robot
            ids.append(stored_case(conn, "support", opened, answered, customer=customer))
    return ids


def write_csv(path: Path, cases: list[tuple[datetime, datetime | None]]) -> None:
    """As exported from a help desk: local wall-clock times, no offset."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["Ticket", "Created At", "First Response At"])
        for n, (opened, answered) in enumerate(cases, start=1):
            local = [
                t.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S.%f") if t else ""
                for t in (opened, answered)
            ]
            out.writerow([n, *local])


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, Any]]:
    assert main(argv) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_stored_history_and_csv_give_the_same_figures(
    tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = history()
    store(engine, cases)
    write_csv(tmp_path / "export.csv", cases)
    cfg = str(config(tmp_path, engine))
    common = ["--months", "2", "--compare", "24h,2bd", "--json"]
    from_store = run_json(capsys, ["--config", cfg, "backtest", *common])
    from_csv = run_json(
        capsys, ["--config", cfg, "backtest", "--csv", str(tmp_path / "export.csv"), *common]
    )
    assert from_store == from_csv
    overall = from_store[-1]
    assert overall["period"] == "all"
    assert overall["promises"] > 300
    assert 0.93 <= overall["kept"] <= 1.0
    assert [f["label"] for f in overall["fixed"]] == ["24h", "2bd"]
    assert overall["silent_breaches"] == 0
    months = [row["period"] for row in from_store[:-1]]
    assert months == sorted(months) and len(months) >= 2


def test_the_html_report_and_the_table(
    tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    store(engine, history())
    report = tmp_path / "report.html"
    cfg = str(config(tmp_path, engine))
    assert main(["--config", cfg, "backtest", "--html", str(report), "--compare", "1bd"]) == 0
    out = capsys.readouterr().out
    assert "keepword would have kept" in out and "“1bd” kept" in out and "all" in out
    root = ET.parse(report).getroot()
    ids = {f.get("id") for f in root.iter("{http://www.w3.org/1999/xhtml}figure")}
    assert ids == {"calibration", "promise-vs-actual", "distribution", "backlog"}


def test_a_csv_without_any_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPWORD_CONFIG", str(tmp_path / "missing.toml"))
    write_csv(tmp_path / "export.csv", history())
    rows = run_json(
        capsys,
        ["backtest", "--csv", str(tmp_path / "export.csv"), "--timezone", "Europe/Berlin",
         "--json"],
    )  # fmt: skip
    assert rows[-1]["promises"] > 300


def test_the_store_history_feeds_the_production_predictor(engine: Engine) -> None:
    """What the coordinator wires into acknowledging: store.history + predict_window."""
    cases = history()
    ids = store(engine, cases)
    now = cases[-1][0] + timedelta(minutes=5)
    with engine.begin() as conn:
        # one kept and one missed first-response promise on record
        for case_id, (opened, _) in zip(ids[:2], cases[:2], strict=True):
            promise_store.insert_promise(
                conn,
                Promise(
                    id=None,
                    case_id=case_id,
                    kind=PromiseKind.FIRST_RESPONSE,
                    audience=PromiseAudience.CUSTOMER,
                    made_at=opened,
                    due_at=opened + (timedelta(days=1) if case_id == ids[0] else timedelta()),
                ),
            )
        stored = history_store.response_history(conn, "support", FIRST - timedelta(days=1)).cases
        outcomes = history_store.first_response_outcomes(conn, "support", FIRST)
    assert [c.key for c in stored] == ids
    assert [(c.opened_at, c.first_response_at) for c in stored] == cases
    assert [o.answered_at for o in outcomes] == [cases[0][1], cases[1][1]]
    window = predict_window(stored, now, calendar(), _settings(), outcomes=outcomes)
    assert not window.is_default
    assert window.basis["calibration_kept"] == 1 and window.basis["calibration_missed"] == 1
    assert int(window.basis["cases_ahead"]) == 8  # the last day's cases, all still open


def _settings() -> Any:
    from keepword.config import PromiseSettings

    return PromiseSettings()


def test_the_shell_builds_the_mailbox_predictor(tmp_path: Path, engine: Engine) -> None:
    """promising.honest_window / update_window: what acknowledging and the chase call."""
    from keepword.config import load_config
    from keepword.pipeline.promising import honest_window, mailbox_predictor, update_window

    cases = history()
    ids = store(engine, cases)
    box = load_config(config(tmp_path, engine)).mailbox[0]
    now = cases[-1][0] + timedelta(minutes=5)
    with engine.begin() as conn:
        window = honest_window(conn, box, calendar(), now, exclude_case=ids[-1])
        predictor = mailbox_predictor(conn, box, calendar(), now)
    assert not window.is_default
    assert int(window.basis["cases_ahead"]) == 7  # the last day's other open cases
    assert window.due_at > now
    waiting = ids[-8]  # opened this morning, still open
    update = update_window(predictor, now, waiting, cases[-8][0])
    assert update.basis["method"] == "residual time given the wait so far"
    assert update.due_at > now
