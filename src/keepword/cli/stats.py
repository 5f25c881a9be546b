"""`keepword stats`: the promise ledger per mailbox - did the team keep its word?"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, and_, select

from keepword.acknowledging import calendar_for
from keepword.cli.common import engine_from, settings_from
from keepword.config import MailboxSettings, Settings
from keepword.domain.chase import BusinessClock
from keepword.domain.ledger import CaseRecord, Ledger, SentAction, compute_ledger
from keepword.domain.model import OutboxKind
from keepword.errors import KeepwordError
from keepword.store import promises as promise_store
from keepword.store.tables import case, outbox


def register(sub: argparse._SubParsersAction[Any]) -> None:
    stats = sub.add_parser("stats", help="the promise ledger: response times, promises kept")
    stats.add_argument("--mailbox", help="only this mailbox")
    stats.add_argument("--days", type=int, default=30, help="the period: the last N days")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=cmd_stats)


def _now() -> datetime:
    return datetime.now(UTC)


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
        _case_records(conn, names),
        made,
        _sent_actions(conn, names, since),
        since=since,
        until=until,
        now=now,
        clocks=clocks,
    )


def _case_records(conn: Connection, names: Sequence[str]) -> list[CaseRecord]:
    # Every live case: a promise of the period may belong to an older case.
    query = select(case.c.id, case.c.mailbox, case.c.opened_at, case.c.first_response_at).where(
        and_(case.c.mailbox.in_(list(names)), case.c.is_history.is_(False))
    )
    return [
        CaseRecord(row.mailbox, row.id, row.opened_at, row.first_response_at)
        for row in conn.execute(query)
    ]


def _sent_actions(conn: Connection, names: Sequence[str], since: datetime) -> list[SentAction]:
    # Updates revising a promise of the period are all queued after it was made.
    query = select(
        outbox.c.mailbox, outbox.c.case_id, outbox.c.kind, outbox.c.dedup_key, outbox.c.sent_at
    ).where(and_(outbox.c.mailbox.in_(list(names)), outbox.c.created_at >= since))
    return [
        SentAction(row.mailbox, row.case_id, OutboxKind(row.kind), row.dedup_key, row.sent_at)
        for row in conn.execute(query)
    ]


def cmd_stats(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    boxes = [b for b in settings.mailbox if args.mailbox in (None, b.name)]
    if not boxes:
        raise KeepwordError(f"no mailbox named {args.mailbox!r} in the configuration")
    if args.days < 1:
        raise KeepwordError("--days must be at least 1")
    now = _now()
    engine = engine_from(settings)
    try:
        with engine.connect() as conn:
            found = ledgers(
                conn, settings, boxes, since=now - timedelta(days=args.days), until=now, now=now
            )
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([_as_json(ledger) for ledger in found], indent=2))
    else:
        Console().print(_table(found, args.days))
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


def _table(found: Sequence[Ledger], days: int) -> Table:
    table = Table(title=f"Promise ledger, last {days} day{'s' if days != 1 else ''}")
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
