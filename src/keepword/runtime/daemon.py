"""The daemon's lifecycle: one sequential cycle per mailbox, signals, sd_notify, reload, stop.

Each mailbox has three jobs: poll (ingest + triage), chase and drain (send the outbox).
Each job has its own APScheduler `IntervalTrigger` (poll_interval, chase.interval_seconds,
DRAIN_INTERVAL), evaluated as the pure function it is: `get_next_fire_time(previous,
now)` with `now` from the daemon's one `Clock`. One asyncio task per mailbox sleeps on
that clock until its earliest job is due (an IDLE notification or a stop wakes it
early), then runs every due job in the order poll -> drain -> chase -> drain, one at a
time (what a poll queued leaves before a chase begins, what a chase queued right after).
While a surge is triaged slice by slice (the poll left more and is due again at once),
a due chase waits for its end, at most SURGE_CHASE_WAIT past its due time: the
customers' acknowledgements leave first, and a chase of thousands of new cases (a few
seconds) between two slices would hold every slice behind it back.

Why not APScheduler's AsyncIOScheduler: it reads `datetime.now` itself (so the
scheduler and the use cases could not share a sped-up or virtual clock) and it runs
jobs concurrently, so the jobs of one mailbox needed a lock, and a job that found the
lock taken was skipped: with poll and chase both every 60 s from the same second, the
chase was skipped forever. A sequential loop per mailbox cannot starve a job (every
due job runs in each pass, whatever the intervals), never runs two jobs of a mailbox at
once, and asks one clock for everything.

A job that raises backs off alone (per mailbox and job, MAILBOX_RETRY on the clock's
monotonic time): a relay that is down pauses the drain, not polling and triage; a
server that is down pauses the poll, not the chase and drain of what is stored.
Mailboxes are independent tasks. Every run is recorded in the job_run table (for
`keepword status`) and in the metrics. Everything worth keeping lives in the database,
so a stop at any point (or a SIGKILL) loses nothing.

Local problems fail fast, before READY: an empty config, a secret that cannot be
resolved, a store that cannot be opened or migrated, a store another keepword already
writes (the writer lock, keepword.store.lock). Remote ones (servers down) are retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from keepword.adapters import sdnotify
from keepword.adapters.credentials import resolve_secret
from keepword.adapters.idle import MailboxWatchers, OnChange
from keepword.adapters.logs import log_context
from keepword.adapters.metrics import METRICS, MetricsServer, start_metrics_server
from keepword.clock import Clock, clock_from_environment
from keepword.config import Credentials, MailboxSettings, Settings, load_config
from keepword.errors import (
    ConfigError,
    KeepwordError,
    SecretError,
    StoreBusyError,
    StoreError,
)
from keepword.pipeline.send import without_relay
from keepword.retry import MAILBOX_RETRY, RetryPolicy
from keepword.runtime.service import make_worker
from keepword.store import jobs as job_store
from keepword.store.checkpoints import BackgroundCheckpoints
from keepword.store.db import open_store
from keepword.store.leases import (
    CURRENT_FENCE,
    RENEW_SECONDS,
    Fence,
    LeaseKeeper,
    Round,
    install_fencing,
)
from keepword.store.lock import WriterLock, acquire_writer_lock, leased, migrations_serialized
from keepword.timefmt import clock_time

log = logging.getLogger(__name__)

DRAIN_INTERVAL: Final = 10.0
STOP_TIMEOUT: Final = 20.0
CLOSE_TIMEOUT: Final = 5.0
OVERDUE_CHECK: Final = 15.0  # clock seconds between refreshes of the overdue gauges
LOCK_CHECK: Final = 5.0  # seconds between checks that the writer lock is still held
JOBS: Final = ("poll", "chase", "drain")
# One pass of a mailbox's cycle: each job that is due, in this order.
PASS: Final = ("poll", "drain", "chase", "drain")
# How long a due chase may wait for a surge's slices (its reminders are due in hours).
SURGE_CHASE_WAIT: Final = 30.0


class Worker(Protocol):
    """The use cases for one configuration (keepword.runtime.service.Service implements it)."""

    # ingest + triage; True: it triaged one slice and more waits (drain, then poll again)
    async def poll(self, mailbox: MailboxSettings) -> bool | None: ...
    async def chase(self, mailbox: MailboxSettings) -> None: ...  # plan + enqueue chase actions
    async def drain(self, mailbox: MailboxSettings) -> None: ...  # send the outbox
    async def watch(
        self, mailbox: MailboxSettings, on_change: OnChange, stop: asyncio.Event
    ) -> None: ...  # IMAP IDLE until stop; on_change on new mail
    async def close(self) -> None: ...


class WorkerFactory(Protocol):
    def __call__(self, settings: Settings, engine: Engine, clock: Clock) -> Worker: ...


def next_fire(trigger: IntervalTrigger, previous: datetime | None, now: datetime) -> datetime:
    """The trigger's first fire time after `now`; missed ones coalesce into the run just made."""
    upcoming: datetime | None = trigger.get_next_fire_time(previous, now)
    if upcoming is None or upcoming <= now:
        upcoming = trigger.get_next_fire_time(None, now)  # the grid point at or after now
        if upcoming is not None and upcoming <= now:
            upcoming = trigger.get_next_fire_time(upcoming, now)
    assert upcoming is not None  # an IntervalTrigger without end_date never ends
    return upcoming


@dataclass
class Job:
    """One job of one mailbox: its trigger, when it is due, and its backoff."""

    kind: str
    interval: float
    trigger: IntervalTrigger
    due: datetime
    failures: int = 0
    retry_at: float | None = None  # clock.monotonic(); set while backing off
    last_error: str | None = None
    last_start: datetime | None = None
    requested_at: datetime | None = None  # new mail seen (IDLE): run again after this one

    @classmethod
    def every(cls, kind: str, seconds: float, start: datetime) -> Job:
        trigger = IntervalTrigger(seconds=seconds, start_date=start, timezone=UTC)
        return cls(kind, seconds, trigger, due=start)

    def seconds_left(self, now: datetime, monotonic: float) -> float:
        """Until the job is due: the end of its backoff, or else its trigger's fire time."""
        if self.retry_at is not None:
            return self.retry_at - monotonic
        return (self.due - now).total_seconds()

    def overdue(self, now: datetime, since: datetime) -> bool:
        last = self.last_start or since
        return now - last > timedelta(seconds=self.interval * job_store.OVERDUE_INTERVALS)


@dataclass
class MailboxCycle:
    """The state of one mailbox's sequential loop."""

    box: MailboxSettings
    jobs: dict[str, Job]
    started: datetime
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ending: bool = False
    task: asyncio.Task[None] | None = None
    last_poll: datetime | None = None
    fence: Fence | None = None  # the lease this cycle works under (PostgreSQL, several instances)
    triage_left: bool = False  # the last poll triaged one slice of more

    @classmethod
    def of(cls, box: MailboxSettings, drain_interval: float, now: datetime) -> MailboxCycle:
        intervals = {
            "poll": float(box.poll_interval),
            "chase": float(box.chase.interval_seconds),
            "drain": drain_interval,
        }
        # Every job runs at start (poll first): a restart catches up at once.
        jobs = {kind: Job.every(kind, intervals[kind], now) for kind in JOBS}
        return cls(box, jobs, started=now)

    @property
    def failing(self) -> bool:
        return any(job.failures for job in self.jobs.values())

    def seconds_left(self, now: datetime, monotonic: float) -> float:
        return min(job.seconds_left(now, monotonic) for job in self.jobs.values())

    def chase_waits(self, now: datetime, monotonic: float, wait: float) -> bool:
        """A surge's next slice is due (its poll left more and did not fail): the due
        chase waits for the surge's end, unless it is `wait` seconds overdue already.
        Never a busy loop: while it waits, the poll is due."""
        poll, chase = self.jobs["poll"], self.jobs["chase"]
        surging = self.triage_left and poll.seconds_left(now, monotonic) <= 0
        return surging and (now - chase.due).total_seconds() < wait

    def new_mail(self, now: datetime) -> None:
        """IDLE saw new mail: poll (its backoff ends: the server answers) and drain now."""
        poll, drain = self.jobs["poll"], self.jobs["drain"]
        poll.due, poll.retry_at, poll.requested_at = now, None, now
        drain.due = min(drain.due, now)  # a relay that is down keeps its backoff
        self.wake.set()

    def end(self) -> None:
        self.ending = True
        self.wake.set()


def with_dry_run(settings: Settings, dry_run: bool) -> Settings:
    if not dry_run or settings.keepword.dry_run:
        return settings
    keepword = settings.keepword.model_copy(update={"dry_run": True})
    return settings.model_copy(update={"keepword": keepword})


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def require_mailboxes(settings: Settings, source: Path) -> None:
    if not settings.mailbox:
        where = settings.source or source
        problem = f"{where}: no [[mailbox]] configured: nothing to run (see keepword.example.toml)"
        raise ConfigError([problem])


def resolve_every_secret(settings: Settings) -> None:
    """Raise SecretError naming mailbox, key and source for the first secret missing."""
    for box in settings.mailbox:
        servers: list[tuple[str, Credentials]] = [("mailbox.imap", box.imap)]
        if box.smtp is not None:
            servers.append(("mailbox.smtp", box.smtp))
        for section, server in servers:
            try:
                resolve_secret(server)
            except SecretError as exc:
                raise SecretError(f"mailbox {box.name} [{section}]: {exc}") from None


def open_database(url: str) -> Engine:
    """open_store with every local failure as a StoreError (a directory not creatable...)."""
    try:
        return open_store(url)
    except OSError as exc:
        raise StoreError(f"cannot open the database {url}: {exc.strerror or exc}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the database {url}: {describe_error(exc)}") from exc


def _name_mailboxes_without_relay(settings: Settings) -> None:
    """Said once at start and on reload: a mailbox without [mailbox.smtp] queues its mail
    and sends none (its drain fails and backs off: pipeline.send)."""
    if settings.keepword.dry_run:
        return
    for box in settings.mailbox:
        if (warning := without_relay(box)) is not None:
            log.warning("mailbox %s has %s", box.name, warning)


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the daemon paces its jobs: how long a stop waits for jobs in flight, how often
    the outbox is drained, and how a failing mailbox backs off (`draw`: the jitter)."""

    stop_timeout: float = STOP_TIMEOUT
    drain_interval: float = DRAIN_INTERVAL
    retry: RetryPolicy = MAILBOX_RETRY
    draw: Callable[[], float] = random.random
    surge_chase_wait: float = SURGE_CHASE_WAIT


class Daemon:
    def __init__(
        self,
        config_path: Path,
        worker_factory: WorkerFactory = make_worker,
        *,
        dry_run: bool = False,
        pacing: Pacing = Pacing(),
        clock: Clock | None = None,
    ) -> None:
        self.config_path = config_path
        self._factory = worker_factory
        self._dry_run = dry_run
        self._stop_timeout = pacing.stop_timeout
        self._drain_interval = pacing.drain_interval
        self._surge_chase_wait = pacing.surge_chase_wait
        self._retry = pacing.retry
        self._draw = pacing.draw
        self._clock = clock if clock is not None else clock_from_environment()
        self._settings: Settings | None = None
        self._worker: Worker | None = None
        self._engine: Engine | None = None
        self._lock: WriterLock | None = None
        self._checkpoints: BackgroundCheckpoints | None = None  # SQLite's WAL, copied aside
        self._cycles: dict[str, MailboxCycle] = {}
        self._ending: dict[str, asyncio.Task[None]] = {}  # cycles ended, maybe still in a job
        self._leases: LeaseKeeper | None = None  # PostgreSQL: the mailboxes are shared by lease
        self._handing_over: set[str] = set()
        self._lease_task: asyncio.Task[None] | None = None
        # Its own thread: with every worker thread busy in IMAP, renewals must not queue.
        self._lease_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leases")
        self._cycle_tasks: set[asyncio.Task[None]] = set()
        self._running: dict[asyncio.Task[None], Worker] = {}  # jobs in flight
        self._background: set[asyncio.Task[Any]] = set()
        self._stop_event: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._metrics_server: MetricsServer | None = None
        self._watchers = MailboxWatchers(self._new_mail)  # IMAP IDLE, keepword.adapters.idle
        self._stopping = False
        self._once = False
        self._lost_lock: StoreBusyError | None = None
        self.abandoned = 0  # jobs still running when the stop bound ran out

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- start: configuration, secrets, writer lock, store -------------------------

    def _load(self) -> Settings:
        settings = with_dry_run(load_config(self.config_path), self._dry_run)
        logging.getLogger().setLevel(settings.keepword.log_level)
        return settings

    def _start(self) -> tuple[Settings, Engine]:
        """Everything local, checked before READY; raises ConfigError/SecretError/StoreError."""
        settings = self._load()
        require_mailboxes(settings, self.config_path)
        resolve_every_secret(settings)
        url = settings.keepword.effective_database_url()
        sharing = leased(url) and not self._once  # `run --once` works every mailbox: alone
        self._lock = acquire_writer_lock(url, shared=sharing)
        try:
            with migrations_serialized(url):  # instances starting together
                self._engine = open_database(url)
            self._checkpoints = BackgroundCheckpoints(self._engine).start()
            if sharing:
                install_fencing(self._engine)
                names = [box.name for box in settings.mailbox]
                self._leases = LeaseKeeper(self._engine, names)
        except BaseException:
            self._release()
            raise
        return settings, self._engine

    def _release(self) -> None:
        self._lease_thread.shutdown(wait=False)
        if self._checkpoints is not None:
            self._checkpoints.stop()
            self._checkpoints = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the long-running daemon ---------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`); 0 after a clean stop."""
        settings, engine = self._start()
        try:
            code = await self._serve(settings, engine)
        finally:
            self._release()
        if self._lost_lock is not None:
            raise self._lost_lock  # another writer took the store over: say so, exit non-zero
        return code

    async def _serve(self, settings: Settings, engine: Engine) -> int:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._worker = self._factory(settings, engine, self._clock)
        self._settings = settings
        if self._leases is not None:
            await self._lease_round()  # a lone instance starts working before READY
            self._lease_task = asyncio.create_task(self._keep_leases(), name="leases")
        else:
            for box in settings.mailbox:
                self._start_cycle(box)
        self._install_signals(loop)
        self._start_metrics(settings)
        interval = sdnotify.watchdog_interval()
        if interval:
            self._spawn(self._watchdog(interval / 2))
        self._spawn(self._report_overdue())
        self._spawn(self._keep_writer_lock())
        log.info(
            "keepword running: %d mailbox(es) from %s%s",
            len(settings.mailbox),
            self.config_path,
            " (dry run: nothing is sent)" if settings.keepword.dry_run else "",
        )
        _name_mailboxes_without_relay(settings)
        sdnotify.ready(self.status_text())
        await self._stop_event.wait()
        await self._shutdown(loop)
        return 0

    def request_stop(self) -> None:
        if self._stop_event is not None and not self._stop_event.is_set():
            log.info("stop requested: finishing the work in flight")
            self._stop_event.set()

    def request_reload(self) -> None:
        if not self._stopping:
            self._spawn(self.reload())

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _start_metrics(self, settings: Settings) -> None:
        listen = settings.keepword.metrics_listen
        if not listen:
            return
        try:
            self._metrics_server = start_metrics_server(listen)
        except (ValueError, OSError) as exc:
            # Metrics are optional: a taken port must not keep mail from being answered.
            log.error("metrics endpoint %s not started: %s", listen, describe_error(exc))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _watchdog(self, period: float) -> None:
        # Pings come from the event loop itself, so a frozen loop stops them and
        # systemd restarts the service. Real time: systemd's clock, not the daemon's.
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(period)

    async def _report_overdue(self) -> None:
        # Its own task: a cycle stuck inside a job cannot report that it is overdue.
        while True:
            now = self._clock.now()
            for cycle in list(self._cycles.values()):
                for job in cycle.jobs.values():
                    METRICS.job_overdue(cycle.box.name, job.kind, job.overdue(now, cycle.started))
            await self._clock.sleep(OVERDUE_CHECK)

    async def _keep_writer_lock(self) -> None:
        """Take the lock again if it was lost (PostgreSQL restarted: its session ended)."""
        while True:
            await asyncio.sleep(LOCK_CHECK)  # real time: the database's, not the daemon's
            lock = self._lock
            try:
                if lock is None or await asyncio.to_thread(lock.alive):
                    continue
            except Exception as exc:  # the check itself failed: look again next time
                log.warning("writer lock not checked: %s", describe_error(exc))
                continue
            log.warning("writer lock lost (the database connection dropped): taking it again")
            try:
                await asyncio.to_thread(lock.acquire)
            except StoreBusyError as exc:
                log.critical("%s; stopping: this process no longer owns the store", exc)
                self._lost_lock = exc
                self.request_stop()
                return
            except StoreError as exc:
                log.warning("writer lock not taken yet: %s", exc)  # the database is still down
            else:
                log.info("writer lock taken again: %s", lock.describe())

    # -- leases (PostgreSQL: several instances share the mailboxes) ----------------

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)  # real time: leases expire on the database's
            try:
                await self._lease_round()
            except Exception:  # never end the loop: without it every lease lapses for good
                log.exception("lease round failed; the next in %.0f s", RENEW_SECONDS)

    async def _lease_round(self) -> None:
        """Renew, take and hand over leases; start and end cycles to match."""
        keeper = self._leases
        if keeper is None:
            return
        for name in keeper.expire_local():
            log.warning("mailbox %s: lease not renewed in time: stopping its work", name)
            self._end_cycle(name)
            METRICS.lease_change(keeper.holder, "lost")
        released = [name for name in self._handing_over if self._cycle_ended(name)]
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._lease_thread, keeper.round, released)
        except SQLAlchemyError as exc:
            log.warning("leases not renewed (database unreachable?): %s", describe_error(exc))
            return
        self._handing_over.difference_update(released)
        for name in released:
            log.info("mailbox %s: handed over to another instance", name)
        self._apply_round(keeper, result)
        METRICS.lease_round(keeper.holder, len(keeper.held), result.instances, result.share)

    def _apply_round(self, keeper: LeaseKeeper, result: Round) -> None:
        for name in result.lost:
            log.warning("mailbox %s: lease lost to another instance: stopping its work", name)
            self._end_cycle(name)
            METRICS.lease_change(keeper.holder, "lost")
        for name in result.hand_over:
            if name not in self._handing_over:
                log.info("mailbox %s: beyond this instance's share: handing it over", name)
                self._handing_over.add(name)
                self._end_cycle(name)
                METRICS.lease_change(keeper.holder, "handed_over")
        boxes = {box.name: box for box in self._settings.mailbox} if self._settings else {}
        for name, epoch in result.won.items():
            box = boxes.get(name)
            if box is None or self._stopping or name in self._handing_over:
                continue
            log.info("mailbox %s: lease won (epoch %d): working it", name, epoch)
            self._start_cycle(box, Fence(name, keeper.holder, epoch))
            METRICS.lease_change(keeper.holder, "won")

    def _cycle_ended(self, name: str) -> bool:
        task = self._ending.get(name)
        return name not in self._cycles and (task is None or task.done())

    async def _drain_leases(self, loop: asyncio.AbstractEventLoop) -> None:
        """Say so (`status`: draining; the others count one instance less), take nothing new."""
        if self._leases is None:
            return
        try:
            await loop.run_in_executor(self._lease_thread, self._leases.drain)
        except SQLAlchemyError as exc:
            log.warning("draining not recorded: %s", describe_error(exc))

    async def _leave(self) -> None:
        """A clean stop hands every lease back at once: the others take over in seconds."""
        if self._leases is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._lease_thread, self._leases.leave)
        except SQLAlchemyError as exc:
            log.warning("leases not handed back (they expire on their own): %s", exc)
        else:
            log.info("leases handed back")

    # -- one sequential cycle per mailbox ------------------------------------------

    def _start_cycle(self, box: MailboxSettings, fence: Fence | None = None) -> None:
        previous = self._cycles.pop(box.name, None)
        if previous is not None:
            previous.end()
        # An ended cycle may still be in its job: the new one waits for it (one IMAP session).
        earlier = previous.task if previous else self._ending.get(box.name)
        self._ending.pop(box.name, None)
        cycle = MailboxCycle.of(box, self._drain_interval, self._clock.now())
        cycle.fence = fence
        self._cycles[box.name] = cycle
        cycle.task = asyncio.create_task(self._cycle(cycle, earlier), name=f"cycle {box.name}")
        self._cycle_tasks.add(cycle.task)
        cycle.task.add_done_callback(self._cycle_tasks.discard)
        if self._worker is not None:
            self._watchers.start(box, self._worker.watch)

    def _end_cycle(self, name: str) -> None:
        cycle = self._cycles.pop(name, None)
        if cycle is not None:
            cycle.end()
            if cycle.task is not None and not cycle.task.done():
                self._ending[name] = cycle.task
        self._watchers.stop(name)
        METRICS.forget_mailbox(name, JOBS)

    async def _cycle(self, cycle: MailboxCycle, previous: asyncio.Task[None] | None) -> None:
        CURRENT_FENCE.set(cycle.fence)  # this task's commits (and its threads') are fenced
        with log_context(mailbox=cycle.box.name):
            if previous is not None:  # a changed mailbox: the old cycle's job ends first
                await self._outlast(previous)
            while not cycle.ending and self._lease_valid(cycle):
                wait = cycle.seconds_left(self._clock.now(), self._clock.monotonic())
                if wait > 0:
                    await self._nap(cycle, wait)
                    continue
                for kind in PASS:
                    if self._due(cycle, kind) and not cycle.ending and self._worker is not None:
                        await self._run_job_kept(cycle, cycle.jobs[kind], self._worker)

    def _due(self, cycle: MailboxCycle, kind: str) -> bool:
        now, monotonic = self._clock.now(), self._clock.monotonic()
        if cycle.jobs[kind].seconds_left(now, monotonic) > 0:
            return False
        return kind != "chase" or not cycle.chase_waits(now, monotonic, self._surge_chase_wait)

    async def _run_job_kept(self, cycle: MailboxCycle, job: Job, worker: Worker) -> None:
        """`_run_job`, and whatever escapes its bookkeeping is the job's failure (retried
        with backoff): a mailbox's cycle never ends while its lease is held, or its mail
        would wait for nobody until the process restarts."""
        try:
            await self._run_job(cycle, job, worker)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(cycle, job, exc)

    def _lease_valid(self, cycle: MailboxCycle) -> bool:
        """No lease renewed in time (database unreachable): stop before another may start."""
        return self._leases is None or self._leases.valid(cycle.box.name)

    async def _outlast(self, previous: asyncio.Task[None]) -> None:
        _, pending = await asyncio.wait({previous}, timeout=self._stop_timeout)
        if pending:
            log.warning("previous cycle still busy after %.0f s: abandoning it", self._stop_timeout)
            previous.cancel()

    async def _nap(self, cycle: MailboxCycle, seconds: float) -> None:
        """Sleep on the clock until the next job is due; new mail or a stop wakes it early."""
        cycle.wake.clear()  # no await since the wait was computed: no wake-up is lost
        woken = asyncio.ensure_future(cycle.wake.wait())
        slept = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (woken, slept):
                task.cancel()
            await asyncio.gather(woken, slept, return_exceptions=True)

    async def _new_mail(self, name: str) -> None:
        cycle = self._cycles.get(name)
        if cycle is not None and not self._stopping:
            cycle.new_mail(self._clock.now())

    async def _run_job(self, cycle: MailboxCycle, job: Job, worker: Worker) -> bool:
        """Run one job to its end; True if it succeeded. Recorded in job_run and metrics."""
        box = cycle.box
        started = self._clock.now()
        job.last_start = started
        METRICS.job_started(box.name, job.kind, started)
        await self._record(job_store.job_started, box.name, job.kind, job.interval, started)
        task = asyncio.create_task(self._perform(job.kind, box, worker, cycle))
        self._running[task] = worker
        error: str | None = None
        try:
            await task
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            log.debug("%s %s abandoned at stop", job.kind, box.name)
            raise
        except Exception as exc:
            error = describe_error(exc)
            self._failed(cycle, job, exc)
        else:
            self._succeeded(cycle, job, started)
        finally:
            self._running.pop(task, None)
        await self._record(job_store.job_finished, box.name, job.kind, self._clock.now(), error)
        if not self._once:  # `run --once` is no service: it announces nothing (and keeps
            sdnotify.status(self.status_text())  # no cycles, so its status said 0 mailboxes)
        return error is None

    async def _perform(
        self, kind: str, box: MailboxSettings, worker: Worker, cycle: MailboxCycle
    ) -> None:
        if kind == "poll":
            with METRICS.timed_poll(box.name):
                more = await worker.poll(box)
            cycle.last_poll = self._clock.now()
            cycle.triage_left = bool(more)
            if more:  # a slice of a surge: the drain sends it, then the poll goes on
                cycle.jobs["poll"].requested_at = cycle.last_poll
        elif kind == "chase":
            await worker.chase(box)
        else:
            await worker.drain(box)

    def _succeeded(self, cycle: MailboxCycle, job: Job, started: datetime) -> None:
        if job.failures:
            log.info("%s works again after %d failure(s)", job.kind, job.failures)
        job.failures, job.retry_at, job.last_error = 0, None, None
        now = self._clock.now()
        job.due = next_fire(job.trigger, job.due, now)
        if job.requested_at is not None and job.requested_at >= started:
            job.due = now  # new mail came while this run was under way: it may have missed it
        if job.kind in ("poll", "chase"):  # what they queued leaves right away
            drain = cycle.jobs["drain"]
            drain.due = min(drain.due, now)

    def _failed(self, cycle: MailboxCycle, job: Job, exc: Exception) -> None:
        job.failures += 1
        job.last_error = describe_error(exc)
        delay = self._retry.delay(job.failures, self._draw)
        job.retry_at = self._clock.monotonic() + delay
        job.due = next_fire(job.trigger, job.due, self._clock.now())
        METRICS.job_failed(cycle.box.name, job.kind)
        # Our own errors explain themselves; anything else is a bug worth a traceback.
        trace = None if isinstance(exc, KeepwordError) else exc
        if self._once:
            log.error("%s failed: %s", job.kind, job.last_error, exc_info=trace)
            return
        log.error(
            "%s failed (%d in a row): %s; retrying the %s in %.0f s",
            job.kind, job.failures, job.last_error, job.kind, delay, exc_info=trace,
        )  # fmt: skip

    async def _record(self, write: Callable[..., None], *args: Any) -> None:
        """Write a job_run record; a store that is down must not stop the job itself."""
        engine = self._engine
        if engine is None:
            return

        def transaction() -> None:
            with engine.begin() as conn:
                write(conn, *args)

        try:
            await asyncio.to_thread(transaction)
        except Exception as exc:  # a record is best effort
            # A database restarting under the write may surface the driver's own error
            # (psycopg.OperationalError from a connection reset), not SQLAlchemy's.
            log.warning("job run not recorded: %s", describe_error(exc))

    def status_text(self) -> str:
        boxes = len(self._cycles)
        polls = [c.last_poll for c in self._cycles.values() if c.last_poll]
        failing = sum(1 for c in self._cycles.values() if c.failing)
        last = "none yet"
        if polls:
            zone = ZoneInfo(self._settings.keepword.timezone) if self._settings else UTC
            last = clock_time(max(polls), zone)  # the zone shown: one clock per view
        plural = "mailbox" if boxes == 1 else "mailboxes"
        return f"{boxes} {plural}, last poll {last}, {failing} failing"

    def cycles(self) -> dict[str, MailboxCycle]:
        return dict(self._cycles)

    # -- reload --------------------------------------------------------------------

    async def reload(self) -> bool:
        """Apply the config file again; keep the old one if the new one is invalid."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            if self._stopping:
                return False
            sdnotify.reloading()
            try:
                applied = await self._reload()
            finally:
                sdnotify.ready(self.status_text())
            return applied

    async def _reload(self) -> bool:
        assert self._engine is not None
        try:
            settings = self._load()
            require_mailboxes(settings, self.config_path)
            resolve_every_secret(settings)
            worker = self._factory(settings, self._engine, self._clock)
        except ConfigError as exc:
            log.error(
                "reload rejected, still running the previous config: %s",
                "; ".join(exc.problems),
            )
            return False
        except Exception as exc:
            log.error("reload rejected, still running the previous config: %s", exc)
            return False
        old_worker, old_settings = self._worker, self._settings
        self._worker, self._settings = worker, settings
        self._reschedule(settings)
        _name_mailboxes_without_relay(settings)
        if old_settings:
            for key in ("metrics_listen", "database_url", "state_dir"):
                if getattr(old_settings.keepword, key) != getattr(settings.keepword, key):
                    log.warning("keepword.%s changed: takes effect after a restart", key)
        # The old worker finishes what it started before it is closed.
        in_flight = {t for t, w in self._running.items() if w is old_worker}
        if in_flight:
            await asyncio.wait(in_flight, timeout=self._stop_timeout)
        if old_worker is not None:
            await self._close(old_worker)
        return True

    def _reschedule(self, settings: Settings) -> None:
        new = {box.name: box for box in settings.mailbox}
        old = {name: cycle.box for name, cycle in self._cycles.items()}
        removed = sorted(old.keys() - new.keys())
        added = sorted(new.keys() - old.keys())
        changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
        for name in removed:
            self._end_cycle(name)
        if self._leases is not None:  # added mailboxes are taken by the next lease round
            self._leases.mailboxes = sorted(new)
            for name in changed:
                if name in self._cycles:
                    self._start_cycle(new[name], self._leases.fence(name))
        else:
            for name in (*added, *changed):
                self._start_cycle(new[name])
        for name in new.keys() & old.keys() & self._cycles.keys():  # unchanged ones keep
            self._cycles[name].box = new[name]  # their cycle, but see the new settings
        log.info(
            "config reloaded: added %s; removed %s; changed %s; %d unchanged",
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
            len(new) - len(added) - len(changed),
        )

    # -- stop ----------------------------------------------------------------------

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopping = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self._drain_leases(loop)
        sdnotify.stopping(f"stopping: {len(self._running)} job(s) in flight")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for cycle in self._cycles.values():
            cycle.end()  # a sleeping cycle ends now, a busy one after its job
        await self._watchers.stop_all()
        cycles = set(self._cycle_tasks)
        if cycles:
            _, pending = await asyncio.wait(cycles, timeout=self._stop_timeout)
            if pending:
                # A blocking IMAP call in a thread cannot be interrupted: abandon it.
                self.abandoned = len(pending)
                log.warning(
                    "abandoning %d job(s) still running after %.0f s", len(pending),
                    self._stop_timeout,
                )  # fmt: skip
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
        await self._leave()
        if self._worker is not None:
            await self._close(self._worker)
        if self._metrics_server is not None:
            self._metrics_server.close()
        for task in list(self._background):
            task.cancel()
        log.info("keepword stopped")

    async def _close(self, worker: Worker) -> None:
        try:
            await asyncio.wait_for(worker.close(), timeout=CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("closing connections failed: %s", describe_error(exc))

    # -- one cycle (by hand, demo) -------------------------------------------------

    async def run_once(self) -> int:
        """poll, chase and drain every mailbox once; 1 if any step failed."""
        self._once = True
        settings, engine = self._start()
        try:
            worker = self._factory(settings, engine, self._clock)
            try:
                results = await asyncio.gather(
                    *(self._one_pass(worker, b) for b in settings.mailbox)
                )
            finally:
                await self._close(worker)
        finally:
            self._release()
        return 0 if all(results) else 1

    async def _one_pass(self, worker: Worker, box: MailboxSettings) -> bool:
        cycle = MailboxCycle.of(box, self._drain_interval, self._clock.now())
        ok = True
        with log_context(mailbox=box.name):
            for kind in JOBS:  # a failed step skips nothing else
                ok = await self._run_job(cycle, cycle.jobs[kind], worker) and ok
                while kind == "poll" and ok and cycle.triage_left:  # every slice, once
                    ok = await self._run_job(cycle, cycle.jobs[kind], worker)
        return ok
