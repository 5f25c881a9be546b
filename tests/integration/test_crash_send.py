"""SIGKILL between sending and recording: the customer still gets exactly one mail.

A real `keepword run --once` process sends an acknowledgement through a real SMTP
server and appends the copy to the real Dovecot Sent folder; the test holds the SQLite
write lock so that recording "sent" cannot happen, kills the process with SIGKILL at
that moment, and starts keepword again. The restarted sender must find its
deterministic Message-ID in the Sent folder and not send a second time.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import create_engine, select

from keepword.store.tables import outbox
from tests.fixtures.dovecot import Dovecot, load_mailserver

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


def write_config(path: Path, dovecot: Dovecot, user: str, smtp_port: int) -> None:
    path.write_text(
        f"""
[keepword]
state_dir = "{path.parent}"
database_url = "sqlite:///{path.parent / "kw.db"}"

[[mailbox]]
name = "support"
address = "support@example.com"
team = ["alice@example.com"]
sent_folder = "Sent"

[mailbox.imap]
host = "{dovecot.host}"
port = {dovecot.imap_port}
tls = "plain"
username = "{user}"
password_env = "KW_TEST_IMAP_PASSWORD"

[mailbox.smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "plain"
username = "{SMTP_USER}"
password_env = "KW_TEST_SMTP_PASSWORD"

[mailbox.chase]
digest = false  # the one mail under test is the acknowledgement, whatever the hour
"""
    )


def keepword(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keepword", "--config", str(config), "run", "--once"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_until(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


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

        question = EmailMessage()
        question["From"] = "Ann Lee <ann@example.org>"
        question["To"] = "support@example.com"
        question["Subject"] = "Charged twice"
        question["Date"] = format_datetime(datetime.now(UTC))
        question["Message-ID"] = make_msgid(domain="example.org")
        question.set_content("Please refund one of them.")
        dovecot.append(mail_user, "INBOX", question.as_bytes())

        doomed = keepword(config, env)
        assert handler.locked.wait(60), "keepword never sent the acknowledgement"
        # The copy lands in Sent, then keepword blocks on the database lock: kill it there.
        assert wait_until(lambda: len(dovecot.uids(mail_user, "Sent")) == 1)
        time.sleep(0.3)
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
