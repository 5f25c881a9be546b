"""The daemon's lifecycle: scheduler, signals, sd_notify, reload, graceful stop.

One asyncio loop runs an APScheduler AsyncIOScheduler with three jobs per mailbox:
poll (then drain), chase, and drain. The jobs of one mailbox never overlap (a lock per
mailbox); a job that raises puts only its mailbox into capped exponential backoff
while the others keep working. Everything worth keeping lives in the database, so a
stop at any point (or a SIGKILL) loses nothing: the work in flight is finished or
abandoned, and the outbox keeps what was not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from keepword import sdnotify
from keepword.config import MailboxSettings, Settings, load_config
from keepword.errors import ConfigError, KeepwordError
from keepword.idle import MailboxWatchers
from keepword.logs import log_context
from keepword.metrics import METRICS, MetricsServer, start_metrics_server
from keepword.retry import MAILBOX_RETRY, RetryPolicy

log = logging.getLogger(__name__)

DRAIN_INTERVAL: Final = 10.0
STOP_TIMEOUT: Final = 20.0
CLOSE_TIMEOUT: Final = 5.0
JOB_KINDS: Final = ("poll", "chase", "drain")


class Worker(Protocol):
    """The use cases for one configuration (keepword.service implements it)."""

    async def poll(self, mailbox: MailboxSettings) -> None: ...  # ingest + triage
    async def chase(self, mailbox: MailboxSettings) -> None: ...  # plan + enqueue chase actions
    async def drain(self, mailbox: MailboxSettings) -> None: ...  # send the outbox
    async def close(self) -> None: ...


WorkerFactory = Callable[[Settings], Worker]


@dataclass
class MailboxHealth:
    failures: int = 0
    retry_at: float = 0.0  # monotonic seconds; jobs of the mailbox wait until then
    last_poll: datetime | None = None
    last_error: str | None = None


def with_dry_run(settings: Settings, dry_run: bool) -> Settings:
    if not dry_run or settings.keepword.dry_run:
        return settings
    keepword = settings.keepword.model_copy(update={"dry_run": True})
    return settings.model_copy(update={"keepword": keepword})


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


class Daemon:
    def __init__(
        self,
        config_path: Path,
        worker_factory: WorkerFactory,
        *,
        dry_run: bool = False,
        stop_timeout: float = STOP_TIMEOUT,
        drain_interval: float = DRAIN_INTERVAL,
        retry: RetryPolicy = MAILBOX_RETRY,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_path = config_path
        self._factory = worker_factory
        self._dry_run = dry_run
        self._stop_timeout = stop_timeout
        self._drain_interval = drain_interval
        self._retry = retry
        self._draw = draw
        self._clock = clock
        self._settings: Settings | None = None
        self._worker: Worker | None = None
        self._mailboxes: dict[str, MailboxSettings] = {}
        self._health: dict[str, MailboxHealth] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._stop_event: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._metrics_server: MetricsServer | None = None
        self._watchers = MailboxWatchers(self._poll_on_change)  # IMAP IDLE, keepword.idle
        self._stopping = False
        self.abandoned = 0  # jobs still running when the stop bound ran out

    # -- configuration -------------------------------------------------------------

    def _load(self) -> Settings:
        settings = with_dry_run(load_config(self.config_path), self._dry_run)
        logging.getLogger().setLevel(settings.keepword.log_level)
        return settings

    # -- the long-running daemon ---------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`); 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        settings = self._load()
        self._worker = self._factory(settings)
        self._settings = settings
        self._scheduler = AsyncIOScheduler(
            event_loop=loop,
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._schedule(settings.mailbox, replace=False)
        self._scheduler.start()
        self._install_signals(loop)
        self._start_metrics(settings)
        if not settings.mailbox:
            log.warning("no [[mailbox]] configured in %s: idle until reloaded", self.config_path)
        interval = sdnotify.watchdog_interval()
        if interval:
            self._spawn(self._watchdog(interval / 2))
        log.info(
            "keepword running: %d mailbox(es) from %s%s",
            len(settings.mailbox),
            self.config_path,
            " (dry run: nothing is sent)" if settings.keepword.dry_run else "",
        )
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
        # systemd restarts the service.
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(period)

    # -- jobs ----------------------------------------------------------------------

    def _schedule(self, boxes: list[MailboxSettings], *, replace: bool) -> None:
        assert self._scheduler is not None
        now = datetime.now(UTC)
        for box in boxes:
            name = box.name
            self._mailboxes[name] = box
            self._health[name] = MailboxHealth()
            self._locks.setdefault(name, asyncio.Lock())
            self._watchers.start(box, self._worker)
            intervals = {
                "poll": (float(box.poll_interval), now),  # first poll right away
                "chase": (float(box.chase.interval_seconds), None),
                "drain": (self._drain_interval, None),
            }
            for kind, (seconds, first) in intervals.items():
                self._scheduler.add_job(
                    self._job,
                    IntervalTrigger(seconds=seconds, timezone=UTC),
                    args=[kind, name],
                    id=f"{kind}:{name}",
                    name=f"{kind} {name}",
                    replace_existing=replace,
                    **({"next_run_time": first} if first else {}),
                )

    def _unschedule(self, name: str) -> None:
        assert self._scheduler is not None
        for kind in JOB_KINDS:
            with contextlib.suppress(LookupError):
                self._scheduler.remove_job(f"{kind}:{name}")
        self._mailboxes.pop(name, None)
        self._health.pop(name, None)
        self._watchers.stop(name)

    async def _job(self, kind: str, name: str) -> None:
        box = self._mailboxes.get(name)
        health = self._health.get(name)
        worker = self._worker
        if self._stopping or box is None or health is None or worker is None:
            return
        if self._clock() < health.retry_at:
            return  # backing off after an error
        lock = self._locks[name]
        if lock.locked():
            log.debug("%s skipped: mailbox %s is busy", kind, name)
            return
        task = asyncio.current_task()
        assert task is not None
        async with lock:
            self._running.add(task)
            try:
                with log_context(mailbox=name):
                    await self._perform(kind, box, worker, health)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # Abandoned at stop: already logged once; no traceback from APScheduler.
                log.debug("%s %s abandoned at stop", kind, name)
            except Exception as exc:
                self._failed(kind, box, health, exc)
            else:
                self._succeeded(health)
            finally:
                self._running.discard(task)
                sdnotify.status(self.status_text())

    async def _poll_on_change(self, name: str) -> None:
        # IDLE saw new mail: the scheduler's poll (+ drain) now, after any job in flight.
        lock = self._locks.get(name)
        while lock is not None and lock.locked() and not self._stopping:
            await asyncio.sleep(0.05)
        await self._job("poll", name)

    async def _perform(
        self, kind: str, box: MailboxSettings, worker: Worker, health: MailboxHealth
    ) -> None:
        if kind == "poll":
            with METRICS.timed_poll(box.name):
                await worker.poll(box)
            health.last_poll = datetime.now(UTC)
            await worker.drain(box)  # acknowledgements leave right after triage
        elif kind == "chase":
            await worker.chase(box)
        else:
            await worker.drain(box)

    def _succeeded(self, health: MailboxHealth) -> None:
        if health.failures:
            log.info("mailbox works again after %d failure(s)", health.failures)
        health.failures = 0
        health.retry_at = 0.0
        health.last_error = None

    def _failed(
        self, kind: str, box: MailboxSettings, health: MailboxHealth, exc: Exception
    ) -> None:
        health.failures += 1
        health.last_error = describe_error(exc)
        delay = self._retry.delay(health.failures, self._draw)
        health.retry_at = self._clock() + delay
        METRICS.job_failed(box.name, kind)
        with log_context(mailbox=box.name):
            log.error(
                "%s failed (%d in a row): %s; retrying this mailbox in %.0f s",
                kind,
                health.failures,
                health.last_error,
                delay,
                # Our own errors explain themselves; anything else is a bug worth a traceback.
                exc_info=None if isinstance(exc, KeepwordError) else exc,
            )
        self._retry_poll_at(box.name, delay)

    def _retry_poll_at(self, name: str, delay: float) -> None:
        # Move the next poll to the end of the backoff: sooner than a long poll
        # interval would, and never while the mailbox is still backing off.
        if self._scheduler is None or self._stopping:
            return
        with contextlib.suppress(LookupError):
            self._scheduler.modify_job(
                f"poll:{name}", next_run_time=datetime.now(UTC) + timedelta(seconds=delay)
            )

    def status_text(self) -> str:
        boxes = len(self._mailboxes)
        polls = [h.last_poll for h in self._health.values() if h.last_poll]
        failing = sum(1 for h in self._health.values() if h.failures)
        last = "none yet"
        if polls:
            zone = ZoneInfo(self._settings.keepword.timezone) if self._settings else UTC
            last = max(polls).astimezone(zone).strftime("%H:%M:%S")
        plural = "mailbox" if boxes == 1 else "mailboxes"
        return f"{boxes} {plural}, last poll {last}, {failing} failing"

    def health(self) -> dict[str, MailboxHealth]:
        return dict(self._health)

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
        try:
            settings = self._load()
        except ConfigError as exc:
            log.error(
                "reload rejected, still running the previous config: %s",
                "; ".join(exc.problems),
            )
            return False
        try:
            worker = self._factory(settings)
        except Exception as exc:
            log.error("reload rejected, still running the previous config: %s", exc)
            return False
        old_worker, old_settings = self._worker, self._settings
        in_flight = set(self._running)
        self._worker, self._settings = worker, settings
        self._reschedule(settings)
        if (
            old_settings
            and old_settings.keepword.metrics_listen != settings.keepword.metrics_listen
        ):
            log.warning("keepword.metrics_listen changed: takes effect after a restart")
        if in_flight:  # the old worker finishes what it started before it is closed
            await asyncio.wait(in_flight, timeout=self._stop_timeout)
        if old_worker is not None:
            await self._close(old_worker)
        return True

    def _reschedule(self, settings: Settings) -> None:
        new = {box.name: box for box in settings.mailbox}
        old = dict(self._mailboxes)
        removed = sorted(old.keys() - new.keys())
        added = sorted(new.keys() - old.keys())
        changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
        for name in removed:
            self._unschedule(name)
        self._schedule([new[n] for n in (*added, *changed)], replace=True)
        for name in new.keys() & old.keys():  # unchanged mailboxes keep jobs and health,
            self._mailboxes[name] = new[name]  # but see the new settings object
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
        in_flight = set(self._running)
        sdnotify.stopping(f"stopping: {len(in_flight)} job(s) in flight")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        assert self._scheduler is not None
        # pause, not shutdown: shutting the executor down would cancel the jobs in flight.
        self._scheduler.pause()
        await self._watchers.stop_all()
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=self._stop_timeout)
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
        self._scheduler.shutdown(wait=False)
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

    # -- one cycle (cron, demo) ----------------------------------------------------

    async def run_once(self) -> int:
        """poll, chase and drain every mailbox once; 1 if any step failed."""
        settings = self._load()
        worker = self._factory(settings)
        try:
            results = await asyncio.gather(*(self._cycle(worker, b) for b in settings.mailbox))
        finally:
            await self._close(worker)
        return 0 if all(results) else 1

    async def _cycle(self, worker: Worker, box: MailboxSettings) -> bool:
        ok = True
        with log_context(mailbox=box.name):
            for kind in ("poll", "chase", "drain"):
                try:
                    if kind == "poll":
                        with METRICS.timed_poll(box.name):
                            await worker.poll(box)
                    else:
                        await (worker.chase(box) if kind == "chase" else worker.drain(box))
                except Exception as exc:
                    ok = False
                    METRICS.job_failed(box.name, kind)
                    log.error(
                        "%s failed: %s",
                        kind,
                        describe_error(exc),
                        exc_info=None if isinstance(exc, KeepwordError) else exc,
                    )
        return ok
