"""Near-instant polls: one IMAP IDLE watcher per mailbox (RFC 2177).

The watcher keeps its own connection (the poller's stays free for fetching), IDLEs on
the mailbox's first folder and calls `on_change` (the daemon's poll + drain) when the
server reports new mail. The periodic poll stays as the resync and as the fallback when
the server has no IDLE or the mailbox turns it off (`[mailbox.imap] idle = false`).

imapclient blocks, so the watcher's IMAP calls run in a thread of its own (never in
asyncio's default executor, which the other mailboxes' steps need). It stays in one
IDLE until the server speaks, RFC 2177's re-IDLE time comes (25 minutes, below the 29
the RFC allows) or the daemon stops: a stop interrupts the wait from the event loop
(`ImapSession.interrupt`: a self-pipe the waiting thread polls beside the socket), the
thread sends DONE and logs out. An idle mailbox costs no IMAP command between changes.
Mail that arrives between two waits (or during `on_change`) is not lost: the next
wait compares UIDNEXT with the last one seen and fires at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, ParamSpec, Protocol, TypeVar

from keepword.adapters.credentials import resolve_secret
from keepword.adapters.imap import FolderStatus, ImapSession
from keepword.adapters.logs import log_context
from keepword.clock import SYSTEM_CLOCK, Clock
from keepword.config import MailboxSettings
from keepword.errors import KeepwordError
from keepword.retry import MAILBOX_RETRY, RetryPolicy

log = logging.getLogger(__name__)

IDLE_TIMEOUT: Final = 25 * 60.0  # below RFC 2177's 29 minutes
IDLE_SLICE: Final = 5.0  # longest a stop takes: interrupt, DONE, LOGOUT (seconds)
STOP_GRACE: Final = IDLE_SLICE + 2.0

P = ParamSpec("P")
T = TypeVar("T")


class IdleSession(Protocol):
    """What the watcher needs of an IMAP connection (ImapSession has it)."""

    def connect(self) -> None: ...
    def capabilities(self) -> frozenset[str]: ...
    def status(self, folder: str) -> FolderStatus: ...
    def wait_for_change(self, folder: str, timeout: float, known_uidnext: int = 0) -> bool: ...
    def interrupt(self) -> None: ...  # from another thread: end the wait at once
    def close(self) -> None: ...


IdleSessionFactory = Callable[[MailboxSettings], IdleSession]
OnChange = Callable[[], Awaitable[None]]


def imap_session(box: MailboxSettings) -> IdleSession:
    return ImapSession(box.imap, resolve_secret(box.imap))


@dataclass(frozen=True, slots=True)
class Waits:
    """How the watcher waits: one IDLE at most `idle` seconds (RFC 2177's re-IDLE; tests
    shorten it, a stop never waits for it), after a failure `retry`'s backoff, on `clock`."""

    idle: float = IDLE_TIMEOUT
    retry: RetryPolicy = MAILBOX_RETRY
    clock: Clock = SYSTEM_CLOCK


async def watch_mailbox(
    box: MailboxSettings,
    on_change: OnChange,
    *,
    stop: asyncio.Event,
    session_factory: IdleSessionFactory = imap_session,
    waits: Waits = Waits(),
) -> None:
    """Call `on_change` whenever the first folder of box changes, until `stop` is set.

    Returns at once if IDLE is disabled for the mailbox, and after the first login if
    the server does not offer it. No error ends the watcher: a missing secret, a lost
    connection, a refused login or a bug in a round all restart it after the same
    capped exponential backoff as the mailbox's jobs (waited on `waits.clock`), logged
    once per failure. An `on_change` that raises is logged; the next change calls it
    again. Each (re)connect calls it once: mail that came before the watcher's first
    STATUS would never show as a change.
    """
    if not box.imap.idle:
        log.info("mailbox %s: IDLE disabled, polling every %d s", box.name, box.poll_interval)
        return
    watcher = _Watcher(box, on_change, stop, _Thread(box.name), min(waits.idle, IDLE_TIMEOUT))
    with log_context(mailbox=box.name), watcher.thread:
        while not stop.is_set():
            try:
                if not await _session_round(watcher, session_factory):
                    return  # the server offers no IDLE
            except Exception as exc:
                watcher.failures += 1
                delay = waits.retry.delay(watcher.failures)
                log.warning(
                    "mailbox %s: IDLE watcher failed (%d in a row): %s; restarting in %.1f s",
                    box.name,
                    watcher.failures,
                    str(exc) or type(exc).__name__,
                    delay,
                    # Our own errors explain themselves; anything else is a bug worth a trace.
                    exc_info=None if isinstance(exc, KeepwordError) else exc,
                )
                await _sleep_unless_stopped(stop, delay, waits.clock)


class _Thread:
    """The watcher's own thread: a blocking IDLE never holds a shared executor's thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"idle-{name}")

    def __enter__(self) -> _Thread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._executor.shutdown(wait=False)  # its last call (a LOGOUT) finishes alone

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the mailbox's log context, as to_thread
        return await loop.run_in_executor(
            self._executor, lambda: context.run(call, *args, **kwargs)
        )


@dataclass(slots=True)
class _Watcher:
    """One mailbox's watcher: what each of its connections shares."""

    box: MailboxSettings
    on_change: OnChange
    stop: asyncio.Event
    thread: _Thread
    wait: float  # the longest one IDLE lasts (seconds)
    failures: int = 0  # in a row

    def healthy(self) -> None:
        """A session came up: the next failure starts over."""
        if self.failures:
            log.info("mailbox %s: IDLE watcher works again after %d failure(s)",
                     self.box.name, self.failures)  # fmt: skip
        self.failures = 0


async def _session_round(watcher: _Watcher, session_factory: IdleSessionFactory) -> bool:
    """One connection's life: False if the server has no IDLE, else True when stopped.

    Everything that can fail, the secret and the session's creation included, is in here,
    so the caller's retry covers it.
    """
    thread = watcher.thread
    session = session_factory(watcher.box)
    # A stop interrupts the IDLE from the event loop: the thread sends DONE at once.
    stopper = asyncio.ensure_future(_interrupt_on(watcher.stop, session))
    try:
        await thread.run(session.connect)
        if "IDLE" not in await thread.run(session.capabilities):
            log.info("mailbox %s: server offers no IDLE, polling only", watcher.box.name)
            return False
        await _watch(watcher, session)
        return True
    finally:
        stopper.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
        await _close(session, thread)


async def _interrupt_on(stop: asyncio.Event, session: IdleSession) -> None:
    await stop.wait()
    session.interrupt()


async def _watch(watcher: _Watcher, session: IdleSession) -> None:
    folder, thread, stop = watcher.box.folders[0], watcher.thread, watcher.stop
    # UIDNEXT seen before each poll: anything delivered later shows as a higher UIDNEXT
    # when the next wait EXAMINEs the folder, even if IDLE was not running then.
    known = (await thread.run(session.status, folder)).uidnext
    log.debug("IDLE on %s from UIDNEXT %d", folder, known)
    # Resync: what arrived between the last poll (or the lost connection) and this
    # STATUS is already counted in `known`; one poll now takes it in (an idle poll is
    # one STATUS per folder).
    await _notify(watcher.on_change)
    watcher.healthy()  # connected, logged in, STATUS answered
    while not stop.is_set():
        changed = await thread.run(session.wait_for_change, folder, watcher.wait, known)
        if not changed or stop.is_set():
            continue
        known = (await thread.run(session.status, folder)).uidnext
        await _notify(watcher.on_change)


async def _notify(on_change: OnChange) -> None:
    try:
        await on_change()
    except Exception as exc:  # the poll's own failures are the daemon's business
        log.debug("poll after an IDLE notification failed: %s", exc)  # the daemon logs it


async def _sleep_unless_stopped(stop: asyncio.Event, delay: float, clock: Clock) -> None:
    """Sleep `delay` seconds of `clock`; a stop ends the sleep at once."""
    stopped = asyncio.ensure_future(stop.wait())
    slept = asyncio.ensure_future(clock.sleep(delay))
    try:
        await asyncio.wait({stopped, slept}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, slept):
            task.cancel()
        await asyncio.gather(stopped, slept, return_exceptions=True)


async def _as_task(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _close(session: IdleSession, thread: _Thread) -> None:
    # close() never raises; shielded so a cancelled watcher still logs out.
    await asyncio.shield(thread.run(session.close))


Watch = Callable[[MailboxSettings, OnChange, asyncio.Event], Awaitable[None]]


class MailboxWatchers:
    """The daemon's IDLE watcher tasks, one per mailbox, started with the mailbox's cycle.

    `watch` is the worker's (Service.watch: watch_mailbox on the mailbox's server).
    """

    def __init__(self, on_change: Callable[[str], Awaitable[None]]) -> None:
        self._on_change = on_change
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, box: MailboxSettings, watch: Watch) -> None:
        """(Re)start the watcher of box; a running one for the same name is stopped."""
        self.stop(box.name)
        if not box.imap.idle:
            return
        stop = asyncio.Event()
        name = box.name

        async def changed() -> None:
            await self._on_change(name)

        task: asyncio.Task[None] = asyncio.create_task(
            _as_task(watch(box, changed, stop)), name=f"idle {name}"
        )
        self._stops[name] = stop
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a mail problem (those are retried): the periodic poll carries on.
            log.error("%s: watcher stopped", task.get_name(), exc_info=task.exception())

    def stop(self, name: str) -> None:
        """Ask the watcher of name to end (its IDLE is interrupted at once)."""
        stop = self._stops.pop(name, None)
        if stop is not None:
            stop.set()

    async def stop_all(self, timeout: float = STOP_GRACE) -> None:
        for name in list(self._stops):
            self.stop(name)
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
