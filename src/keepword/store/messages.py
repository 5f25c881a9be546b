"""Storing fetched messages exactly once, and the per-folder IMAP cursor.

One call of `store_batch` is one transaction: the messages, where they were seen and
the advanced folder cursor commit together, so a crash at any instant leaves the
folder either before or after the whole batch, never half-way. Re-storing a batch is
harmless: locations are unique on (mailbox, folder, uidvalidity, uid) and messages on
(mailbox, message_id, content_digest).

Portable SQLAlchemy Core only (SQLite and PostgreSQL): known identities are selected
first, then new rows go in with executemany; no dialect-specific upserts.

Column formats written here and read back by `load_facts`:
- `in_reply_to`, `references`: message ids (without angle brackets) separated by one
  space; ids never contain whitespace.
- `to_addrs`, `cc_addrs`, `reply_to`: JSON lists of {"address": ..., "name": ...}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Join, Row, and_, insert, or_, select, update

from keepword.domain.message_ids import identity_digest, sender_digest
from keepword.domain.model import Address, MessageFacts, Origin
from keepword.mail.parse import ParsedMessage
from keepword.store import facts_at_hand
from keepword.store.bulk import execute_many
from keepword.store.tables import folder_state, message, message_content, message_location

# Keeps every IN (...) list well under any backend's bound-parameter limit.
_CHUNK = 400
# Built once: store.bulk plans each statement once (by identity), not once a batch.
_INSERT_MESSAGE = insert(message)
_INSERT_CONTENT = insert(message_content)
_INSERT_LOCATION = insert(message_location)


@dataclass(frozen=True, slots=True)
class StoreItem:
    """One fetched message at its IMAP coordinates (the UID within the batch's folder)."""

    uid: int
    raw: bytes
    parsed: ParsedMessage
    received_at: datetime | None = None  # INTERNALDATE, aware UTC


@dataclass(frozen=True, slots=True)
class BatchResult:
    new: int  # message rows inserted
    known: int  # already stored (same identity, or this very location seen before)
    quarantined: int  # of the new ones, how many are quarantined
    new_pks: tuple[int, ...] = ()
    # Messages stored before and seen here again, in a new place (their origin may change).
    seen_again: tuple[int, ...] = ()
    # The new messages as written (pk, row, body text) in a folder of this role: their
    # facts are made only if asked for (`facts`: a first import's triage; not a live poll).
    written: tuple[tuple[int, dict[str, Any], str], ...] = ()
    role: Origin = Origin.INBOX

    def facts(self) -> list[MessageFacts]:
        """The new messages' facts, as load_facts will read them (store.facts_at_hand)."""
        return [_written_facts(row, pk, body, self.role) for pk, row, body in self.written]


@dataclass(frozen=True, slots=True)
class FolderCursor:
    mailbox: str
    folder: str
    uidvalidity: int | None
    last_uid: int
    history_done: bool
    # The first import's cutoff under `uidvalidity`: UIDs below it are history (None
    # before it was recorded; meaningless once history_done).
    history_below_uid: int | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder of a mailbox as the store keys its messages' locations."""

    mailbox: str
    name: str
    role: Origin
    uidvalidity: int


def store_batch(
    conn: Connection,
    where: Folder,
    items: Sequence[StoreItem],
    *,
    is_history: bool,
    now: datetime,
    through_uid: int | None = None,
) -> BatchResult:
    """Store one batch and advance the folder cursor; call inside one transaction.

    The cursor moves to `through_uid` (the caller's: the last UID asked for, so UIDs
    expunged between search and fetch are not asked for again; an import that stores
    out of UID order passes the highest below which all is stored), else to the highest
    UID among `items`.

    The result names the stored messages seen here again and can make the new ones'
    facts, for a first import's triage (store.facts_at_hand: forget those before the
    commit, put the facts after it).
    """
    mailbox, folder, role, uidvalidity = where.mailbox, where.name, where.role, where.uidvalidity
    known_uids = _known_uids(conn, mailbox, folder, uidvalidity, [i.uid for i in items])
    fresh = [item for item in items if item.uid not in known_uids]
    # One read of the rows stored under the batch's Message-IDs: who sent each (to tell
    # two mails apart) and, for the identities found, their pks.
    rows = _stored_rows(conn, mailbox, [item.parsed.message_id for item in fresh])
    stored = _by_message_id(rows)
    keys = {item.uid: _identity(item, stored) for item in fresh}
    existing = _pks(rows, keys.values())
    to_insert: dict[tuple[str, str], StoreItem] = {}
    for item in fresh:
        key = keys[item.uid]
        if key not in existing and key not in to_insert:
            to_insert[key] = item
    inserted, written = _insert_messages(
        conn, mailbox, role, to_insert, is_history=is_history, now=now
    )
    pks = existing | inserted
    locations = [
        {
            "message_pk": pks[keys[item.uid]],
            "mailbox": mailbox,
            "folder": folder,
            "role": role.value,
            "uidvalidity": uidvalidity,
            "uid": item.uid,
            "seen_at": now,
        }
        for item in fresh
    ]
    if locations:
        execute_many(conn, _INSERT_LOCATION, locations)
    top = through_uid if through_uid is not None else max([i.uid for i in items], default=0)
    advance_cursor(conn, mailbox, folder, uidvalidity, top, now=now)
    quarantined = sum(1 for item in to_insert.values() if item.parsed.quarantined)
    return BatchResult(
        new=len(inserted),
        known=len(items) - len(inserted),
        quarantined=quarantined,
        new_pks=tuple(sorted(inserted.values())),
        seen_again=tuple(pks[keys[item.uid]] for item in fresh if keys[item.uid] in existing),
        written=tuple(
            (inserted[key], written[key], item.parsed.body_text) for key, item in to_insert.items()
        ),
        role=role,
    )


# (mailbox's) Message-ID -> {content digest: sender} of the rows stored under it.
_Stored = dict[str, dict[str, str | None]]


def _identity(item: StoreItem, stored: _Stored) -> tuple[str, str]:
    """(Message-ID, content digest) a message is stored under: the same Message-ID and
    body from another sender is another message (domain.message_ids.identity_digest).
    Updates `stored` with it, so a second copy in the same batch finds it."""
    parsed = item.parsed
    sender = parsed.sender.address if parsed.sender else None
    known = stored.setdefault(parsed.message_id, {})
    body = parsed.content_digest
    digest = identity_digest(body, sender, known)
    if digest is None:  # already stored: under the body's digest or the derived one
        same = (known[body] or "").strip().lower() == (sender or "").strip().lower()
        digest = body if same else sender_digest(body, sender)
    known.setdefault(digest, sender)
    return parsed.message_id, digest


def _stored_rows(conn: Connection, mailbox: str, message_ids: Iterable[str]) -> list[Row[Any]]:
    """The mailbox's stored rows under these Message-IDs: (message_id, content_digest,
    from_addr, id). By Message-ID alone, the digest checked by the caller: a list of
    (Message-ID, digest) pairs is planned as one index probe per pair, ORed (PostgreSQL
    took 14 ms for a batch of 400, SQLite 1.6 ms; by Message-ID 5 and 0.3 ms)."""
    found: list[Row[Any]] = []
    for chunk in _chunks(sorted(set(message_ids))):
        query = select(
            message.c.message_id, message.c.content_digest, message.c.from_addr, message.c.id
        ).where(and_(message.c.mailbox == mailbox, message.c.message_id.in_(chunk)))
        found.extend(conn.execute(query))
    return found


def _by_message_id(rows: Iterable[Row[Any]]) -> _Stored:
    found: _Stored = {}
    for row in rows:
        found.setdefault(row.message_id, {})[row.content_digest] = row.from_addr
    return found


def _pks(
    rows: Iterable[Row[Any]], identities: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """(Message-ID, digest) -> pk of the rows that hold one of these identities."""
    wanted = set(identities)
    return {
        (row.message_id, row.content_digest): int(row.id)
        for row in rows
        if (row.message_id, row.content_digest) in wanted
    }


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _known_uids(
    conn: Connection, mailbox: str, folder: str, uidvalidity: int, uids: Sequence[int]
) -> set[int]:
    found: set[int] = set()
    for chunk in _chunks(sorted(set(uids))):
        query = select(message_location.c.uid).where(
            and_(
                message_location.c.mailbox == mailbox,
                message_location.c.folder == folder,
                message_location.c.uidvalidity == uidvalidity,
                message_location.c.uid.in_(chunk),
            )
        )
        found.update(int(uid) for uid in conn.execute(query).scalars())
    return found


def _insert_messages(
    conn: Connection,
    mailbox: str,
    role: Origin,
    items: dict[tuple[str, str], StoreItem],
    *,
    is_history: bool,
    now: datetime,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], dict[str, Any]]]:
    """The new rows' pks by identity, and the rows as written."""
    if not items:
        return {}, {}
    rows = {
        key: _message_row(mailbox, role, item, is_history, now) | {"content_digest": key[1]}
        for key, item in items.items()
    }
    # Plain executemany, then read the new ids back by identity: INSERT .. RETURNING with
    # guaranteed order degrades to one statement per row on SQLite.
    execute_many(conn, _INSERT_MESSAGE, list(rows.values()))
    pks = _pks(_stored_rows(conn, mailbox, [message_id for message_id, _ in items]), items)
    contents = [
        {"message_pk": pks[key], "raw": item.raw, "body_text": item.parsed.body_text}
        for key, item in items.items()
    ]
    execute_many(conn, _INSERT_CONTENT, contents)
    return pks, rows


def _written_facts(row: dict[str, Any], pk: int, body_text: str, role: Origin) -> MessageFacts:
    """A new message's facts as load_facts reads them back: from the row just written
    (its only location so far is this folder; dates come back in UTC)."""
    date = row["date"]
    utc = {"date": date.astimezone(UTC) if date is not None else None}
    return _facts(SimpleNamespace(**(row | utc), id=pk, body_text=body_text), [role.value])


def _message_row(
    mailbox: str, role: Origin, item: StoreItem, is_history: bool, now: datetime
) -> dict[str, Any]:
    parsed = item.parsed
    sender = parsed.sender
    return {
        "mailbox": mailbox,
        "message_id": parsed.message_id,
        "message_id_derived": parsed.message_id_derived,
        "content_digest": parsed.content_digest,
        "size": len(item.raw),
        "in_reply_to": " ".join(parsed.in_reply_to) or None,
        "references": " ".join(parsed.references) or None,
        "from_addr": sender.address[:320] if sender else None,
        "from_name": sender.name if sender else None,
        "to_addrs": _addresses_json(parsed.to),
        "cc_addrs": _addresses_json(parsed.cc),
        "reply_to": _addresses_json(parsed.reply_to),
        "subject": parsed.subject,
        "date": parsed.date,
        "date_offset_minutes": parsed.date_offset_minutes,
        "received_at": item.received_at,
        "stored_at": now,
        "headers": {name: list(values) for name, values in parsed.headers.items()},
        "content_type": parsed.content_type[:200] or None,
        "origin": role.value,
        "is_history": is_history,
        "quarantined": parsed.quarantined,
        "quarantine_reason": parsed.quarantine_reason,
    }


def _addresses_json(addresses: Sequence[Address]) -> list[dict[str, str]]:
    return [{"address": a.address, "name": a.name} for a in addresses]


# -- the folder cursor -------------------------------------------------------------


def get_cursor(conn: Connection, mailbox: str, folder: str) -> FolderCursor | None:
    """Where a folder's sync stands, or None before keepword first touched it."""
    row = conn.execute(
        select(
            folder_state.c.uidvalidity,
            folder_state.c.last_uid,
            folder_state.c.history_done,
            folder_state.c.history_below_uid,
            folder_state.c.last_success_at,
            folder_state.c.last_error,
        ).where(and_(folder_state.c.mailbox == mailbox, folder_state.c.folder == folder))
    ).one_or_none()
    if row is None:
        return None
    return FolderCursor(
        mailbox=mailbox,
        folder=folder,
        uidvalidity=None if row.uidvalidity is None else int(row.uidvalidity),
        last_uid=int(row.last_uid or 0),
        history_done=bool(row.history_done),
        history_below_uid=None if row.history_below_uid is None else int(row.history_below_uid),
        last_success_at=row.last_success_at,
        last_error=row.last_error,
    )


def mailbox_ever_polled(conn: Connection, mailbox: str) -> bool:
    """True once any folder of the mailbox finished taking in its existing mail."""
    query = select(folder_state.c.id).where(
        and_(folder_state.c.mailbox == mailbox, folder_state.c.history_done.is_(True))
    )
    return conn.execute(query.limit(1)).first() is not None


def _ensure_row(conn: Connection, mailbox: str, folder: str) -> None:
    if get_cursor(conn, mailbox, folder) is None:
        conn.execute(
            insert(folder_state).values(
                mailbox=mailbox, folder=folder, last_uid=0, history_done=False
            )
        )


def _where(mailbox: str, folder: str) -> Any:
    return and_(folder_state.c.mailbox == mailbox, folder_state.c.folder == folder)


def advance_cursor(
    conn: Connection, mailbox: str, folder: str, uidvalidity: int, last_uid: int, *, now: datetime
) -> None:
    """Move the cursor forward (never back) under this UIDVALIDITY."""
    cursor = get_cursor(conn, mailbox, folder)
    if cursor is None:
        conn.execute(
            insert(folder_state).values(
                mailbox=mailbox,
                folder=folder,
                uidvalidity=uidvalidity,
                last_uid=last_uid,
                history_done=False,
                last_poll_at=now,
            )
        )
        return
    keep = cursor.last_uid if cursor.uidvalidity == uidvalidity else 0
    conn.execute(
        update(folder_state)
        .where(_where(mailbox, folder))
        .values(uidvalidity=uidvalidity, last_uid=max(keep, last_uid), last_poll_at=now)
    )


def reset_for_uidvalidity(
    conn: Connection,
    mailbox: str,
    folder: str,
    uidvalidity: int,
    *,
    now: datetime,
    history_below_uid: int | None = None,
) -> None:
    """A new UIDVALIDITY invalidates every UID: start the folder over from UID 0.

    `history_done` stays as it was: mail found in the re-scan is judged by identity
    (known mail dedups) and unknown mail is new, not history. A first import that was
    still unfinished passes its cutoff again in the new UID space (`history_below_uid`),
    in this same transaction, so the old-space cutoff is never read against new UIDs.
    """
    _ensure_row(conn, mailbox, folder)
    values: dict[str, Any] = {"uidvalidity": uidvalidity, "last_uid": 0, "last_poll_at": now}
    if history_below_uid is not None:
        values["history_below_uid"] = history_below_uid
    conn.execute(update(folder_state).where(_where(mailbox, folder)).values(**values))


def record_history_cutoff(
    conn: Connection,
    mailbox: str,
    folder: str,
    uidvalidity: int,
    history_below_uid: int,
    *,
    now: datetime,
) -> None:
    """Remember the first import's cutoff (the folder's UIDNEXT at first contact).

    Commit this on its own, before any message of the folder is fetched: every later
    poll reads it back, so a crash during the import cannot move it past mail that
    arrived meanwhile. The cursor itself is not moved.
    """
    _ensure_row(conn, mailbox, folder)
    conn.execute(
        update(folder_state)
        .where(_where(mailbox, folder))
        .values(uidvalidity=uidvalidity, history_below_uid=history_below_uid, last_poll_at=now)
    )


def mark_history_done(conn: Connection, mailbox: str, folder: str, *, now: datetime) -> None:
    _ensure_row(conn, mailbox, folder)
    conn.execute(
        update(folder_state)
        .where(_where(mailbox, folder))
        .values(history_done=True, last_poll_at=now)
    )


def refresh_statistics(conn: Connection) -> None:
    """After a folder's history went in: let PostgreSQL's planner see the tables it
    filled as they are now. Its statistics are autovacuum's, about a minute behind; the
    triage right after a 20,000-message import planned its reads for the empty tables of
    before (each batch's read of the mail its messages reference took 7 ms, not 1.8 ms:
    a scan of the whole mailbox). The cases as well: triage opens them while the history
    goes in (pipeline.history), and each batch's read of the cases its mail may join,
    planned for an empty table, walked every case of the mailbox (3.4 ms a batch at
    10,000 cases, and growing). SQLite plans without statistics: nothing to do."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql('ANALYZE message, message_location, "case", case_correspondent')


# An idle poll writes its success at most this often: health ("keepword status") is at
# most this stale, and a poll that finds nothing new costs no write.
POLL_SUCCESS_REFRESH = timedelta(seconds=60)


def poll_success_due(cursor: FolderCursor | None, now: datetime) -> bool:
    """Does recording this poll's success change anything worth a write (and a commit)?"""
    if cursor is None or cursor.last_error is not None or cursor.last_success_at is None:
        return True
    return now - cursor.last_success_at >= POLL_SUCCESS_REFRESH


def record_poll_success(conn: Connection, mailbox: str, folder: str, *, now: datetime) -> None:
    """Note a successful poll: clears the folder's error. One UPDATE, which changes no
    row (and writes no page) while the success recorded is younger than
    POLL_SUCCESS_REFRESH and no error is standing; callers holding the cursor skip the
    transaction altogether with `poll_success_due`."""
    stale = or_(
        folder_state.c.last_success_at.is_(None),
        folder_state.c.last_success_at <= now - POLL_SUCCESS_REFRESH,
        folder_state.c.last_error.is_not(None),
    )
    changed = conn.execute(
        update(folder_state)
        .where(and_(_where(mailbox, folder), stale))
        .values(last_poll_at=now, last_success_at=now, last_error=None, last_error_at=None)
    ).rowcount
    if not changed and get_cursor(conn, mailbox, folder) is None:
        _ensure_row(conn, mailbox, folder)
        record_poll_success(conn, mailbox, folder, now=now)


def record_poll_error(
    conn: Connection, mailbox: str, folder: str, error: str, *, now: datetime
) -> None:
    _ensure_row(conn, mailbox, folder)
    conn.execute(
        update(folder_state)
        .where(_where(mailbox, folder))
        .values(last_poll_at=now, last_error=error[:2000], last_error_at=now)
    )


# -- reading back for triage -------------------------------------------------------


def load_facts(conn: Connection, pks: Sequence[int]) -> list[MessageFacts]:
    """MessageFacts for the given message pks, in the order given (unknown pks skipped).

    origin: SENT if the message was ever seen in a sent folder, else the role of the
    first place it was seen. In a first import's context, what it has at hand is taken
    from there (store.facts_at_hand) and only the rest is read.
    """
    at_hand = facts_at_hand.current()
    found: dict[int, MessageFacts] = at_hand.take(pks) if at_hand is not None else {}
    rest = [pk for pk in pks if pk not in found]
    roles = _roles(conn, rest)
    for chunk in _chunks(rest):
        for row in conn.execute(_FACTS_READ.where(message.c.id.in_(chunk))):
            found[int(row.id)] = _facts(row, roles.get(int(row.id), []))
    return [found[pk] for pk in pks if pk in found]


def with_content() -> Join:
    """message with its content (outer: a row written without one reads an empty body)."""
    return message.outerjoin(message_content, message_content.c.message_pk == message.c.id)


# What `_facts` reads of a message, and no more: triage reads every message back once,
# and each column left out (the triage record's, the store's times) is a value
# SQLAlchemy need not process.
_FACTS_READ = select(
    *(
        message.c[name]
        for name in (
            "id",
            "mailbox",
            "message_id",
            "from_addr",
            "from_name",
            "to_addrs",
            "cc_addrs",
            "reply_to",
            "subject",
            "date",
            "date_offset_minutes",
            "in_reply_to",
            "references",
            "headers",
            "content_type",
            "origin",
            "is_history",
            "quarantined",
        )
    ),
    message_content.c.body_text,
).select_from(with_content())


def _roles(conn: Connection, pks: Sequence[int]) -> dict[int, list[str]]:
    roles: dict[int, list[str]] = {}
    for chunk in _chunks(list(pks)):
        query = (
            select(message_location.c.message_pk, message_location.c.role)
            .where(message_location.c.message_pk.in_(chunk))
            .order_by(message_location.c.seen_at, message_location.c.id)
        )
        for pk, role in conn.execute(query):
            roles.setdefault(int(pk), []).append(str(role))
    return roles


def _origin(stored: str, roles: list[str]) -> Origin:
    if Origin.SENT.value in roles:
        return Origin.SENT
    first = roles[0] if roles else stored
    try:
        return Origin(first)
    except ValueError:
        return Origin.INBOX


def _facts(row: Any, roles: list[str]) -> MessageFacts:
    sender = Address(row.from_addr, row.from_name or "") if row.from_addr else None
    return MessageFacts(
        pk=int(row.id),
        mailbox=row.mailbox,
        message_id=row.message_id,
        sender=sender,
        to=_addresses(row.to_addrs),
        cc=_addresses(row.cc_addrs),
        reply_to=_addresses(row.reply_to),
        subject=row.subject or "",
        date=row.date,
        date_offset_minutes=row.date_offset_minutes,
        in_reply_to=tuple((row.in_reply_to or "").split()),
        references=tuple((row.references or "").split()),
        headers={str(k): tuple(v) for k, v in (row.headers or {}).items()},
        content_type=row.content_type or "",
        body_text=row.body_text or "",
        origin=_origin(row.origin, roles),
        is_history=bool(row.is_history),
        quarantined=bool(row.quarantined),
    )


def _addresses(value: Any) -> tuple[Address, ...]:
    if not value:
        return ()
    return tuple(
        Address(str(item.get("address", "")), str(item.get("name", "")))
        for item in value
        if isinstance(item, dict) and item.get("address")
    )


def first_seen_at(conn: Connection, mailbox: str) -> datetime | None:
    """When keepword first saw this mailbox: its oldest location row."""
    return conn.execute(
        select(message_location.c.seen_at)
        .where(message_location.c.mailbox == mailbox)
        .order_by(message_location.c.id)
        .limit(1)
    ).scalar()


@dataclass(frozen=True, slots=True)
class LastMessage:
    message_id: str | None
    references: tuple[str, ...]
    body: str
    at: datetime | None
    offset_minutes: int | None
    name: str


def last_customer_message(conn: Connection, case_id: int) -> LastMessage | None:
    """The case's latest message from its customer (what a reminder quotes, an update
    answers)."""
    row = conn.execute(
        select(
            message.c.message_id,
            message.c.references,
            message_content.c.body_text,
            message.c.date,
            message.c.received_at,
            message.c.date_offset_minutes,
            message.c.from_name,
        )
        .select_from(with_content())
        .where(and_(message.c.case_id == case_id, message.c.kind == "customer"))
        .order_by(message.c.received_at.desc(), message.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return LastMessage(
        message_id=row.message_id,
        references=tuple((row.references or "").split()),
        body=row.body_text or "",
        at=row.received_at or row.date,
        offset_minutes=row.date_offset_minutes,
        name=row.from_name or "",
    )


def raw_message(conn: Connection, pk: int) -> bytes | None:
    """The stored bytes of one message (for checks that need them: DKIM, ARC)."""
    found = conn.execute(
        select(message_content.c.raw).where(message_content.c.message_pk == pk)
    ).scalar_one_or_none()
    return bytes(found) if found is not None else None
