"""The IDLE watcher against the real Dovecot: fast notice, reconnects, prompt stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from keepword.adapters.credentials import resolve_secret
from keepword.adapters.idle import IDLE_SLICE, IdleSession, MailboxWatchers, Waits, watch_mailbox
from keepword.adapters.imap import ImapSession
from keepword.config import KeepwordSettings, MailboxSettings, Settings
from keepword.retry import RetryPolicy
from keepword.runtime.daemon import Daemon
from keepword.store.jobs import job_runs
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.waiting import wait_until_async

pytestmark = pytest.mark.integration


def mailbox(dovecot: Dovecot, user: str, **imap: Any) -> MailboxSettings:
    return MailboxSettings(name="support", address=user, imap=dovecot.imap_settings(user, **imap))


def customer_mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann Lee <ann@example.org>"
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content("Hello, please help.")
    return msg.as_bytes()


class Changes:
    """on_change that records when it ran (monotonic seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = asyncio.Event()

    async def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()

    async def next(self, timeout: float) -> float:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()
        return self.times[-1]


async def watching(
    box: MailboxSettings,
    body: Callable[[Changes, Watch], Awaitable[None]],
    **options: Any,
) -> asyncio.Task[None]:
    """Run the watcher while body runs; stop it after. Returns the finished task."""
    changes, stop, watch = Changes(), asyncio.Event(), Watch()
    task = asyncio.create_task(
        watch_mailbox(box, changes, stop=stop, session_factory=watch.factory, **options)
    )
    try:
        await body(changes, watch)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    return task


class IdlingSession(ImapSession):
    """A real Dovecot session that tells the test when the watcher waits for a change."""

    def __init__(self, box: MailboxSettings, watch: Watch) -> None:
        super().__init__(box.imap, resolve_secret(box.imap))
        self.watch = watch

    def wait_for_change(self, folder: str, timeout: float, known_uidnext: int = 0) -> bool:
        started = time.monotonic()
        self.watch.entered.clear()  # a new wait: only its own IDLE counts
        changed = super().wait_for_change(folder, timeout, known_uidnext)
        self.watch.calls.append((started, changed))
        return changed

    def _readable(self, client: Any, wake: int, timeout: float) -> bool:
        self.watch.entered.set()  # the server said "+ idling": it pushes changes from now on
        return super()._readable(client, wake, timeout)


class Watch:
    """The watcher's sessions, seen from the test: when it waits, and what woke it."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # set while the watcher is in IDLE itself
        self.calls: list[tuple[float, bool]] = []  # (when a wait began, did it see a change)
        self.sessions = 0  # sessions the watcher asked for (a reconnect asks again)

    def factory(self, box: MailboxSettings) -> IdleSession:
        self.sessions += 1
        return IdlingSession(box, self)

    async def waiting(self, timeout: float = 20.0) -> None:
        """Until the watcher (re)enters IDLE itself: mail from now on is pushed by it.

        Before that, the watcher's first STATUS may already count a new message as
        known; a fixed sleep raced with a slow login.
        """
        entered = await asyncio.to_thread(self.entered.wait, timeout)
        assert entered, "the watcher never started waiting"
        self.entered.clear()

    def pushed(self, sent: float) -> bool:
        """Did a wait that began before `sent` end with a change: IDLE, not a later poll?"""
        return any(changed and started < sent for started, changed in self.calls)


def test_append_while_watching_is_pushed_by_idle(dovecot: Dovecot, mail_user: str) -> None:
    """Each new mail wakes the watcher from IDLE itself (how fast: bench/latency.py)."""
    box = mailbox(dovecot, mail_user)

    async def body(changes: Changes, watch: Watch) -> None:
        await watch.waiting()
        assert len(changes.times) == 1  # the resync on connecting, nothing spurious
        changes.event.clear()
        for n in range(3):
            sent = time.monotonic()
            await asyncio.to_thread(
                dovecot.append, mail_user, "INBOX", customer_mail(f"Broken printer {n}")
            )
            assert await changes.next(timeout=IDLE_SLICE + 10) > sent
            assert watch.pushed(sent), "noticed only by the next slice's EXAMINE"
            await watch.waiting()

    asyncio.run(watching(box, body))


def test_lmtp_delivery_fires_too(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user)

    async def body(changes: Changes, watch: Watch) -> None:
        await watch.waiting()
        changes.event.clear()  # the resync on connecting
        sent = time.monotonic()
        await asyncio.to_thread(
            dovecot.deliver, "ann@example.org", [mail_user], customer_mail("Invoice")
        )
        assert await changes.next(timeout=IDLE_SLICE + 10) > sent
        assert watch.pushed(sent)

    asyncio.run(watching(box, body))


def test_mail_arriving_during_on_change_is_not_lost(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user)
    calls: list[float] = []

    async def slow_poll() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:  # while "polling", a second mail arrives (no IDLE running)
            await asyncio.to_thread(dovecot.append, mail_user, "INBOX", customer_mail("Two"))
            await asyncio.sleep(1.0)  # a slow poll: the thing under test, not a wait

    async def run() -> None:
        stop, watch = asyncio.Event(), Watch()
        task = asyncio.create_task(
            watch_mailbox(box, slow_poll, stop=stop, session_factory=watch.factory)
        )
        await watch.waiting()
        await asyncio.to_thread(dovecot.append, mail_user, "INBOX", customer_mail("One"))
        await wait_until_async(lambda: len(calls) >= 2, timeout=8)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(run())
    assert len(calls) >= 2


def test_server_restart_reconnects_and_still_fires(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user, timeout=3.0)

    async def body(changes: Changes, watch: Watch) -> None:
        await watch.waiting()
        await asyncio.to_thread(dovecot.stop)
        try:  # the watcher notices, backs off and tries again while the server is down
            assert await wait_until_async(lambda: watch.sessions >= 2, timeout=10)
            # Any wait before the restart does not count; cleared while the server is
            # down, so an IDLE entered as soon as it is back is not cleared away.
            watch.entered.clear()
        finally:
            await asyncio.to_thread(dovecot.start)
        await watch.waiting()  # backoff (1 s, 2 s, ...) ran out; IDLE again
        changes.event.clear()
        sent = time.monotonic()
        await asyncio.to_thread(dovecot.append, mail_user, "INBOX", customer_mail("After"))
        assert await changes.next(timeout=10) - sent < 6.0

    asyncio.run(watching(box, body, waits=Waits(retry=RetryPolicy(first=1.0, cap=2.0))))


def test_stop_ends_the_watcher_within_one_slice(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user)

    async def run() -> float:
        stop, watch = asyncio.Event(), Watch()
        task = asyncio.create_task(
            watch_mailbox(
                box, Changes(), stop=stop, session_factory=watch.factory, waits=Waits(idle=2.0)
            )
        )
        await watch.waiting()
        asked = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        return time.monotonic() - asked

    assert asyncio.run(run()) < 3.0


def test_stop_while_the_server_is_down_ends_the_backoff(
    dovecot: Dovecot, mail_user: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = mailbox(dovecot, mail_user)
    caplog.set_level("WARNING", logger="keepword.adapters.idle")
    dovecot.stop()
    try:

        async def run() -> float:
            stop = asyncio.Event()
            waits = Waits(retry=RetryPolicy(first=60.0, cap=60.0))
            task = asyncio.create_task(watch_mailbox(box, Changes(), stop=stop, waits=waits))
            # The first connection failed: the watcher is in its backoff now.
            assert await wait_until_async(lambda: bool(failures_logged(caplog)), timeout=10)
            assert not task.done()  # it keeps trying
            asked = time.monotonic()
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            return time.monotonic() - asked

        # Within seconds, not the backoff's 60 (a generous bound: CI machines stall).
        assert asyncio.run(run()) < 5.0
    finally:
        dovecot.start()


def test_idle_disabled_returns_at_once(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user, idle=False)
    opened: list[str] = []

    def factory(box: MailboxSettings) -> IdleSession:
        opened.append(box.name)
        return ImapSession(box.imap, resolve_secret(box.imap))

    started = time.monotonic()
    asyncio.run(watch_mailbox(box, Changes(), stop=asyncio.Event(), session_factory=factory))
    assert time.monotonic() - started < 5.0  # returns, never waits for the stop
    assert opened == []  # not even a connection


class NoIdleSession(ImapSession):
    """A real Dovecot session that hides IDLE, like a server without it."""

    def capabilities(self) -> frozenset[str]:
        return super().capabilities() - {"IDLE"}


def test_server_without_idle_returns_after_login(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user)
    sessions: list[NoIdleSession] = []

    def factory(box: MailboxSettings) -> IdleSession:
        session = NoIdleSession(box.imap, resolve_secret(box.imap))
        sessions.append(session)
        return session

    started = time.monotonic()
    asyncio.run(watch_mailbox(box, Changes(), stop=asyncio.Event(), session_factory=factory))
    assert time.monotonic() - started < 10.0  # returns, never waits for the stop
    assert len(sessions) == 1
    assert not sessions[0].connected  # logged out again


# -- wired into the daemon -------------------------------------------------------------


@pytest.mark.parametrize("idle", [True, False])
def test_daemon_acknowledges_new_mail_at_once_only_with_idle(
    dovecot: Dovecot,
    mail_user: str,
    smtp_server_factory: Callable[..., SmtpServer],
    tmp_path: Path,
    idle: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    smtp = smtp_server_factory()
    box = MailboxSettings(
        name="support",
        address=mail_user,
        poll_interval=3600,  # the scheduled poll runs once, at start: IDLE must do the rest
        sent_folder=None,
        imap=dovecot.imap_settings(mail_user, idle=idle),
        smtp=smtp.settings(),
        calendar={
            "hours": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
        },
    )
    settings = Settings(
        keepword=KeepwordSettings(state_dir=tmp_path, allow_inline_passwords=True),
        mailbox=[box],
    )
    config = tmp_path / "keepword.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    store = create_engine(settings.keepword.effective_database_url())
    caplog.set_level("DEBUG", logger="keepword.adapters.idle")

    def first_poll_done() -> bool:  # what was there is history now: new mail is news
        try:
            with store.connect() as conn:
                return any(r.job == "poll" and r.last_ok_at for r in job_runs(conn, "support"))
        except OperationalError:
            return False  # no tables yet

    def watching() -> bool:  # the watcher's STATUS: a later mail is a change to it
        return not idle or "IDLE on INBOX from UIDNEXT" in caplog.text

    def acknowledged() -> bool:
        return any("ann@example.org" in m.rcpt_tos for m in smtp.messages)

    async def run() -> tuple[float | None, float]:
        daemon = Daemon(config)  # keepword.runtime.service.make_worker, wired statically
        running = asyncio.create_task(daemon.run())
        assert await wait_until_async(lambda: first_poll_done() and watching(), timeout=20)
        sent = time.monotonic()
        await asyncio.to_thread(
            dovecot.deliver, "ann@example.org", [mail_user], customer_mail("Broken printer")
        )
        # Without IDLE nothing may come within the 4 s: a window, not a synchronisation.
        took = time.monotonic() - sent if await wait_until_async(acknowledged, 4.0) else None
        asked = time.monotonic()
        daemon.request_stop()
        await asyncio.wait_for(running, timeout=15)
        return took, time.monotonic() - asked

    took, stopping = asyncio.run(run())
    store.dispose()
    if idle:
        assert took is not None and took < 2.0
    else:
        assert took is None  # only the next poll (in an hour) would see it
    assert stopping < IDLE_SLICE + 2.0  # the watcher ends with the daemon


class RecordingWorker:
    """A worker whose watch() runs until stopped and reports one change at start."""

    def __init__(self) -> None:
        self.watching: list[str] = []
        self.stopped: list[str] = []

    async def watch(self, mailbox: MailboxSettings, on_change: Any, stop: asyncio.Event) -> None:
        self.watching.append(mailbox.name)
        await on_change()
        await stop.wait()
        self.stopped.append(mailbox.name)


def test_watchers_start_per_idle_mailbox_and_stop(dovecot: Dovecot, mail_user: str) -> None:
    changed: list[str] = []

    async def on_change(name: str) -> None:
        changed.append(name)

    async def run() -> RecordingWorker:
        worker = RecordingWorker()
        watchers = MailboxWatchers(on_change)
        on = mailbox(dovecot, mail_user)
        off = MailboxSettings(
            name="quiet", address=mail_user, imap=dovecot.imap_settings(mail_user, idle=False)
        )
        watchers.start(on, worker.watch)
        watchers.start(off, worker.watch)  # IDLE off: no watcher
        assert await wait_until_async(lambda: changed == ["support"], timeout=5)
        watchers.start(on, worker.watch)  # a restart stops the first watcher
        restarted = lambda: len(changed) == 2 and worker.stopped == ["support"]  # noqa: E731
        assert await wait_until_async(restarted, timeout=5), (changed, worker.stopped)
        await watchers.stop_all(timeout=2.0)
        return worker

    worker = asyncio.run(run())
    assert worker.watching == ["support", "support"]
    assert worker.stopped == ["support", "support"]
    assert changed == ["support", "support"]


# -- the watcher comes back after any error (issue 10, item 6) ----------------------------


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "IDLE watcher failed" in r.getMessage()]


def test_missing_password_file_then_created_idle_delivers_the_next_mail(
    dovecot: Dovecot, mail_user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret is resolved inside the restart loop: a file that appears later is used."""
    password_file = tmp_path / "imap.pw"
    imap = dovecot.imap_settings(mail_user, password_file=password_file)
    box = MailboxSettings(name="support", address=mail_user, imap=imap)
    fast = RetryPolicy(first=0.2, cap=0.4)

    async def body(changes: Changes, watch: Watch, task: asyncio.Task[None]) -> None:
        assert await wait_until_async(lambda: len(failures_logged(caplog)) >= 2, 10), "two failures"
        assert not task.done(), "the watcher ended for good"
        password_file.write_text(dovecot.users[mail_user] + "\n")
        await watch.waiting()  # logged in, IDLE running
        changes.event.clear()  # the resync on connecting
        sent = time.monotonic()
        await asyncio.to_thread(dovecot.append, mail_user, "INBOX", customer_mail("Hello?"))
        assert await changes.next(timeout=IDLE_SLICE + 10) > sent
        assert watch.pushed(sent), "IDLE itself saw the mail"

    caplog.set_level("WARNING", logger="keepword.adapters.idle")
    asyncio.run(watching_task(box, body, waits=Waits(retry=fast)))
    failures = failures_logged(caplog)
    assert f"{password_file} does not exist" in failures[0]
    counts = [int(m.split("(")[1].split(" ")[0]) for m in failures]
    assert counts == list(range(1, len(counts) + 1))  # each failure logged once


class FlakyFactory:
    """A bug on the first connection attempt (not a KeepwordError), then the real server."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.calls = 0

    def __call__(self, box: MailboxSettings) -> IdleSession:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the session's setup")
        return self.watch.factory(box)


def test_any_error_restarts_the_watcher(
    dovecot: Dovecot, mail_user: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = mailbox(dovecot, mail_user)

    async def body(changes: Changes, watch: Watch, task: asyncio.Task[None]) -> None:
        await watch.waiting()
        assert not task.done()
        changes.event.clear()
        sent = time.monotonic()
        await asyncio.to_thread(dovecot.append, mail_user, "INBOX", customer_mail("After a bug"))
        assert await changes.next(timeout=IDLE_SLICE + 10) > sent

    caplog.set_level("WARNING", logger="keepword.adapters.idle")
    asyncio.run(
        watching_task(box, body, waits=Waits(retry=RetryPolicy(first=0.2, cap=0.4)), flaky=True)
    )
    [failure] = [r for r in caplog.records if "IDLE watcher failed" in r.getMessage()]
    assert "a bug in the session's setup" in failure.getMessage()
    assert failure.exc_info is not None  # not ours: logged with its traceback


async def watching_task(
    box: MailboxSettings,
    body: Callable[[Changes, Watch, asyncio.Task[None]], Awaitable[None]],
    *,
    flaky: bool = False,
    **options: Any,
) -> None:
    changes, stop, watch = Changes(), asyncio.Event(), Watch()
    factory: Callable[[MailboxSettings], IdleSession] = (
        FlakyFactory(watch) if flaky else watch.factory
    )
    task = asyncio.create_task(
        watch_mailbox(box, changes, stop=stop, session_factory=factory, **options)
    )
    try:
        await body(changes, watch, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
