"""The facts of mail just stored, for its triage to take instead of reading them back.

A first import triages each batch it stores right after it (pipeline.history), and
reading the batch back (every column, and the body text it had just written) was about
a tenth of triage's CPU. The import hands the facts of the messages it inserts here
once their transaction has committed (`put`); `load_facts` takes them from here while
the import's context is open (`facts_at_hand`), and reads the rest from the store.

What is here is exactly what `load_facts` would read (tests/unit/test_facts_at_hand.py
compares the two on the corpus): a message's columns never change once written, only
its locations do, and a message stored again in another folder is dropped from here
(`forget`, before that store commits), since its origin may change with the new place.

Bounded: when full, what comes is not kept (its triage reads it from the store, as
without this). Triage takes mail in the order it was written and each folder is stored
in that order, so what is held is what triage asks for first: on SQLite it takes each
batch right after its store (about four in five messages found here in a 20,000-mail
import with the team's Sent folder first); on PostgreSQL it runs in a thread of its own
(pipeline.history.TriageBehind), several batches behind, and finds about half (holding
all of it took ~100 MB more memory and gained nothing measurable). Thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from keepword.domain.model import MessageFacts

# At most this many messages' facts, and this much of their body text (characters).
MAX_MESSAGES = 2_000
MAX_BODY_CHARS = 16_000_000


class FactsAtHand:
    """Facts by message pk, up to the bounds."""

    def __init__(self, max_messages: int = MAX_MESSAGES, max_chars: int = MAX_BODY_CHARS) -> None:
        self._max_messages, self._max_chars = max_messages, max_chars
        self._facts: dict[int, MessageFacts] = {}  # in the order put
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, facts: Iterable[MessageFacts]) -> None:
        """Facts of messages whose rows have committed (those beyond the bounds are not
        kept; one put again replaces what was held of it)."""
        with self._lock:
            for fact in facts:
                self._drop(fact.pk)
                size = len(fact.body_text)
                if len(self._facts) < self._max_messages and self._chars + size <= self._max_chars:
                    self._facts[fact.pk] = fact
                    self._chars += size

    def forget(self, pks: Iterable[int]) -> None:
        """These messages were seen again (a new location: their origin may change)."""
        with self._lock:
            for pk in pks:
                self._drop(pk)

    def take(self, pks: Iterable[int]) -> dict[int, MessageFacts]:
        """The facts held of these pks, handed over once (triage reads them once)."""
        with self._lock:
            taken = {pk: fact for pk in pks if (fact := self._facts.pop(pk, None)) is not None}
            self._chars -= sum(len(fact.body_text) for fact in taken.values())
            return taken

    def __len__(self) -> int:
        return len(self._facts)

    def _drop(self, pk: int) -> None:
        fact = self._facts.pop(pk, None)
        if fact is not None:
            self._chars -= len(fact.body_text)


_AT_HAND: ContextVar[FactsAtHand | None] = ContextVar("keepword_facts_at_hand", default=None)


@contextlib.contextmanager
def facts_at_hand(at_hand: FactsAtHand | None) -> Iterator[None]:
    """While this context is open (and in threads started with a copy of it),
    `load_facts` takes what `at_hand` holds before it reads the store."""
    token = _AT_HAND.set(at_hand)
    try:
        yield
    finally:
        _AT_HAND.reset(token)


def current() -> FactsAtHand | None:
    """The facts at hand in this context, if any."""
    return _AT_HAND.get()
