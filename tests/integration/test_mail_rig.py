"""The mail rig itself: scripts/mailserver and the Dovecot fixture helpers."""

from __future__ import annotations

import json
import logging
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.fixtures.dovecot import Dovecot, load_mailserver
from tests.fixtures.scripts import SCRIPTS
from tests.fixtures.smtp import (
    LOGIN_DATA_NOTICE,
    SMTP_HOST,
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpServer,
)

pytestmark = pytest.mark.integration

SCRIPT = SCRIPTS / "mailserver"


def raw(n: int) -> bytes:
    head = f"From: a@example.org\r\nSubject: rig {n}\r\nMessage-ID: <rig-{n}@x>\r\n"
    return f"{head}\r\n{n}\r\n".encode()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_script_start_and_stop_from_the_command_line() -> None:
    python = shutil.which("python3") or sys.executable  # stdlib only: system python works
    directory = Path(tempfile.mkdtemp(prefix="kw-cli-", dir="/tmp"))
    try:
        started = subprocess.run(
            [
                python,
                str(SCRIPT),
                "start",
                str(directory),
                "--user",
                "cli@example.com:cli-pw",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        ports = json.loads(started.stdout)
        assert ports["users"] == {"cli@example.com": "cli-pw"}
        with IMAPClient("127.0.0.1", ports["imap_port"], ssl=False, timeout=5) as imap:
            imap.login("cli@example.com", "cli-pw")
            names = {name for _flags, _sep, name in imap.list_folders()}
        assert names == {"INBOX", "Sent", "Done", "Drafts", "Trash"}
        assert accepts(ports["lmtp_port"])
        subprocess.run([python, str(SCRIPT), "stop", str(directory)], timeout=60, check=True)
        assert not accepts(ports["imap_port"])
        assert not accepts(ports["lmtp_port"])
        assert not load_mailserver()._children(load_mailserver().load(directory))
    finally:
        subprocess.run([python, str(SCRIPT), "stop", str(directory)], timeout=60, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_long_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="longer than 60"):
        load_mailserver().prepare(tmp_path / ("x" * 70))


def test_special_use_folders(dovecot: Dovecot, mail_user: str) -> None:
    with dovecot.client(mail_user) as imap:
        flags = {name: set(f) for f, _sep, name in imap.list_folders()}
    assert b"\\Sent" in flags["Sent"]
    assert b"\\Drafts" in flags["Drafts"]
    assert b"\\Trash" in flags["Trash"]


def test_lmtp_delivery_lands_in_inbox(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.deliver("customer@example.org", [mail_user], raw(1))
    assert dovecot.uids(mail_user) == [1]


def test_append_returns_uid_and_sets_flags(dovecot: Dovecot, mail_user: str) -> None:
    assert dovecot.append(mail_user, "Sent", raw(1), flags=["\\Seen"]) == 1
    assert dovecot.append(mail_user, "Sent", raw(2)) == 2
    assert b"\\Seen" in dovecot.flags(mail_user, "Sent", 1)
    assert b"\\Seen" not in dovecot.flags(mail_user, "Sent", 2)


def test_multiappend_in_chunks(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.multiappend(mail_user, "Done", [raw(n) for n in range(250)])
    assert dovecot.uids(mail_user, "Done") == list(range(1, 251))


def test_clear_empties_every_folder(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.append(mail_user, "INBOX", raw(1))
    dovecot.append(mail_user, "Trash", raw(2))
    with dovecot.client(mail_user) as imap:
        imap.create_folder("Scratch")
    dovecot.append(mail_user, "Scratch", raw(3))
    dovecot.clear(mail_user)
    assert dovecot.uids(mail_user, "INBOX") == []
    assert dovecot.uids(mail_user, "Trash") == []
    with dovecot.client(mail_user) as imap:
        assert not imap.folder_exists("Scratch")


def test_clean_dovecot_gives_empty_standard_users(clean_dovecot: Dovecot) -> None:
    clean_dovecot.append("support@example.com", "INBOX", raw(1))
    assert len(clean_dovecot.uids("support@example.com")) == 1


def test_clean_dovecot_again_is_empty(clean_dovecot: Dovecot) -> None:
    assert clean_dovecot.uids("support@example.com") == []


def test_uidvalidity_change_keeps_messages(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.append(mail_user, "INBOX", raw(1))
    with dovecot.client(mail_user) as imap:
        before = imap.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    new = dovecot.set_uidvalidity_change(mail_user, "INBOX")
    with dovecot.client(mail_user) as imap:
        after = imap.folder_status("INBOX", ["UIDVALIDITY", "MESSAGES"])
    assert new != before
    assert after[b"UIDVALIDITY"] == new
    assert after[b"MESSAGES"] == 1


def test_stop_drops_clients_and_start_brings_it_back(dovecot: Dovecot, mail_user: str) -> None:
    imap = dovecot.client(mail_user)
    dovecot.stop()
    try:
        assert not dovecot.is_running()
        assert not accepts(dovecot.imap_port)
        with pytest.raises((OSError, IMAPClient.AbortError)):
            imap.noop()
    finally:
        dovecot.start()
    assert dovecot.is_running()
    assert dovecot.uids(mail_user) == []


def test_added_user_can_log_in(dovecot: Dovecot) -> None:
    dovecot.add_user("late@example.com", "late-pw")
    with dovecot.client("late@example.com") as imap:
        assert imap.folder_exists("Done")


def test_relay_logins_leave_no_aiosmtpd_deprecation_notice(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd logs "Session.login_data is deprecated" on every AUTH it answers itself
    (a soak printed ~350); the fixtures drop that notice and nothing else of its log."""
    caplog.set_level(logging.INFO, logger="mail.log")
    for n in range(2):
        with smtplib.SMTP(SMTP_HOST, smtp_server.port, timeout=10) as client:
            client.login(SMTP_USER, SMTP_PASSWORD)
            client.sendmail("a@example.org", ["b@example.org"], raw(n))
    assert len(smtp_server.messages) == 2  # the logins were really answered
    relay_log = [r.getMessage() for r in caplog.records if r.name == "mail.log"]
    assert relay_log, "aiosmtpd logged nothing at all: the check below would prove nothing"
    assert not [m for m in relay_log if LOGIN_DATA_NOTICE in m]
    logging.getLogger("mail.log").warning("relay trouble")
    # (aiosmtpd's server thread may still log a session's end after it)
    assert "relay trouble" in [r.getMessage() for r in caplog.records if r.name == "mail.log"]
