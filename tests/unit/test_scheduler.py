"""The daemon's per-mailbox cycles on a sped-up clock: no job starves, none overlaps.

The real Daemon (its cycles, APScheduler triggers, backoff, job_run records on SQLite)
with a fake worker that records, on the daemon's clock, when each job started and
ended. 30 virtual minutes take a few real seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.adapters.idle import OnChange
from keepword.clock import Clock, SpedUpClock
from keepword.config import MailboxSettings, Settings
from keepword.errors import DeliveryUnavailable, MailboxError
from keepword.runtime import daemon as daemon_module
from keepword.runtime.daemon import DRAIN_INTERVAL, SURGE_CHASE_WAIT, Daemon, Pacing
from keepword.store import jobs
from keepword.store.db import open_store
from keepword.store.jobs import job_runs
from tests.fixtures import configs

SPEED = 300.0
SPAN = timedelta(minutes=30)
# Scheduling noise is real time (a busy 2-core machine stalls the event loop for 0.1-0.15 s
# now and then): 0.25 s real, 75 virtual seconds. A starved job misses by whole intervals
# (the old chase: 30 minutes), far beyond it.
SLACK = 0.25 * SPEED
# A gap between two runs of a job holds two moments of that noise (its start and the
# next): a CI run saw 136 s for a 60-s poll, 0.253 s real over. A starved job still
# misses by whole intervals, for as long as the run lasts (SPAN: 30 intervals).
GAP_SLACK = 0.5 * SPEED
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class Run:
    mailbox: str
    job: str
    start: datetime
    end: datetime | None = None


@dataclass
class Recorder:
    """What every fake worker of a daemon did (a reload makes a new worker)."""

    clock: Clock
    runs: list[Run] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_at_once: int = 0
    slow_poll: dict[str, float] = field(default_factory=dict)  # mailbox -> virtual seconds
    failing_drain: set[str] = field(default_factory=set)
    new_mail_at: dict[str, datetime] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)  # polls that leave more to triage
    failing_poll_after: dict[str, int] = field(default_factory=dict)  # polls that work first
    slices_from: dict[str, datetime] = field(default_factory=dict)  # the slices begin then

    def of(self, mailbox: str, job: str) -> list[Run]:
        return [r for r in self.runs if r.mailbox == mailbox and r.job == job]


class FakeWorker:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.clock = recorder.clock

    async def _job(self, job: str, box: MailboxSettings, seconds: float = 1.0) -> None:
        rec = self.recorder
        run = Run(box.name, job, self.clock.now())
        rec.runs.append(run)
        rec.active[box.name] += 1
        rec.most_at_once = max(rec.most_at_once, rec.active[box.name])
        try:
            await self.clock.sleep(seconds)  # a job takes time: overlaps would show
        finally:
            rec.active[box.name] -= 1
            run.end = self.clock.now()

    async def poll(self, mailbox: MailboxSettings) -> bool:
        await self._job("poll", mailbox, self.recorder.slow_poll.get(mailbox.name, 1.0))
        working = self.recorder.failing_poll_after.get(mailbox.name)
        if working is not None and len(self.recorder.of(mailbox.name, "poll")) > working:
            raise MailboxError("imap 127.0.0.1:143: connection refused")
        if self.clock.now() < self.recorder.slices_from.get(mailbox.name, START):
            return False
        left = self.recorder.slices.get(mailbox.name, 0)
        self.recorder.slices[mailbox.name] = max(0, left - 1)
        return left > 0

    async def chase(self, mailbox: MailboxSettings) -> None:
        await self._job("chase", mailbox)

    async def drain(self, mailbox: MailboxSettings) -> None:
        await self._job("drain", mailbox, 0.5)
        if mailbox.name in self.recorder.failing_drain:
            raise DeliveryUnavailable("relay 127.0.0.1:25 refused the login")

    async def watch(
        self, mailbox: MailboxSettings, on_change: OnChange, stop: asyncio.Event
    ) -> None:
        when = self.recorder.new_mail_at.get(mailbox.name)
        while when is not None and self.clock.now() < when and not stop.is_set():
            await self.clock.sleep(1.0)
        if when is not None and not stop.is_set():
            await on_change()  # IDLE saw new mail
        await stop.wait()

    async def close(self) -> None:
        pass


def write_config(tmp: Path, boxes: dict[str, int], chase: int = 60) -> Path:
    """A mailbox per name polled every `boxes[name]` seconds, chased every `chase`."""
    imap = {"host": "127.0.0.1", "tls": "plain", "password": "not-used"}
    mailboxes = [
        MailboxSettings(
            name=name,
            address=f"{name}@example.com",
            poll_interval=poll,
            chase={"interval_seconds": chase},
            imap={**imap, "username": f"{name}@example.com"},
        )
        for name, poll in boxes.items()
    ]
    keepword = {"state_dir": tmp, "allow_inline_passwords": True}
    return configs.write_config(tmp / "keepword.toml", keepword, *mailboxes)


def run_daemon(
    tmp: Path,
    boxes: dict[str, int],
    setup: Callable[[Recorder], None] = lambda r: None,
    pacing: Pacing | None = None,
) -> tuple[Recorder, datetime, datetime]:
    clock = SpedUpClock(SPEED, START, time.time())
    recorder = Recorder(clock)
    setup(recorder)

    def factory(settings: Settings, engine: Engine, clock: Clock) -> FakeWorker:
        return FakeWorker(recorder)

    async def run() -> tuple[datetime, datetime]:
        paced = pacing or Pacing(draw=lambda: 1.0)
        daemon = Daemon(write_config(tmp, boxes), factory, clock=clock, pacing=paced)
        running = asyncio.create_task(daemon.run())
        began = clock.now()
        span = asyncio.create_task(clock.sleep(SPAN.total_seconds()))  # on the daemon's clock
        await asyncio.wait({running, span}, return_when=asyncio.FIRST_COMPLETED)
        assert not running.done(), running  # it ran the whole span
        ended = clock.now()
        daemon.request_stop()
        assert await asyncio.wait_for(running, timeout=15) == 0
        return began, ended

    _, ended = asyncio.run(run())
    began = min(r.start for r in recorder.runs)  # the first poll: start-up is done
    return recorder, began, ended


def assert_runs_every(runs: list[Run], interval: float, began: datetime, ended: datetime) -> None:
    starts = [began, *(r.start for r in runs), ended]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert max(gaps) <= interval + GAP_SLACK, (interval, gaps)


def assert_no_overlap(runs: list[Run]) -> None:
    ordered = sorted(runs, key=lambda r: r.start)
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.end is not None and earlier.end <= later.start, (earlier, later)


def test_shipped_defaults_run_every_job_at_least_once_per_interval(tmp_path: Path) -> None:
    """poll 60 s and chase 60 s from the same second: the chase used to be skipped forever."""
    recorder, began, ended = run_daemon(tmp_path, {"support": 60})
    assert_runs_every(recorder.of("support", "poll"), 60, began, ended)
    assert_runs_every(recorder.of("support", "chase"), 60, began, ended)
    assert_runs_every(recorder.of("support", "drain"), DRAIN_INTERVAL, began, ended)
    assert len(recorder.of("support", "chase")) >= 25
    assert_no_overlap(recorder.runs)
    assert recorder.most_at_once == 1
    with open_store(f"sqlite:///{tmp_path / 'keepword.db'}").connect() as conn:
        recorded = {r.job: r for r in job_runs(conn, "support")}
    assert set(recorded) == {"poll", "chase", "drain"}
    for job, run in recorded.items():
        assert run.failures == 0 and run.last_ok_at is not None
        assert run.started_at is not None
        # The record is of the last run: after the start of the run before it (no time
        # bound: a loaded machine's stall is tens of virtual seconds, a drain's interval ten).
        starts = [r.start for r in recorder.of("support", job)]
        assert starts[-2] < run.started_at <= starts[-1], (job, starts[-2:], run.started_at)
        assert not run.overdue(ended)


def test_a_mailbox_without_smtp_is_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="keepword.runtime.daemon")
    run_daemon(tmp_path, {"support": 60})
    warned = [r.getMessage() for r in caplog.records if "[mailbox.smtp]" in r.getMessage()]
    assert warned == [
        "mailbox support has no [mailbox.smtp]: its acknowledgements, reminders and "
        "escalations wait in the outbox until one is configured"
    ]


def test_a_slow_poll_in_one_mailbox_does_not_delay_another(tmp_path: Path) -> None:
    def slow(recorder: Recorder) -> None:
        recorder.slow_poll["archive"] = 300.0  # five virtual minutes per poll

    recorder, began, ended = run_daemon(tmp_path, {"archive": 60, "support": 60}, slow)
    for job, interval in (("poll", 60), ("chase", 60), ("drain", DRAIN_INTERVAL)):
        assert_runs_every(recorder.of("support", job), interval, began, ended)
    archive = [r for r in recorder.runs if r.mailbox == "archive"]
    assert_no_overlap(archive)  # the archive's own jobs wait for its poll...
    polls = recorder.of("archive", "poll")
    assert len(polls) >= 4
    for poll, following in itertools.pairwise(polls):  # ...but run after each one: none starves
        between = {r.job for r in archive if poll.start < r.start < following.start}
        assert between == {"chase", "drain"}, (poll, following)


def test_a_failing_drain_backs_off_alone(tmp_path: Path) -> None:
    def relay_down(recorder: Recorder) -> None:
        recorder.failing_drain.add("support")

    recorder, began, ended = run_daemon(tmp_path, {"support": 60, "sales": 60}, relay_down)
    assert_runs_every(recorder.of("support", "poll"), 60, began, ended)
    assert_runs_every(recorder.of("support", "chase"), 60, began, ended)
    drains = recorder.of("support", "drain")
    # MAILBOX_RETRY (5 s doubling, drawn at its top): 5, 10, 20, ... 640 s in 30 minutes.
    assert 5 <= len(drains) <= 12, [r.start for r in drains]
    waits = [(b.start - a.start).total_seconds() for a, b in itertools.pairwise(drains)]
    assert waits[-1] >= 300
    assert len(recorder.of("sales", "drain")) >= 100  # another mailbox's relay is fine
    with open_store(f"sqlite:///{tmp_path / 'keepword.db'}").connect() as conn:
        recorded = {(r.mailbox, r.job): r for r in job_runs(conn)}
    drain = recorded[("support", "drain")]
    assert drain.failures == len(drains)
    assert drain.last_error == "relay 127.0.0.1:25 refused the login"
    assert recorded[("support", "poll")].failures == 0


def test_new_mail_from_idle_polls_and_drains_at_once(tmp_path: Path) -> None:
    news = START + timedelta(minutes=7)

    def idle(recorder: Recorder) -> None:
        recorder.new_mail_at["support"] = news

    recorder, _, _ = run_daemon(tmp_path, {"support": 3600}, idle)
    polls = [r.start for r in recorder.of("support", "poll")]
    assert len(polls) == 2  # at start, and on the notification (not the hourly trigger)
    assert 0 <= (polls[1] - news).total_seconds() <= SLACK
    drains_after = [r for r in recorder.of("support", "drain") if r.start >= polls[1]]
    assert drains_after and (drains_after[0].start - polls[1]).total_seconds() <= SLACK


def test_new_mail_during_a_poll_polls_again_right_after(tmp_path: Path) -> None:
    def busy(recorder: Recorder) -> None:
        recorder.slow_poll["support"] = 120.0  # the first poll is still running at 09:01
        recorder.new_mail_at["support"] = START + timedelta(minutes=1)

    recorder, _, _ = run_daemon(tmp_path, {"support": 3600}, busy)
    first, second = recorder.of("support", "poll")[:2]
    assert first.end is not None and first.start < START + timedelta(minutes=1) < first.end
    assert 0 <= (second.start - first.end).total_seconds() <= SLACK  # not an hour later


def test_a_poll_that_left_mail_to_triage_drains_then_polls_again_at_once(
    tmp_path: Path,
) -> None:
    """A surge is triaged in slices (runtime.service.TRIAGE_SLICE): after each slice the
    drain sends what it queued, and the next slice follows at once, not a poll later."""

    def surge(recorder: Recorder) -> None:
        recorder.slices["support"] = 3
        recorder.new_mail_at["support"] = START + timedelta(minutes=5)

    recorder, _, _ = run_daemon(tmp_path, {"support": 3600}, surge)
    runs = [r for r in recorder.runs if r.mailbox == "support"]
    kinds = [r.job for r in runs]
    # The chase due at start waits for the last slice and its drain (acknowledgements
    # first); what it queued leaves right after it.
    slices = ["poll", "drain"] * 4
    assert kinds[:10] == [*slices, "chase", "drain"]
    assert runs[8].end is not None and (runs[9].start - runs[8].end).total_seconds() <= SLACK
    assert (runs[8].start - runs[0].start).total_seconds() <= 4 * SLACK  # not hours
    polls = recorder.of("support", "poll")
    assert len(polls) == 5  # the 4 slices, then the poll IDLE asked for (not one more)
    assert_no_overlap(runs)


def surge_at(when: datetime, slices: int, poll_seconds: float) -> Callable[[Recorder], None]:
    """New mail at `when` that the poll takes in `slices` + 1 slices of `poll_seconds`."""

    def surge(recorder: Recorder) -> None:
        recorder.slices["support"] = slices
        recorder.slow_poll["support"] = poll_seconds
        recorder.new_mail_at["support"] = recorder.slices_from["support"] = when

    return surge


def surge_polls(recorder: Recorder, began: datetime) -> list[Run]:
    return [r for r in recorder.of("support", "poll") if r.start >= began]


def test_a_due_chase_waits_for_the_surges_last_slice(tmp_path: Path) -> None:
    """The chase due at 09:06 falls in a surge (09:05:50 to ~09:06:30): it runs after the
    last slice, not between two (the acknowledgements first)."""
    news = START + timedelta(minutes=5, seconds=50)
    pacing = Pacing(draw=lambda: 1.0, surge_chase_wait=600.0)
    recorder, _, _ = run_daemon(tmp_path, {"support": 3600}, surge_at(news, 8, 4.0), pacing)
    polls = surge_polls(recorder, news)[:9]
    assert len(polls) == 9 and polls[-1].end is not None
    chases = [r for r in recorder.of("support", "chase") if r.start >= polls[0].start]
    assert chases, "no chase after the surge"
    assert all(not (polls[0].start < c.start < polls[-1].end) for c in chases), chases
    assert (chases[0].start - polls[-1].end).total_seconds() <= 2 * SLACK  # right after it


def test_a_long_surge_holds_the_chase_back_no_longer_than_the_wait(tmp_path: Path) -> None:
    """A surge of ~9 virtual minutes: the chase still runs, SURGE_CHASE_WAIT late at most
    (held for the whole surge, one gap would be 9 minutes)."""
    news = START + timedelta(minutes=5, seconds=50)
    recorder, began, ended = run_daemon(tmp_path, {"support": 3600}, surge_at(news, 120, 4.0))
    polls = surge_polls(recorder, news)
    assert len(polls) >= 121 and polls[120].end is not None
    during = [r for r in recorder.of("support", "chase") if news < r.start < polls[120].end]
    assert len(during) >= 4, during  # ~9 minutes of surge, a chase every 60 + 30 s at most
    slice_seconds = 4.0 + 0.5  # a poll and its drain: a waiting chase runs after one
    # Twice the scheduling noise a busy 2-core machine makes (SLACK), not the surge's 540 s.
    bound = 60 + SURGE_CHASE_WAIT + slice_seconds + SLACK
    assert_runs_every(recorder.of("support", "chase"), bound, began, ended)


def test_a_surge_whose_poll_fails_does_not_hold_the_chase(tmp_path: Path) -> None:
    """The poll left more, then fails and backs off: the chase runs on its interval (it
    waits only while the next slice is due, so the cycle never spins on it either)."""

    def failing(recorder: Recorder) -> None:
        surge_at(START + timedelta(minutes=5), 50, 1.0)(recorder)
        recorder.failing_poll_after["support"] = 3  # the start, then two slices

    pacing = Pacing(draw=lambda: 1.0, surge_chase_wait=600.0)  # no cap to hide a wait
    recorder, began, ended = run_daemon(tmp_path, {"support": 3600}, failing, pacing)
    # On its interval, give or take twice the scheduling noise (held: 600 s and more).
    assert_runs_every(recorder.of("support", "chase"), 60 + SLACK, began, ended)
    assert len(recorder.of("support", "chase")) <= 40  # 30 virtual minutes, once a minute


@pytest.mark.parametrize("previous", [None, "first"])
def test_next_fire_skips_missed_times(previous: str | None) -> None:
    from apscheduler.triggers.interval import IntervalTrigger

    from keepword.runtime.daemon import next_fire

    trigger = IntervalTrigger(seconds=60, start_date=START, timezone=UTC)
    late = START + timedelta(seconds=250)  # the last run took four intervals
    prior = START if previous else None
    assert next_fire(trigger, prior, late) == START + timedelta(seconds=300)
    on_grid = START + timedelta(seconds=120)
    assert next_fire(trigger, prior, on_grid) == START + timedelta(seconds=180)


class DriverError(Exception):
    """What psycopg raises when PostgreSQL restarts under a write (not SQLAlchemy's)."""


def failing_for_a_while(write: Callable[..., None], calls: list[int]) -> Callable[..., None]:
    def wrapped(conn: Any, *args: Any) -> None:
        calls.append(1)
        if 10 <= len(calls) < 20:
            raise DriverError("consuming input failed: server closed the connection")
        write(conn, *args)

    return wrapped


def test_a_job_record_the_database_cannot_take_ends_no_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart under a job_run write once ended a mailbox's cycle for good
    (three instances: the mailbox, still leased, was never worked again)."""
    calls: list[int] = []
    monkeypatch.setattr(jobs, "job_started", failing_for_a_while(jobs.job_started, calls))
    monkeypatch.setattr(jobs, "job_finished", failing_for_a_while(jobs.job_finished, calls))
    recorder, began, ended = run_daemon(tmp_path, {"support": 60})
    assert len(calls) > 40
    for job, interval in (("poll", 60), ("chase", 60), ("drain", DRAIN_INTERVAL)):
        assert_runs_every(recorder.of("support", job), interval, began, ended)


def test_whatever_escapes_a_jobs_bookkeeping_is_that_jobs_failure_not_the_cycles_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken: list[int] = []

    def status(text: str) -> None:
        broken.append(1)
        if len(broken) in (3, 4, 5):
            raise OSError("the notify socket went away")

    monkeypatch.setattr(daemon_module.sdnotify, "status", status)
    recorder, began, ended = run_daemon(tmp_path, {"support": 60})
    assert len(broken) > 10
    assert_runs_every(recorder.of("support", "poll"), 60, began, ended)
