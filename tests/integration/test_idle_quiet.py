"""An idle mailbox costs no IMAP command, a stop interrupts IDLE, mailboxes never queue."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from keepword.adapters.idle import watch_mailbox
from keepword.config import Settings
from keepword.runtime.service import Service
from tests.fixtures.dovecot import Dovecot
from tests.integration.test_idle import Changes, IdlingSession, Watch, mailbox

pytestmark = pytest.mark.integration

QUIET = 6.5  # longer than the 5 s IDLE slices the watcher used to re-issue


class CountingWatch(Watch):
    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[IdlingSession] = []

    def factory(self, box):  # type: ignore[no-untyped-def]
        session = IdlingSession(box, self)
        self.sessions.append(session)
        return session


def test_an_idle_mailbox_sends_no_command_while_it_waits(dovecot: Dovecot, mail_user: str) -> None:
    box = mailbox(dovecot, mail_user)

    async def run() -> tuple[int, int, float]:
        stop, watch = asyncio.Event(), CountingWatch()
        task = asyncio.create_task(
            watch_mailbox(box, Changes(), stop=stop, session_factory=watch.factory)
        )
        await watch.waiting()
        before = watch.sessions[-1].commands
        await asyncio.sleep(QUIET)  # a window to count in, not a synchronisation
        after = watch.sessions[-1].commands
        asked = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        return before, after, time.monotonic() - asked

    before, after, stopping = asyncio.run(run())
    assert after == before  # still in the one IDLE: no EXAMINE, IDLE, DONE every 5 s
    assert stopping < 1.0  # the stop interrupted the IDLE; it did not wait it out


def test_a_mailbox_step_never_waits_for_the_shared_executor(tmp_path: Path) -> None:
    """Every thread of asyncio's default executor busy (IDLE watchers used to hold them):
    a mailbox's chase still runs, in its own thread."""
    settings = Settings.model_validate(
        {
            "keepword": {
                "allow_inline_passwords": True,
                "database_url": f"sqlite:///{tmp_path / 'kw.db'}",
            },
            "mailbox": [
                {
                    "name": "support",
                    "address": "support@example.com",
                    "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password": "p"},
                }
            ],
        }
    )
    service = Service(settings)
    release = threading.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, release.wait, 30)
        try:
            await asyncio.wait_for(service.chase(settings.mailbox[0]), timeout=10)
        finally:
            release.set()
            await busy
            await service.close()

    asyncio.run(run())
