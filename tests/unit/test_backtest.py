"""The backtest: replay, the monthly figures, the CSV reader and the HTML report."""

from __future__ import annotations

import csv
import io
import math
import random
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from keepword.backtest.csvfile import HistoryFileError, read_rows
from keepword.backtest.replay import replay
from keepword.backtest.report import CHARTS, render_html
from keepword.backtest.summary import figures, monthly, parse_fixed
from keepword.config import PromiseSettings
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import HistoryCase, quantile_of

BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = BusinessCalendar(BERLIN, {d: [(time(9), time(17))] for d in range(5)})
START = datetime(2026, 1, 5, 8, tzinfo=UTC)  # Monday 09:00 Berlin


def team(days: int = 120, seed: int = 3) -> list[HistoryCase]:
    """~12 cases a business day, answered after a lognormal 2 business hours or so."""
    rng = random.Random(seed)
    cases: list[HistoryCase] = []
    day = START
    for _ in range(days):
        if OFFICE.is_open(day):
            for _ in range(12):
                at = day + timedelta(minutes=rng.uniform(0, 470))
                minutes = rng.lognormvariate(4.8, 0.6)
                cases.append(HistoryCase(at, OFFICE.add(at, minutes), key=len(cases)))
        day += timedelta(days=1)
    return sorted(cases, key=lambda c: c.opened_at)


@pytest.fixture(scope="module")
def replayed() -> tuple[list[HistoryCase], object]:
    cases = team()
    return cases, replay(cases, OFFICE, PromiseSettings(), start=START + timedelta(days=30))


# -- fixed promises -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes", "business"),
    [("24h", 1440, False), ("3d", 4320, False), ("90m", 90, False), ("2bd", 960, True),
     ("4bh", 240, True), (" 1.5 h ", 90, False)],
)  # fmt: skip
def test_fixed_promises(text: str, minutes: float, business: bool) -> None:
    fixed = parse_fixed(text)
    assert (fixed.minutes, fixed.business) == (minutes, business)


def test_a_fixed_promise_in_business_time_skips_the_weekend() -> None:
    friday = datetime(2026, 1, 9, 15, tzinfo=UTC)  # 16:00 Berlin
    assert parse_fixed("2bh").due(OFFICE, friday) == datetime(2026, 1, 12, 9, tzinfo=UTC)
    assert parse_fixed("2h").due(OFFICE, friday) == friday + timedelta(hours=2)


def test_an_unreadable_fixed_promise_says_what_it_wants() -> None:
    with pytest.raises(ValueError, match="24h"):
        parse_fixed("soon")


# -- replay ---------------------------------------------------------------------------


def test_only_arrivals_from_the_start_are_promised(replayed: tuple) -> None:
    cases, result = replayed
    start = START + timedelta(days=30)
    assert all(r.promised == (r.opened_at >= start) for r in result.records)
    assert len(result.records) == len(cases)


def test_the_replay_keeps_about_the_stated_share(replayed: tuple) -> None:
    _, result = replayed
    overall = figures("all", result.promised, result.updates, OFFICE)
    assert overall.kept == pytest.approx(0.97, abs=0.025)
    assert overall.silent_breaches == 0
    # A two-hour team is promised hours, not the day a fixed promise would take.
    assert 60 <= overall.median_promise <= 8 * 60
    # No queue here to condition on, so in business time it is about the best fixed
    # promise (plus rounding); on the customer's clock far shorter: a fixed time must
    # cover Friday evening's weekend on Tuesday morning too.
    assert overall.median_promise <= 1.15 * overall.best_fixed
    assert overall.median_promise_wall < overall.best_fixed_wall / 2


def test_promises_see_only_the_past() -> None:
    """Changing what happens after an arrival does not change its promise."""
    cases = team(60)
    start = START + timedelta(days=30)
    cut = cases[len(cases) * 2 // 3].opened_at
    changed = [
        c if c.opened_at < cut else c._replace(first_response_at=c.opened_at + timedelta(days=9))
        for c in cases
    ]
    a = replay(cases, OFFICE, PromiseSettings(), start=start)
    b = replay(changed, OFFICE, PromiseSettings(), start=start)
    for x, y in zip(a.records, b.records, strict=True):
        if x.opened_at <= cut and x.promised:
            assert (x.minutes, x.due_at) == (y.minutes, y.due_at)


def test_a_slow_case_gets_an_update_before_its_due_time() -> None:
    cases = team(60)
    start = START + timedelta(days=30)
    slow = next(i for i, c in enumerate(cases) if c.opened_at >= start + timedelta(days=3))
    cases[slow] = cases[slow]._replace(first_response_at=cases[slow].opened_at + timedelta(days=8))
    result = replay(cases, OFFICE, PromiseSettings(), start=start)
    record = result.records[slow]
    assert record.kept is False and record.updated and not record.silent_breach
    updates = [u for u in result.updates if u.case == slow]
    assert updates[0].made_at < record.due_at < updates[0].due_at
    assert updates[0].waited_minutes > 0
    # each update is followed: the chain reaches past the answer or is kept
    assert updates[-1].kept is True


def test_progress_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    cases = team(40)
    replay(
        cases, OFFICE, PromiseSettings(), progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (len(cases), len(cases))


# -- figures --------------------------------------------------------------------------


def test_monthly_rows_and_the_whole_period(replayed: tuple) -> None:
    _, result = replayed
    fixed = [parse_fixed("24h"), parse_fixed("1bd")]
    rows = monthly(result, OFFICE, fixed)
    assert rows[-1].period == "all"
    assert [r.period for r in rows[:-1]] == sorted(r.period for r in rows[:-1])
    assert sum(r.promises for r in rows[:-1]) == rows[-1].promises
    overall = rows[-1]
    judged = [r for r in result.promised if r.kept is not None]
    actual = [r.actual_minutes for r in judged]
    assert overall.best_fixed == quantile_of(actual, overall.kept)
    # the best fixed promise in hindsight is kept exactly as often as keepword's
    assert sum(a <= overall.best_fixed for a in actual) / len(actual) >= overall.kept
    one_day = sum(
        r.answered_at <= OFFICE.add(r.opened_at, 480) for r in judged if r.answered_at
    ) / len(judged)
    assert overall.fixed[1].kept == pytest.approx(one_day)


def test_unanswered_cases_count_as_endless_waits() -> None:
    at = START
    cases = [HistoryCase(at + timedelta(minutes=i), None, key=i) for i in range(10)]
    later = at + timedelta(days=10)  # the history goes on: their default promises broke
    result = replay([*cases, HistoryCase(later, later + timedelta(hours=1), key=10)], OFFICE,
                    PromiseSettings(), start=at)  # fmt: skip
    row = figures("all", result.promised[:10], result.updates, OFFICE)
    assert row.promises == 10
    assert row.kept == 0.0
    assert math.isinf(row.median_actual)
    assert row.updates > 0 and row.updates_kept == 0.0


def test_promises_the_history_cannot_judge_are_left_out() -> None:
    cases = [HistoryCase(START + timedelta(minutes=i), None, key=i) for i in range(10)]
    result = replay(cases, OFFICE, PromiseSettings())
    assert all(r.kept is None for r in result.promised)
    assert figures("all", result.promised, result.updates, OFFICE).promises == 0


# -- CSV ------------------------------------------------------------------------------


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_csv_with_offsets_local_times_and_unanswered() -> None:
    cases = read_rows(
        rows_of(
            "opened_at,first_response_at,kind\n"
            "2026-01-05T09:00:00+01:00,2026-01-05T11:30:00+01:00,new\n"
            "2026-01-05 10:00,,reopened\n"
            "\n"
            "2026-01-05T09:30:00Z,2026-01-05 12:00:00,\n"
        ),
        BERLIN,
    )
    assert [c.kind for c in cases] == ["new", "reopened", "new"]
    assert cases[0].first_response_at == datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    assert cases[1].opened_at == datetime(2026, 1, 5, 9, tzinfo=UTC)  # Berlin local
    assert cases[1].first_response_at is None
    assert cases[2].opened_at == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def test_csv_column_names_of_other_help_desks() -> None:
    cases = read_rows(
        rows_of("Number,Created At,First Response At\n7,2026-01-05 09:00,2026-01-05 10:00\n"),
        BERLIN,
    )
    assert cases[0].opened_at == datetime(2026, 1, 5, 8, tzinfo=UTC)


def test_csv_errors_name_the_line() -> None:
    with pytest.raises(HistoryFileError, match="first_response_at"):
        read_rows(rows_of("opened_at,closed_at\n2026-01-05 09:00,\n"), BERLIN)
    with pytest.raises(HistoryFileError, match="line 3"):
        read_rows(rows_of("opened_at,first_response_at\n2026-01-05 09:00,\nyesterday,\n"), BERLIN)
    with pytest.raises(HistoryFileError, match="empty"):
        read_rows([], BERLIN)


# -- HTML report ----------------------------------------------------------------------

XHTML = "{http://www.w3.org/1999/xhtml}"
SVG = "{http://www.w3.org/2000/svg}"


def test_the_report_is_well_formed_and_carries_every_chart(replayed: tuple) -> None:
    _, result = replayed
    fixed = [parse_fixed("24h"), parse_fixed("2bd")]
    rows = monthly(result, OFFICE, fixed)
    document = render_html(result, rows, fixed, OFFICE, title="keepword backtest: support")
    root = ET.fromstring(document.encode())  # raises unless well-formed XML
    assert root.tag == f"{XHTML}html"
    figures_found = {f.get("id"): f for f in root.iter(f"{XHTML}figure")}
    assert set(figures_found) == set(CHARTS)
    for name, figure in figures_found.items():
        svg = figure.find(f"{SVG}svg")
        assert svg is not None, name
        assert svg.get("aria-label") == name
        assert len(list(svg.iter())) > 20, f"{name} chart is empty"
    table = root.find(f".//{XHTML}table")
    assert table is not None
    assert len(table.findall(f".//{XHTML}tbody/{XHTML}tr")) == len(rows)
    text = "".join(root.itertext())
    assert "keepword would have kept" in text and "“24h” kept" in text
    # self-contained: nothing to fetch
    assert "<script" not in document
    assert 'src="http' not in document and "@import" not in document
