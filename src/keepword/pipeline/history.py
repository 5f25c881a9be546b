"""A mailbox's first import in the order its mail was written, triaged while it runs.

Triage takes stored mail in the order it was written (store.triage_state: its Date,
else its INTERNALDATE), and a case's decisions depend on that order. An import that
stored mail in UID order would have to finish before triage could start: an old mail
found late (a forward, a migrated folder, the Sent folder after the inbox) comes before
everything triaged meanwhile.

So a first import reads each folder's sizes, INTERNALDATEs and Date headers first (one
cheap FETCH, no bodies) and fetches the mail oldest first. Every message then has a
floor, the earliest it can count as written (the earlier of its Date and INTERNALDATE:
the full parse reads the same Date header, and without one the INTERNALDATE counts).
After each stored batch, mail written up to the lowest floor of what is still unstored
(in any folder of the mailbox) is triaged as it would be after the import: nothing
stored later comes before it. A message without a floor is fetched first.

What the import holds per message (UID, size, floor) sits in numpy columns, 24 bytes a
message, so a mailbox of a million costs tens of MB, not the mail's size.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from keepword.mail.parse import header_date
from keepword.store.facts_at_hand import FactsAtHand, facts_at_hand

log = logging.getLogger(__name__)

# Called after each stored batch of a first import with the instant up to which mail
# may be triaged now (None: all of it, nothing is left unstored).
Triager = Callable[[datetime | None], None]

UNKNOWN = -math.inf  # a floor not known: it might be older than anything

Column = npt.NDArray[np.int64]
Floors = npt.NDArray[np.float64]  # POSIX seconds


class DatedLike(Protocol):
    @property
    def uid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> datetime | None: ...
    @property
    def date_header(self) -> bytes | None: ...


def floor_of(dated: DatedLike) -> float:
    """The earliest a message can count as written, in POSIX seconds (UNKNOWN)."""
    date = header_date(dated.date_header) if dated.date_header else None
    known = [when.timestamp() for when in (date, dated.internaldate) if when is not None]
    return min(known) if known else UNKNOWN


@dataclass(frozen=True)
class FolderPlan:
    """A folder's mail to import: UID, size and floor, as columns in UID order."""

    uids: Column
    sizes: Column
    floors: Floors

    @classmethod
    def read(cls, chunks: Iterable[Sequence[DatedLike]]) -> FolderPlan:
        """From the adapter's answers, a chunk at a time (never all of them at once)."""
        parts = [
            (
                np.fromiter((d.uid for d in chunk), np.int64, len(chunk)),
                np.fromiter((d.size for d in chunk), np.int64, len(chunk)),
                np.fromiter((floor_of(d) for d in chunk), np.float64, len(chunk)),
            )
            for chunk in chunks
        ]
        if not parts:
            return EMPTY
        uids, sizes, floors = (np.concatenate(column) for column in zip(*parts, strict=True))
        return _sorted(uids, sizes, floors)

    def only(self, uids: Column) -> FolderPlan:
        """Restricted to `uids` (those still to import)."""
        keep = np.isin(self.uids, uids)
        return FolderPlan(self.uids[keep], self.sizes[keep], self.floors[keep])

    def missing(self, uids: Column) -> Column:
        """Which of `uids` this plan does not hold."""
        return uids[~np.isin(uids, self.uids)]

    def joined(self, other: FolderPlan) -> FolderPlan:
        return _sorted(
            np.concatenate([self.uids, other.uids]),
            np.concatenate([self.sizes, other.sizes]),
            np.concatenate([self.floors, other.floors]),
        )

    @property
    def lowest(self) -> float:
        return float(self.floors.min()) if len(self.floors) else math.inf

    def oldest_first(self) -> FolderPlan:
        """In the order to fetch: unknown floors first, then by floor, then by UID (ties
        are stored, and so triaged, in UID order)."""
        order = np.lexsort((self.uids, self.floors))
        return FolderPlan(self.uids[order], self.sizes[order], self.floors[order])

    def pairs(self, chunk: int = 5000) -> Iterator[tuple[int, int]]:
        """(UID, size) in this plan's order, as Python ints a chunk at a time."""
        for start in range(0, len(self.uids), chunk):
            yield from zip(
                self.uids[start : start + chunk].tolist(),
                self.sizes[start : start + chunk].tolist(),
                strict=True,
            )


def _sorted(uids: Column, sizes: Column, floors: Floors) -> FolderPlan:
    order = np.argsort(uids, kind="stable")
    return FolderPlan(uids[order], sizes[order], floors[order])


EMPTY = FolderPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))


@dataclass
class Horizon:
    """The floors of the mail of a mailbox not stored yet, folder by folder: each in the
    order it is stored (ascending), with how many are stored."""

    _folders: dict[str, tuple[Floors, int]] = field(default_factory=dict)

    def expect(self, folder: str, ascending: Floors) -> None:
        """These floors of `folder` are to be stored, in this order (replaces what it
        expected before)."""
        self._folders[folder] = (ascending, 0)

    def stored(self, folder: str, count: int) -> None:
        floors, done = self._folders.get(folder, (EMPTY.floors, 0))
        self._folders[folder] = (floors, min(len(floors), done + count))

    def through(self) -> float | None:
        """Mail written up to this instant (POSIX seconds) may be triaged (None: any)."""
        waiting = [
            float(floors[done]) for floors, done in self._folders.values() if done < len(floors)
        ]
        return min(waiting) if waiting else None


@dataclass
class StoredPrefix:
    """The folder cursor of an import that stores out of UID order: the highest UID
    below which every UID asked for is stored (a crash resumes there; what was stored
    beyond it is found known again, by its location)."""

    after: int  # the cursor
    _asked: Column  # ascending
    _stored: npt.NDArray[np.bool_]
    _next: int = 0  # _asked[_next] is the lowest UID not stored yet

    @classmethod
    def of(cls, after: int, uids: Column) -> StoredPrefix:
        asked = np.unique(uids)
        return cls(after, asked, np.zeros(len(asked), np.bool_))

    def stored(self, uids: Sequence[int] | Column) -> int:
        """Mark `uids` stored (or expunged); the cursor now."""
        places = np.searchsorted(self._asked, np.asarray(uids, np.int64))
        places = places[places < len(self._asked)]
        self._stored[places] = True
        while self._next < len(self._asked) and self._stored[self._next]:
            self._next += 1
        if self._next:
            self.after = max(self.after, int(self._asked[self._next - 1]))
        return self.after


@dataclass
class HistoryImport:
    """A mailbox's first import: what the plan read of each folder, the floors of what is
    still unstored, and who triages meanwhile (None: nobody)."""

    triage: Triager | None = None
    horizon: Horizon = field(default_factory=Horizon)
    planned: dict[str, FolderPlan] = field(default_factory=dict)
    # The stored mail's facts, for triage to take rather than read back (within
    # `triaging_behind`; store.facts_at_hand).
    at_hand: FactsAtHand = field(default_factory=FactsAtHand)

    @property
    def collecting(self) -> FactsAtHand | None:
        """Where the store puts the facts of the mail it inserts: while someone triages."""
        return self.at_hand if self.triage is not None else None

    def plan(self, folder: str, plan: FolderPlan) -> None:
        """What a folder holds to import (read before any folder is fetched): until its
        own import begins, only its oldest floor counts."""
        self.planned[folder] = plan
        self.horizon.expect(folder, np.array([plan.lowest]) if len(plan.uids) else EMPTY.floors)

    def begin(self, folder: str, plan: FolderPlan) -> FolderPlan:
        """The folder's import begins with `plan`: returns it oldest first."""
        self.planned.pop(folder, None)
        ordered = plan.oldest_first()
        self.horizon.expect(folder, ordered.floors)
        return ordered

    def stored(self, folder: str, count: int) -> None:
        """The next `count` of `folder`'s mail are stored: triage what may be now."""
        self.horizon.stored(folder, count)
        if self.triage is None:
            return
        through = self.horizon.through()
        if through == UNKNOWN:
            return
        try:
            self.triage(None if through is None else datetime.fromtimestamp(through, UTC))
        except Exception:  # never the import's failure: triage after it takes the rest
            _triage_failed()
            self.triage = None

    @contextlib.contextmanager
    def triaging_behind(self, concurrent_writers: bool) -> Iterator[None]:
        """While the import runs: where the store takes concurrent writers, triage in a
        thread of its own (TriageBehind), which has finished when this context ends;
        triage takes the facts the store put at hand (also in that thread: it starts
        with a copy of this context)."""
        with facts_at_hand(self.at_hand):
            if not concurrent_writers or self.triage is None:
                yield
                return
            own = self.triage
            behind = self.triage = TriageBehind(own)
            try:
                yield
            finally:
                behind.finish()
                self.triage = None if behind.failed else own


def _triage_failed() -> None:
    log.exception("triage during the import failed; it goes on after the import")


class TriageBehind:
    """A Triager run in a thread of its own, a stored batch behind the import.

    On PostgreSQL a first import's main thread waits for the server about a third of
    its time, storing and triaging in turn; here triage of what is stored waits for the
    server while the next batch is stored. It decides the same: a pass up to an instant
    takes mail written up to then, in (written, id) order, and a batch being stored
    meanwhile holds only mail whose floor is at or after that instant, with higher ids.
    Only the latest instant counts (a pass up to it covers every earlier one), so the
    instants handed in while a pass runs make one pass. Not on SQLite: its one writer
    would make the two take turns anyway.

    A failing pass is logged and ends triage during the import, as HistoryImport's own
    call does: triage after the import takes the rest.
    """

    def __init__(self, triage: Triager) -> None:
        self._triage: Triager | None = triage
        self._changed = threading.Condition()
        self._wanted: list[datetime | None] = []  # the next pass's instant, if any
        self._finishing = False
        # The caller's context (the mailbox's log context, the lease's fence) goes along.
        run = contextvars.copy_context().run
        self._thread = threading.Thread(
            target=run, args=(self._passes,), name="kw-history-triage", daemon=True
        )
        self._thread.start()

    def __call__(self, through: datetime | None) -> None:
        with self._changed:
            self._wanted[:] = [through]
            self._changed.notify()

    @property
    def failed(self) -> bool:
        return self._triage is None

    def finish(self) -> None:
        """Wait until the latest instant handed in is triaged (or triage failed)."""
        with self._changed:
            self._finishing = True
            self._changed.notify()
        self._thread.join()

    def _passes(self) -> None:
        while True:
            with self._changed:
                while not self._wanted and not self._finishing:
                    self._changed.wait()
                if not self._wanted:
                    return
                through = self._wanted.pop()
            if self._triage is None:
                continue  # failed: drain what is handed in until finish
            try:
                self._triage(through)
            except Exception:
                _triage_failed()
                self._triage = None
