"""Case repository: load and save cases, their correspondents and timelines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    ARRAY,
    JSON,
    BindParameter,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    String,
    and_,
    bindparam,
    cast,
    false,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    true,
    union_all,
    update,
)

from keepword.domain.cases import CaseState, Event, format_reference
from keepword.domain.model import CaseStatus
from keepword.domain.threads import CaseCandidate
from keepword.domain.windows import writes_like_a_robot
from keepword.errors import StaleCaseError
from keepword.store.deferred import DeferredWrites, deferred, waiting, write_now
from keepword.store.tables import case, case_correspondent, case_event, message, outbox

_CASE_FIELDS = (
    "mailbox",
    "reference",
    "status",
    "owner",
    "owner_changes",
    "customer",
    "customer_name",
    "subject",
    "subject_key",
    "is_history",
    "opened_at",
    "last_customer_at",
    "customer_contacts",
    "unanswered_contacts",
    "first_response_at",
    "last_response_at",
    "closed_at",
    "updated_at",
)


# The statements triage runs for every message, built once: building a statement and its
# cache key costs more than SQLite takes to run it (issue 14's profile).
_LOAD = select(case).where(case.c.id == bindparam("case_id"))
_UPDATE = (
    update(case)
    .where(and_(case.c.id == bindparam("b_id"), case.c.version == bindparam("b_version")))
    .values({**{f: bindparam(f"v_{f}") for f in _CASE_FIELDS}, "version": bindparam("v_version")})
)
_INSERT = insert(case).returning(*case.c)
# On PostgreSQL a new case and its correspondents go in one statement (a round trip less
# for every case opened: most of a history's messages open one).
_OPENED = (
    insert(case)
    .values({k: bindparam(k) for k in (*_CASE_FIELDS, "number", "prefix")})
    .returning(*case.c)
    .cte("opened")
)
_LISTED = (
    func.unnest(bindparam("addresses", type_=ARRAY(String)))
    .table_valued("address")
    .render_derived(name="listed")
)
_INSERT_WITH_CORRESPONDENTS = select(_OPENED).add_cte(
    insert(case_correspondent)
    .from_select(
        ["case_id", "address"],
        select(_OPENED.c.id, _LISTED.c.address).select_from(_OPENED.join(_LISTED, true())),
    )
    .cte("known")
)
_ADD_EVENTS = insert(case_event)
# A batch writes the cases it opens and saves at its end (store.deferred): their ids
# are taken ahead, some at a time (_next_ids).
_INSERT_LATER = insert(case)
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('\"case\"', 'id')) FROM generate_series(1, :count)"
)
_HIGHEST_ID = select(func.coalesce(func.max(case.c.id), 0))
CASE_IDS_AT_ONCE: Final = 25
_CASE_IDS: Final = "case ids"  # its key among DeferredWrites.pools
_LAST_CASE_ID: Final = "last case id"  # SQLite: the highest id the batch handed out
_BATCH_OPENED: Final = "opened cases"  # the ids of the cases the batch opened
_MAY_OPEN: Final = "may open"  # at most this many cases in all (`expect_openings`)
_OPENED_RANK: Final = -2  # before the rows that name the case (events, correspondents ...)
_SAVED_RANK: Final = -1  # after the case was opened, each save in its turn


def _to_state(row: Row[Any]) -> CaseState:
    values = row._mapping
    return CaseState(
        id=values["id"],
        status=CaseStatus(values["status"]),
        subject=values["subject"] or "",
        subject_key=values["subject_key"] or "",
        version=values["version"],
        **{k: values[k] for k in _CASE_FIELDS if k not in {"status", "subject", "subject_key"}},
    )


def load_case(conn: Connection, case_id: int) -> CaseState:
    cases_written(conn)
    return _to_state(conn.execute(_LOAD, {"case_id": case_id}).one())


def find_case(conn: Connection, reference: str) -> CaseState | None:
    cases_written(conn)
    row = conn.execute(
        select(case).where(func.upper(case.c.reference) == reference.upper())
    ).first()
    return _to_state(row) if row else None


def list_cases(
    conn: Connection,
    *,
    mailbox: str | None = None,
    statuses: Sequence[CaseStatus] | None = None,
    owner: str | None = None,
    limit: int = 500,
) -> list[CaseState]:
    cases_written(conn)
    query = select(case).order_by(case.c.opened_at.desc(), case.c.id.desc()).limit(limit)
    if mailbox:
        query = query.where(case.c.mailbox == mailbox)
    if statuses:
        query = query.where(case.c.status.in_([s.value for s in statuses]))
    if owner:
        query = query.where(case.c.owner == owner.lower())
    return [_to_state(row) for row in conn.execute(query)]


CASE_NUMBER_LOCK = 0x6B77  # pg_advisory_xact_lock(int, int): the key's first half


@dataclass(slots=True)
class CaseNumbers:
    """The case numbers one write transaction handed out, by (mailbox, prefix): its next
    case skips the lock and the MAX lookup. Sound because the transaction holds the
    numbering lock to its end (SQLite's write lock, PostgreSQL's advisory lock): nobody
    else numbers meanwhile. One per transaction; `forget` when a savepoint rolls back
    (the number it took is free again: the next case takes it, as without this)."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)

    def forget(self) -> None:
        self.last.clear()


def next_number(
    conn: Connection, mailbox: str, prefix: str, numbers: CaseNumbers | None = None
) -> int:
    """The next case number: past every number of this mailbox and of this prefix.

    Mailboxes that share a prefix (all default to "KW") share its sequence, so a
    reference names one case everywhere; a mailbox whose prefix changed goes on
    counting where it was.
    """
    if numbers is not None and (mailbox, prefix) in numbers.last:
        return numbers.last[mailbox, prefix] + 1
    if conn.dialect.name == "postgresql":  # instances sharing a prefix number one at a time
        conn.execute(_NUMBER_LOCK, {"prefix": prefix})
    elif conn.dialect.name == "sqlite" and not _holds_sqlite_write_lock(conn):
        # The write lock before the read: mailboxes triage in threads of their own, and
        # two that read the same MAX before either inserts would take the same number
        # (the second fails on the unique reference and its customer waits for a retry).
        # A no-op write takes it (SQLite has one writer); it is held to the commit.
        conn.execute(_WRITE_LOCK)
    cases_written(conn)
    current = conn.execute(_LAST_NUMBERS, {"mailbox": mailbox, "prefix": prefix})
    return max(number or 0 for number in current.one()) + 1


# Built once: every case opened runs them (see _LOAD).
_NUMBER_LOCK = select(
    func.pg_advisory_xact_lock(CASE_NUMBER_LOCK, func.hashtext(bindparam("prefix")))
)
_WRITE_LOCK = update(case).where(false()).values(number=case.c.number)
# Two indexed MAX lookups ((mailbox, number) and (prefix, number)), not a scan.
_LAST_NUMBERS = select(
    select(func.max(case.c.number)).where(case.c.mailbox == bindparam("mailbox")).scalar_subquery(),
    select(func.max(case.c.number)).where(case.c.prefix == bindparam("prefix")).scalar_subquery(),
)


def _holds_sqlite_write_lock(conn: Connection) -> bool:
    """pysqlite is inside a transaction only after BEGIN IMMEDIATE (store.db's
    write_transaction) or a first write: either way this connection is SQLite's writer."""
    return bool(conn.connection.driver_connection.in_transaction)  # type: ignore[union-attr]


def save_case(
    conn: Connection,
    state: CaseState,
    *,
    prefix: str | None = None,
    numbers: CaseNumbers | None = None,
    correspondents: Iterable[str] = (),
) -> CaseState:
    """Insert a new case (allocating its number and reference) or update an existing one,
    and add `correspondents` it does not know yet (`add_correspondents`).

    An update only lands on the version it was read at; otherwise StaleCaseError, and the
    caller's transaction (with everything else it decided) rolls back. `numbers`: the
    transaction's numbering so far (CaseNumbers), for the many cases of a batch.
    """
    values = {k: getattr(state, k) for k in _CASE_FIELDS}
    values["status"] = state.status.value
    # In a batch: written at its end, not a statement each (store.deferred).
    later = deferred(conn)
    if state.id is not None:
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(b_id=state.id, b_version=state.version, v_version=state.version + 1)
        if later is not None:
            if not _folded(later, state, values, params):
                later.add(
                    _UPDATE, [params], read=True, rank=_SAVED_RANK, counted=True, key=state.id
                )
        elif conn.execute(_UPDATE, params).rowcount != 1:
            raise StaleCaseError(f"case {state.reference} changed meanwhile")
        updated = replace(state, version=state.version + 1)
        _pooled_save(conn, updated)
        add_correspondents(conn, state.id, correspondents)
        return updated
    prefix = prefix or state.reference or "KW"
    number = next_number(conn, state.mailbox, prefix, numbers)
    reference = format_reference(prefix, number)
    values.update(number=number, reference=reference, prefix=prefix)
    if later is not None:
        inserted = _opened_later(conn, later, state, values)
        assert inserted.id is not None
        _pooled_save(conn, inserted, new_case=True)
        add_correspondents(conn, inserted.id, correspondents, new_case=True)
    # RETURNING: the row as stored (defaults and all) without a second statement.
    elif conn.dialect.name == "postgresql":
        addresses = _addresses(correspondents)
        row = conn.execute(_INSERT_WITH_CORRESPONDENTS, {**values, "addresses": addresses})
        inserted = _to_state(row.one())
        _pooled_save(conn, inserted, new_case=True)
        _pooled_people(conn, inserted.id, addresses)
    else:
        inserted = _to_state(conn.execute(_INSERT, values).one())
        assert inserted.id is not None
        _pooled_save(conn, inserted, new_case=True)
        add_correspondents(conn, inserted.id, correspondents, new_case=True)
    if numbers is not None:
        numbers.last[state.mailbox, prefix] = number
    return inserted


def _opened_later(
    conn: Connection, later: DeferredWrites, state: CaseState, values: dict[str, Any]
) -> CaseState:
    """A new case whose row the batch writes at its end: the state a read of the row
    would give (its id taken ahead from the sequence, version 0, times in UTC)."""
    ids = later.pools.setdefault(_CASE_IDS, [])
    assert isinstance(ids, list)
    if not ids:
        ids.extend(_next_ids(conn, later))
    case_id: int = ids.pop(0)
    later.pools[_LAST_CASE_ID] = case_id
    opened = later.pools.setdefault(_BATCH_OPENED, set())
    assert isinstance(opened, set)
    opened.add(case_id)
    later.add(
        _INSERT_LATER,
        [{**values, "id": case_id, "version": 0}],
        read=True,
        rank=_OPENED_RANK,
        key=case_id,
    )
    return _as_stored(replace(state, id=case_id, reference=values["reference"], version=0))


def _folded(
    later: DeferredWrites, state: CaseState, values: dict[str, Any], params: dict[str, Any]
) -> bool:
    """A case saved again while its batch's row for it still waits (the case opened or
    saved earlier in the batch): that row takes the new values and version, one row
    written instead of two, to the same end. Only on the version that row writes: a save
    made on an older one is stale, and is left to fail at the flush as it did."""
    opened = waiting(later, _INSERT_LATER, state.id)
    if opened is not None and opened["version"] == state.version:
        opened.update(values, version=state.version + 1)
        return True
    saved = waiting(later, _UPDATE, state.id)
    if saved is not None and saved["v_version"] == state.version:
        saved.update(params, b_version=saved["b_version"])  # from where that row started
        return True
    return False


def opened_in_batch(conn: Connection, case_id: int) -> bool:
    """Whether the batch that defers this connection's writes opened this case (what the
    store holds of it then is what the batch wrote)."""
    waiting = deferred(conn)
    opened = waiting.pools.get(_BATCH_OPENED) if waiting is not None else None
    return isinstance(opened, set) and case_id in opened


def expect_openings(conn: Connection, most: int) -> None:
    """The batch that defers this connection's writes opens at most `most` cases (one a
    message): on PostgreSQL its ids are then taken in one statement, as the first case
    opens, not CASE_IDS_AT_ONCE at a time (a round trip each: ~400 of a 20,000-message
    history's triage, on the thread it waits in). Ids it leaves unused are gaps, as any
    sequence leaves; the ids are the store's, the references count on their own."""
    later = deferred(conn)
    if later is not None:
        later.pools[_MAY_OPEN] = most


def _ids_wanted(later: DeferredWrites) -> int:
    most = later.pools.get(_MAY_OPEN)
    opened = later.pools.get(_BATCH_OPENED)
    if not isinstance(most, int):
        return CASE_IDS_AT_ONCE
    return max(1, most - (len(opened) if isinstance(opened, set) else 0))


def _next_ids(conn: Connection, later: DeferredWrites) -> list[int]:
    """Ids for the cases a batch opens, taken ahead: from PostgreSQL's sequence (others
    take theirs meanwhile), or on SQLite past the highest id stored or handed out, which
    only this transaction can add to until it commits (a batch begins IMMEDIATE, holding
    the write lock: store.db.write_transaction; were it not, another writer's case would
    make the batch's INSERT fail on the id and the batch be tried again, never merge)."""
    if conn.dialect.name == "postgresql":
        wanted = _ids_wanted(later)
        return [int(i) for i in conn.execute(_NEXT_IDS, {"count": wanted}).scalars()]
    handed = later.pools.get(_LAST_CASE_ID)
    highest = handed if isinstance(handed, int) else conn.execute(_HIGHEST_ID).scalar_one()
    return list(range(highest + 1, highest + 1 + CASE_IDS_AT_ONCE))


def _as_stored(state: CaseState) -> CaseState:
    """`state` as a read of its row gives it: every time aware UTC (the state itself when
    they are already: a batch keeps every case it opens or saves this way)."""
    times = {name: getattr(state, name) for name in _TIMES}
    moved = {k: v.astimezone(UTC) for k, v in times.items() if v and v.tzinfo is not UTC}
    return replace(state, **moved) if moved else state


def confirm_unchanged(conn: Connection, state: CaseState) -> None:
    """StaleCaseError if the case moved on since `state` was read.

    For decisions that write around a case without saving it (the chase's mails and
    promise records). The no-op write also takes the row's lock until commit, so a
    concurrent save either waits for this transaction or has already made it fail.
    """
    cases_written(conn)
    still = conn.execute(
        update(case)
        .where(and_(case.c.id == state.id, case.c.version == state.version))
        .values(version=state.version)
    )
    if still.rowcount != 1:
        raise StaleCaseError(f"case {state.reference} changed meanwhile")


def add_events(conn: Connection, case_id: int, events: Iterable[Event]) -> None:
    rows = [
        {
            "case_id": case_id,
            "at": e.at,
            "kind": e.kind.value,
            "actor": e.actor,
            "detail": e.detail,
            "message_pk": e.message_pk,
        }
        for e in events
    ]
    if not rows:
        return
    waiting = deferred(conn)
    if waiting is not None:
        waiting.add(_ADD_EVENTS, rows)
    else:
        conn.execute(_ADD_EVENTS, rows)


def add_correspondents(
    conn: Connection, case_id: int, addresses: Iterable[str], *, new_case: bool = False
) -> None:
    """Add the addresses the case does not know yet (a case saved in this transaction
    knows none: `new_case` spares the read). A batch writes them at its end (or before
    the next read of correspondents from the store: `_correspondents_written`)."""
    wanted = _addresses(addresses)
    if not wanted:
        return
    known = set() if new_case else _known_correspondents(conn, case_id)
    fresh = [a for a in wanted if a not in known]
    if not fresh:
        return
    rows = [{"case_id": case_id, "address": a} for a in fresh]
    waiting = deferred(conn)
    if waiting is not None:
        waiting.add(_ADD_CORRESPONDENTS, rows)
    else:
        conn.execute(_ADD_CORRESPONDENTS, rows)
    _pooled_people(conn, case_id, fresh)


def _known_correspondents(conn: Connection, case_id: int) -> set[str]:
    """The case's correspondents: from the batch's pool where it holds the case (it holds
    all of them, kept with every write), else from the store."""
    pool = _pool(conn)
    if pool is not None and case_id in pool.people:
        return set(pool.people[case_id])
    _correspondents_written(conn)
    return set(conn.execute(_CORRESPONDENTS, {"case_id": case_id}).scalars())


def cases_written(conn: Connection) -> None:
    """Before a read of cases from the store: the cases the batch opened, then its saves
    (store.deferred)."""
    write_now(conn, _INSERT_LATER)
    write_now(conn, _UPDATE)


def _correspondents_written(conn: Connection) -> None:
    """Before a read of correspondents from the store: the batch's own go in first, after
    the cases they name."""
    cases_written(conn)
    write_now(conn, _ADD_CORRESPONDENTS)


# Triage runs these for most messages: built once (see _LOAD).
_CORRESPONDENTS = select(case_correspondent.c.address).where(
    case_correspondent.c.case_id == bindparam("case_id")
)
_ADD_CORRESPONDENTS = insert(case_correspondent)


def _addresses(addresses: Iterable[str]) -> list[str]:
    """A case's correspondents as stored: lower-cased, each once, in order; no blanks."""
    return sorted({a.lower() for a in addresses if a})


@dataclass(frozen=True, slots=True)
class ReferencedMail:
    """The mail a message's References name, as stored: the cases that saw it (stored
    mail first, then keepword's own outgoing mail; each in the order the ids were
    given) and, per case, everyone that mail was from or sent to (domain.trust.JoinTarget:
    From, To and Cc of stored mail, the recipients of keepword's own)."""

    case_ids: tuple[int, ...] = ()
    addresses: Mapping[int, frozenset[str]] = field(default_factory=dict)

    def participants(self, case_id: int) -> frozenset[str]:
        return self.addresses.get(case_id, frozenset())


# One statement for both kinds of mail (were four: the cases, then the participants).
# Mail without a case is left out as it is read, not in the WHERE: PostgreSQL, told by
# the statistics of a fresh import that no mail has a case, walked the index of those
# that do (5 ms a batch by the end of a 20,000-message history, growing with it).
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_REFERENCED = union_all(
    select(
        literal_column("0", Integer).label("own"),
        message.c.id.label("row_id"),
        message.c.message_id,
        message.c.case_id,
        message.c.from_addr,
        message.c.to_addrs,
        message.c.cc_addrs,
    ).where(
        and_(
            message.c.mailbox == bindparam("mailbox"),
            message.c.message_id.in_(_IDS),
        )
    ),
    select(
        literal_column("1", Integer),
        outbox.c.id,
        outbox.c.message_id,
        outbox.c.case_id,
        cast(null(), String),
        outbox.c.recipients,
        cast(null(), JSON),
    ).where(outbox.c.message_id.in_(_IDS)),
)


def _with_case(rows: Iterable[Row[Any]]) -> Iterator[Row[Any]]:
    return (row for row in rows if row.case_id is not None)


def _went_between(
    found: dict[int, set[str]], case_id: int, sender: Any, recipients: Iterable[Any]
) -> None:
    """Case `case_id`'s mail went from `sender` to `recipients`: each address, lower-cased,
    joins its participants (empty ones do not)."""
    people = found.setdefault(case_id, set())
    people.update(str(a).lower() for a in (sender, *recipients) if a)


#: A batch whose messages name more Message-IDs than this reads them a message at a time
#: (one statement's bound parameters stay well inside every database's limit).
MAX_PREFETCHED_IDS: Final = 2_000
_PREFETCHED: Final = "references"  # its key among DeferredWrites.reads


@dataclass(frozen=True, slots=True)
class _Prefetched:
    """The stored mail with these Message-IDs, as the batch began (`prefetch_references`)."""

    ids: frozenset[str]
    rows: Mapping[str, tuple[Row[Any], ...]]


def prefetch_references(conn: Connection, mailbox: str, message_ids: Iterable[str]) -> None:
    """For a batch that defers its writes (store.deferred): read the stored mail all its
    messages' References name in one statement, not one a message (a round trip each on
    PostgreSQL); `referenced_mail` answers from it until the batch flushes."""
    waiting = deferred(conn)
    ids = list(dict.fromkeys(message_ids))
    if waiting is None or not ids or len(ids) > MAX_PREFETCHED_IDS:
        return
    rows: dict[str, list[Row[Any]]] = {}
    for row in _with_case(conn.execute(_REFERENCED, {"mailbox": mailbox, "ids": ids})):
        rows.setdefault(row.message_id, []).append(row)
    prefetched = _Prefetched(frozenset(ids), {k: tuple(v) for k, v in rows.items()})
    waiting.reads[_PREFETCHED] = prefetched


def _referenced_rows(conn: Connection, mailbox: str, ids: list[str]) -> list[Row[Any]]:
    """The stored rows of these Message-IDs, stored mail first, each kind in the order it
    was stored (a Message-ID stored twice: the later row wins, whichever read found it)."""
    waiting = deferred(conn)
    prefetched = waiting.reads.get(_PREFETCHED) if waiting is not None else None
    if isinstance(prefetched, _Prefetched) and prefetched.ids.issuperset(ids):
        rows = [row for mid in dict.fromkeys(ids) for row in prefetched.rows.get(mid, ())]
    else:
        rows = list(_with_case(conn.execute(_REFERENCED, {"mailbox": mailbox, "ids": ids})))
    return sorted(rows, key=lambda row: (row.own, row.row_id))


def referenced_mail(conn: Connection, mailbox: str, message_ids: Sequence[str]) -> ReferencedMail:
    """What the mailbox holds of the mail with these Message-IDs (ReferencedMail)."""
    if not message_ids:
        return ReferencedMail()
    ids = list(message_ids)
    # Stored mail's and keepword's own, each Message-ID -> case.
    by_id: tuple[dict[str, int], dict[str, int]] = ({}, {})
    found: dict[int, set[str]] = {}
    for row in _referenced_rows(conn, mailbox, ids):
        by_id[row.own][row.message_id] = row.case_id
        # JSON lists: stored mail's {"address": ...} entries, an outbox row's addresses.
        listed = [*(row.to_addrs or []), *(row.cc_addrs or [])]
        named = (item.get("address") if isinstance(item, dict) else item for item in listed)
        _went_between(found, row.case_id, row.from_addr, named)
    waiting = deferred(conn)  # this batch's mail, triaged but not written yet
    pending = waiting.references if waiting is not None else {}
    for mid in ids:
        if mid in pending:  # as its stored row will read once written
            case_id, facts = pending[mid]
            by_id[0][mid] = case_id
            sender = facts.sender.address if facts.sender is not None else None
            _went_between(found, case_id, sender, (a.address for a in (*facts.to, *facts.cc)))
    ordered: list[int] = []
    for source in by_id:
        for mid in ids:
            cid = source.get(mid)
            if cid is not None and cid not in ordered:
                ordered.append(cid)
    return ReferencedMail(tuple(ordered), {k: frozenset(v) for k, v in found.items()})


def timeline(conn: Connection, case_id: int) -> list[Row[Any]]:
    query = (
        select(case_event)
        .where(case_event.c.case_id == case_id)
        .order_by(case_event.c.at, case_event.c.id)
    )
    return list(conn.execute(query))


def first_response_history(
    conn: Connection,
    mailbox: str,
    since: datetime,
    *,
    exclude_case: int | None = None,
    robot_cases_per_day: int | None = None,
) -> list[tuple[datetime, datetime | None]]:
    """(opened_at, first_response_at) of the mailbox's customer cases opened since `since`.

    Left out: cases closed without a reply (spam, thank-you notes: nothing was owed),
    history cases that were never answered (imported mail may have been answered elsewhere;
    counting them as endless waits would inflate every promise), and, with
    `robot_cases_per_day`, every case of an address that opened that many cases within
    24 hours (domain.windows.writes_like_a_robot: no backlog a person waits in).
    """
    cases_written(conn)
    unanswered = case.c.first_response_at.is_(None)
    customer_cases = and_(
        case.c.mailbox == mailbox, case.c.opened_at >= since, case.c.customer.is_not(None)
    )
    query = select(case.c.customer, case.c.opened_at, case.c.first_response_at).where(
        and_(
            customer_cases,
            ~and_(unanswered, case.c.status == CaseStatus.CLOSED.value),
            ~and_(unanswered, case.c.is_history.is_(True)),
            case.c.id != (exclude_case if exclude_case is not None else -1),
        )
    )
    robots: frozenset[str] = frozenset()
    if robot_cases_per_day is not None:
        openings = select(case.c.customer, case.c.opened_at).where(customer_cases)
        robots = writes_like_a_robot(
            ((who, at) for who, at in conn.execute(openings)), robot_cases_per_day
        )
    return [(o, f) for who, o, f in conn.execute(query) if who not in robots]


def unanswered_backlog(conn: Connection, mailbox: str, since: datetime) -> int:
    cases_written(conn)
    query = select(func.count()).where(
        and_(
            case.c.mailbox == mailbox,
            case.c.status.in_([CaseStatus.NEW.value, CaseStatus.WAITING_ON_TEAM.value]),
            case.c.last_customer_at >= since,
        )
    )
    return int(conn.execute(query).scalar() or 0)


def _candidates_read(by_tag: ColumnElement[bool], by_subject: ColumnElement[bool]) -> Select[Any]:
    """Every case a message (or a batch's messages) could join, with its correspondents,
    in one statement: the ids of each rule on its own index (the primary key, the unique
    reference, the subject), then their rows. (One WHERE with the three ORed made
    PostgreSQL scan the tables.)"""
    ids = union_all(
        select(case.c.id).where(case.c.id.in_(bindparam("ids", expanding=True))),
        # References are unique across mailboxes: on that index alone (the mailbox is
        # checked on the rows read; with the mailbox in the WHERE, PostgreSQL without
        # fresh statistics walked the mailbox's cases).
        select(case.c.id).where(by_tag),
        select(case_correspondent.c.case_id)
        .join(case, case.c.id == case_correspondent.c.case_id)
        .where(
            and_(
                case.c.mailbox == bindparam("mailbox"),
                by_subject,
                case_correspondent.c.address.in_(bindparam("addresses", expanding=True)),
            )
        ),
    )
    return (
        select(case, case_correspondent.c.address.label("known_address"))
        .outerjoin(case_correspondent, case_correspondent.c.case_id == case.c.id)
        .where(case.c.id.in_(ids))
    )


_CANDIDATES = _candidates_read(
    case.c.reference == bindparam("tag"), case.c.subject_key == bindparam("subject_key")
)


@dataclass(frozen=True, slots=True)
class CandidateRead:
    """The cases a message could join, as read: what threading weighs of each
    (`candidates`), the cases as stored (`states`: the message's triage changes the one
    it joins without reading it again), the one its tag names and those of its subject
    and correspondents (each address in turn, the latest first)."""

    candidates: Mapping[int, CaseCandidate]
    states: Mapping[int, CaseState]
    tagged: int | None
    by_subject: tuple[int, ...]


def read_candidates(
    conn: Connection,
    mailbox: str,
    *,
    case_ids: Sequence[int] = (),
    tag: str | None = None,
    subject_key: str = "",
    addresses: Sequence[str] = (),
) -> CandidateRead:
    """The cases `case_ids`, the mailbox's case tagged `tag` and its cases of this
    subject key with one of these correspondents; one statement, a case's row once per
    correspondent (or none: a batch's pool answers, `prefetch_candidates`). References
    are stored upper-case (the prefix's pattern, config): the tag is looked up
    upper-cased, on the unique index."""
    wanted = [a.lower() for a in addresses] if subject_key else []
    if not case_ids and tag is None and not wanted:
        return CandidateRead({}, {}, None, ())
    tagged_as = tag.upper() if tag else None
    pool = _pool(conn)
    if pool is not None and pool.covers(case_ids, tagged_as, subject_key, wanted):
        states, people = pool.matching(mailbox, case_ids, tagged_as, subject_key, wanted)
        return _candidate_read(states, people, mailbox, tagged_as, subject_key, wanted)
    _correspondents_written(conn)
    params = {
        "ids": list(case_ids),
        "mailbox": mailbox,
        "tag": tagged_as,
        "subject_key": subject_key,
        "addresses": wanted,
    }
    states = {}
    people = {}
    for row in conn.execute(_CANDIDATES, params):
        if row.id not in states:
            states[row.id] = _to_state(row)
            people[row.id] = set()
        if row.known_address is not None:
            people[row.id].add(row.known_address)
    return _candidate_read(states, people, mailbox, tagged_as, subject_key, wanted)


def _candidate_read(
    states: Mapping[int, CaseState],
    people: Mapping[int, set[str]],
    mailbox: str,
    tag: str | None,
    subject_key: str,
    wanted: Sequence[str],
) -> CandidateRead:
    """What threading weighs of the cases found (their rows and every correspondent)."""
    tagged = next(
        (i for i, s in states.items() if s.mailbox == mailbox and s.reference == tag),
        None,
    )
    same_subject = sorted(
        (i for i, s in states.items() if s.mailbox == mailbox and s.subject_key == subject_key),
        key=lambda i: (states[i].updated_at, i),
        reverse=True,
    )
    by_subject = [i for who in wanted for i in same_subject if who in people[i]]
    candidates = {
        case_id: CaseCandidate(
            case_id=case_id,
            reference=state.reference,
            correspondents=frozenset(people[case_id]),
            subject_key=state.subject_key,
            last_activity=state.updated_at,
            closed=state.status is CaseStatus.CLOSED,
        )
        for case_id, state in states.items()
    }
    return CandidateRead(candidates, dict(states), tagged, tuple(by_subject))


# -- a batch's candidates, read once ------------------------------------------------------

_POOL: Final = "candidates"  # its key among DeferredWrites.pools
_TIMES: Final = (
    "opened_at",
    "updated_at",
    "last_customer_at",
    "first_response_at",
    "last_response_at",
    "closed_at",
)
# Every case a batch's messages may join: each rule for all of them at once.
_POOL_READ = _candidates_read(
    case.c.reference.in_(bindparam("tags", expanding=True)),
    case.c.subject_key.in_(bindparam("subject_keys", expanding=True)),
)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a message's candidate read will most likely ask (`read_candidates`), known
    before it is triaged: its subject's tags, its subject's key, its correspondents."""

    tags: tuple[str, ...] = ()
    subject_key: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(slots=True)
class _Pool:
    """The cases a batch's messages may join, read when it began (`asked`: what was looked
    up) and kept as the batch changes them: store.cases writes every case and
    correspondent, and keeps the pool with each write (`_pooled_save`, `_pooled_people`).
    A question it does not cover is read from the store, as without a pool."""

    asked_ids: frozenset[int]
    asked_tags: frozenset[str]
    asked_keys: frozenset[str]
    asked_addresses: frozenset[str]
    states: dict[int, CaseState] = field(default_factory=dict)
    people: dict[int, set[str]] = field(default_factory=dict)
    by_reference: dict[str, int] = field(default_factory=dict)
    by_subject: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def covers(
        self, case_ids: Sequence[int], tag: str | None, subject_key: str, wanted: Sequence[str]
    ) -> bool:
        """Whether the store would answer this question as the pool does: everything it
        asks was looked up when the batch began, or is a case the batch wrote since."""
        return (
            all(i in self.asked_ids or i in self.states for i in case_ids)
            and (tag is None or tag in self.asked_tags)
            and (
                not wanted
                or (subject_key in self.asked_keys and self.asked_addresses.issuperset(wanted))
            )
        )

    def matching(
        self,
        mailbox: str,
        case_ids: Sequence[int],
        tag: str | None,
        subject_key: str,
        wanted: Sequence[str],
    ) -> tuple[dict[int, CaseState], dict[int, set[str]]]:
        """The cases `read_candidates`' statement would find, with their correspondents."""
        found = [i for i in case_ids if i in self.states]
        if tag is not None and tag in self.by_reference:
            found.append(self.by_reference[tag])
        if wanted:
            same = self.by_subject.get((mailbox, subject_key), set())
            found.extend(i for i in same if not self.people[i].isdisjoint(wanted))
        ids = dict.fromkeys(found)
        return {i: self.states[i] for i in ids}, {i: self.people[i] for i in ids}

    def keep(self, state: CaseState) -> None:
        """`state` as the store now holds it (a case read, opened or saved)."""
        assert state.id is not None
        before = self.states.get(state.id)
        if before is not None:
            self.by_subject.get((before.mailbox, before.subject_key), set()).discard(state.id)
        self.states[state.id] = state
        self.people.setdefault(state.id, set())
        self.by_reference[state.reference] = state.id
        self.by_subject.setdefault((state.mailbox, state.subject_key), set()).add(state.id)


def prefetch_candidates(conn: Connection, mailbox: str, lookups: Iterable[Lookup]) -> None:
    """For a batch that defers its writes (store.deferred): read every case its messages
    may join in one statement (the cases their References name, `prefetch_references`,
    their tags', and those of their subjects with their correspondents), not one a
    message; `read_candidates` answers from it what it covers. Only this module writes
    cases and correspondents, and it keeps the pool with each write: a flush (the batch's
    events, triage records, mail) changes nothing it holds."""
    waiting = deferred(conn)
    if waiting is None:
        return
    asked = list(lookups)
    referenced = waiting.reads.get(_PREFETCHED)
    ids = (
        {row.case_id for rows in referenced.rows.values() for row in rows}
        if isinstance(referenced, _Prefetched)
        else set()
    )
    tags = {tag.upper() for lookup in asked for tag in lookup.tags}
    keys = {lookup.subject_key for lookup in asked if lookup.subject_key}
    addresses = {a.lower() for lookup in asked if lookup.subject_key for a in lookup.addresses}
    if len(ids) + len(tags) + len(keys) + len(addresses) > MAX_PREFETCHED_IDS:
        return
    pool = _Pool(frozenset(ids), frozenset(tags), frozenset(keys), frozenset(addresses))
    params = {
        "ids": sorted(ids),
        "tags": sorted(tags),
        "mailbox": mailbox,
        "subject_keys": sorted(keys),
        "addresses": sorted(addresses) if keys else [],
    }
    _correspondents_written(conn)
    for row in conn.execute(_POOL_READ, params):
        if row.id not in pool.states:
            pool.keep(_to_state(row))
        if row.known_address is not None:
            pool.people[row.id].add(row.known_address)
    waiting.pools[_POOL] = pool


def pooled_case_ids(conn: Connection) -> list[int]:
    """The ids of the cases in the batch's pool (none without one)."""
    pool = _pool(conn)
    return sorted(pool.states) if pool is not None else []


def _pool(conn: Connection) -> _Pool | None:
    waiting = deferred(conn)
    found = waiting.pools.get(_POOL) if waiting is not None else None
    return found if isinstance(found, _Pool) else None


def _pooled_save(conn: Connection, state: CaseState, *, new_case: bool = False) -> None:
    """A case the batch saved: as the store holds it now (aware UTC times). A case the
    pool never read has correspondents it does not know: the pool goes (read again)."""
    pool = _pool(conn)
    if pool is None:
        return
    assert state.id is not None
    if not new_case and state.id not in pool.states:
        _drop_pool(conn)
        return
    pool.keep(_as_stored(state))


def _pooled_people(conn: Connection, case_id: int | None, addresses: Iterable[str]) -> None:
    """Correspondents the batch added to a case (gone with the pool if it has no such case)."""
    pool = _pool(conn)
    if pool is None or case_id is None:
        return
    known = pool.people.get(case_id)
    if known is None:
        _drop_pool(conn)
        return
    known.update(addresses)


def _drop_pool(conn: Connection) -> None:
    """The rest of the batch reads its candidates from the store."""
    waiting = deferred(conn)
    if waiting is not None:
        waiting.pools.pop(_POOL, None)


def case_candidates(conn: Connection, case_ids: Sequence[int]) -> dict[int, CaseCandidate]:
    """What threading weighs of each case a new message could join."""
    return dict(read_candidates(conn, "", case_ids=case_ids).candidates)


def live_case_ids(conn: Connection, mailbox: str, statuses: Sequence[CaseStatus]) -> set[int]:
    """Ids of the mailbox's live (not history) cases in one of these statuses."""
    cases_written(conn)
    query = select(case.c.id).where(
        and_(
            case.c.mailbox == mailbox,
            case.c.status.in_([s.value for s in statuses]),
            case.c.is_history.is_(False),
        )
    )
    return set(conn.execute(query).scalars())
