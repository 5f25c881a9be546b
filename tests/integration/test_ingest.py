"""Ingestion against the real local Dovecot and a real SQLite file.

Exactly once: every message appended to the server is stored once (raw bytes as the
server returns them), re-polling adds nothing, a crash mid-batch loses and doubles
nothing, a UIDVALIDITY change re-scans without duplicates, a server outage is recorded
and caught up afterwards, and nothing is marked \\Seen.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from keepword.adapters.imap import ImapSession
from keepword.config import KeepwordSettings, MailboxSettings, Settings
from keepword.domain.message_ids import sender_digest
from keepword.domain.model import Origin
from keepword.errors import MailboxError
from keepword.mail.parse import parse_message
from keepword.pipeline import ingest, parse_workers
from keepword.pipeline.ingest import (
    Folder,
    MailboxPoller,
    MailboxPollResult,
    SessionFactory,
    poll_folder,
)
from keepword.store import messages as store
from keepword.store.db import make_engine, open_store
from keepword.store.tables import folder_state, message, message_content, message_location
from tests.corpora import PRESENT, corpus_rfc822
from tests.fixtures.configs import run_keepword, secret_file
from tests.fixtures.configs import write_config as write_config_file
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.installations import customer_question
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


ROOT = Path(__file__).resolve().parents[2]


def now() -> datetime:
    return datetime.now(UTC)


def poll_mailbox(
    engine: Engine, box: MailboxSettings, session_factory: SessionFactory | None = None
) -> MailboxPollResult:
    """One poll of every folder over one new session, as `keepword import` and the
    daemon's first poll do."""
    poller = MailboxPoller(engine, settings_for(box, engine), box, session_factory=session_factory)
    try:
        return poller.poll(now)
    finally:
        poller.close()


def mail(number: int, *, subject: str = "Order question", body: str = "Where is it?") -> bytes:
    return (
        f"From: Customer {number} <c{number}@customer.test>\r\n"
        "To: support@example.com\r\n"
        f"Subject: {subject} {number}\r\n"
        f"Date: Mon, 2 Mar 2026 10:{number % 60:02d}:00 +0100\r\n"
        f"Message-ID: <m{number}.{os.getpid()}@customer.test>\r\n"
        "\r\n"
        f"{body} ({number})\r\n"
    ).encode()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_store(f"sqlite:///{tmp_path / 'keepword.db'}")


def mailbox_for(dovecot: Dovecot, user: str, **imap: Any) -> MailboxSettings:
    return MailboxSettings(
        name="support",
        address="support@example.com",
        folders=["INBOX"],
        sent_folder="Sent",
        done_folder="Done",
        imap=dovecot.imap_settings(user, **imap),
    )


def settings_for(box: MailboxSettings, engine: Engine) -> Settings:
    return Settings(
        keepword=KeepwordSettings(
            database_url=str(engine.url), allow_inline_passwords=True, state_dir=Path("/tmp")
        ),
        mailbox=[box],
    )


def server_messages(dovecot: Dovecot, user: str, folder: str = "INBOX") -> dict[int, bytes]:
    with dovecot.client(user) as imap:
        imap.select_folder(folder, readonly=True)
        uids = imap.search("ALL")
        data = imap.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
    return {int(uid): bytes(item[b"BODY[]"]) for uid, item in data.items()}


def locations(engine: Engine, folder: str = "INBOX") -> list[Any]:
    query = (
        select(
            message_location.c.uid,
            message_location.c.uidvalidity,
            message_location.c.message_pk,
            message_content.c.raw,
            message.c.is_history,
            message.c.quarantined,
            message.c.quarantine_reason,
            message.c.message_id,
            message.c.content_digest,
        )
        .join(message, message.c.id == message_location.c.message_pk)
        .join(message_content, message_content.c.message_pk == message.c.id)
        .where(message_location.c.folder == folder)
        .order_by(message_location.c.uidvalidity, message_location.c.uid)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def cursor(engine: Engine, folder: str = "INBOX") -> store.FolderCursor:
    with engine.connect() as conn:
        found = store.get_cursor(conn, "support", folder)
    assert found is not None
    return found


# -- every corpus file, exactly once -------------------------------------------------------


@pytest.mark.skipif(not PRESENT, reason="shared corpora not present")
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "two-parse-workers"])
def test_every_corpus_file_is_stored_exactly_once(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,
    session_for: Any,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if workers:  # the pipeline of a big backlog: batches parsed side by side, in order
        monkeypatch.setattr(ingest, "PARALLEL_PARSE_MIN", 1)
        monkeypatch.setattr(parse_workers, "PARSE_WORKERS", workers)
    corpus = corpus_rfc822()
    refused = append_all(dovecot, mail_user, [raw for _, raw in corpus])
    # Dovecot takes every file as it is (bare LF, CR-only, 8-bit); if it ever refuses
    # one, that must be the server's NO, and everything else must still arrive.
    assert all(isinstance(error, imaplib.IMAP4.error) for _, error in refused)
    on_server = server_messages(dovecot, mail_user)
    assert len(on_server) == len(corpus) - len(refused)

    box = mailbox_for(dovecot, mail_user, fetch_batch=100)
    session = session_for(box)
    result = poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert result.is_history

    stored = locations(engine)
    assert [row.uid for row in stored] == sorted(on_server)  # every UID once, none extra
    identities: dict[tuple[str, str], int] = {}
    # Message-ID and body -> the sender first stored with them: the same two from
    # another sender are another message, stored under a digest with the sender in it.
    first_sender: dict[tuple[str, str], str | None] = {}
    for row in stored:
        parsed = parse_message(on_server[row.uid])
        sender = parsed.sender.address if parsed.sender else None
        body = (parsed.message_id, parsed.content_digest)
        if (first_sender.setdefault(body, sender) or "") == (sender or ""):
            identity = body
        else:
            identity = (parsed.message_id, sender_digest(parsed.content_digest, sender))
        assert (row.message_id, row.content_digest) == identity, row.uid
        first = identities.setdefault(identity, row.uid)
        if first == row.uid:
            assert row.raw == on_server[row.uid], row.uid  # raw bytes exactly as served
        assert row.is_history
        assert row.quarantined == (row.quarantine_reason is not None)
    assert count(engine, message) == len(identities) == result.new
    assert result.known == len(on_server) - len(identities)
    quarantined = [row for row in stored if row.quarantined]
    assert result.quarantined == len({row.message_pk for row in quarantined})
    assert all(row.quarantine_reason for row in quarantined)

    # Polling again finds nothing and costs exactly one IMAP command (STATUS).
    before = session.commands
    again = poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert (again.new, again.known) == (0, 0)
    assert session.commands - before == 1
    assert count(engine, message_location) == len(on_server)

    # Nothing was marked \Seen by reading.
    with dovecot.client(mail_user) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert imap.search("SEEN") == []


def append_all(dovecot: Dovecot, user: str, raws: list[bytes]) -> list[tuple[int, Exception]]:
    """MULTIAPPEND in chunks; a refused chunk is retried one by one to find the culprit."""
    refused: list[tuple[int, Exception]] = []
    with dovecot.client(user) as imap:
        for start in range(0, len(raws), 100):
            chunk = raws[start : start + 100]
            try:
                imap.multiappend("INBOX", chunk)
                continue
            except imaplib.IMAP4.error:
                pass
            for offset, raw in enumerate(chunk):
                try:
                    imap.append("INBOX", raw)
                except imaplib.IMAP4.error as exc:
                    refused.append((start + offset, exc))
    return refused


# -- history vs new, \Seen --------------------------------------------------------------


def test_first_poll_is_history_later_mail_is_new_and_stays_unseen(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(3)])
    dovecot.append(mail_user, "Sent", mail(100, subject="Re: Order question"))
    box = mailbox_for(dovecot, mail_user)

    first = poll_mailbox(engine, box, session_for)
    assert first.ok
    assert first.folders["INBOX"].new == 3
    assert first.folders["INBOX"].is_history
    assert first.folders["Sent"].new == 1
    assert first.folders["Done"].new == 0

    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(3, 5)])
    second = poll_mailbox(engine, box, session_for)
    assert second.folders["INBOX"].new == 2
    assert not second.folders["INBOX"].is_history

    rows = locations(engine)
    assert [row.is_history for row in rows] == [True, True, True, False, False]
    assert [row.is_history for row in locations(engine, "Sent")] == [True]
    assert all(b"\\Seen" not in dovecot.flags(mail_user, "INBOX", row.uid) for row in rows)

    with engine.connect() as conn:
        facts = store.load_facts(conn, [row.message_pk for row in rows])
        sent = store.load_facts(conn, [locations(engine, "Sent")[0].message_pk])
    assert [f.is_history for f in facts] == [True, True, True, False, False]
    assert all(f.origin is Origin.INBOX for f in facts)
    assert sent[0].origin is Origin.SENT
    assert facts[3].sender is not None
    assert facts[3].sender.address == "c3@customer.test"
    assert cursor(engine).history_done


def test_a_failed_analyze_never_undoes_the_end_of_the_history(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,
    session_for: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Telling PostgreSQL's planner the tables' size only makes triage faster: when it
    fails, the first import still ends as history and the next mail is new, to answer."""

    def refused(conn: Any) -> None:
        raise OperationalError("ANALYZE message", {}, Exception("lock timeout"))

    monkeypatch.setattr(ingest.store, "refresh_statistics", refused)
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(3)])
    box = mailbox_for(dovecot, mail_user)
    first = poll_mailbox(engine, box, session_for)
    assert first.ok and first.folders["INBOX"].is_history
    assert "not analyzed" in caplog.text
    dovecot.append(mail_user, "INBOX", mail(3))
    second = poll_mailbox(engine, box, session_for)
    assert second.folders["INBOX"].new == 1 and not second.folders["INBOX"].is_history
    assert cursor(engine).history_done


def test_same_mail_in_inbox_and_sent_is_one_message_with_two_locations(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    raw = mail(7)
    dovecot.append(mail_user, "INBOX", raw)
    dovecot.append(mail_user, "Sent", raw)
    box = mailbox_for(dovecot, mail_user)
    poll_mailbox(engine, box, session_for)
    assert count(engine, message) == 1
    assert count(engine, message_location) == 2
    with engine.connect() as conn:
        [facts] = store.load_facts(conn, [locations(engine)[0].message_pk])
    assert facts.origin is Origin.SENT  # seen in Sent: the team's own mail


def test_kept_session_sees_mail_appended_by_others(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    box = mailbox_for(dovecot, mail_user)
    session = session_for(box)
    dovecot.append(mail_user, "INBOX", mail(1))
    assert poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now)).new == 1
    for number in range(2, 5):
        dovecot.append(mail_user, "INBOX", mail(number))
        result = poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
        assert (result.new, result.is_history) == (1, False)
        before = session.commands
        idle = poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
        assert idle.new == 0
        assert session.commands - before == 1


# -- crashes -------------------------------------------------------------------------------


def test_crash_mid_batch_loses_nothing_and_doubles_nothing(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,
    session_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(250)])
    box = mailbox_for(dovecot, mail_user, fetch_batch=50)
    # Run the full pipeline (fetch thread, parse worker process, storing) on a small set.
    monkeypatch.setattr(ingest, "PARALLEL_PARSE_MIN", 1)
    real_store = store.store_batch
    calls = 0

    def store_then_crash(*args: Any, **kwargs: Any) -> store.BatchResult:
        nonlocal calls
        calls += 1
        if calls == 3:
            # Inside the third batch's transaction, after its rows were written.
            real_store(*args, **kwargs)
            raise RuntimeError("power cut")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(store, "store_batch", store_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    # Batches 1-2 committed with their cursor; batch 3 rolled back as a whole. A first
    # import takes the oldest mail first (pipeline.history), so the cursor stands below
    # the lowest UID not stored yet.
    stored = {row.uid for row in locations(engine)}
    assert len(stored) == count(engine, message) == 100
    uids = sorted(dovecot.uids(mail_user))
    below = [uid for uid in uids if uid < min(set(uids) - stored)]
    assert cursor(engine).last_uid == max(below, default=0)
    assert not cursor(engine).history_done

    monkeypatch.setattr(store, "store_batch", real_store)
    result = poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    # Stored beyond the cursor before the crash: found again by location, not doubled.
    assert (result.new, result.known) == (150, len(stored - set(below)))
    rows = locations(engine)
    assert sorted(row.uid for row in rows) == uids
    assert count(engine, message) == 250
    assert all(row.is_history for row in rows)  # the interrupted first import stays history


class FetchFailedError(Exception):
    pass


def test_first_import_commits_its_cutoff_before_fetching_anything(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(5)])
    box = mailbox_for(dovecot, mail_user)
    session = session_for(box)
    uidnext = session.status("INBOX").uidnext

    def no_fetch(uids: Any) -> Any:
        raise FetchFailedError("the process dies at its first fetch")

    session.fetch = no_fetch
    with pytest.raises(FetchFailedError):
        poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
    state = cursor(engine)
    assert state.history_below_uid == uidnext
    assert (state.last_uid, state.history_done) == (0, False)

    dovecot.append(mail_user, "INBOX", mail(5))  # arrives before the restart
    result = poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert (result.new, result.is_history) == (6, True)
    assert [row.is_history for row in locations(engine)] == [True] * 5 + [False]
    assert cursor(engine).history_done


def test_uidvalidity_change_during_the_first_import_recuts_in_the_new_uid_space(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any, monkeypatch: Any
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(30)])
    box = mailbox_for(dovecot, mail_user, fetch_batch=10)
    real_store = store.store_batch
    calls = 0

    def crash_on_second(*args: Any, **kwargs: Any) -> store.BatchResult:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("power cut")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(store, "store_batch", crash_on_second)
    with pytest.raises(RuntimeError, match="power cut"):
        poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    monkeypatch.setattr(store, "store_batch", real_store)
    new_validity = dovecot.set_uidvalidity_change(mail_user)

    result = poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert result.uidvalidity_changed
    assert count(engine, message) == 30
    rows = [row for row in locations(engine) if row.uidvalidity == new_validity]
    assert len(rows) == 30
    # Old UIDs mean nothing now: the old cutoff must not be read against new UIDs.
    assert all(row.is_history for row in rows)
    state = cursor(engine)
    assert state.history_done
    assert state.history_below_uid == max(row.uid for row in rows) + 1

    dovecot.append(mail_user, "INBOX", mail(30))
    later = poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert (later.new, later.is_history) == (1, False)


def test_sigkill_of_keepword_import_then_rerun_is_exact(
    dovecot: Dovecot, mail_user: str, tmp_path: Path
) -> None:
    total = 3000
    body = "Lorem ipsum dolor sit amet. " * 150
    dovecot.multiappend(mail_user, "INBOX", [mail(n, body=body) for n in range(total)])
    config = write_config(dovecot, mail_user, tmp_path, fetch_batch=100)
    database = tmp_path / "state" / "keepword.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "keepword", "--config", str(config), "import", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert wait_for(database), "keepword import never created its database"
    engine = make_engine(f"sqlite:///{database}")  # the import migrates it, not us
    wait_until(lambda: process.poll() is not None or stored(engine) >= 200, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL, "import finished before it could be killed"
    at_kill = count(engine, message_location)
    assert 0 < at_kill < total
    assert at_kill % 100 == 0  # only whole batches were committed

    rerun = keepword(config, "import", "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "INBOX" in rerun.stdout
    rows = locations(engine)
    assert [row.uid for row in rows] == dovecot.uids(mail_user)
    assert count(engine, message) == total
    assert all(row.is_history for row in rows)


def wait_for(path: Path, timeout: float = 30) -> bool:
    return wait_until(path.exists, timeout)


def stored(engine: Engine) -> int:
    """Message locations stored so far (0 while the import has not created the tables)."""
    with contextlib.suppress(OperationalError):
        return count(engine, message_location)
    return 0


def write_config(
    dovecot: Dovecot,
    user: str,
    directory: Path,
    fetch_batch: int = 500,
    smtp: SmtpServer | None = None,
    fetch_batch_bytes: int | None = None,
) -> Path:
    imap = dovecot.imap_settings(
        user,
        password_file=secret_file(directory, "imap.password", dovecot.users[user]),
        timeout=30.0,  # keepword's own default, not the rig's
        fetch_batch=fetch_batch,
        **({"fetch_batch_bytes": fetch_batch_bytes} if fetch_batch_bytes else {}),
    )
    sending: dict[str, Any] = {}
    if smtp is not None:
        password = secret_file(directory, "smtp.password", smtp.password)
        # The mail under test is the acknowledgement, whatever the hour: no digest.
        sending = {"smtp": smtp.settings(password_file=password), "chase": {"digest": False}}
    box = MailboxSettings(name="support", address="support@example.com", imap=imap, **sending)
    return write_config_file(directory / "keepword.toml", {"state_dir": directory / "state"}, box)


def keepword(config: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run_keepword(config, *args, timeout=timeout)


def import_killed_after(config: Path, database: Path, at_least: int) -> int:
    """Start `keepword import`, SIGKILL it once `at_least` locations are committed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "keepword", "--config", str(config), "import", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert wait_for(database), "keepword import never created its database"
    engine = make_engine(f"sqlite:///{database}")
    try:
        wait_until(lambda: process.poll() is not None or stored(engine) >= at_least, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL, "import finished before it was killed"
        return count(engine, message_location)
    finally:
        engine.dispose()


def test_sigkill_during_first_import_keeps_its_cutoff_so_new_mail_is_answered(
    dovecot: Dovecot, mail_user: str, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """The cutoff is committed before the first fetch; a restart reads it back.

    The old code took the cutoff from the UIDNEXT of each poll until the import was
    done, so mail delivered between the crash and the restart became history.
    """
    total = 3000
    body = "Lorem ipsum dolor sit amet. " * 150
    dovecot.multiappend(mail_user, "INBOX", [mail(n, body=body) for n in range(total)])
    config = write_config(dovecot, mail_user, tmp_path, fetch_batch=100, smtp=smtp_server)
    database = tmp_path / "state" / "keepword.db"
    at_kill = import_killed_after(config, database, at_least=200)
    assert 0 < at_kill < total

    dovecot.append(mail_user, "INBOX", customer_question("ann@example.org"))
    rerun = keepword(config, "run", "--once")
    assert rerun.returncode == 0, rerun.stderr

    engine = make_engine(f"sqlite:///{database}")
    rows = locations(engine)
    engine.dispose()
    assert [row.uid for row in rows] == dovecot.uids(mail_user)
    *old, newcomer = rows
    assert all(row.is_history for row in old)  # the old mail stays history
    assert not newcomer.is_history, "mail that arrived after the crash became history"
    answers = [m for m in smtp_server.messages if "ann@example.org" in m.rcpt_tos]
    assert len(answers) == 1, "the new customer got no acknowledgement"
    assert not any(m for m in smtp_server.messages if "customer.test" in " ".join(m.rcpt_tos))


# -- UIDVALIDITY ---------------------------------------------------------------------------


def test_uidvalidity_change_rescans_without_duplicates(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(20)])
    box = mailbox_for(dovecot, mail_user, fetch_batch=7)
    session = session_for(box)
    first = poll_folder(session, Folder(engine, box, "INBOX", Origin.INBOX, now))
    assert first.new == 20
    old_validity = cursor(engine).uidvalidity

    new_validity = dovecot.set_uidvalidity_change(mail_user)
    dovecot.append(mail_user, "INBOX", mail(20))
    again = poll_folder(session_for(box), Folder(engine, box, "INBOX", Origin.INBOX, now))

    assert again.uidvalidity_changed
    assert (again.new, again.known) == (1, 20)
    assert count(engine, message) == 21
    assert cursor(engine).uidvalidity == new_validity != old_validity
    rescanned = [row for row in locations(engine) if row.uidvalidity == new_validity]
    assert [row.uid for row in rescanned] == dovecot.uids(mail_user)
    newcomer = [row for row in rescanned if not row.is_history]
    assert len(newcomer) == 1  # the unknown mail is new, the known ones stay history
    assert b"(20)" in newcomer[0].raw


# -- server down -------------------------------------------------------------------------


def test_server_down_is_recorded_and_the_next_poll_catches_up(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    dovecot.append(mail_user, "INBOX", mail(1))
    box = mailbox_for(dovecot, mail_user, timeout=3.0)
    poll_mailbox(engine, box, session_for)

    dovecot.stop()
    try:
        with pytest.raises(MailboxError) as failure:
            poll_mailbox(engine, box, session_for)
        assert "127.0.0.1" in str(failure.value)
        with engine.connect() as conn:
            errors = dict(
                conn.execute(select(folder_state.c.folder, folder_state.c.last_error)).all()
            )
        assert set(errors) == {"INBOX", "Sent", "Done"}
        assert all(errors.values())
    finally:
        dovecot.start()

    dovecot.append(mail_user, "INBOX", mail(2))
    result = poll_mailbox(engine, box, session_for)
    assert result.ok
    assert result.folders["INBOX"].new == 1
    assert cursor(engine).last_error is None
    assert [row.uid for row in locations(engine)] == dovecot.uids(mail_user)


def test_missing_folder_is_that_folders_error_the_others_are_polled(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    box = mailbox_for(dovecot, mail_user).model_copy(update={"done_folder": "Missing"})
    result = poll_mailbox(engine, box, session_for)
    # A missing folder is that folder's error; the others are polled.
    assert "Missing" in result.errors
    assert set(result.folders) == {"INBOX", "Sent"}
    assert cursor(engine, "Missing").last_error


def test_login_failure_raises_mailbox_error_and_records_it(
    dovecot: Dovecot, mail_user: str, engine: Engine
) -> None:
    box = mailbox_for(dovecot, mail_user, password="wrong")
    with pytest.raises(MailboxError):
        poll_mailbox(engine, box)
    error = cursor(engine).last_error
    assert error is not None
    assert "wrong" not in error


def test_mailbox_poller_keeps_its_session_and_reconnects_after_an_outage(
    dovecot: Dovecot, mail_user: str, engine: Engine, session_for: Any
) -> None:
    box = mailbox_for(dovecot, mail_user, timeout=3.0)
    opened: list[ImapSession] = []

    def counting_factory(box: MailboxSettings) -> ImapSession:
        session = session_for(box)
        opened.append(session)
        return session

    poller = MailboxPoller(
        engine,
        settings_for(box, engine),
        box,
        session_factory=counting_factory,
    )
    try:
        dovecot.append(mail_user, "INBOX", mail(1))
        assert poller.poll(now).folders["INBOX"].new == 1
        before = opened[0].commands
        idle = poller.poll(now)
        assert idle.new == 0
        assert opened[0].commands - before == 3  # one STATUS each: INBOX, Sent, Done
        assert len(opened) == 1  # no new login

        dovecot.stop()
        try:
            with pytest.raises(MailboxError):
                poller.poll(now)
            with pytest.raises(MailboxError):
                poller.poll(now)  # reconnect attempt fails too
        finally:
            dovecot.start()
        dovecot.append(mail_user, "INBOX", mail(2))
        assert poller.poll(now).folders["INBOX"].new == 1
        assert len(opened) == 2  # one reconnect after the outage
    finally:
        poller.close()
