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
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from keepword.mail.parse import header_date

log = logging.getLogger(__name__)

# Before any floor: nothing may be triaged yet.
BEFORE_ALL = datetime.min.replace(tzinfo=UTC)

# Called after each stored batch of a first import with the instant up to which mail
# may be triaged now (None: all of it, nothing is left unstored).
Triager = Callable[[datetime | None], None]


class DatedLike(Protocol):
    @property
    def uid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> datetime | None: ...
    @property
    def date_header(self) -> bytes | None: ...


def floor_of(dated: DatedLike) -> datetime | None:
    """The earliest a message can count as written (None: unknown)."""
    date = header_date(dated.date_header) if dated.date_header else None
    known = [when for when in (date, dated.internaldate) if when is not None]
    return min(known) if known else None


def oldest_first(floors: Mapping[int, datetime | None]) -> list[int]:
    """The UIDs in the order to fetch them: unknown floors first, then by floor, then by
    UID (ties are stored, and so triaged, in UID order)."""
    return sorted(floors, key=lambda uid: (floors[uid] is not None, floors[uid] or BEFORE_ALL, uid))


@dataclass
class Horizon:
    """The floors of the mail of a mailbox not stored yet, folder by folder."""

    _unstored: dict[str, dict[int, datetime]] = field(default_factory=dict)
    _heaps: dict[str, list[tuple[datetime, int]]] = field(default_factory=dict)

    def expect(self, folder: str, floors: Mapping[int, datetime | None]) -> None:
        """These messages of `folder` are to be stored (replaces what it expected)."""
        unstored = {uid: floor or BEFORE_ALL for uid, floor in floors.items()}
        self._unstored[folder] = unstored
        self._heaps[folder] = [(floor, uid) for uid, floor in unstored.items()]
        heapq.heapify(self._heaps[folder])

    def stored(self, folder: str, uids: Iterable[int]) -> None:
        unstored = self._unstored.get(folder, {})
        for uid in uids:
            unstored.pop(uid, None)

    def through(self) -> datetime | None:
        """Mail written up to this instant may be triaged (None: any)."""
        lowest: datetime | None = None
        for folder, heap in self._heaps.items():
            unstored = self._unstored[folder]
            while heap and heap[0][1] not in unstored:
                heapq.heappop(heap)  # stored
            if heap and (lowest is None or heap[0][0] < lowest):
                lowest = heap[0][0]
        return lowest


@dataclass
class StoredPrefix:
    """The folder cursor of an import that stores out of UID order: the highest UID
    below which every UID asked for is stored (a crash resumes there; what was stored
    beyond it is found known again, by its location)."""

    after: int  # the cursor
    _asked: list[int] = field(default_factory=list)  # ascending
    _next: int = 0  # _asked[_next] is the lowest UID not stored yet
    _stored: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, after: int, uids: Iterable[int]) -> StoredPrefix:
        return cls(after, sorted(uids))

    def stored(self, uids: Iterable[int]) -> int:
        """Mark `uids` stored (or expunged); the cursor now."""
        self._stored.update(uids)
        asked = self._asked
        while self._next < len(asked) and asked[self._next] in self._stored:
            self._stored.discard(asked[self._next])
            self.after = asked[self._next]
            self._next += 1
        return self.after


@dataclass
class HistoryImport:
    """A mailbox's first import: the folders' dates as the plan read them, the floors of
    what is still unstored, and who triages meanwhile (None: nobody)."""

    triage: Triager | None = None
    horizon: Horizon = field(default_factory=Horizon)
    # Per folder, what the plan read: each UID's size and floor.
    planned: dict[str, dict[int, tuple[int, datetime | None]]] = field(default_factory=dict)

    def plan(self, folder: str, dated: Iterable[DatedLike]) -> None:
        """What a folder holds to import (read before any folder is fetched)."""
        self.add(folder, {}, dated)

    def add(
        self,
        folder: str,
        planned: Mapping[int, tuple[int, datetime | None]],
        dated: Iterable[DatedLike],
    ) -> dict[int, tuple[int, datetime | None]]:
        """What a folder holds now: `planned` (from self.planned) and `dated`, read
        since; returns it, as each UID's size and floor."""
        holds = {**planned, **{d.uid: (d.size, floor_of(d)) for d in dated}}
        self.planned[folder] = holds
        self.horizon.expect(folder, {uid: floor for uid, (_, floor) in holds.items()})
        return holds

    def stored(self, folder: str, uids: Iterable[int]) -> None:
        """A batch of `folder` is stored: triage what may be triaged now."""
        self.horizon.stored(folder, uids)
        if self.triage is None:
            return
        through = self.horizon.through()
        if through is not None and through == BEFORE_ALL:
            return
        try:
            self.triage(through)
        except Exception:  # never the import's failure: triage after it takes the rest
            log.exception("triage during the import failed; it goes on after the import")
            self.triage = None
