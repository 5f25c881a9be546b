"""`keepword status`: is every mailbox moving, and is anything about to break?"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, and_, func, select

from keepword.cli.common import engine_from, settings_from
from keepword.config import MailboxSettings
from keepword.domain.model import OutboxState, PromiseState
from keepword.store import outbox as outbox_store
from keepword.store.tables import case, folder_state, message, outbox, promise


@dataclass(frozen=True)
class FolderHealth:
    folder: str
    last_success_at: str | None
    last_error: str | None
    last_error_at: str | None


@dataclass(frozen=True)
class MailboxHealth:
    mailbox: str
    folders: list[FolderHealth]
    waiting_triage: int
    quarantined: int
    outbox_pending: int
    outbox_failed: int
    open_promises: int
    next_due: str | None
    overdue_promises: int
    outbox_unknown: int = 0  # may have gone out: held until the Sent folder tells
    sent_copies_missing: int = 0  # sent, copy to Sent failed: retried by the drain

    @property
    def healthy(self) -> bool:
        polled = all(f.last_success_at for f in self.folders)
        erring = any(
            f.last_error and (f.last_success_at or "") < (f.last_error_at or "")
            for f in self.folders
        )
        return polled and not erring and self.outbox_failed == 0 and self.overdue_promises == 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    status = sub.add_parser("status", help="per mailbox: last poll, errors, backlog, promises")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _count(conn: Connection, query: Any) -> int:
    return int(conn.execute(query).scalar() or 0)


def mailbox_health(conn: Connection, box: MailboxSettings, now: datetime) -> MailboxHealth:
    rows = conn.execute(select(folder_state).where(folder_state.c.mailbox == box.name)).all()
    folders = [
        FolderHealth(r.folder, _iso(r.last_success_at), r.last_error, _iso(r.last_error_at))
        for r in rows
    ]
    mine = message.c.mailbox == box.name
    queued = outbox.c.mailbox == box.name
    open_promise = and_(
        promise.c.state == PromiseState.OPEN.value,
        promise.c.case_id.in_(select(case.c.id).where(case.c.mailbox == box.name)),
    )
    next_due = conn.execute(select(func.min(promise.c.due_at)).where(open_promise)).scalar()
    return MailboxHealth(
        mailbox=box.name,
        folders=folders,
        waiting_triage=_count(
            conn, select(func.count()).where(and_(mine, message.c.triaged_at.is_(None)))
        ),
        quarantined=_count(conn, select(func.count()).where(and_(mine, message.c.quarantined))),
        outbox_pending=outbox_store.depth(conn, box.name),
        outbox_failed=_count(
            conn,
            select(func.count()).where(and_(queued, outbox.c.state == OutboxState.FAILED.value)),
        ),
        open_promises=_count(conn, select(func.count()).where(open_promise)),
        next_due=_iso(next_due),
        overdue_promises=_count(
            conn, select(func.count()).where(and_(open_promise, promise.c.due_at < now))
        ),
        outbox_unknown=outbox_store.unknown_outcomes(conn, box.name),
        sent_copies_missing=outbox_store.missing_sent_copies(conn, box.name),
    )


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = engine_from(settings)
    now = datetime.now(UTC)
    with engine.connect() as conn:
        report = [mailbox_health(conn, box, now) for box in settings.mailbox]
    if args.json:
        payload = [{**asdict(h), "healthy": h.healthy} for h in report]
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        _print(report)
    return 0 if all(h.healthy for h in report) else 1


def _print(report: list[MailboxHealth]) -> None:
    console = Console()
    for health in report:
        mark = "[green]ok[/green]" if health.healthy else "[red]attention[/red]"
        console.print(f"[bold]{health.mailbox}[/bold] {mark}")
        table = Table(show_header=True)
        for column in ("folder", "last good poll (UTC)", "last error"):
            table.add_column(column)
        for f in health.folders:
            error = f"{f.last_error_at}: {f.last_error}" if f.last_error else "-"
            table.add_row(f.folder, f.last_success_at or "never", error)
        console.print(table)
        console.print(
            f"  waiting for triage {health.waiting_triage} · quarantined {health.quarantined}"
            f" · outbox pending {health.outbox_pending}, failed {health.outbox_failed}"
            f" (outcome unknown {health.outbox_unknown},"
            f" Sent copies missing {health.sent_copies_missing})"
            f" · open promises {health.open_promises} (overdue {health.overdue_promises})"
            f", next due {health.next_due or '-'}"
        )
