"""`keepword status`: is every mailbox moving, and is anything about to break?"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Connection

from keepword.cli.common import now as clock_now
from keepword.cli.common import reading, settings_from
from keepword.cli.instances import print_instances
from keepword.config import MailboxSettings
from keepword.domain.owners import away_now, roster_for
from keepword.store import away as away_store
from keepword.store import leases, reports
from keepword.store import outbox as outbox_store
from keepword.store.jobs import job_runs
from keepword.store.triage_state import TriageBacklog, triage_backlog
from keepword.timefmt import moment, zone_of


@dataclass(frozen=True)
class FolderHealth:
    folder: str
    last_success_at: str | None
    last_error: str | None
    last_error_at: str | None


@dataclass(frozen=True)
class JobHealth:
    job: str
    interval_seconds: float
    last_started_at: str | None
    last_ok_at: str | None
    failures: int
    last_error: str | None
    overdue: bool  # last start older than two intervals: the job starves or the daemon is down


@dataclass(frozen=True)
class MailboxHealth:
    mailbox: str
    folders: list[FolderHealth]
    jobs: list[JobHealth]
    triage_retries: TriageBacklog
    waiting_triage: int
    quarantined: int
    outbox_pending: int
    outbox_failed: int
    open_promises: int
    next_due: str | None
    overdue_promises: int
    outbox_unknown: int = 0  # may have gone out: held until the Sent folder tells
    sent_copies_missing: int = 0  # sent, copy to Sent failed or after a surge: made by the drain
    away: list[str] = field(default_factory=list)  # "who until first day back (why)"

    @property
    def healthy(self) -> bool:
        polled = all(f.last_success_at for f in self.folders)
        erring = any(
            f.last_error and (f.last_success_at or "") < (f.last_error_at or "")
            for f in self.folders
        )
        jobs_ok = not any(j.overdue or j.failures for j in self.jobs)
        return (
            polled
            and not erring
            and jobs_ok
            and self.outbox_failed == 0
            and self.overdue_promises == 0
        )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    status = sub.add_parser("status", help="per mailbox: last poll, errors, backlog, promises")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def away_today(
    conn: Connection, box: MailboxSettings, now: datetime, zone: ZoneInfo | None = None
) -> list[str]:
    """Who of the team is away today (planned or out-of-office), until when."""
    today = now.astimezone(zone or ZoneInfo(box.calendar.timezone or "UTC")).date()
    roster = roster_for(box, away_store.recorded_away(conn, box.name, today))
    return [
        f"{p.address} until {p.back_on.isoformat() if p.back_on else 'they write'}"
        f" ({p.why or 'away'})"
        for p in away_now(roster, today)
    ]


def mailbox_health(
    conn: Connection, box: MailboxSettings, now: datetime, zone: ZoneInfo | None = None
) -> MailboxHealth:
    folders = [
        FolderHealth(r.folder, _iso(r.last_success_at), r.last_error, _iso(r.last_error_at))
        for r in reports.folder_states(conn, box.name)
    ]
    counts = reports.mailbox_counts(conn, box.name, now)
    return MailboxHealth(
        mailbox=box.name,
        folders=folders,
        jobs=job_health(conn, box.name, now),
        triage_retries=triage_backlog(conn, box.name),
        waiting_triage=counts.waiting_triage,
        quarantined=counts.quarantined,
        outbox_pending=outbox_store.depth(conn, box.name),
        outbox_failed=counts.outbox_failed,
        open_promises=counts.open_promises,
        next_due=_iso(counts.next_due),
        overdue_promises=counts.overdue_promises,
        outbox_unknown=outbox_store.unknown_outcomes(conn, box.name),
        sent_copies_missing=outbox_store.missing_sent_copies(conn, box.name),
        away=away_today(conn, box, now, zone),
    )


def job_health(conn: Connection, mailbox: str, now: datetime) -> list[JobHealth]:
    """The daemon's jobs as recorded (a job that never ran under the daemon has no row)."""
    return [
        JobHealth(
            job=run.job,
            interval_seconds=run.interval_seconds,
            last_started_at=_iso(run.started_at),
            last_ok_at=_iso(run.last_ok_at),
            failures=run.failures,
            last_error=run.last_error,
            overdue=run.overdue(now),
        )
        for run in job_runs(conn, mailbox)
    ]


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    now = clock_now()  # the daemon's clock (KEEPWORD_CLOCK in a sped-up soak)
    with reading(settings) as conn:
        report = [
            mailbox_health(conn, box, now, zone_of(settings, box)) for box in settings.mailbox
        ]
        instances = leases.view(conn)
    if args.json:
        payload = [{**asdict(h), "healthy": h.healthy} for h in report]
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        _print(report, {b.name: zone_of(settings, b) for b in settings.mailbox})
        print_instances(instances)  # several instances on PostgreSQL: who works which mailbox
    return 0 if all(h.healthy for h in report) else 1


def _shown(text: str | None, zone: ZoneInfo, never: str = "never") -> str:
    """A stored ISO time as the reader's clock shows it."""
    return moment(datetime.fromisoformat(text), zone, never=never) if text else never


def _print(report: list[MailboxHealth], zones: dict[str, ZoneInfo]) -> None:
    console = Console()
    for health in report:
        zone = zones[health.mailbox]
        mark = "[green]ok[/green]" if health.healthy else "[red]attention[/red]"
        console.print(f"[bold]{health.mailbox}[/bold] {mark}")
        table = Table(show_header=True)
        for column in ("folder", "last good poll", "last error"):
            table.add_column(column)
        for f in health.folders:
            error = f"{_shown(f.last_error_at, zone)}: {f.last_error}" if f.last_error else "-"
            error = escape(error)
            table.add_row(escape(f.folder), _shown(f.last_success_at, zone), error)
        console.print(table)
        if health.jobs:
            console.print(_jobs_table(health.jobs, zone))
        retries = health.triage_retries
        if retries is not None and (retries.pending or retries.retrying):
            error = f", last error: {escape(retries.last_error)}" if retries.last_error else ""
            console.print(
                f"  triage: {retries.pending} pending, {retries.retrying} waiting for a "
                f"retry{error}"
            )
        console.print(
            f"  waiting for triage {health.waiting_triage} · quarantined {health.quarantined}"
            f" · outbox pending {health.outbox_pending}, failed {health.outbox_failed}"
            f" (outcome unknown {health.outbox_unknown},"
            f" Sent copies missing {health.sent_copies_missing})"
            f" · open promises {health.open_promises} (overdue {health.overdue_promises})"
            f", next due {_shown(health.next_due, zone, never='-')}"
        )
        if health.away:
            console.print(f"  away: {escape('; '.join(health.away))}")


def _jobs_table(jobs: list[JobHealth], zone: ZoneInfo) -> Table:
    table = Table(show_header=True)
    for column in ("job", "every", "last run", "last ok", "state"):
        table.add_column(column)
    for job in jobs:
        state = "ok"
        if job.failures:
            state = f"[red]failing ({job.failures} in a row): {escape(job.last_error or '')}[/red]"
        if job.overdue:
            state = f"[red]overdue[/red] (no run for two intervals); {state}"
        table.add_row(
            job.job,
            f"{job.interval_seconds:g} s",
            _shown(job.last_started_at, zone),
            _shown(job.last_ok_at, zone),
            state,
        )
    return table
