"""The use cases the daemon schedules, for one configuration (daemon.Worker).

poll  = ingest new mail (IMAP) + triage it (cases, acknowledgements into the outbox)
chase = plan reminders, escalations and customer updates (into the outbox)
drain = send the outbox (SMTP), checking the Sent folder after a crash

Blocking work (imapclient, SQLAlchemy) runs in a thread of the mailbox's own (one
single-thread executor per mailbox), so the event loop, and with it the systemd
watchdog, stays responsive and no mailbox's steps queue behind another's. The IDLE
watchers have threads of their own (keepword.adapters.idle).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Engine

from keepword.adapters.idle import OnChange, Waits, watch_mailbox
from keepword.adapters.metrics import METRICS
from keepword.clock import SYSTEM_CLOCK
from keepword.clock import Clock as WaitClock
from keepword.config import MailboxSettings, Settings
from keepword.errors import MailboxError
from keepword.mail.render import Renderer
from keepword.pipeline.acknowledge import acknowledge_case
from keepword.pipeline.chase import ChaseResult, chase_mailbox
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.ingest import MailboxPoller, MailboxPollResult, SessionFactory
from keepword.pipeline.promising import PredictorKeeper
from keepword.pipeline.send import (
    DrainOptions,
    DrainResult,
    ImapSentCopy,
    Servers,
    drain_outbox,
)
from keepword.pipeline.triage import TriageResult, triage_pending
from keepword.store import outbox
from keepword.store.db import open_store
from keepword.store.triage_state import triage_backlog

log = logging.getLogger(__name__)

# A poll triages at most this many messages, then the drain sends what they queued and
# the poll goes on: in a surge of 2,000 the first acknowledgements leave after the first
# slice, not after the last (docs/benchmarks.md, "Speed: the surge end to end").
TRIAGE_SLICE = 200
# The first slice of a surge is smaller: a poll that was not already in one takes in at
# most this many of the customers' new mails and triages this many, so the first
# acknowledgements leave after a fetch of 50 mails, not of a whole fetch batch (500) and
# a slice of 200 (bench/surge_daemon.py: the first ~1.7 -> ~1.0 s on a 20k history; the
# last unchanged). The team's replies in Sent and Done are taken in a fetch batch at a
# time as before: each stops a case's chase.
FIRST_SLICE = 50
# The inbox first: while a surge is being taken in and acknowledged, the Sent and Done
# folders wait (each slice's acknowledgements would otherwise come back through Sent
# and be fetched, parsed and triaged before the next customer's mail), but never longer
# than this: a staff reply in Sent stops the chase of its case.
OTHER_FOLDERS_WAIT = timedelta(seconds=30)

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        engine: Engine | None = None,
        session_factory: SessionFactory | None = None,
        waits: WaitClock = SYSTEM_CLOCK,
        owns_engine: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.waits = waits  # the IDLE watcher's backoff sleeps on the daemon's clock
        self.engine = engine or open_store(settings.keepword.effective_database_url())
        self._owns_engine = owns_engine or engine is None
        self._session_factory = session_factory
        self._renderers = {
            box.name: Renderer.for_mailbox(settings, box) for box in settings.mailbox
        }
        self._pollers: dict[str, MailboxPoller] = {}
        # The promise predictor of a mailbox's last triage run, for its next run.
        self.keepers = {box.name: PredictorKeeper() for box in settings.mailbox}
        self._threads: dict[str, ThreadPoolExecutor] = {}
        # Per mailbox: a surge is being acknowledged (the last poll left more), stored
        # mail waits for triage (the last triage left more), and when its Sent and Done
        # folders were last polled.
        self._surging: dict[str, bool] = {}
        self._triage_left: dict[str, bool] = {}
        self._others_polled: dict[str, datetime] = {}
        self._sent_copies: dict[str, ImapSentCopy] = {}  # kept during a surge

    def _thread(self, box: MailboxSettings) -> ThreadPoolExecutor:
        """The mailbox's own worker thread: its steps never wait for another mailbox's."""
        executor = self._threads.get(box.name)
        if executor is None:
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"kw-{box.name}")
            self._threads[box.name] = executor
        return executor

    async def _in_thread(self, box: MailboxSettings, call: Callable[[], T]) -> T:
        # The caller's context (the mailbox's log context) goes along, as to_thread does.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._thread(box), lambda: context.run(call)
        )

    def _poller(self, box: MailboxSettings) -> MailboxPoller:
        """One kept-open IMAP session per mailbox: an idle poll is one STATUS per folder."""
        poller = self._pollers.get(box.name)
        if poller is None:
            poller = MailboxPoller(
                self.engine, self.settings, box, session_factory=self._session_factory
            )
            self._pollers[box.name] = poller
        return poller

    # -- blocking steps (also used directly by tests and `keepword run --once`) ----------

    def ingest(
        self, box: MailboxSettings, *, inbox_only: bool = False, first_slice: int | None = None
    ) -> MailboxPollResult:
        try:
            result = self._poller(box).poll(
                self.clock,
                inbox_only=inbox_only,
                first_slice=first_slice,
                triage=lambda through: self._triage_through(box, through),
            )
        except MailboxError:
            METRICS.imap_error(box.name)
            raise
        METRICS.ingested(box.name, result.new)
        METRICS.quarantined(box.name, sum(r.quarantined for r in result.folders.values()))
        if result.errors:
            METRICS.imap_error(box.name)
        return result

    def _desk(self, box: MailboxSettings) -> MailboxContext:
        """The mailbox at this instant, as the use cases take it."""
        return MailboxContext(
            self.settings, box, self.engine, self._renderers[box.name], self.clock()
        )

    def _triage_through(self, box: MailboxSettings, through: datetime | None) -> None:
        """During a first import: the mail written up to `through` (pipeline.history)."""
        while self.triage(box, TRIAGE_SLICE, through=through).more:
            pass

    def triage(
        self, box: MailboxSettings, limit: int = 5000, *, through: datetime | None = None
    ) -> TriageResult:
        desk = self._desk(box)
        desk.keeper = self.keepers[box.name]
        result = triage_pending(desk, acknowledger=acknowledge_case, limit=limit, through=through)
        if result.triaged or result.closed:
            log.info(
                "mailbox %s: triaged %d message(s), opened %d case(s), queued %d "
                "acknowledgement(s), closed %d; %d without a usable sender",
                box.name,
                result.triaged,
                result.opened,
                result.acknowledged,
                result.closed,
                result.unusable,
            )
        if result.unusable:
            METRICS.without_sender(box.name, result.unusable)
        with self.engine.connect() as conn:
            METRICS.triage_retrying(box.name, triage_backlog(conn, box.name).retrying)
        return result

    def chase_now(self, box: MailboxSettings) -> ChaseResult:
        return chase_mailbox(self._desk(box))

    async def drain_now(self, box: MailboxSettings) -> DrainResult:
        with self.engine.connect() as conn:
            if not outbox.has_due_work(conn, self.clock(), box.name):
                return DrainResult()
        sent_copy = self._sent_copy(box)
        try:
            # The one dry-run switch, settings.keepword.dry_run (`run --dry-run` sets it).
            servers = Servers(sent_copy, executor=self._thread(box))
            options = DrainOptions(defer_copies=bool(self._surging.get(box.name)))
            return await drain_outbox(
                self.engine, self.settings, box, self.clock(), servers, options
            )
        finally:
            if not self._surging.get(box.name):
                await self._close_sent_copy(box)

    def _sent_copy(self, box: MailboxSettings) -> ImapSentCopy | None:
        """The drain's Sent folder: its connection is kept through a surge's drains (a
        login a drain, ~14 ms, eleven times in a surge of 2,000), let go after."""
        if not box.sent_folder:
            return None
        copy = self._sent_copies.get(box.name)
        if copy is None:
            copy = self._sent_copies[box.name] = ImapSentCopy(box.imap, box.sent_folder)
        return copy

    async def _close_sent_copy(self, box: MailboxSettings) -> None:
        copy = self._sent_copies.pop(box.name, None)
        if copy is not None:
            await self._in_thread(box, copy.close)

    # -- daemon.Worker -------------------------------------------------------------------

    async def poll(self, mailbox: MailboxSettings) -> bool:
        """Ingest (live mail: one fetch batch), then triage up to TRIAGE_SLICE messages;
        unless a surge is under way, FIRST_SLICE of the customers' new mail and of triage.
        True if more waits on the server or for triage (the daemon drains what this
        slice queued and polls again at once). While the prefetch worker still fetches
        the customers' next batch and stored mail waits for triage, the poll triages
        that and leaves the batch to the next poll, instead of waiting for it."""
        name = mailbox.name
        inbox_only = self._inbox_first(mailbox)
        first = None if self._surging.get(name) else FIRST_SLICE
        if inbox_only and self._triage_left.get(name) and self._poller(mailbox).prefetching:
            server_more = True  # the batch under way, at least
        else:
            taken = await self._in_thread(
                mailbox, lambda: self.ingest(mailbox, inbox_only=inbox_only, first_slice=first)
            )
            server_more = taken.more
        limit = first or TRIAGE_SLICE
        result = await self._in_thread(mailbox, lambda: self.triage(mailbox, limit))
        self._triage_left[name] = result.more
        more = server_more or result.more
        self._surging[name] = more
        return more

    def _inbox_first(self, box: MailboxSettings) -> bool:
        """Poll the customers' folders alone this time (a surge is being acknowledged and
        the other folders were polled less than OTHER_FOLDERS_WAIT ago)?"""
        now = self.clock()
        last = self._others_polled.get(box.name)
        if self._surging.get(box.name) and last is not None and now - last < OTHER_FOLDERS_WAIT:
            return True
        self._others_polled[box.name] = now
        return False

    async def chase(self, mailbox: MailboxSettings) -> None:
        await self._in_thread(mailbox, lambda: self.chase_now(mailbox))

    async def drain(self, mailbox: MailboxSettings) -> None:
        await self.drain_now(mailbox)

    async def watch(
        self, mailbox: MailboxSettings, on_change: OnChange, stop: asyncio.Event
    ) -> None:
        """IMAP IDLE on the mailbox; on_change (the daemon's poll + drain) on new mail."""
        await watch_mailbox(mailbox, on_change, stop=stop, waits=Waits(clock=self.waits))

    async def close(self) -> None:
        for poller in self._pollers.values():
            # Not the mailbox's thread: a step abandoned at stop may still hold it.
            await asyncio.to_thread(poller.close)
        for copy in self._sent_copies.values():
            await asyncio.to_thread(copy.close)
        self._sent_copies.clear()
        for executor in self._threads.values():
            executor.shutdown(wait=False)  # a step abandoned at stop ends on its own
        self._threads.clear()
        if self._owns_engine:  # the daemon's engine outlives a worker replaced by a reload
            await asyncio.to_thread(self.engine.dispose)


def make_worker(settings: Settings, engine: Engine, clock: WaitClock) -> Service:
    """The daemon's worker: the use cases on the daemon's store and clock."""
    return Service(
        settings,
        clock=clock.now,
        engine=engine,
        waits=clock,
        owns_engine=False,
    )
