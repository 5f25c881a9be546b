"""The ingestion use case: IMAP folder -> parsed, stored messages, exactly once.

Per folder the database keeps UIDVALIDITY and the highest UID taken in (folder_state).
A poll asks STATUS first; when nothing is new that is the only IMAP command. New UIDs
are fetched in batches (BODY.PEEK, never marking mail read), parsed, and each batch is
stored in its own transaction together with the advanced cursor: a crash loses
nothing and doubles nothing. A batch is capped in messages and in bytes (RFC822.SIZE,
asked first), and at most four batches are in flight (pipeline.parse_workers), so memory follows
fetch_batch_bytes, not the size of the mail.

First contact with a folder takes everything already in it as history (kept, threaded,
never answered): the folder's UIDNEXT at that moment is committed as the cutoff before
anything is fetched, so an import interrupted by a crash resumes with the same cutoff
and mail that arrived meanwhile stays live. That first import fetches the oldest mail
first and the caller may triage it meanwhile (pipeline.history); its cursor stays below
the lowest UID not stored yet. A UIDVALIDITY change re-scans the folder
from UID 0: known mail dedups by identity, unknown mail is stored as new.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from keepword.adapters.credentials import resolve_secret
from keepword.adapters.imap import ImapConnectionError, ImapSession
from keepword.config import MailboxSettings, Settings
from keepword.domain.model import MessageFacts, Origin
from keepword.errors import KeepwordError, MailboxError
from keepword.mail.parse import ParsedMessage, parse_message
from keepword.pipeline.history import (
    EMPTY,
    DatedLike,
    FolderPlan,
    HistoryImport,
    StoredPrefix,
    Triager,
)
from keepword.pipeline.parse_workers import ParsePool
from keepword.pipeline.prefetch import FIRST_ASK, Asked, Prefetcher
from keepword.store import messages as store
from keepword.store.db import concurrent_writers
from keepword.store.messages import StoreItem

log = logging.getLogger(__name__)

# A backlog at least this big is parsed in worker processes (pipeline.parse_workers:
# their start, ~0.35 s, pays off).
PARALLEL_PARSE_MIN = 2000
# A first import's first batches of a folder are smaller (then fetch_batch): storing
# waits for the first parsed batch, ~0.35 s for 500 mails, ~0.07 s for 100, and the
# workers are ahead of it from the second on (docs/benchmarks.md, twenty-second wave).
FIRST_BATCHES = (100, 200)

Clock = Callable[[], datetime]
Progress = Callable[[int], None]  # called with the number of messages just handled


class FolderStatusLike(Protocol):
    @property
    def uidvalidity(self) -> int: ...
    @property
    def uidnext(self) -> int: ...
    @property
    def messages(self) -> int: ...


class FetchedLike(Protocol):
    @property
    def uid(self) -> int: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def internaldate(self) -> datetime | None: ...


class MailSession(Protocol):
    """What ingestion needs from an IMAP session (keepword.adapters.imap.ImapSession fits)."""

    def status(self, folder: str) -> FolderStatusLike: ...
    def new_uids(self, folder: str, after_uid: int) -> list[int]: ...
    def message_sizes(self, uids: Sequence[int]) -> dict[int, int]: ...
    def message_dates(self, uids: Sequence[int]) -> Sequence[DatedLike]: ...
    def fetch(self, uids: Sequence[int]) -> Sequence[FetchedLike]: ...
    def unselect(self) -> None: ...
    def close(self) -> None: ...


SessionFactory = Callable[[MailboxSettings], MailSession]


@dataclass(frozen=True, slots=True)
class PollResult:
    new: int = 0
    known: int = 0
    quarantined: int = 0
    uidvalidity_changed: bool = False
    is_history: bool = False
    largest_batch_bytes: int = 0  # raw bytes of the biggest batch fetched at once
    # Live mail beyond one fetch batch is left for the next poll (the cursor stops at the
    # last UID taken in): triage and the drain get the first batch at once.
    more: bool = False


@dataclass
class MailboxPollResult:
    mailbox: str
    folders: dict[str, PollResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def new(self) -> int:
        return sum(r.new for r in self.folders.values())

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def more(self) -> bool:
        """Live mail is left on the server for the next poll (see PollResult.more)."""
        return any(r.more for r in self.folders.values())


def watched_folders(box: MailboxSettings) -> list[tuple[str, Origin]]:
    """Every folder of a mailbox with its role: watched (inbox), Sent, Done."""
    folders = [(name, Origin.INBOX) for name in box.folders]
    if box.sent_folder:
        folders.append((box.sent_folder, Origin.SENT))
    if box.done_folder:
        folders.append((box.done_folder, Origin.DONE))
    return folders


@dataclass(frozen=True, slots=True)
class Folder:
    """The folder being polled: where its mail is stored, and as what."""

    engine: Engine
    box: MailboxSettings
    name: str
    role: Origin
    now: Clock
    # A surge's next batch of live mail, fetched and parsed meanwhile (pipeline.prefetch).
    prefetch: Prefetcher | None = None
    # The mailbox's first import, oldest mail first and triaged meanwhile (pipeline.history).
    history: HistoryImport | None = None
    # Parse workers kept across the poll's folders (its owner stops them); None: a
    # folder with a backlog starts its own.
    parsers: ParsePool | None = None


def poll_folder(
    session: MailSession,
    where: Folder,
    *,
    progress: Progress | None = None,
    plan: Progress | None = None,
    live_batch: int | None = None,
) -> PollResult:
    """Take in whatever is new in one folder. The idle case costs one STATUS command.

    `plan` hears how many messages are new, `progress` how many each stored batch held.
    `live_batch`: take in at most so many messages of live mail (after the first
    import); the rest is left for the next poll (`PollResult.more`). The daemon's poll
    sets it, so a surge is triaged and answered batch by batch.
    """
    engine, box, folder, now = where.engine, where.box, where.name, where.now
    status = session.status(folder)
    with engine.connect() as conn:
        cursor = store.get_cursor(conn, box.name, folder)
    if (
        cursor is not None
        and cursor.history_done
        and cursor.uidvalidity == status.uidvalidity
        and status.uidnext - 1 <= cursor.last_uid
    ):
        if store.poll_success_due(cursor, now()):  # nothing new: no commit either
            with engine.begin() as conn:
                store.record_poll_success(conn, box.name, folder, now=now())
        return PollResult(is_history=False)

    changed = cursor is not None and cursor.uidvalidity not in (None, status.uidvalidity)
    after_uid = cursor.last_uid if cursor is not None and not changed else 0
    history_done = cursor is not None and cursor.history_done
    if changed:
        _rescan(where, cursor, status)
        with engine.connect() as conn:
            cursor = store.get_cursor(conn, box.name, folder)
        if where.history is not None:  # its plan may name UIDs of the old UIDVALIDITY
            where.history.planned.pop(folder, None)
    history_below = 0 if history_done else _history_cutoff(where, cursor, status)
    new = known = quarantined = 0
    uids = session.new_uids(folder, after_uid)
    more = live_batch is not None and history_done and len(uids) > live_batch
    following: list[int] = []
    if more:  # a surge of live mail: one batch a poll, triaged and answered before the next
        uids, following = uids[:live_batch], uids[live_batch:]
    if plan is not None:
        plan(len(uids))
    early = _take_prefetched(where, status.uidvalidity, uids) if history_done else None
    if early is not None and more:  # a surge: the worker's batch alone (FIRST_ASK is small)
        uids, following = uids[: len(early[0])], [*uids[len(early[0]) :], *following]
    rest = uids[len(early[0]) :] if early is not None else uids
    max_bytes = box.imap.fetch_batch_bytes
    importing = None if history_done else _importing(session, where, after_uid, rest)
    if importing is not None:
        batches = importing.batches(box.imap.fetch_batch, max_bytes)
    else:
        batches = _batches(session, rest, box.imap.fetch_batch, max_bytes)
    # closing(): the fetch thread and parse workers are stopped (those of this folder
    # alone; the poll's are kept) before this returns or raises, so the caller may use
    # the session again right away.
    largest = 0
    with contextlib.ExitStack() as own:
        parsers = _parsers(where, len(rest), own)
        parsed = _parsed_batches(session, batches, parsers, max_bytes=max_bytes)
        planned_for = 0  # of the messages stored, how many the planner's statistics know of
        with contextlib.closing(parsed) as stream:
            for batch, items in itertools.chain([early] if early else [], stream):
                through = batch[-1] if importing is None else importing.prefix.stored(batch)
                added, seen, held = _store_parsed(
                    where, status.uidvalidity, through, items, history_below
                )
                new, known, quarantined = new + added, known + seen, quarantined + held
                if not history_done and new >= max(STATISTICS_FIRST, 2 * planned_for):
                    _refresh_statistics(engine)
                    planned_for = new
                largest = max(largest, sum(len(item.raw) for item in items))
                del items  # stored: let it go before the next batch is parsed
                if progress is not None:
                    progress(len(batch))
                if importing is not None:
                    importing.history.stored(folder, len(batch))
    if following and where.prefetch is not None and where.role is Origin.INBOX:
        _ask_next(session, where, status.uidvalidity, following)  # the customers' mail
    _release_folder(session)  # new_uids EXAMINEd the folder, even if it found nothing
    with engine.begin() as conn:
        # Every UID below this STATUS's UIDNEXT has been searched for and taken in (or
        # was expunged): moving the cursor there keeps the next idle poll at one command.
        # (Unless `more`: then every UID up to the last taken in.)
        last = uids[-1] if more else status.uidnext - 1  # the rest: the next poll
        store.advance_cursor(conn, box.name, folder, status.uidvalidity, last, now=now())
        if not history_done:
            store.mark_history_done(conn, box.name, folder, now=now())
        store.record_poll_success(conn, box.name, folder, now=now())
    if not history_done and new > planned_for:
        _refresh_statistics(engine)
    return PollResult(
        new=new,
        known=known,
        quarantined=quarantined,
        uidvalidity_changed=changed,
        is_history=not history_done,
        largest_batch_bytes=largest,
        more=more,
    )


@dataclass
class _Importing:
    """A folder's first import, oldest mail first (pipeline.history): its plan in the
    order it is fetched, the cursor it may move to, the mailbox's import."""

    history: HistoryImport
    plan: FolderPlan
    prefix: StoredPrefix

    @classmethod
    def of(cls, session: MailSession, where: Folder, after: int, uids: list[int]) -> _Importing:
        history = where.history or HistoryImport()
        asked = np.asarray(uids, np.int64)
        planned = history.planned.get(where.name, EMPTY).only(asked)
        missing = planned.missing(asked).tolist()
        plan = planned.joined(_read_plan(session, missing)) if missing else planned
        prefix = StoredPrefix.of(after, asked)
        prefix.stored(plan.missing(asked))  # expunged meanwhile: never fetched
        return cls(history, history.begin(where.name, plan), prefix)

    def batches(self, max_count: int, max_bytes: int) -> Iterator[list[int]]:
        """Oldest first; the session fetches (and the store stores) in that order, so the
        ids follow the dates. The first few are smaller (FIRST_BATCHES)."""
        return capped(self.plan.pairs(), max_count, max_bytes, first=FIRST_BATCHES)


def _importing(
    session: MailSession, where: Folder, after: int, uids: list[int]
) -> _Importing | None:
    """The folder's first import, oldest first; None if its plan cannot be made for a
    reason other than the server's (a bug): the folder is then imported in UID order, as
    before pipeline.history, and its history triaged once the import is done (its floors
    stay unstored to the horizon), so a defect in the plan never holds mail back. The
    server's failure (MailboxError, a lost socket) is the poll's: reported, and tried
    again next poll."""
    try:
        return _Importing.of(session, where, after, uids)
    except (MailboxError, OSError, EOFError):
        raise
    except Exception:
        log.exception(
            "mailbox %s folder %s: no oldest-first plan; importing in UID order",
            where.box.name,
            where.name,
        )
        return None


def _read_plan(session: MailSession, uids: Sequence[int]) -> FolderPlan:
    """Sizes and dates of `uids` in the examined folder, SIZES_AHEAD at a time."""
    chunks = (
        session.message_dates(uids[s : s + SIZES_AHEAD]) for s in range(0, len(uids), SIZES_AHEAD)
    )
    return FolderPlan.read(chunks)


def plan_history(
    session: MailSession, where: Folder, folders: Sequence[tuple[str, Origin]]
) -> None:
    """Before a mailbox's first import: read what each folder not yet imported holds
    (sizes and dates, no bodies) into `where.history`, so that triage during the import
    of one folder waits for the older mail of the others. A folder that cannot be read
    now, for whatever reason (a bug here included: the plan only lets triage start
    early), is left to its own poll, which reads it again and reports why."""
    history = where.history
    if history is None:
        return
    with where.engine.connect() as conn:
        cursors = {name: store.get_cursor(conn, where.box.name, name) for name, _ in folders}
    unread = [(n, c) for n, c in cursors.items() if c is None or not c.history_done]
    backlog = 0
    for name, cursor in unread:
        try:
            uids = session.new_uids(name, cursor.last_uid if cursor is not None else 0)
            backlog += len(uids)
            if where.parsers is not None and backlog >= PARALLEL_PARSE_MIN:
                where.parsers.start()  # spawned while the plan is read, not after it
            history.plan(name, _read_plan(session, uids))
        except MailboxError:
            log.debug("mailbox %s folder %s: not planned", where.box.name, name, exc_info=True)
        except Exception:
            log.exception("mailbox %s folder %s: not planned", where.box.name, name)
    if unread:
        _release_folder(session)


# A folder as the CLI (name, role) and the daemon (name, role, live batch) list them.
_Watched = TypeVar("_Watched", tuple[str, Origin], tuple[str, Origin, int])


def smallest_first(folders: Sequence[_Watched], history: HistoryImport | None) -> list[_Watched]:
    """The folders of a first import, the one with the least mail to import first (in
    their configured order otherwise). Triage during the import waits for the oldest
    mail of every folder not imported yet, so it runs alongside the last folder's import
    only: the biggest last (the inbox after the team's Sent folder) overlaps the most.
    Folders not planned (imported already, or the plan failed) keep their place ahead."""
    if history is None:
        return list(folders)
    return sorted(folders, key=lambda folder: len(history.planned.get(folder[0], EMPTY).uids))


# An import tells PostgreSQL's planner how big the tables grew at 1,000 messages and
# each time they doubled since (and at its end): its lookups of what is stored already
# were planned for the empty tables of before, and grew with the mailbox (17 ms a batch
# at 20,000). A handful of ANALYZEs, ~0.1 s each at 20,000.
STATISTICS_FIRST = 1_000


def _refresh_statistics(engine: Engine) -> None:
    """In a transaction of its own, and never the import's failure: the planner's figures
    only make it faster (a failure here must not undo the history's end, or every later
    mail would be taken for history)."""
    try:
        with engine.begin() as conn:
            store.refresh_statistics(conn)
    except SQLAlchemyError:
        log.warning("mailbox tables not analyzed; the planner catches up later", exc_info=True)


def _take_prefetched(
    where: Folder, uidvalidity: int, uids: Sequence[int]
) -> tuple[list[int], list[StoreItem]] | None:
    """The first of `uids` as the worker fetched and parsed them, if it did (the UIDs it
    covered, the mails it found); None: the poll fetches them itself."""
    if where.prefetch is None:
        return None
    taken = where.prefetch.take(where.name, uidvalidity, uids)
    if taken is None:
        return None
    covered, fetched = taken
    items = [StoreItem(uid=u, raw=raw, parsed=p, received_at=at) for u, raw, p, at in fetched]
    return list(covered), items


def _ask_next(session: MailSession, where: Folder, uidvalidity: int, following: list[int]) -> None:
    """Have the worker fetch and parse the next poll's batch while this one's is triaged
    (one fetch batch, FIRST_ASK for a worker not yet started; capped in bytes like the
    poll's own; a mail bigger than the cap is left to the poll)."""
    assert where.prefetch is not None
    imap = where.box.imap
    size = imap.fetch_batch if where.prefetch.running else min(imap.fetch_batch, FIRST_ASK)
    ahead = following[:size]
    sizes = session.message_sizes(ahead)
    first = next(byte_capped(ahead, sizes, imap.fetch_batch, imap.fetch_batch_bytes), [])
    if sum(sizes.get(uid, 0) for uid in first) > imap.fetch_batch_bytes:
        first = []
    where.prefetch.ask(Asked(where.name, uidvalidity, tuple(first)))


def _rescan(where: Folder, cursor: store.FolderCursor | None, status: FolderStatusLike) -> None:
    """A new UIDVALIDITY: every UID is void, take the folder in again from UID 0.

    After the first import a re-scan is no import: nothing is history by UID (known mail
    dedups by identity and keeps its flag; unknown mail is new, and triage's
    DELIVERY_GRACE keeps mail dated from before keepword's first poll unanswered).
    During an unfinished first import the recorded cutoff counted old UIDs, which mean
    nothing now; the folder's new UIDNEXT replaces it, in the same transaction, so the
    mail already there stays history (mail stored as new keeps its flag by identity).
    """
    log.warning(
        "mailbox %s folder %s: UIDVALIDITY changed %s -> %s; re-scanning the folder",
        where.box.name,
        where.name,
        cursor.uidvalidity if cursor else None,
        status.uidvalidity,
    )
    importing = cursor is None or not cursor.history_done
    with where.engine.begin() as conn:
        store.reset_for_uidvalidity(
            conn,
            where.box.name,
            where.name,
            status.uidvalidity,
            now=where.now(),
            history_below_uid=status.uidnext if importing else None,
        )


def _history_cutoff(
    where: Folder, cursor: store.FolderCursor | None, status: FolderStatusLike
) -> int:
    """UIDs below this are history: the folder's UIDNEXT when keepword first met it.

    Recorded and committed on its own before any message is fetched, and read back on
    every poll until the first import is done: a crash during the import must not move
    the cutoff past mail that arrived meanwhile (that mail is live and gets answered).
    """
    if cursor is not None and cursor.history_below_uid is not None:
        return cursor.history_below_uid
    with where.engine.begin() as conn:
        store.record_history_cutoff(
            conn, where.box.name, where.name, status.uidvalidity, status.uidnext, now=where.now()
        )
    return status.uidnext


def _store_parsed(
    where: Folder, uidvalidity: int, through: int, items: list[StoreItem], history_below: int
) -> tuple[int, int, int]:
    """Store one batch in one transaction, the cursor moved to `through` (where it stands
    after the batch): (new, known, quarantined)."""
    box, folder, role, now = where.box, where.name, where.role, where.now
    new = known = quarantined = 0
    at_hand = where.history.collecting if where.history is not None else None
    facts: list[MessageFacts] = []
    with where.engine.begin() as conn:
        for is_history, part in _split(items, history_below):
            result = store.store_batch(
                conn,
                store.Folder(box.name, folder, role, uidvalidity),
                part,
                is_history=is_history,
                now=now(),
                through_uid=through,
            )
            new += result.new
            known += result.known
            quarantined += result.quarantined
            if at_hand is not None:  # before the commit: triage may be reading meanwhile
                at_hand.forget(result.seen_again)
                facts.extend(result.facts())
        if not items:  # the whole batch was expunged meanwhile
            store.advance_cursor(conn, box.name, folder, uidvalidity, through, now=now())
    if at_hand is not None:  # committed: triage may take them now
        at_hand.put(facts)
    for item in items:
        if item.parsed.quarantined:
            log.warning(
                "mailbox %s folder %s uid %s quarantined: %s",
                box.name,
                folder,
                item.uid,
                item.parsed.quarantine_reason,
            )
    return new, known, quarantined


def _release_folder(session: MailSession) -> None:
    """Leave the examined folder so the next idle poll's STATUS needs no NOOP first.

    Dovecot answers STATUS of the selected folder from the session's stale view, so
    ImapSession NOOPs before STATUS of its selected folder; unselecting after fetching
    keeps the idle poll at one command. Everything is stored already: a failure here
    only costs the next poll a round trip (or shows up there as a connection error).
    """
    try:
        session.unselect()
    except Exception:
        log.debug("UNSELECT failed", exc_info=True)


def _parsers(where: Folder, backlog: int, own: contextlib.ExitStack) -> ParsePool | None:
    """The parse workers for this folder's `backlog`: the poll's (started for a backlog,
    kept if started before), or the folder's own for a backlog (stopped with `own`)."""
    if where.parsers is not None:
        if backlog >= PARALLEL_PARSE_MIN:
            where.parsers.start()
        return where.parsers if where.parsers.parallel else None
    if backlog < PARALLEL_PARSE_MIN:
        return None
    return own.enter_context(ParsePool()).start()


def _parsed_batches(
    session: MailSession,
    batches: Iterator[list[int]],
    parsers: ParsePool | None,
    *,
    max_bytes: int,
) -> Generator[tuple[list[int], list[StoreItem]], None, None]:
    """Yield (uids asked for, parsed items) batch by batch, in UID order.

    A big backlog (`parsers`) runs as a three-stage pipeline: a thread fetches batch k+1
    while worker processes parse the batches before it (one batch each) and the caller
    stores the one before those (parsing is the bottleneck and would otherwise share one
    core with fetching and storing). At most the workers + 2 batches are held at once,
    so memory stays bounded by that many times max_bytes (see _prefetched for a message
    bigger than that). Every batch is let go (`del`) as soon as it was handed on: a loop
    variable would otherwise keep it alive while the next one is fetched.
    """
    fetched_batches = _prefetched(session, batches, max_bytes)
    if parsers is None:
        with contextlib.closing(fetched_batches):
            for batch, fetched in fetched_batches:
                items = [_item(f, parse_message(f.raw)) for f in fetched]
                del fetched
                yield batch, items
                del items
        return
    waiting: list[_InFlight] = []  # the batches the workers are parsing, in order
    try:
        with contextlib.closing(fetched_batches):
            for batch, fetched in fetched_batches:
                waiting.append((batch, fetched, parsers.submit([f.raw for f in fetched])))
                del fetched
                if len(waiting) > max(1, parsers.workers):
                    yield _collected(parsers, waiting.pop(0))
            while waiting:
                yield _collected(parsers, waiting.pop(0))
    finally:  # stopped early: what no worker began is dropped (the pool may be kept)
        for _, _, future in waiting:
            if future is not None:
                future.cancel()


def _collected(parsers: ParsePool, flight: _InFlight) -> tuple[list[int], list[StoreItem]]:
    batch, fetched, future = flight
    parsed = parsers.parsed([f.raw for f in fetched], future)
    return batch, [_item(f, p) for f, p in zip(fetched, parsed, strict=True)]


_InFlight = tuple[list[int], Sequence["FetchedLike"], "Future[list[ParsedMessage]] | None"]


def _prefetched(
    session: MailSession, batches: Iterator[list[int]], max_bytes: int
) -> Generator[tuple[list[int], Sequence[FetchedLike]], None, None]:
    """Yield (uids, fetched) while the next batch is already being fetched.

    Fetching (socket + Dovecot on the other core) overlaps parsing and storing. Only the
    worker thread talks to the session while a fetch is in flight, and at most two
    batches are in memory at once. A batch over max_bytes (one message bigger than the
    cap) is not overlapped: the next fetch starts only when the caller has taken it, so
    two huge messages are never fetched into memory side by side. The generator always
    waits for the in-flight fetch before it finishes (also when the consumer stops early
    or raises).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap-fetch") as pool:
        current = next(batches, None)
        pending: Future[Sequence[FetchedLike]] | None = (
            pool.submit(session.fetch, current) if current is not None else None
        )
        try:
            while current is not None and pending is not None:
                fetched = pending.result()
                following = next(batches, None)
                overlap = _raw_bytes(fetched) <= max_bytes
                pending = pool.submit(session.fetch, following) if following and overlap else None
                yield current, fetched
                del fetched
                if following and pending is None:
                    pending = pool.submit(session.fetch, following)
                current = following
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    pending.result()


def _raw_bytes(fetched: Sequence[FetchedLike]) -> int:
    return sum(len(f.raw) for f in fetched)


# UIDs whose RFC822.SIZE is asked for at once while batching: bounds that dict too.
SIZES_AHEAD = 5000


def _batches(
    session: MailSession, uids: Sequence[int], max_count: int, max_bytes: int
) -> Iterator[list[int]]:
    """UID batches in ascending order, each at most max_count messages and max_bytes.

    Sizes come from RFC822.SIZE (no body read), SIZES_AHEAD UIDs at a time. The caller
    (_prefetched) advances this iterator only while no fetch is in flight, so the
    session is never used by two threads at once.
    """
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), SIZES_AHEAD):
        chunk = ordered[start : start + SIZES_AHEAD]
        yield from byte_capped(chunk, session.message_sizes(chunk), max_count, max_bytes)


def byte_capped(
    uids: Sequence[int], sizes: Mapping[int, int], max_count: int, max_bytes: int
) -> Iterator[list[int]]:
    """Cut uids (in order) into batches of at most max_count and max_bytes.

    A message bigger than max_bytes makes a batch of its own; a UID without a size
    (expunged meanwhile) costs nothing and stays in, so the cursor moves past it.
    """
    return capped(((uid, sizes.get(uid, 0)) for uid in uids), max_count, max_bytes)


def capped(
    sized: Iterable[tuple[int, int]], max_count: int, max_bytes: int, first: Sequence[int] = ()
) -> Iterator[list[int]]:
    """byte_capped over (UID, size) pairs; the i-th batch holds at most first[i] messages
    where `first` names one (and never more than max_count)."""
    counts = itertools.chain(
        (min(count, max_count) for count in first), itertools.repeat(max_count)
    )
    batch: list[int] = []
    held = 0
    limit = next(counts)
    for uid, size in sized:
        if batch and (len(batch) >= limit or held + size > max_bytes):
            yield batch
            batch, held, limit = [], 0, next(counts)
        batch.append(uid)
        held += size
    if batch:
        yield batch


def _item(fetched: FetchedLike, parsed: ParsedMessage) -> StoreItem:
    return StoreItem(
        uid=fetched.uid, raw=fetched.raw, parsed=parsed, received_at=_utc(fetched.internaldate)
    )


def _split(items: list[StoreItem], history_below: int) -> list[tuple[bool, list[StoreItem]]]:
    history = [i for i in items if i.uid < history_below]
    fresh = [i for i in items if i.uid >= history_below]
    return [(flag, part) for flag, part in ((True, history), (False, fresh)) if part]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # imapclient hands out naive local time unless told otherwise.
    return value.astimezone(UTC)


def _open_session(
    engine: Engine,
    box: MailboxSettings,
    factory: SessionFactory,
    wanted: Sequence[tuple[str, Origin]],
    clock: Clock,
) -> MailSession:
    try:
        return factory(box)
    except Exception as exc:
        message = _describe(exc)
        _record_errors(engine, box, [f for f, _ in wanted], message, clock())
        raise MailboxError(f"mailbox {box.name}: {message}") from exc


def _live_batch(box: MailboxSettings, role: Origin, first_slice: int | None) -> int:
    """How much live mail a poll takes in from a folder of `role` (see MailboxPoller.poll)."""
    if first_slice is not None and role is Origin.INBOX:
        return min(box.imap.fetch_batch, first_slice)
    return box.imap.fetch_batch


def _poll_folders(
    session: MailSession,
    mailbox: Folder,
    wanted: Sequence[tuple[str, Origin, int]],
    progress: Callable[[str, int], None] | None,
) -> MailboxPollResult:
    """Poll each wanted folder (name, role, how much live mail it takes in) of the
    mailbox (`mailbox`: where its mail is stored; each folder's name and role its own)."""
    engine, box, clock = mailbox.engine, mailbox.box, mailbox.now
    result = MailboxPollResult(mailbox=box.name)
    for folder, role, batch in wanted:
        step = None if progress is None else _bind(progress, folder)
        try:
            where = replace(mailbox, name=folder, role=role)
            result.folders[folder] = poll_folder(session, where, progress=step, live_batch=batch)
        except Exception as exc:  # isolate the folder; report loudly
            message = _describe(exc)
            log.warning("mailbox %s folder %s: poll failed: %s", box.name, folder, message)
            result.errors[folder] = message
            _record_errors(engine, box, [folder], message, clock())
            if _connection_lost(exc):
                rest = [f for f, *_ in wanted if f not in result.folders and f != folder]
                _record_errors(engine, box, rest, message, clock())
                raise MailboxError(f"mailbox {box.name}: {message}") from exc
    return result


def triaging_behind(
    history: HistoryImport | None, engine: Engine
) -> contextlib.AbstractContextManager[None]:
    """A first import's triage in a thread of its own where the store allows it
    (HistoryImport.triaging_behind); `keepword import` and the daemon's poll."""
    if history is None:
        return contextlib.nullcontext()
    return history.triaging_behind(concurrent_writers(engine))


def _close_quietly(session: MailSession, box: MailboxSettings) -> None:
    try:
        session.close()
    except Exception:
        log.debug("mailbox %s: close failed", box.name, exc_info=True)


class MailboxPoller:
    """Polls one mailbox again and again over one kept-open IMAP session.

    For the daemon: an idle poll then costs one STATUS per folder and no login (a fresh
    connect + LOGIN is ~18 ms). After a connection or login failure the session is
    dropped and MailboxError raised; the next `poll` reconnects. When to try again is
    the daemon's call (keepword.retry), which pauses the whole mailbox.
    Calls are serialized: one poll of a mailbox at a time.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        box: MailboxSettings,
        *,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.engine = engine
        self.box = box
        self._factory = session_factory or default_session_factory(settings)
        self._session: MailSession | None = None
        self._lock = threading.Lock()
        # Over real IMAP (not a test's sessions), a surge's next batch is prefetched.
        self.prefetch = Prefetcher(box.imap) if session_factory is None else None
        # Every folder's first import is done (then a poll reads no plan for one).
        self._imported = False

    def poll(
        self,
        clock: Clock,
        *,
        progress: Callable[[str, int], None] | None = None,
        inbox_only: bool = False,
        first_slice: int | None = None,
        triage: Triager | None = None,
    ) -> MailboxPollResult:
        """Every folder's new mail, live mail a fetch batch at most; `inbox_only`: the
        customers' folders alone (the Sent and Done folders wait: see runtime.service,
        "the inbox first"); `first_slice`: the customers' folders' live mail this many
        at most (the team's replies in Sent and Done are never held back by it);
        `triage`: triages during the mailbox's first import (pipeline.history)."""
        wanted = watched_folders(self.box)
        polled = [f for f in wanted if f[1] is Origin.INBOX] if inbox_only else wanted
        with self._lock:
            try:
                if self._session is None:
                    self._session = _open_session(
                        self.engine, self.box, self._factory, wanted, clock
                    )
                batches = [(f, r, _live_batch(self.box, r, first_slice)) for f, r in polled]
                history = None if self._imported else HistoryImport(triage)
                with ParsePool() as parsers, triaging_behind(history, self.engine):
                    mailbox = Folder(
                        self.engine,
                        self.box,
                        "",
                        Origin.INBOX,
                        clock,
                        prefetch=self.prefetch,
                        history=history,
                        parsers=parsers,
                    )
                    plan_history(self._session, mailbox, polled)
                    batches = smallest_first(batches, history)
                    result = _poll_folders(self._session, mailbox, batches, progress)
            except MailboxError:
                self._drop()
                raise
            if not inbox_only and not result.errors:  # no first import from now on
                self._imported = not any(r.is_history for r in result.folders.values())
            if self.prefetch is not None and not any(r.more for r in result.folders.values()):
                # The surge is over (or there was none): no worker. Its exit is not
                # waited for (~0.2 s, on the surge's last slice): it has nothing under way.
                self.prefetch.stop(wait=False)
            return result

    @property
    def prefetching(self) -> bool:
        """The worker still fetches the customers' next batch (pipeline.prefetch)."""
        return self.prefetch is not None and self.prefetch.busy

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self.prefetch is not None:
            self.prefetch.stop(wait=False)  # a stop or an error: wait for no fetch under way
        session, self._session = self._session, None
        if session is not None:
            _close_quietly(session, self.box)


def _bind(progress: Callable[[str, int], None], folder: str) -> Progress:
    return lambda count: progress(folder, count)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, KeepwordError) else f"{type(exc).__name__}: {text}"


def _connection_lost(exc: BaseException) -> bool:
    """Errors after which the session is unusable (socket gone, server bye)."""
    if isinstance(exc, ImapConnectionError | OSError | EOFError):
        return True
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError | EOFError):
        return True
    name = type(exc).__name__.lower()
    return "abort" in name or "connection" in name


def _record_errors(
    engine: Engine, box: MailboxSettings, folders: Sequence[str], message: str, at: datetime
) -> None:
    try:
        with engine.begin() as conn:
            for folder in folders:
                store.record_poll_error(conn, box.name, folder, message, now=at)
    except Exception:
        log.exception("mailbox %s: could not record the poll error", box.name)


def default_session_factory(settings: Settings) -> SessionFactory:
    """Open a logged-in adapters.imap.ImapSession for a mailbox (settings: for later use)."""

    def connect(box: MailboxSettings) -> MailSession:
        session = ImapSession(box.imap, resolve_secret(box.imap))
        session.connect()
        return session

    return connect
