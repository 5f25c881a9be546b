"""Rows a triage batch writes once, at its end, instead of one statement a message.

On PostgreSQL every statement is a round trip, and on either store each costs
SQLAlchemy's Python work (~0.08 ms: 1.5 s of a 20,000-message history's triage). A
batch's timeline events and the triage records of its messages are only read back
within the batch in one place: the mail a later message of the batch references
(store.cases.referenced_mail answers from `DeferredWrites.references` what the store
does not hold yet). A command mail, whose update answers the customer's last mail,
flushes first (`flush`). A new case's acknowledgement (its outbox row and its promise)
waits here as well; every function of store.outbox, store.promises and store.history
that reads or changes those tables flushes first (`settle`), so the batch reads what one
message at a time would. The correspondents its cases learn wait too, and the cases it
opens and saves (one statement each otherwise): store.cases answers from the batch's
pool of cases where it can, and writes them (`write_now`) before it reads any from the
store. Rows others refer to go first (`rank`: a case before its events), and a save
that finds its case changed since it was read (`counted`: one row a parameter set)
fails the batch, as it would have failed the message alone.

Used only by a batch without savepoints (pipeline.triage): a failing message rolls the
whole batch back, so nothing written here can outlive the message that wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable

from keepword.domain.model import MessageFacts
from keepword.errors import StaleCaseError
from keepword.store.bulk import execute_many

_KEY = "keepword.deferred_writes"


@dataclass(slots=True)
class DeferredWrites:
    """The rows waiting, by statement (in the order first used: a statement's rows go in
    one executemany), and the triaged mail later messages may reference."""

    rows: dict[Executable, list[dict[str, Any]]] = field(default_factory=dict)
    # Message-ID -> (its case, the mail): what its stored row will say once written.
    references: dict[str, tuple[int, MessageFacts]] = field(default_factory=dict)
    # The tables of the rows waiting that the batch may read back (outbox, promises, the
    # cases history reads; "*": any table): `settle` writes them first.
    unsettled: set[str] = field(default_factory=set)
    # Reads made once for the whole batch at its start, by the store module that made
    # them (store.cases). `reads`: what the rows waiting here change (the mail its
    # References name), dropped at a flush (read again after); `pools`: what only writes
    # made at once change, each kept current by the one module that writes it (the cases
    # the batch's messages may join), kept across flushes.
    reads: dict[str, object] = field(default_factory=dict)
    pools: dict[str, object] = field(default_factory=dict)
    ranks: dict[Executable, int] = field(default_factory=dict)  # lower: written first
    counted: set[Executable] = field(default_factory=set)  # must change one row a set
    # statement -> key -> the row waiting for it under that key (a case's id): where a
    # later change of the same row can fold into it (`waiting`).
    keyed: dict[Executable, dict[object, dict[str, Any]]] = field(default_factory=dict)

    def add(
        self,
        statement: Executable,
        rows: list[dict[str, Any]],
        *,
        read: bool = False,
        rank: int = 0,
        counted: bool = False,
        key: object = None,
    ) -> None:
        """Rows for `statement`; `read`: rows the batch may read back through store.outbox,
        store.promises or store.history (see `settle`); `rank`: statements of a lower rank
        are written first (the rows others refer to); `counted`: each parameter set must
        change exactly one row (a case saved on the version it was read at); `key`: what
        the one row is found by while it waits (`waiting`; the first row under a key)."""
        self.rows.setdefault(statement, []).extend(rows)
        if key is not None and len(rows) == 1:
            self.keyed.setdefault(statement, {}).setdefault(key, rows[0])
        self.ranks.setdefault(statement, rank)
        if counted:
            self.counted.add(statement)
        if read:
            table = getattr(statement, "table", None)
            self.unsettled.add(str(getattr(table, "name", "*")))


@contextmanager
def deferring(conn: Connection) -> Iterator[DeferredWrites]:
    """Defer this connection's batchable writes until the block ends (then written, in
    the same transaction); on an error they are dropped with the transaction."""
    writes = DeferredWrites()
    conn.info[_KEY] = writes
    try:
        yield writes
        flush(conn)
    finally:
        conn.info.pop(_KEY, None)


def _write(
    conn: Connection, writes: DeferredWrites, statement: Executable, rows: list[dict[str, Any]]
) -> None:
    changed = execute_many(conn, statement, rows)
    if statement in writes.counted and changed != len(rows):
        raise StaleCaseError(f"{len(rows) - changed} case(s) changed meanwhile")


def waiting(writes: DeferredWrites, statement: Executable, key: object) -> dict[str, Any] | None:
    """The row still waiting for `statement` under `key` (None once written): a change
    made to it is written with it."""
    return writes.keyed.get(statement, {}).get(key)


def deferred(conn: Connection) -> DeferredWrites | None:
    """The writes waiting on this connection, if it defers."""
    found: DeferredWrites | None = conn.info.get(_KEY)
    return found


def settle(conn: Connection, reading: str | None = None) -> None:
    """Before a read or write of the outbox or the promises: a batch's acknowledgements
    and promises wait here too (pipeline.acknowledge), and a later message of the batch
    must find them (a second mail of the same new customer is not acknowledged twice).
    `reading`: the one table a read reads: written only if rows of it wait (a team
    reply's read of its case's promises flushed the whole batch each time: on a
    history with the team's answers, a statement each on PostgreSQL)."""
    writes = deferred(conn)
    if writes is None or not writes.unsettled:
        return
    if reading is None or reading in writes.unsettled or "*" in writes.unsettled:
        flush(conn)


def write_now(conn: Connection, statement: Executable) -> None:
    """Write the rows waiting for `statement` now, before a read of what only they change
    (the rest keeps waiting: nothing they hold is read back there)."""
    writes = deferred(conn)
    if writes is None:
        return
    writes.keyed.pop(statement, None)
    rows = writes.rows.pop(statement, None)
    if rows:
        _write(conn, writes, statement, rows)


def flush(conn: Connection) -> None:
    """Write what waits now (before a read that must see it)."""
    writes = deferred(conn)
    if writes is None:
        return
    for statement in sorted(writes.rows, key=lambda s: writes.ranks.get(s, 0)):  # stable
        _write(conn, writes, statement, writes.rows[statement])
    writes.rows.clear()
    writes.keyed.clear()
    writes.references.clear()
    writes.reads.clear()
    writes.unsettled.clear()
