"""`keepword stats`: the promise ledger per mailbox - did the team keep its word?"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection

from keepword.cli.common import now, reading, settings_from
from keepword.config import MailboxSettings, Settings
from keepword.domain.chase import BusinessClock
from keepword.domain.ledger import Ledger, Period, compute_ledger
from keepword.errors import KeepwordError
from keepword.pipeline.acknowledge import calendar_for
from keepword.store import promises as promise_store
from keepword.store import reports
from keepword.timefmt import moment, zone_of


def register(sub: argparse._SubParsersAction[Any]) -> None:
    stats = sub.add_parser("stats", help="the promise ledger: response times, promises kept")
    stats.add_argument("--mailbox", help="only this mailbox")
    stats.add_argument("--days", type=int, default=30, help="the period: the last N days")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=cmd_stats)


def _now() -> datetime:
    return now()


def ledgers(
    conn: Connection,
    settings: Settings,
    boxes: Sequence[MailboxSettings],
    *,
    since: datetime,
    until: datetime,
    now: datetime,
) -> list[Ledger]:
    """The ledger of each mailbox over [since, until), read from the store."""
    names = [b.name for b in boxes]
    clocks: dict[str, BusinessClock] = {b.name: calendar_for(settings, b) for b in boxes}
    made = promise_store.mailbox_promises(conn, names, made_since=since, made_until=until)
    return compute_ledger(
        reports.case_records(conn, names),
        made,
        reports.sent_actions(conn, names, since),
        period=Period(since, until),
        now=now,
        clocks=clocks,
    )


def cmd_stats(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    boxes = [b for b in settings.mailbox if args.mailbox in (None, b.name)]
    if not boxes:
        raise KeepwordError(f"no mailbox named {args.mailbox!r} in the configuration")
    if args.days < 1:
        raise KeepwordError("--days must be at least 1")
    now = _now()
    with reading(settings) as conn:
        found = ledgers(
            conn, settings, boxes, since=now - timedelta(days=args.days), until=now, now=now
        )
    if args.json:
        print(json.dumps([_as_json(ledger) for ledger in found], indent=2))
    else:
        Console().print(
            _table(found, args.days, zone_of(settings, boxes[0] if len(boxes) == 1 else None))
        )
    return 0


def _as_json(ledger: Ledger) -> dict[str, Any]:
    values = dataclasses.asdict(ledger)
    values["since"] = ledger.since.isoformat()
    values["until"] = ledger.until.isoformat()
    return values


def _minutes(value: float | None) -> str:
    if value is None:
        return "-"
    hours, minutes = divmod(round(value), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


ROWS: tuple[tuple[str, str], ...] = (
    ("cases", "cases opened"),
    ("answered", "answered"),
    ("median_first_response_minutes", "median first response (business)"),
    ("p90_first_response_minutes", "p90 first response (business)"),
    ("promises_made", "promises made"),
    ("promises_kept", "kept"),
    ("promises_broken", "broken"),
    ("promises_superseded", "superseded before breach"),
    ("promises_withdrawn", "withdrawn"),
    ("promises_open", "still open"),
    ("silent_breaches", "silent breaches (must be 0)"),
    ("breaches_held_back", "broken, update held by the rate limit"),
    ("team_targets_made", "team targets made"),
    ("team_targets_missed", "team targets missed"),
    ("customer_updates_sent", "customer updates sent"),
    ("reminders_sent", "reminders sent"),
    ("escalations_sent", "escalations sent"),
)


def _table(found: Sequence[Ledger], days: int, zone: ZoneInfo) -> Table:
    period = f"last {days} day{'s' if days != 1 else ''}"
    until = moment(found[0].until, zone) if found else "-"
    table = Table(title=f"Promise ledger, {period} (until {until})")
    table.add_column("")
    for ledger in found:
        table.add_column(ledger.mailbox, justify="right")
    for field, label in ROWS:
        cells = []
        for ledger in found:
            value = getattr(ledger, field)
            text = _minutes(value) if field.endswith("_minutes") else str(value)
            if field == "silent_breaches" and value:
                text = f"[bold red]{text}[/]"
            cells.append(text)
        table.add_row(label, *cells)
    return table
