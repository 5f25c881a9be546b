"""`keepword backtest`: what keepword would have promised on your own history, and kept.

Replays the mailbox's stored history (or a CSV exported from another help desk) through
the production predictor, arrival by arrival, seeing only what was known then, and
compares it with fixed promises (`--compare 24h,2bd`). Prints one row per month and
one for the whole period; `--html FILE` writes a self-contained report with charts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from keepword.backtest.csvfile import read_history
from keepword.backtest.replay import Replay, replay
from keepword.backtest.summary import Figures, FixedPromise, duration_text, monthly, parse_fixed
from keepword.cli.common import add_command, engine_from, settings_from
from keepword.config import (
    CalendarSettings,
    ChaseSettings,
    MailboxSettings,
    PromiseSettings,
    Settings,
)
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.predict import HistoryCase
from keepword.errors import ConfigError, KeepwordError
from keepword.store import history as history_store

#: Replays of at least this many cases show a progress bar (on a terminal).
PROGRESS_FROM = 2000


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = add_command(
        sub,
        "backtest",
        help="replay your history: what keepword would have promised, and kept",
        description=__doc__,
    )
    p.add_argument("--mailbox", help="the mailbox (default: the first configured)")
    p.add_argument("--csv", type=Path, help="read the history from this CSV instead of the store")
    p.add_argument(
        "--timezone", help="for CSV times without an offset (default: the mailbox calendar's)"
    )
    p.add_argument("--months", type=int, default=6, help="evaluate the last N months (6)")
    p.add_argument(
        "--since", type=date.fromisoformat, help="evaluate arrivals from this date (YYYY-MM-DD)"
    )
    p.add_argument(
        "--compare", default="24h", help="fixed promises to compare, e.g. 24h,2bd,4bh (24h)"
    )
    p.add_argument("--quantile", type=float, help="the promise quantile (default: configured)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_backtest)


@dataclasses.dataclass(frozen=True)
class _Setup:
    name: str
    calendar: BusinessCalendar
    promise: PromiseSettings
    chase: ChaseSettings


def _setup(args: argparse.Namespace) -> tuple[_Setup, Settings | None]:
    """The mailbox's calendar and promise settings; for a CSV without any configuration
    keepword's defaults (Mon-Fri 09:00-17:00 in --timezone, else UTC)."""
    try:
        settings = settings_from(args)
    except ConfigError:
        if args.csv is None:
            raise
        zone = args.timezone or "UTC"
        calendar = BusinessCalendar.from_settings(CalendarSettings(timezone=zone), zone)
        return _Setup(args.csv.name, calendar, PromiseSettings(), ChaseSettings()), None
    box = _mailbox(settings, args.mailbox)
    calendar = BusinessCalendar.from_settings(box.calendar, settings.keepword.timezone)
    return _Setup(box.name, calendar, box.promise, box.chase), settings


def _mailbox(settings: Settings, name: str | None) -> MailboxSettings:
    if not settings.mailbox:
        raise KeepwordError("no mailbox configured")
    if name is None:
        return settings.mailbox[0]
    for box in settings.mailbox:
        if box.name == name:
            return box
    raise KeepwordError(f"no mailbox named {name!r} in the configuration")


def _history(
    args: argparse.Namespace, setup: _Setup, settings: Settings | None
) -> list[HistoryCase]:
    if args.csv is not None:
        zone = ZoneInfo(args.timezone) if args.timezone else setup.calendar.zone
        return read_history(args.csv, zone)
    assert settings is not None
    engine = engine_from(settings)
    try:
        with engine.connect() as conn:
            return history_store.response_history(
                conn, setup.name, datetime(1970, 1, 1, tzinfo=UTC)
            ).cases
    finally:
        engine.dispose()


def evaluation_start(
    cases: Sequence[HistoryCase], months: int, since: date | None, zone: ZoneInfo
) -> datetime:
    """From `since`, else the last `months` months of arrivals (all of them if shorter)."""
    if since is not None:
        return datetime.combine(since, datetime.min.time(), zone)
    first = min(c.opened_at for c in cases)
    last = max(c.opened_at for c in cases)
    return max(first, last - timedelta(days=round(months * 30.44)))


@contextmanager
def _progress(total: int, console: Console) -> Iterator[Callable[[int, int], None] | None]:
    if total < PROGRESS_FROM or not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("replay", total=total)

        def advance(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield advance


def cmd_backtest(args: argparse.Namespace) -> int:
    setup, settings = _setup(args)
    promise = setup.promise
    if args.quantile is not None:
        if not 0 < args.quantile < 1:
            raise KeepwordError(f"--quantile {args.quantile} is not between 0 and 1")
        promise = promise.model_copy(update={"quantile": args.quantile})
    if args.html is not None:
        from keepword.backtest.report import require_matplotlib

        require_matplotlib()  # before a long replay, not after
    try:
        fixed = [parse_fixed(part) for part in args.compare.split(",") if part.strip()]
    except ValueError as exc:
        raise KeepwordError(str(exc)) from None
    cases = _history(args, setup, settings)
    if not cases:
        raise KeepwordError(f"no stored cases in mailbox {setup.name!r} to replay")
    start = evaluation_start(cases, args.months, args.since, setup.calendar.zone)
    err = Console(stderr=True)
    with _progress(len(cases), err) as progress:
        result = replay(
            cases, setup.calendar, promise, start=start, chase=setup.chase, progress=progress
        )
    rows = monthly(result, setup.calendar, fixed)
    if args.html is not None:
        from keepword.backtest.report import render_html

        title = f"keepword backtest: {setup.name}"
        args.html.write_text(
            render_html(result, rows, fixed, setup.calendar, title=title), encoding="utf-8"
        )
    if args.json:
        print(json.dumps([_json_row(r) for r in rows], indent=2))
    else:
        _print(rows, fixed, result, args.html)
    return 0


def _json_row(row: Figures) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()
    }


def _both(business: float, wall: float) -> str:
    return f"{duration_text(business)} ({duration_text(wall, business=False)})"


def _print(
    rows: Sequence[Figures], fixed: Sequence[FixedPromise], result: Replay, html: Path | None
) -> None:
    from keepword.backtest.report import verdict

    console = Console()
    table = Table(
        title=f"Backtest at p{result.quantile * 100:g} (business time; wall clock in brackets)"
    )
    for column in (
        "month",
        "promises",
        "kept",
        "median promise",
        "median actual",
        "best fixed, same kept",
    ):
        table.add_column(column, justify="left" if column == "month" else "right")
    for f in fixed:
        table.add_column(f"“{f.label}” kept", justify="right")
    table.add_column("updates kept", justify="right")
    for row in rows:
        table.add_row(
            row.period,
            str(row.promises),
            f"{row.kept:.1%}" if math.isfinite(row.kept) else "-",
            _both(row.median_promise, row.median_promise_wall),
            _both(row.median_actual, row.median_actual_wall),
            _both(row.best_fixed, row.best_fixed_wall),
            *(f"{f.kept:.1%}" if math.isfinite(f.kept) else "-" for f in row.fixed),
            f"{row.updates_kept:.1%} of {row.updates}" if row.updates else "-",
        )
    console.print(table)
    console.print(verdict(rows[-1], fixed))
    if html is not None:
        console.print(f"Report: {html}")
    sys.stdout.flush()
