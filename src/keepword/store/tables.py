"""The database schema (SQLAlchemy Core). Portable: nothing SQLite-only.

Alembic migrations in `store/migrations` are the source of truth for deployed
databases; this module mirrors the newest revision for queries and autogenerate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no zone, so values are stored as naive UTC and tagged UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: keepword stores aware UTC only")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, an aware datetime straight to the stored text in one call (the
        default chain is three Python calls a value: a first import writes ~80,000)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _sqlite_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        """On SQLite, the stored text straight to an aware datetime in one call (the
        default chain is three Python calls a value: the predictor's build reads ~30,000)."""
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _sqlite_utc


def _sqlite_text(value: datetime | None) -> str | None:
    """An aware datetime as SQLite's text, as SQLAlchemy's DATETIME writes it: naive UTC,
    year of four digits, always six of microseconds (isoformat gives exactly that)."""
    if value is None:
        return None
    if not isinstance(value, datetime):  # a date: DATETIME's processor refuses it too
        raise TypeError(f"{value!r}: keepword stores aware UTC datetimes only")
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: keepword stores aware UTC only")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_utc(value: str | None) -> datetime | None:
    """SQLite's text (SQLAlchemy's DATETIME format, ISO 8601) as an aware UTC datetime."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _ts(name: str, *, nullable: bool = True) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


# Where each configured folder stands: the IMAP sync cursor.
folder_state = Table(
    "folder_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("folder", String(500), nullable=False),
    Column("uidvalidity", BigInteger, nullable=True),
    Column("last_uid", BigInteger, nullable=False, default=0),
    Column("history_done", Boolean, nullable=False, default=False),
    # UIDNEXT when keepword first met the folder, recorded before the first import
    # starts: mail at or above it is new even if a crash interrupted that import.
    Column("history_below_uid", BigInteger, nullable=True),
    _ts("last_poll_at"),
    _ts("last_success_at"),
    Column("last_error", Text, nullable=True),
    _ts("last_error_at"),
    UniqueConstraint("mailbox", "folder", name="uq_folder_state_mailbox_folder"),
)

# Every distinct message, stored once (its bytes in message_content).
# Identity: (mailbox, message_id, content_digest). The same mail seen in INBOX and in
# Sent, or again after a UIDVALIDITY change, is one row; two different mails that share
# a Message-ID are two rows, so nothing is lost.
message = Table(
    "message",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("message_id", String(998), nullable=False),
    Column("message_id_derived", Boolean, nullable=False, default=False),
    Column("content_digest", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("in_reply_to", Text, nullable=True),
    Column("references", Text, nullable=True),
    Column("from_addr", String(320), nullable=True),
    Column("from_name", Text, nullable=True),
    Column("to_addrs", JSON, nullable=False, default=list),
    Column("cc_addrs", JSON, nullable=False, default=list),
    Column("reply_to", JSON, nullable=False, default=list),
    Column("subject", Text, nullable=True),
    _ts("date"),
    Column("date_offset_minutes", Integer, nullable=True),
    _ts("received_at"),
    _ts("stored_at", nullable=False),
    Column("headers", JSON, nullable=False, default=dict),
    Column("content_type", String(200), nullable=True),
    Column("origin", String(20), nullable=False),
    Column("is_history", Boolean, nullable=False, default=False),
    Column("quarantined", Boolean, nullable=False, default=False),
    Column("quarantine_reason", Text, nullable=True),
    Column("kind", String(20), nullable=True),
    Column("kind_reason", Text, nullable=True),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=True),
    Column("thread_rule", String(40), nullable=True),
    _ts("triaged_at"),
    # A triage that failed for a reason other than the mail itself: the message stays
    # untriaged, is retried with backoff after the mail behind it, and shows in status.
    Column("triage_attempts", Integer, nullable=False, default=0, server_default="0"),
    _ts("triage_retry_at"),
    Column("triage_error", Text, nullable=True),
    # Also every lookup by Message-ID: (mailbox, message_id) is its prefix (migration 0013).
    UniqueConstraint("mailbox", "message_id", "content_digest", name="uq_message_mailbox_identity"),
    Index("ix_message_case_id", "case_id"),
    Index("ix_message_triaged_at", "mailbox", "triaged_at"),
)

# A message's bytes and its text, written once and never updated. They live apart from
# the message row because triage updates that row: SQLite rewrites a whole row on any
# UPDATE, and with the mail in it (~28 KB a message) marking a 20,000-message history
# triaged rewrote 550 MB, and every question about untriaged mail walked the mail's
# overflow pages to reach the columns behind it (migration 0012).
message_content = Table(
    "message_content",
    metadata,
    Column("message_pk", Integer, ForeignKey("message.id"), primary_key=True, autoincrement=False),
    Column("raw", LargeBinary, nullable=False),
    Column("body_text", Text, nullable=True),
)

# Every place (folder, UIDVALIDITY, UID) a message was seen.
message_location = Table(
    "message_location",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_pk", Integer, ForeignKey("message.id"), nullable=False),
    Column("mailbox", String(100), nullable=False),
    Column("folder", String(500), nullable=False),
    Column("role", String(20), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    _ts("seen_at", nullable=False),
    _ts("handled_at"),
    UniqueConstraint(
        "mailbox", "folder", "uidvalidity", "uid", name="uq_message_location_coordinates"
    ),
    Index("ix_message_location_message_pk", "message_pk"),
    # The done-folder scan of every poll: only this mailbox's unhandled done rows.
    Index("ix_message_location_role", "mailbox", "role", "handled_at"),
)

case = Table(
    "case",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("number", Integer, nullable=False),
    Column("reference", String(40), nullable=False),
    # The reference's prefix: mailboxes sharing one share its numbers (store.cases).
    Column("prefix", String(10), nullable=False, server_default=""),
    Column("status", String(30), nullable=False),
    Column("owner", String(320), nullable=True),
    Column("owner_changes", Integer, nullable=False, default=0),
    Column("customer", String(320), nullable=True),
    Column("customer_name", Text, nullable=True),
    Column("subject", Text, nullable=True),
    Column("subject_key", Text, nullable=True),
    Column("is_history", Boolean, nullable=False, default=False),
    _ts("opened_at", nullable=False),
    _ts("last_customer_at"),
    Column("customer_contacts", Integer, nullable=False, default=0),
    Column("unanswered_contacts", Integer, nullable=False, default=0),
    _ts("first_response_at"),
    _ts("last_response_at"),
    _ts("closed_at"),
    _ts("updated_at", nullable=False),
    # Bumped by every save: a save decided on an older read is refused (lost updates
    # between the daemon and `keepword assign/close` would otherwise pass silently).
    Column("version", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("mailbox", "number", name="uq_case_mailbox_number"),
    UniqueConstraint("reference", name="uq_case_reference"),
    Index("ix_case_prefix_number", "prefix", "number"),
    Index("ix_case_status", "mailbox", "status"),
    Index("ix_case_customer_subject", "mailbox", "customer", "subject_key"),
    # The subject rule looks up by mailbox + subject key (joined to any correspondent).
    Index("ix_case_mailbox_subject", "mailbox", "subject_key"),
)

case_correspondent = Table(
    "case_correspondent",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=False),
    Column("address", String(320), nullable=False),
    UniqueConstraint("case_id", "address", name="uq_case_correspondent_case_address"),
    Index("ix_case_correspondent_address", "address"),
)

# The timeline: who did what, when, and why.
case_event = Table(
    "case_event",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=False),
    _ts("at", nullable=False),
    Column("kind", String(40), nullable=False),
    Column("actor", String(320), nullable=True),
    Column("detail", Text, nullable=True),
    Column("message_pk", Integer, ForeignKey("message.id"), nullable=True),
    Index("ix_case_event_case_id", "case_id", "at"),
)

promise = Table(
    "promise",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("audience", String(20), nullable=False),
    _ts("made_at", nullable=False),
    _ts("due_at", nullable=False),
    Column("state", String(20), nullable=False),
    _ts("resolved_at"),
    Column("reason", Text, nullable=True),
    Column("basis", JSON, nullable=False, default=dict),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("superseded_by", Integer, ForeignKey("promise.id"), nullable=True),
    Index("ix_promise_open", "state", "due_at"),
    Index("ix_promise_case_id", "case_id"),
)

# Everything that leaves the machine is written here first, in the same transaction as
# the decision that caused it. `dedup_key` makes the decision idempotent; `message_id`
# is deterministic so a retry after a crash can tell whether it already went out.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=True),
    Column("kind", String(30), nullable=False),
    Column("dedup_key", String(300), nullable=False),
    Column("message_id", String(300), nullable=False),
    Column("recipients", JSON, nullable=False, default=list),
    Column("subject", Text, nullable=True),
    Column("raw", LargeBinary, nullable=True),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    _ts("next_attempt_at"),
    Column("last_error", Text, nullable=True),
    _ts("created_at", nullable=False),
    _ts("sent_at"),
    Column("sent_copy", String(20), nullable=False, default="pending"),
    UniqueConstraint("dedup_key", name="uq_outbox_dedup_key"),
    UniqueConstraint("message_id", name="uq_outbox_message_id"),
    Index("ix_outbox_state", "state", "next_attempt_at"),
    Index("ix_outbox_case_id", "case_id"),
    # The drains' question for copies that failed or wait (most sent rows have theirs).
    Index("ix_outbox_mailbox_sent_copy", "mailbox", "sent_copy"),
)

# When each job of each mailbox last ran (the daemon writes it; `status` and the
# metrics read it, so an overdue job shows even from another process).
job_run = Table(
    "job_run",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("job", String(20), nullable=False),
    Column("interval_seconds", Float, nullable=False),
    _ts("started_at"),
    _ts("finished_at"),
    _ts("last_ok_at"),
    Column("last_error", Text, nullable=True),
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("mailbox", "job", name="uq_job_run_mailbox_job"),
)


# Every running `keepword run` on a shared PostgreSQL store, with its last heartbeat
# (the database's clock). An instance whose row expired is gone: its leases may be taken.
keepword_instance = Table(
    "keepword_instance",
    metadata,
    Column("instance_id", String(100), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    _ts("started_at", nullable=False),
    _ts("heartbeat_at", nullable=False),
    _ts("expires_at", nullable=False),
    Column("draining", Boolean, nullable=False, default=False, server_default="0"),
)

# Which instance works each mailbox. `epoch` grows by one on every change of holder;
# a write of a mailbox's work commits only while (holder, epoch) is still this row's
# (keepword.store.leases, fencing). `expires_at` is renewed by the holder.
mailbox_lease = Table(
    "mailbox_lease",
    metadata,
    Column("mailbox", String(100), primary_key=True),
    Column("holder", String(100), nullable=True),
    Column("epoch", BigInteger, nullable=False, default=0, server_default="0"),
    _ts("acquired_at"),
    _ts("expires_at"),
)


# Team members away (issue 12): recorded from their own out-of-office auto-replies
# (planned absences live in the config). `back_on` is the first day back;
# `until_they_write`: no return date was stated, so their own next mail ends it sooner.
staff_away = Table(
    "staff_away",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("address", String(320), nullable=False),
    Column("start", Date, nullable=False),
    Column("back_on", Date, nullable=False),
    Column("why", Text, nullable=True),
    Column("until_they_write", Boolean, nullable=False, default=False, server_default="0"),
    Column("message_pk", Integer, ForeignKey("message.id"), nullable=True),
    _ts("recorded_at", nullable=False),
    UniqueConstraint("mailbox", "address", "start", name="uq_staff_away_mailbox_address_start"),
    Index("ix_staff_away_mailbox_back_on", "mailbox", "back_on"),
)


# Addresses the relay refused for good (5xx to RCPT TO) when keepword wrote to a customer
# (domain.reachability): no more automatic mail goes to one until it writes again, and
# the case's team is told once per refused mail.
address_refusal = Table(
    "address_refusal",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(100), nullable=False),
    Column("address", String(320), nullable=False),
    Column("outbox_id", Integer, ForeignKey("outbox.id"), nullable=False),
    Column("case_id", Integer, ForeignKey("case.id"), nullable=True),
    Column("kind", String(30), nullable=False),
    Column("reply", Text, nullable=False),
    _ts("refused_at", nullable=False),
    UniqueConstraint("outbox_id", "address", name="uq_address_refusal_outbox_id_address"),
    Index("ix_address_refusal_mailbox_address", "mailbox", "address"),
    Index("ix_address_refusal_case_id", "case_id"),
)


# The installation secret (one row, id 1): the key of keepword's outgoing Message-IDs
# (domain.message_ids). Made by migration 0008 and never changed by keepword.
installation_secret = Table(
    "installation_secret",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("secret", LargeBinary, nullable=False),
    _ts("created_at", nullable=False),
)
