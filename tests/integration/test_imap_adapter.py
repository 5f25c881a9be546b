"""ImapSession against the real private Dovecot (tests/fixtures/dovecot.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepword.adapters import imap as imap_adapter
from keepword.adapters.credentials import Secret
from keepword.adapters.imap import (
    FetchedMessage,
    FolderStatus,
    ImapConnectionError,
    ImapFolderMissingError,
    ImapLoginError,
    ImapSession,
    ImapTlsError,
)
from keepword.config import TlsMode
from tests.corpora import corpus_rfc822, needs_corpora
from tests.fixtures.dovecot import Dovecot

pytestmark = pytest.mark.integration


def message(n: int, message_id: str | None = None) -> bytes:
    mid = message_id or f"<msg-{n}@example.org>"
    return (
        f"From: Customer <customer@example.org>\r\n"
        f"To: support@example.com\r\n"
        f"Subject: Question {n}\r\n"
        f"Date: Mon, 23 Nov 2026 08:00:00 +0100\r\n"
        f"Message-ID: {mid}\r\n"
        f"\r\n"
        f"Body of message {n}.\r\n"
    ).encode()


def session(dovecot: Dovecot, user: str, **overrides: object) -> ImapSession:
    settings = dovecot.imap_settings(user, **overrides)
    password = overrides.get("password", dovecot.users[user])
    return ImapSession(settings, Secret(str(password)))


def test_status_is_one_command_and_counts_messages(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.multiappend(mail_user, "INBOX", [message(n) for n in range(3)])
    with session(dovecot, mail_user) as imap:
        before = imap.commands
        status = imap.status("INBOX")
        assert imap.commands == before + 1
    assert status.messages == 3
    assert status.uidnext == 4
    assert status.uidvalidity > 0


def test_status_sees_new_mail_in_the_examined_folder(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.append(mail_user, "INBOX", message(1))
    with session(dovecot, mail_user) as imap:
        assert imap.new_uids("INBOX", 0) == [1]
        assert imap.selected_folder == "INBOX"
        dovecot.append(mail_user, "INBOX", message(2))
        assert imap.status("INBOX").uidnext == 3  # not the stale view of the selection
        imap.unselect()
        assert imap.selected_folder is None
        dovecot.append(mail_user, "INBOX", message(3))
        before = imap.commands
        assert imap.status("INBOX").uidnext == 4
        assert imap.commands == before + 1
        assert imap.fetch([1, 2, 3], folder="INBOX")[2].raw == message(3)


def test_status_of_empty_folder(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        status = imap.status("Sent")
    assert status == FolderStatus(uidvalidity=status.uidvalidity, uidnext=1, messages=0)


def test_new_uids_filters_the_star_quirk(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.multiappend(mail_user, "INBOX", [message(n) for n in range(5)])
    with session(dovecot, mail_user) as imap:
        assert imap.new_uids("INBOX", 0) == [1, 2, 3, 4, 5]
        assert imap.new_uids("INBOX", 3) == [4, 5]
        # UID SEARCH UID 6:* answers 5 (the highest UID): must not come back as "new".
        assert imap.new_uids("INBOX", 5) == []
        assert imap.new_uids("INBOX", 50) == []
        dovecot.append(mail_user, "INBOX", message(6))
        assert imap.new_uids("INBOX", 5) == [6]


def test_fetch_returns_raw_bytes_and_does_not_set_seen(dovecot: Dovecot, mail_user: str) -> None:
    raws = [message(n) for n in range(3)]
    dovecot.multiappend(mail_user, "INBOX", raws)
    with session(dovecot, mail_user) as imap:
        uids = imap.new_uids("INBOX", 0)
        fetched = imap.fetch(uids)
    assert [m.uid for m in fetched] == uids
    assert [m.raw for m in fetched] == raws
    for item in fetched:
        assert item.internaldate is not None
        assert item.internaldate.tzinfo is not None
        assert abs(item.internaldate - datetime.now(UTC)) < timedelta(minutes=5)
        assert b"\\Seen" not in dovecot.flags(mail_user, "INBOX", item.uid)


def test_fetch_batches_and_skips_expunged(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.multiappend(mail_user, "INBOX", [message(n) for n in range(7)])
    settings = dovecot.imap_settings(mail_user, fetch_batch=2)
    with ImapSession(settings, Secret(dovecot.users[mail_user])) as imap:
        fetched = imap.fetch([1, 2, 3, 4, 5, 6, 7, 99], folder="INBOX")
        assert [m.uid for m in fetched] == [1, 2, 3, 4, 5, 6, 7]
        assert imap.commands > 4  # 4 batches at least


@needs_corpora
def test_fetch_reads_the_corpus_as_imapclient_does(dovecot: Dovecot, mail_user: str) -> None:
    """The fetch reads imaplib's raw answer (adapters.imap._fetched): on every corpus
    mail, the same bytes and INTERNALDATE as imapclient's own reading."""
    raws = [raw for _, raw in corpus_rfc822()]
    with dovecot.client(mail_user) as client:
        for start in range(0, len(raws), 100):
            client.multiappend("INBOX", raws[start : start + 100])
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        expected = client.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE"])
    assert len(uids) == len(raws)
    with session(dovecot, mail_user, fetch_batch=97) as imap:
        fetched = imap.fetch(list(reversed(uids)), folder="INBOX")
    assert [m.uid for m in fetched] == list(reversed(uids))  # in the order asked
    for item in fetched:
        assert item.raw == expected[item.uid][b"BODY[]"], item.uid
        when = expected[item.uid][b"INTERNALDATE"].replace(tzinfo=None)
        assert item.internaldate is not None
        assert item.internaldate.astimezone().replace(tzinfo=None) == when, item.uid


def test_what_the_raw_fetch_cannot_read_is_fetched_through_imapclient(
    dovecot: Dovecot, mail_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = [message(n) for n in range(6)]
    dovecot.multiappend(mail_user, "INBOX", raws)

    read = imap_adapter._fetched

    def half_read(data: Sequence[Any]) -> dict[int, FetchedMessage]:
        return {uid: m for uid, m in read(data).items() if uid % 2}

    monkeypatch.setattr(imap_adapter, "_fetched", half_read)
    with session(dovecot, mail_user) as imap:
        fetched = imap.fetch([1, 2, 3, 4, 5, 6, 99], folder="INBOX")
    assert [(m.uid, m.raw) for m in fetched] == [(n + 1, raw) for n, raw in enumerate(raws)]
    assert all(m.internaldate is not None for m in fetched)


def test_message_sizes_are_rfc822_sizes_without_reading_bodies(
    dovecot: Dovecot, mail_user: str
) -> None:
    raws = [message(n) for n in range(3)]
    dovecot.multiappend(mail_user, "INBOX", raws)
    with session(dovecot, mail_user) as imap:
        uids = imap.new_uids("INBOX", 0)
        assert imap.message_sizes([]) == {}
        expected = {uid: len(raw) for uid, raw in zip(uids, raws, strict=True)}
        assert imap.message_sizes([*uids, max(uids) + 10]) == expected  # unknown: left out


def test_append_and_has_message_id(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        assert not imap.has_message_id("Sent", "<reply-1@example.com>")
        uid = imap.append("Sent", message(1, "<reply-1@example.com>"))
        assert uid == 1
        assert imap.has_message_id("Sent", "<reply-1@example.com>")
        assert not imap.has_message_id("Sent", "<reply-2@example.com>")
    assert b"\\Seen" in dovecot.flags(mail_user, "Sent", 1)


def test_has_message_id_is_exact_not_substring(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.append(mail_user, "INBOX", message(1, "<order-11@shop.example>"))
    with session(dovecot, mail_user) as imap:
        assert imap.has_message_id("INBOX", "<order-11@shop.example>")
        assert imap.has_message_id("INBOX", "order-11@shop.example")  # brackets optional
        assert not imap.has_message_id("INBOX", "<order-1@shop.example>")
        assert not imap.has_message_id("INBOX", "rder-11@shop.example")
        assert not imap.has_message_id("INBOX", "")


def test_folder_names_beyond_ascii(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        imap.ensure_folder("Erledigt/Ärger")
        assert "Erledigt/Ärger" in imap.folders()
        imap.append("Erledigt/Ärger", message(1))
        assert imap.new_uids("Erledigt/Ärger", 0) == [1]


def test_ensure_folder_creates_once(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        imap.ensure_folder("Archive/2026")
        imap.ensure_folder("Archive/2026")
        assert "Archive/2026" in imap.folders()
        assert imap.status("Archive/2026").messages == 0


def test_missing_folder_is_named(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        with pytest.raises(ImapFolderMissingError, match="Nope"):
            imap.status("Nope")
        with pytest.raises(ImapFolderMissingError, match="Nope"):
            imap.new_uids("Nope", 0)
        assert imap.status("INBOX").messages == 0  # the session survives


def test_capabilities(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        caps = imap.capabilities()
    assert "IMAP4REV1" in caps
    assert "IDLE" in caps


def test_wrong_password_is_login_error_without_the_password(dovecot: Dovecot) -> None:
    imap = session(dovecot, "alice@example.com", password="Wr0ng-Secret-xyz")
    with pytest.raises(ImapLoginError) as caught:
        imap.connect()
    text = str(caught.value)
    assert "alice@example.com" in text
    assert dovecot.host in text
    assert "Wr0ng-Secret-xyz" not in text
    assert not imap.connected


def test_oauth2_token_logs_in_with_xoauth2(dovecot: Dovecot, mail_user: str) -> None:
    # The test server checks an XOAUTH2 token like a password.
    settings = dovecot.imap_settings(mail_user)
    with ImapSession(settings, Secret(dovecot.users[mail_user], is_oauth2=True)) as imap:
        assert imap.status("INBOX").messages == 0


def test_starttls_and_implicit_tls_with_ca_file(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user, tls=TlsMode.STARTTLS, ca_file=dovecot.ca_file) as imap:
        assert imap.status("INBOX").messages == 0
    implicit = session(
        dovecot, mail_user, tls=TlsMode.IMPLICIT, port=dovecot.imaps_port, ca_file=dovecot.ca_file
    )
    with implicit as imap:
        assert imap.status("INBOX").messages == 0


def test_untrusted_certificate_names_the_host(dovecot: Dovecot, mail_user: str) -> None:
    imap = session(dovecot, mail_user, tls=TlsMode.IMPLICIT, port=dovecot.imaps_port)
    with pytest.raises(ImapTlsError, match=r"certificate of 127\.0\.0\.1 not trusted"):
        imap.connect()


def test_server_down_is_connection_error(dovecot: Dovecot, mail_user: str) -> None:
    imap = session(dovecot, mail_user)
    imap.connect()
    try:
        dovecot.stop()
        with pytest.raises(ImapConnectionError, match=r"127\.0\.0\.1"):
            imap.status("INBOX")
        assert not imap.connected
        with pytest.raises(ImapConnectionError, match="connect failed"):
            session(dovecot, mail_user).connect()
    finally:
        dovecot.start()
    with session(dovecot, mail_user) as again:
        assert again.status("INBOX").messages == 0


def test_uidvalidity_change_is_visible_in_status(dovecot: Dovecot, mail_user: str) -> None:
    dovecot.append(mail_user, "INBOX", message(1))
    with session(dovecot, mail_user) as imap:
        before = imap.status("INBOX")
    new = dovecot.set_uidvalidity_change(mail_user, "INBOX")
    with session(dovecot, mail_user) as imap:
        after = imap.status("INBOX")
    assert after.uidvalidity == new != before.uidvalidity
    assert after.messages == 1


def test_silent_server_times_out(dovecot: Dovecot, mail_user: str) -> None:
    # A real socket that accepts but never greets (a hung server or a wrong port).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        imap = session(dovecot, mail_user, port=port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ImapConnectionError, match=r"timed out after 0\.5 s"):
            imap.connect()
        assert time.monotonic() - started < 5
    assert not imap.connected


def test_implicit_tls_on_a_plain_port_is_a_tls_error(dovecot: Dovecot, mail_user: str) -> None:
    imap = session(dovecot, mail_user, tls=TlsMode.IMPLICIT, ca_file=dovecot.ca_file)
    with pytest.raises(ImapTlsError, match="TLS failed"):
        imap.connect()


def test_commands_count_per_connection(dovecot: Dovecot, mail_user: str) -> None:
    imap = session(dovecot, mail_user)
    assert imap.commands == 0
    with imap:
        after_login = imap.commands
        assert after_login >= 1
        imap.new_uids("INBOX", 0)  # EXAMINE + UID SEARCH
        assert imap.commands == after_login + 2
    assert imap.commands == 0


def test_idle_wakes_up_on_arrival(dovecot: Dovecot, mail_user: str) -> None:
    arrival = threading.Timer(0.3, dovecot.append, (mail_user, "INBOX", message(1)))
    with session(dovecot, mail_user) as imap:
        started = time.monotonic()
        arrival.start()
        try:
            changed = imap.wait_for_change("INBOX", timeout=10)
        finally:
            arrival.join()
        waited = time.monotonic() - started
        assert changed
        assert waited < 3, waited  # Dovecot notifies within ~0.5 s of the arrival
        assert imap.new_uids("INBOX", 0) == [1]  # the session is usable after IDLE


def test_idle_times_out_quietly(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        started = time.monotonic()
        assert not imap.wait_for_change("INBOX", timeout=0.5)
        assert 0.4 < time.monotonic() - started < 3
        assert imap.status("INBOX").messages == 0


def test_idle_sees_mail_that_came_before_it_began(dovecot: Dovecot, mail_user: str) -> None:
    with session(dovecot, mail_user) as imap:
        known = imap.status("INBOX").uidnext
        dovecot.append(mail_user, "INBOX", message(1))
        started = time.monotonic()
        assert imap.wait_for_change("INBOX", timeout=10, known_uidnext=known)
        assert time.monotonic() - started < 5  # at once, not after the 10 s timeout


def test_idle_on_a_stopped_server_is_connection_error(dovecot: Dovecot, mail_user: str) -> None:
    imap = session(dovecot, mail_user)
    imap.connect()
    stopper = threading.Timer(0.3, dovecot.stop)
    stopper.start()
    try:
        with pytest.raises(ImapConnectionError):
            imap.wait_for_change("INBOX", timeout=10)
    finally:
        stopper.join()
        dovecot.start()
    assert not imap.connected
