"""When each scheduled job of each mailbox last ran, and how it ended (table job_run).

One row per (mailbox, job), written by the single writer (the daemon or `run --once`)
at the start and at the end of every run, so `keepword status` (another process) can
tell a job that runs from one that starves or keeps failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, select, update

from keepword.store.tables import job_run

OVERDUE_INTERVALS: Final = 2  # a job whose last start is older than this many intervals


@dataclass(frozen=True)
class JobRun:
    mailbox: str
    job: str
    interval_seconds: float
    started_at: datetime | None
    finished_at: datetime | None
    last_ok_at: datetime | None
    last_error: str | None
    failures: int

    @property
    def running(self) -> bool:
        return self.started_at is not None and (
            self.finished_at is None or self.finished_at < self.started_at
        )

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def overdue(self, now: datetime) -> bool:
        if self.started_at is None:
            return True
        limit = timedelta(seconds=self.interval_seconds * OVERDUE_INTERVALS)
        return now - self.started_at > limit


def job_started(
    conn: Connection, mailbox: str, job: str, interval_seconds: float, now: datetime
) -> None:
    values = {"interval_seconds": interval_seconds, "started_at": now}
    where = (job_run.c.mailbox == mailbox) & (job_run.c.job == job)
    if conn.execute(update(job_run).where(where).values(**values)).rowcount == 0:
        conn.execute(job_run.insert().values(mailbox=mailbox, job=job, failures=0, **values))


def job_finished(
    conn: Connection, mailbox: str, job: str, now: datetime, error: str | None = None
) -> None:
    """The run that `job_started` recorded ended: ok (error None) or failed with `error`."""
    where = (job_run.c.mailbox == mailbox) & (job_run.c.job == job)
    if error is None:
        values = {"finished_at": now, "last_ok_at": now, "last_error": None, "failures": 0}
        conn.execute(update(job_run).where(where).values(**values))
    else:
        conn.execute(
            update(job_run)
            .where(where)
            .values(finished_at=now, last_error=error, failures=job_run.c.failures + 1)
        )


def job_runs(conn: Connection, mailbox: str | None = None) -> list[JobRun]:
    query = select(job_run).order_by(job_run.c.mailbox, job_run.c.id)
    if mailbox is not None:
        query = query.where(job_run.c.mailbox == mailbox)
    return [
        JobRun(
            mailbox=r.mailbox,
            job=r.job,
            interval_seconds=float(r.interval_seconds),
            started_at=r.started_at,
            finished_at=r.finished_at,
            last_ok_at=r.last_ok_at,
            last_error=r.last_error,
            failures=int(r.failures or 0),
        )
        for r in conn.execute(query)
    ]
