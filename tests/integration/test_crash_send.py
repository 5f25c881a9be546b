"""SIGKILL between sending and recording: the customer still gets exactly one mail.

A real `keepword run --once` process sends an acknowledgement through a real SMTP
server and appends the copy to the real Dovecot Sent folder; the test holds the SQLite
write lock so that recording "sent" cannot happen, kills the process with SIGKILL at
that moment, and starts keepword again. The restarted sender must find its
deterministic Message-ID in the Sent folder and not send a second time.

The worst moment is earlier: the relay has the whole mail but has not answered the
final dot when keepword dies. Then keepword made no copy; only the relay can file
one (as Gmail or Microsoft 365 do), and it may do so after keepword has restarted.
The restarted sender must hold the mail, not send it again at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import create_engine, select

from keepword.config import MailboxSettings
from keepword.store.tables import outbox
from tests.fixtures import configs
from tests.fixtures.dovecot import Dovecot, load_mailserver
from tests.fixtures.installations import customer_question
from tests.fixtures.waiting import COSTLY, wait_until

pytestmark = pytest.mark.integration

SMTP_USER, SMTP_PASSWORD = "support@example.com", "smtp-pw-123"


class LockingHandler:
    """Captures mail; on the first DATA takes the database's write lock, then says 250."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.received: list[bytes] = []
        self.lock: sqlite3.Connection | None = None
        self.locked = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.content))
        if not self.locked.is_set():
            self.lock = sqlite3.connect(self.database, check_same_thread=False, timeout=10)
            self.lock.execute("BEGIN IMMEDIATE")  # keepword cannot record anything now
            self.locked.set()
        return "250 2.0.0 accepted"

    def release(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.rollback()
            lock.close()


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
    ok = isinstance(auth, LoginPassword) and auth.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok)


def write_config(
    path: Path,
    dovecot: Dovecot,
    user: str,
    smtp_port: int,
    *,
    smtp: dict[str, Any] | None = None,
    **mailbox: Any,
) -> None:
    """Secrets from the environment (KW_TEST_IMAP_PASSWORD, KW_TEST_SMTP_PASSWORD)."""
    box = MailboxSettings(
        name="support",
        address="support@example.com",
        team=["alice@example.com"],
        imap=dovecot.imap_settings(user, password_env="KW_TEST_IMAP_PASSWORD"),
        smtp={
            "host": "127.0.0.1",
            "port": smtp_port,
            "tls": "plain",
            "username": SMTP_USER,
            "password_env": "KW_TEST_SMTP_PASSWORD",
            **(smtp or {}),
        },
        # The one mail under test is the acknowledgement, whatever the hour: no digest.
        chase={"digest": False},
        **mailbox,
    )
    keepword = {"state_dir": path.parent, "database_url": f"sqlite:///{path.parent / 'kw.db'}"}
    configs.write_config(path, keepword, box)


def keepword(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keepword", "--config", str(config), "run", "--once"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_sigkill_after_send_before_record_sends_exactly_once(
    dovecot: Dovecot, mail_user: str, tmp_path: Path
) -> None:
    config = tmp_path / "keepword.toml"
    handler = LockingHandler(tmp_path / "kw.db")
    port = load_mailserver().free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        write_config(config, dovecot, mail_user, port)
        env = {
            **os.environ,
            "KW_TEST_IMAP_PASSWORD": dovecot.users[mail_user],
            "KW_TEST_SMTP_PASSWORD": SMTP_PASSWORD,
        }
        first = keepword(config, env)  # first contact: empty mailbox, nothing to answer
        assert first.wait(60) == 0, first.stdout.read() if first.stdout else ""

        dovecot.append(mail_user, "INBOX", customer_question())

        doomed = keepword(config, env)
        assert handler.locked.wait(60), "keepword never sent the acknowledgement"
        # The copy lands in Sent, then keepword cannot record (the database is locked):
        # kill it there. Whether it already waits on the lock or not, nothing is recorded.
        assert wait_until(lambda: len(dovecot.uids(mail_user, "Sent")) == 1, poll=COSTLY)
        assert doomed.poll() is None, "keepword finished although it could not record"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        handler.release()

        engine = create_engine(f"sqlite:///{tmp_path / 'kw.db'}")
        with engine.connect() as conn:
            state, attempts = conn.execute(select(outbox.c.state, outbox.c.attempts)).one()
        assert (state, attempts) == ("pending", 1), "the kill came before recording"

        again = keepword(config, env)
        output = again.communicate(timeout=60)[0].decode()
        assert again.returncode == 0, output
        with engine.connect() as conn:
            assert conn.execute(select(outbox.c.state)).scalar_one() == "sent"
        engine.dispose()
        assert len(handler.received) == 1, "the customer must not get a second copy"
        assert len(dovecot.uids(mail_user, "Sent")) == 1
    finally:
        handler.release()
        controller.stop()


class WithholdingRelay:
    """Takes every mail and files it in the sender's Sent folder itself (like Gmail);
    the first one is answered only when the test releases it."""

    def __init__(self, dovecot: Dovecot, user: str) -> None:
        self.dovecot, self.user = dovecot, user
        self.received: list[bytes] = []
        self.taken = threading.Event()
        self.released = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.content)
        first = not self.received
        self.received.append(raw)
        if not first:
            await asyncio.to_thread(self.file_copy, raw)
            return "250 2.0.0 accepted"
        # The relay's own work outlives the client's connection (aiosmtpd cancels this
        # handler when the client goes away): file the copy from a thread of its own.
        threading.Thread(target=self.file_copy_when_released, args=(raw,), daemon=True).start()
        self.taken.set()
        await asyncio.to_thread(self.released.wait, 60)
        return "250 2.0.0 accepted"

    def file_copy(self, raw: bytes) -> None:
        self.dovecot.append(self.user, "Sent", raw)

    def file_copy_when_released(self, raw: bytes) -> None:
        if self.released.wait(60):
            self.file_copy(raw)


def test_sigkill_before_the_relay_answers_sends_exactly_once(
    dovecot: Dovecot, mail_user: str, tmp_path: Path
) -> None:
    config = tmp_path / "keepword.toml"
    relay = WithholdingRelay(dovecot, mail_user)
    port = load_mailserver().free_port()
    controller = Controller(
        relay, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        write_config(
            config,
            dovecot,
            mail_user,
            port,
            append_to_sent=False,  # the relay files the copy
            smtp={"unknown_outcome_wait": 1},
        )
        env = {
            **os.environ,
            "KW_TEST_IMAP_PASSWORD": dovecot.users[mail_user],
            "KW_TEST_SMTP_PASSWORD": SMTP_PASSWORD,
        }
        first = keepword(config, env)
        assert first.wait(60) == 0, first.stdout.read() if first.stdout else ""
        dovecot.append(mail_user, "INBOX", customer_question())

        doomed = keepword(config, env)
        assert relay.taken.wait(60), "keepword never sent the acknowledgement"
        doomed.send_signal(signal.SIGKILL)  # the relay has the mail; keepword never hears
        doomed.wait(10)

        # Restarted at once (systemd would): the relay has filed no copy yet.
        engine = create_engine(f"sqlite:///{tmp_path / 'kw.db'}")
        restarted = keepword(config, env)
        output = restarted.communicate(timeout=60)[0].decode()
        assert restarted.returncode == 0, output
        assert len(relay.received) == 1, "sent again although it may have gone out"
        with engine.connect() as conn:
            state, held_until = conn.execute(
                select(outbox.c.sent_copy, outbox.c.next_attempt_at)
            ).one()
        assert state == "held"

        relay.released.set()  # the relay finishes and files its copy
        assert wait_until(lambda: len(dovecot.uids(mail_user, "Sent")) == 1, poll=COSTLY)
        assert wait_until(lambda: datetime.now(UTC) > held_until.replace(tzinfo=UTC))
        again = keepword(config, env)
        output = again.communicate(timeout=60)[0].decode()
        assert again.returncode == 0, output
        with engine.connect() as conn:
            assert conn.execute(select(outbox.c.state, outbox.c.sent_copy)).one() == (
                "sent",
                "found",
            )
        engine.dispose()
        assert len(relay.received) == 1, "the customer must not get a second copy"
        assert len(dovecot.uids(mail_user, "Sent")) == 1
    finally:
        relay.released.set()
        controller.stop()
