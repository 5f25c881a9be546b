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

Bounded for the whole process (FactsBudget: mailboxes that import at once share it, so
memory does not grow with their number); when full, what comes is not kept (its triage
reads it from the store, as without this), and what an import leaves untaken is dropped
when it ends. Triage takes mail in the order it was written and each folder is stored
in that order, so what is held is what triage asks for first: on SQLite it takes each
batch right after its store (about four in five messages found here in a 20,000-mail
import with the team's Sent folder first); on PostgreSQL it runs in a thread of its own
(pipeline.history.TriageBehind), several batches behind, and finds about a fifth
(holding all of it took ~100 MB more memory and gained nothing measurable). Thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from keepword.domain.model import MessageFacts

# What all the facts at hand of this process may hold at once: messages, and characters
# of their body text. Mailboxes that import at once share it (FactsBudget), so memory
# does not grow with their number.
MAX_MESSAGES = 2_000
MAX_BODY_CHARS = 16_000_000


class FactsBudget:
    """Messages and body characters that facts at hand may hold, shared by all of them."""

    def __init__(self, messages: int = MAX_MESSAGES, chars: int = MAX_BODY_CHARS) -> None:
        self._messages, self._chars = messages, chars
        self._lock = threading.Lock()

    def take(self, held: Held, chars: int) -> bool:
        """Room for one more message of `chars` characters in `held`, if it fits."""
        with self._lock:
            if self._messages < 1 or chars > self._chars:
                return False
            self._messages, self._chars = self._messages - 1, self._chars - chars
            held.messages, held.chars = held.messages + 1, held.chars + chars
            return True

    def give_back(self, held: Held, chars: int) -> None:
        """One message of `chars` characters of `held` is let go."""
        with self._lock:
            self._messages, self._chars = self._messages + 1, self._chars + chars
            held.messages, held.chars = held.messages - 1, held.chars - chars

    def release(self, held: Held) -> None:
        """All that `held` holds is let go (cleared, or its owner is gone)."""
        with self._lock:
            self._messages, self._chars = self._messages + held.messages, self._chars + held.chars
            held.messages = held.chars = 0


@dataclass(slots=True)
class Held:
    """What one FactsAtHand holds of its budget (kept apart from it, so that what a
    forgotten one held is given back when it is collected)."""

    messages: int = 0
    chars: int = 0


_PROCESS_BUDGET = FactsBudget()


class FactsAtHand:
    """Facts by message pk, as far as the budget allows."""

    def __init__(self, budget: FactsBudget | None = None) -> None:
        self._budget = budget or _PROCESS_BUDGET
        self._held = Held()
        self._facts: dict[int, MessageFacts] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, self._budget.release, self._held)

    def put(self, facts: Iterable[MessageFacts]) -> None:
        """Facts of messages whose rows have committed (those the budget has no room for
        are not kept; one put again replaces what was held of it)."""
        with self._lock:
            for fact in facts:
                self._drop(fact.pk)
                if self._budget.take(self._held, len(fact.body_text)):
                    self._facts[fact.pk] = fact

    def forget(self, pks: Iterable[int]) -> None:
        """These messages were seen again (a new location: their origin may change)."""
        with self._lock:
            for pk in pks:
                self._drop(pk)

    def take(self, pks: Iterable[int]) -> dict[int, MessageFacts]:
        """The facts held of these pks, handed over once (triage reads them once)."""
        with self._lock:
            taken = {pk: fact for pk in pks if (fact := self._facts.get(pk)) is not None}
            for pk in taken:
                self._drop(pk)
            return taken

    def clear(self) -> None:
        """Drop everything held (the import is over), giving its room back."""
        with self._lock:
            self._facts.clear()
            self._budget.release(self._held)

    def __len__(self) -> int:
        return len(self._facts)

    def _drop(self, pk: int) -> None:
        fact = self._facts.pop(pk, None)
        if fact is not None:
            self._budget.give_back(self._held, len(fact.body_text))


_AT_HAND: ContextVar[FactsAtHand | None] = ContextVar("keepword_facts_at_hand", default=None)


@contextlib.contextmanager
def facts_at_hand(at_hand: FactsAtHand | None) -> Iterator[None]:
    """While this context is open (and in threads started with a copy of it),
    `load_facts` takes what `at_hand` holds before it reads the store; what is left
    when it ends (mail triage never asked for) is dropped."""
    token = _AT_HAND.set(at_hand)
    try:
        yield
    finally:
        _AT_HAND.reset(token)
        if at_hand is not None:
            at_hand.clear()


def current() -> FactsAtHand | None:
    """The facts at hand in this context, if any."""
    return _AT_HAND.get()
