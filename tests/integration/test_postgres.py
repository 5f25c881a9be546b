"""keepword's store on a real PostgreSQL (a private server from tests/fixtures/postgres.py).

The schema promises nothing SQLite-only: here the migrations run on PostgreSQL and must
build exactly tables.py, datetimes keep their zone, and the real flows (ingestion from
Dovecot, triage, acknowledgement, chasing and sending through aiosmtpd) run with the
engine on PostgreSQL instead of SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, StatementError

import tests.integration.test_chasing as chasing
import tests.integration.test_ingest as ingesting
import tests.unit.test_facts_at_hand as facts_test
from keepword.adapters.imap import ImapSession
from keepword.config import MailboxSettings, Settings
from keepword.domain.cases import CaseState
from keepword.domain.model import CaseStatus, Origin, PromiseState
from keepword.mail.parse import parse_message
from keepword.mail.render import Renderer
from keepword.pipeline import ingest
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.ingest import MailboxPollResult
from keepword.pipeline.triage import TriageResult, triage_pending
from keepword.store import cases as case_store
from keepword.store import messages as store
from keepword.store import outbox as outbox_store
from keepword.store.bulk import execute_many
from keepword.store.db import make_engine, migrate, open_store, table_names
from keepword.store.facts_at_hand import FactsAtHand, FactsBudget
from keepword.store.tables import (
    case,
    case_correspondent,
    folder_state,
    message,
    message_content,
    message_location,
    metadata,
    outbox,
)
from tests.corpora import needs_corpora
from tests.fixtures.bulk_rows import INSERT, TRIAGED, message_rows, written_both_ways
from tests.fixtures.configs import run_keepword, write_config
from tests.fixtures.desk import ALICE, ANN, CAROL
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.postgres import Postgres
from tests.fixtures.schema import schema_drift, upgrade_from_0001, upgrade_mail_from_0011
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.statements import recorded

pytestmark = pytest.mark.integration


def desk_at(engine: Engine, settings: Settings, box: MailboxSettings) -> MailboxContext:
    """The mailbox as triage takes it, at the ingest tests' clock."""
    return MailboxContext(
        settings, box, engine, Renderer.for_mailbox(settings, box), ingesting.now()
    )


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    store = open_store(postgres_url)
    yield store
    store.dispose()


# -- schema --------------------------------------------------------------------------------


def test_migrations_build_exactly_the_declared_schema_on_postgres(postgres_url: str) -> None:
    engine = open_store(postgres_url)
    try:
        assert engine.dialect.name == "postgresql"
        assert set(metadata.tables) <= table_names(engine)
        with engine.connect() as conn:
            assert schema_drift(conn) == []
            head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        migrate(engine)  # again: nothing to do
        with engine.connect() as conn:
            again = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert again == [(head,)]
    finally:
        engine.dispose()


def test_upgrade_from_the_first_revision_keeps_the_data_on_postgres(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert upgrade_from_0001(engine) == (7, ("SUP", 0))
        with engine.connect() as conn:
            assert schema_drift(conn) == []
    finally:
        engine.dispose()


def test_the_upgrade_moves_every_mail_out_of_the_message_row_on_postgres(
    postgres_url: str,
) -> None:
    raw = customer_mail(1) + b"Quoted text that repeats. " * 2000  # past TOAST's threshold
    engine = upgrade_mail_from_0011(make_engine(postgres_url), {3: (raw, "Where is my order?")})
    try:
        with engine.connect() as conn:
            assert store.raw_message(conn, 3) == raw
            assert [f.body_text for f in store.load_facts(conn, [3])] == ["Where is my order?"]
            assert schema_drift(conn) == []
    finally:
        engine.dispose()


def test_mail_is_compressed_with_lz4_and_reads_back(engine: Engine) -> None:
    """The columns that hold mail use lz4 (migration 0009: pglz cost an import more than
    the writing), and a mail stored that way reads back byte for byte."""
    with engine.connect() as conn:
        methods = dict(
            conn.exec_driver_sql(
                "SELECT attrelid::regclass::text || '.' || attname, attcompression"
                " FROM pg_attribute WHERE attname IN ('raw', 'body_text', 'headers')"
                " AND attrelid IN"
                " ('message'::regclass, 'message_content'::regclass, 'outbox'::regclass)"
                " AND NOT attisdropped"
            ).all()
        )
    assert methods == {
        "message_content.raw": "l",
        "message_content.body_text": "l",
        "message.headers": "l",
        "outbox.raw": "l",
    }
    raw = customer_mail(1) + b"Quoted text that repeats. " * 2000  # past TOAST's threshold
    item = store.StoreItem(uid=1, raw=raw, parsed=parse_message(raw))
    folder = store.Folder("support", "INBOX", Origin.INBOX, 1)
    with engine.begin() as conn:
        stored_now = datetime.now(UTC)
        [pk] = store.store_batch(conn, folder, [item], is_history=False, now=stored_now).new_pks
    with engine.connect() as conn:
        stored = store.raw_message(conn, pk)
        compressed = conn.exec_driver_sql(
            f"SELECT pg_column_compression(raw) FROM message_content WHERE message_pk = {pk}"
        ).scalar_one()
    assert stored == raw and compressed == "lz4"


@needs_corpora
def test_on_the_corpus_the_facts_at_hand_are_what_postgresql_reads_back(engine: Engine) -> None:
    """JSONB, PostgreSQL's text and its times: the facts a first import hands to triage
    are still exactly what triage would read back (store.facts_at_hand)."""
    at_hand = FactsAtHand(FactsBudget(10**6, 10**12))
    raws = facts_test._corpus()
    handed: list[Any] = []
    for start in range(0, len(raws), 97):
        items = facts_test._items(raws[start : start + 97], start + 1)
        handed += facts_test._store(engine, facts_test.INBOX, items, at_hand).facts()
    assert len(handed) > 500
    assert handed == facts_test._read_back(engine, [f.pk for f in handed])


def test_datetimes_round_trip_as_aware_utc(engine: Engine) -> None:
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX", last_poll_at=berlin))
        got = conn.execute(select(folder_state.c.last_poll_at)).scalar_one()
        # Stored as timestamptz: the server itself knows the instant, whatever its TimeZone.
        conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")
        seen = conn.exec_driver_sql("SELECT last_poll_at FROM folder_state").scalar_one()
    assert got == berlin and got.tzinfo == UTC
    assert seen == berlin


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            insert(folder_state).values(mailbox="m", folder="I", last_poll_at=datetime(2026, 1, 1))
        )


@pytest.mark.parametrize("defaults", [False, True])
def test_bulk_writes_every_value_as_sqlalchemy_does_on_postgres(
    engine: Engine, defaults: bool
) -> None:
    """store.bulk on psycopg's named parameters (a reserved word among them, quotes and
    percent signs in the values): what SQLAlchemy's own executemany writes."""
    plain, fast = written_both_ways(engine, defaults=defaults)
    assert len(plain) == 40 and plain == fast


def test_bulk_inserts_go_as_one_copy_and_updates_by_key_as_one_statement(
    engine: Engine,
) -> None:
    """store.pg_bulk: a batch's INSERT is one binary COPY, its UPDATE by primary key one
    UPDATE .. FROM unnest(..); the rowcount is the rows changed."""
    with recorded(engine) as statements, engine.begin() as conn:
        assert execute_many(conn, INSERT, message_rows("m", 30)) == 30
        pks = list(conn.execute(select(message.c.id).order_by(message.c.id)).scalars())
        changes = [{"pk": pk, "v_kind": "k", "v_refs": "<r@x>", "v_at": None} for pk in pks]
        changes.append({"pk": -1, "v_kind": "k", "v_refs": None, "v_at": None})  # no such row
        assert execute_many(conn, TRIAGED, changes) == 30
    assert len(statements) == 3 and statements[0].startswith("COPY message (")
    assert statements[2].startswith("UPDATE message SET") and "FROM unnest(" in statements[2]
    with engine.connect() as conn:
        kinds = conn.execute(select(message.c.kind, message.c.references)).all()
    assert len(kinds) == 30 and set(kinds) == {("k", "<r@x>")}


def test_two_changes_of_one_row_in_a_batch_are_made_in_turn(engine: Engine) -> None:
    """One UPDATE .. FROM would make only one of them: such a batch goes row by row, and
    the second change is the one that stays, as with SQLAlchemy's executemany."""
    with engine.begin() as conn:
        execute_many(conn, INSERT, message_rows("m", 10))
        pks = list(conn.execute(select(message.c.id).order_by(message.c.id)).scalars())
    changes = [{"pk": pk, "v_kind": "first", "v_refs": None, "v_at": None} for pk in pks]
    changes.append({"pk": pks[0], "v_kind": "second", "v_refs": None, "v_at": None})
    with recorded(engine) as statements, engine.begin() as conn:
        assert execute_many(conn, TRIAGED, changes) == 11
    assert not [s for s in statements if "unnest" in s]
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(message.c.id, message.c.kind)).all())
    assert kinds[pks[0]] == "second" and {kinds[pk] for pk in pks[1:]} == {"first"}


def test_a_copy_that_breaks_a_constraint_fails_as_the_insert_would(engine: Engine) -> None:
    """The same error as SQLAlchemy's (an IntegrityError), nothing of the batch stored,
    and a savepoint around it keeps the rest of the transaction."""
    rows = message_rows("m", 20)
    rows[11] = rows[3]  # the same identity twice
    with pytest.raises(IntegrityError, match="uq_message_mailbox_identity"), engine.begin() as conn:
        execute_many(conn, INSERT, rows)
    with engine.begin() as conn:
        with pytest.raises(IntegrityError), conn.begin_nested():
            execute_many(conn, INSERT, rows)
        execute_many(conn, INSERT, message_rows("kept", 10))
    with engine.connect() as conn:
        stored = conn.execute(select(message.c.mailbox)).scalars().all()
    assert stored == ["kept"] * 10


def test_a_copy_on_a_connection_committed_as_it_goes_is_kept(engine: Engine) -> None:
    """No transaction begun yet: the COPY begins one, as SQLAlchemy's autobegin does, and
    commit() keeps its rows."""
    with engine.connect() as conn:
        execute_many(conn, INSERT, message_rows("m", 12))
        conn.commit()
    with engine.connect() as conn:
        assert len(conn.execute(select(message.c.id)).all()) == 12


def test_folder_cursor_is_unique_per_mailbox_folder(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))
        conn.execute(insert(folder_state).values(mailbox="m", folder="INBOX"))


# -- the shared desk on PostgreSQL: ingest, triage, acknowledge, chase, send ----------------


# The chasing scenarios of test_chasing.py run on PostgreSQL there (its `make_desk` is
# parametrised over both stores); this one spells the whole promise out once more, with
# the rows read back from PostgreSQL.


@pytest.fixture
def postgres_desk(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path, postgres_url: str
) -> Iterator[chasing.Desk]:
    desk = chasing.Desk(
        dovecot, mail_user, smtp_server, tmp_path, chasing.MONDAY_MORNING, database_url=postgres_url
    )
    assert desk.engine.dialect.name == "postgresql"
    yield desk
    desk.close()


def test_a_customer_is_acknowledged_chased_and_answered_on_postgres(
    postgres_desk: chasing.Desk,
) -> None:
    """The whole promise, spelled out here too, with the rows read back from PostgreSQL."""
    monday = chasing.MONDAY
    desk = postgres_desk
    question = desk.customer_writes(chasing.at(monday, 9), "Charged twice", "Please refund.")
    [ack] = desk.received(ANN[1])
    assert ack.header("Subject") == "Re: Charged twice [KW-1]"
    assert ack.header("In-Reply-To") == question["Message-ID"]
    [made] = desk.promises()
    assert made.due_at == chasing.at(monday, 17) and made.due_at.tzinfo == UTC

    assert desk.chase(chasing.at(monday, 13)).reminders == 1
    [reminder] = desk.received(ALICE)
    assert reminder.header("Subject") == "[KW-1] Reminder: Charged twice"

    desk.staff_replies(chasing.at(monday, 14), question, "Refunded, sorry.")
    [kept] = desk.promises()
    assert kept.state == PromiseState.KEPT.value
    assert kept.resolved_at == chasing.at(monday, 14)
    assert desk.chase(chasing.at(monday, 16, 30)).queued == 0
    assert len(desk.received(ALICE)) == 1 and desk.received(CAROL) == []
    with desk.engine.connect() as conn:
        sent = conn.execute(select(outbox.c.state, outbox.c.sent_at)).all()
    assert [state for state, _ in sent] == ["sent", "sent"]
    assert all(at is not None and at.tzinfo == UTC for _, at in sent)
    assert desk.the_case().first_response_at == chasing.at(monday, 14)


# -- ingestion from Dovecot into PostgreSQL ----------------------------------------------


def customer_mail(number: int, subject: str = "Order question") -> bytes:
    """test_ingest's mail, dated now (mail from before the first poll is never a new case)."""
    raw = ingesting.mail(number, subject=subject)
    old_date = raw.split(b"Date: ", 1)[1].split(b"\r\n", 1)[0]
    return raw.replace(old_date, format_datetime(datetime.now(UTC)).encode())


@dataclass
class Inbox:
    """test_ingest's mailbox on the Dovecot account, stored in PostgreSQL."""

    dovecot: Dovecot
    user: str
    engine: Engine
    session_for: Callable[[MailboxSettings], ImapSession]

    def __post_init__(self) -> None:
        self.box = ingesting.mailbox_for(self.dovecot, self.user)

    def poll(self) -> MailboxPollResult:
        return ingesting.poll_mailbox(self.engine, self.box, self.session_for)

    def triage(self) -> TriageResult:
        settings = ingesting.settings_for(self.box, self.engine)
        return triage_pending(desk_at(self.engine, settings, self.box))


@pytest.fixture
def inbox(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,
    session_for: Callable[[MailboxSettings], ImapSession],
) -> Inbox:
    return Inbox(dovecot, mail_user, engine, session_for)


def test_poll_into_postgres_is_idempotent_and_triage_makes_a_case(
    inbox: Inbox, dovecot: Dovecot, mail_user: str, engine: Engine
) -> None:
    first = inbox.poll()
    assert first.ok and first.new == 0  # first contact: the empty mailbox is history

    dovecot.multiappend(mail_user, "INBOX", [customer_mail(n) for n in range(3)])
    dovecot.append(mail_user, "Sent", customer_mail(100, subject="Re: Order question"))
    second = inbox.poll()
    assert second.ok
    assert second.folders["INBOX"].new == 3 and not second.folders["INBOX"].is_history
    assert second.folders["Sent"].new == 1

    stored = ingesting.locations(engine)
    assert [row.uid for row in stored] == dovecot.uids(mail_user)
    on_server = ingesting.server_messages(dovecot, mail_user)
    assert [row.raw for row in stored] == [on_server[row.uid] for row in stored]

    third = inbox.poll()
    assert third.ok and third.new == 0
    assert ingesting.count(engine, message) == 4
    assert ingesting.count(engine, message_location) == 4

    with engine.connect() as conn:
        facts = store.load_facts(conn, [row.message_pk for row in stored])
    assert [f.sender.address for f in facts if f.sender] == [
        f"c{n}@customer.test" for n in range(3)
    ]
    assert all(f.date is not None and f.date.tzinfo is not None for f in facts)

    triaged = inbox.triage()
    assert (triaged.opened, triaged.errors) == (3, [])
    with engine.connect() as conn:
        cases = conn.execute(select(case.c.reference, case.c.customer).order_by(case.c.id)).all()
        pending = conn.execute(select(message.c.id).where(message.c.triaged_at.is_(None))).all()
    assert [row.customer for row in cases] == [f"c{n}@customer.test" for n in range(3)]
    assert [row.reference for row in cases] == ["KW-1", "KW-2", "KW-3"]
    assert pending == []
    assert inbox.triage().triaged == 0


def test_the_planner_knows_the_history_an_import_stored(
    inbox: Inbox, dovecot: Dovecot, mail_user: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import's lookups and the triage after it must not plan for the empty tables of
    before (autovacuum analyzes about a minute later): an import analyzes what it filled
    when it doubled (from STATISTICS_FIRST on) and at its end; a live poll, which
    autovacuum keeps up with, does not."""
    monkeypatch.setattr(ingest, "STATISTICS_FIRST", 10)
    inbox.box = ingesting.mailbox_for(dovecot, mail_user, fetch_batch=10)
    dovecot.multiappend(mail_user, "INBOX", [customer_mail(n) for n in range(45)])
    with recorded(engine) as statements:
        assert inbox.poll().folders["INBOX"].is_history
    # After 10, 20 and 40 of the 45 (each batch of 10 stored first), and at the end.
    assert sum(s.startswith("ANALYZE") for s in statements) == 4

    def planned_rows() -> dict[str, float]:
        with engine.connect() as conn:
            query = (
                "SELECT relname, reltuples FROM pg_class WHERE relname IN"
                " ('message', 'message_location', 'case', 'case_correspondent')"
            )
            return {str(name): float(rows) for name, rows in conn.exec_driver_sql(query)}

    # The cases too (triage opens them while a history goes in): -1 is "never analyzed".
    planned = {"message": 45.0, "message_location": 45.0, "case": 0.0, "case_correspondent": 0.0}
    assert planned_rows() == planned
    dovecot.multiappend(mail_user, "INBOX", [customer_mail(n) for n in range(45, 50)])
    with recorded(engine) as statements:
        assert inbox.poll().new == 5
    assert not [s for s in statements if s.startswith("ANALYZE")]


@pytest.mark.skipif(not ingesting.PRESENT, reason="shared corpora not present")
def test_every_corpus_file_is_stored_exactly_once_in_postgres(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,
    session_for: Callable[[MailboxSettings], ImapSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real-world mail (NUL bytes, odd headers, huge values) as test_ingest runs it on SQLite,
    through the pipeline of a big backlog (two parse workers)."""
    ingesting.test_every_corpus_file_is_stored_exactly_once(
        dovecot, mail_user, engine, session_for, workers=2, monkeypatch=monkeypatch
    )
    box = ingesting.mailbox_for(dovecot, mail_user)
    settings = ingesting.settings_for(box, engine)
    triaged = triage_pending(desk_at(engine, settings, box))
    assert triaged.errors == []
    assert triaged.triaged == ingesting.count(engine, message)


def hostile_mail(long_address: str) -> bytes:
    """What SQLite swallows and PostgreSQL refuses: NUL in text, an over-long address."""
    return (
        "From: Ann Lee <ann@example.org>\r\n"
        f"Reply-To: {long_address}\r\n"
        "To: support@example.com\r\n"
        "Subject: =?utf-8?q?Refund=00please?=\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\n"
        f"Message-ID: <hostile.{id(long_address)}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        "I was charged twice=00 for order 1234.\r\n"
    ).encode()


def test_nul_characters_and_long_addresses_are_stored_and_make_a_case(
    inbox: Inbox, dovecot: Dovecot, mail_user: str, engine: Engine
) -> None:
    inbox.poll()
    long_address = "x" * 330 + "@example.org"
    dovecot.append(mail_user, "INBOX", hostile_mail(long_address))
    polled = inbox.poll()
    assert (polled.ok, polled.new) == (True, 1)

    triaged = inbox.triage()
    assert (triaged.opened, triaged.errors) == (1, [])
    with engine.connect() as conn:
        stored = conn.execute(
            select(message, message_content.c.body_text).select_from(store.with_content())
        ).one()
        opened = conn.execute(select(case)).one()
    assert not stored.quarantined, stored.quarantine_reason
    # NUL becomes U+FFFD (on every backend, so SQLite and PostgreSQL hold the same text).
    assert "I was charged twice\ufffd for order 1234." in stored.body_text
    assert stored.subject == opened.subject == "Refund\ufffdplease"
    # An address longer than any server accepts is no address (cut, it would be a wrong
    # one): the From names the customer.
    assert opened.customer == "ann@example.org"


# -- the server restarts under a running keepword -------------------------------------------


def test_a_database_restart_costs_no_failed_job(
    postgres: Postgres, inbox: Inbox, dovecot: Dovecot, mail_user: str
) -> None:
    """After a restart every pooled connection is dead; the next poll must not fail."""
    assert inbox.poll().ok
    postgres.restart()
    dovecot.append(mail_user, "INBOX", customer_mail(1))
    polled = inbox.poll()
    assert (polled.ok, polled.new) == (True, 1)
    assert inbox.triage().opened == 1


# -- the command line, in its own process, with database_url on PostgreSQL ---------------


def test_keepword_run_once_and_cases_on_a_postgres_database_url(
    dovecot: Dovecot, mail_user: str, smtp_server: SmtpServer, tmp_path: Path, postgres_url: str
) -> None:
    box = MailboxSettings(
        name="support",
        address="support@example.com",
        team=[ALICE],
        imap=dovecot.imap_settings(mail_user),
        smtp=smtp_server.settings(),
    )
    keepword = {
        "state_dir": tmp_path / "state",
        "database_url": postgres_url,
        "allow_inline_passwords": True,
    }
    config = write_config(tmp_path / "keepword.toml", keepword, box)
    first = run_keepword(config, "run", "--once")  # creates the schema; the empty inbox
    assert first.returncode == 0, first.stderr
    dovecot.append(mail_user, "INBOX", customer_mail(7, subject="Broken parcel"))
    second = run_keepword(config, "run", "--once")
    assert second.returncode == 0, second.stderr

    [ack] = [m for m in smtp_server.messages if "c7@customer.test" in m.rcpt_tos]
    assert ack.header("Subject") == "Re: Broken parcel 7 [KW-1]"
    listing = run_keepword(config, "cases", "--json")
    assert listing.returncode == 0, listing.stderr
    [listed] = json.loads(listing.stdout)
    assert (listed["reference"], listed["customer"]) == ("KW-1", "c7@customer.test")
    assert not (tmp_path / "state" / "keepword.db").exists()  # nothing went to SQLite
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            sent = conn.execute(select(outbox.c.kind, outbox.c.state, outbox.c.recipients)).all()
    finally:
        engine.dispose()
    # (a team digest may go out too, depending on the wall-clock time of day)
    assert ("acknowledgement", "sent", ["c7@customer.test"]) in sent
    assert {state for _, state, _ in sent} == {"sent"}


def _store_on(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> Engine:
    """A migrated store on `database`: the private PostgreSQL, or SQLite in tmp_path."""
    if database == "postgresql":
        return open_store(request.getfixturevalue("postgres_url"))
    return open_store(f"sqlite:///{tmp_path / 'kw.db'}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_decision_already_recorded_queues_no_second_mail(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The outbox passes over a dedup key it holds in the insert itself (one statement a
    queued mail): False the second time, one row, on both databases."""
    engine = _store_on(database, tmp_path, request)
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    entry = outbox_store.OutboxEntry(
        "support", None, "acknowledgement", "ack:1", ["ann@example.org"], "Re: x", b"raw",
        message_id="m1@example.com",
    )  # fmt: skip
    try:
        with engine.begin() as conn:
            assert outbox_store.enqueue(conn, entry, now)
            assert not outbox_store.enqueue(conn, replace(entry, raw=b"other"), now)
        with engine.connect() as conn:
            assert conn.execute(select(outbox.c.raw)).scalars().all() == [b"raw"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_new_case_and_its_correspondents_are_written_alike_on_both_databases(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On PostgreSQL a new case and its correspondents go in one statement (a data-
    modifying WITH); on SQLite in two. The same rows either way, addresses lower-cased
    once each; a case saved again adds only the addresses it does not know."""
    engine = _store_on(database, tmp_path, request)
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    new = CaseState(
        id=None, mailbox="support", reference="KW", status=CaseStatus.NEW, opened_at=at,
        updated_at=at, customer="ann@example.org", subject="Help",
    )  # fmt: skip
    try:
        with recorded(engine) as statements, engine.begin() as conn:
            saved = case_store.save_case(
                conn, new, prefix="KW", correspondents=["Ann@Example.org", "ann@example.org", ""]
            )
        with engine.begin() as conn:
            case_store.save_case(conn, saved, correspondents=["ANN@example.org", "bob@example.org"])
        with engine.connect() as conn:
            known = conn.execute(
                select(case_correspondent.c.case_id, case_correspondent.c.address).order_by(
                    case_correspondent.c.address
                )
            ).all()
            stored = conn.execute(select(case.c.reference, case.c.customer)).all()
    finally:
        engine.dispose()
    assert saved.reference == "KW-1" and stored == [("KW-1", "ann@example.org")]
    assert [tuple(k) for k in known] == [
        (saved.id, "ann@example.org"),
        (saved.id, "bob@example.org"),
    ]
    writes = [s for s in statements if 'INSERT INTO "case"' in s or "case_correspondent" in s]
    assert len(writes) == (1 if database == "postgresql" else 2), writes
