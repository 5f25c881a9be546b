"""The facts a first import puts at hand are exactly what triage would read back
(store.facts_at_hand), they are dropped when their message is seen in another folder,
they stay within their bounds, and only committed mail is put there."""

from __future__ import annotations

import gc
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.config import MailboxSettings
from keepword.domain.model import MessageFacts, Origin
from keepword.mail.parse import parse_message
from keepword.pipeline import ingest
from keepword.pipeline.history import HistoryImport
from keepword.store import messages as store
from keepword.store.db import open_store
from keepword.store.facts_at_hand import (
    MAX_MESSAGES,
    FactsAtHand,
    FactsBudget,
    Held,
    facts_at_hand,
)
from tests.corpora import needs_corpora
from tests.fixtures.installations import customer_mail
from tests.unit.test_triage_batches import _corpus

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
INBOX = store.Folder("support", "INBOX", Origin.INBOX, 1)
SENT = store.Folder("support", "Sent", Origin.SENT, 1)


def _mail(n: int, **headers: str) -> bytes:
    return customer_mail(f"customer{n}@example.org", "support@example.com", f"Order {n}", **headers)


def _items(raws: list[bytes], first_uid: int = 1) -> list[store.StoreItem]:
    return [
        store.StoreItem(
            uid=first_uid + n,
            raw=raw,
            parsed=parse_message(raw),
            received_at=NOW - timedelta(minutes=n),
        )
        for n, raw in enumerate(raws)
    ]


def _store(
    engine: Engine, folder: store.Folder, items: list[store.StoreItem], at_hand: FactsAtHand
) -> store.BatchResult:
    with engine.begin() as conn:
        result = store.store_batch(conn, folder, items, is_history=True, now=NOW)
        at_hand.forget(result.seen_again)
    at_hand.put(result.facts())
    return result


def _read_back(engine: Engine, pks: list[int]) -> list[MessageFacts]:
    with engine.connect() as conn:  # outside any import's context: from the store
        return store.load_facts(conn, pks)


@needs_corpora
def test_on_the_corpus_the_facts_at_hand_are_what_the_store_reads_back(
    tmp_path: Path,
) -> None:
    """Charsets, malformed MIME, no Date, odd zones, long headers, bounces: every new
    message's facts as the store hands them equal load_facts' reading of its row."""
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    at_hand = FactsAtHand(FactsBudget(10**6, 10**12))
    raws = _corpus()
    handed: list[MessageFacts] = []
    for start in range(0, len(raws), 97):
        items = _items(raws[start : start + 97], start + 1)
        handed += _store(engine, INBOX, items, at_hand).facts()
    assert len(handed) > 500
    assert handed == _read_back(engine, [f.pk for f in handed])
    with engine.connect() as conn, facts_at_hand(at_hand):
        taken = store.load_facts(conn, [f.pk for f in handed])
    assert taken == handed and len(at_hand) == 0  # all of it taken from at hand, once


def test_a_date_in_another_zone_is_held_in_utc_as_it_is_read_back(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    [item] = _items([_mail(1, Date="Mon, 2 Mar 2026 11:30:00 +0230")])
    assert item.parsed.date is not None
    zoned = item.parsed.date.astimezone(timezone(timedelta(hours=2, minutes=30)))
    item = replace(item, parsed=replace(item.parsed, date=zoned))  # as another parser may
    [held] = _store(engine, INBOX, [item], FactsAtHand()).facts()
    assert held.date == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert held.date is not None and held.date.tzinfo == UTC
    assert held.date_offset_minutes == 150
    assert [held] == _read_back(engine, [held.pk])
    assert held.date != datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=1)))


def test_a_message_seen_again_in_another_folder_is_read_from_the_store(tmp_path: Path) -> None:
    """First in the inbox, then in Sent (a copy a colleague filed): its origin is now
    SENT, which the facts put at hand before could not know."""
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    at_hand = FactsAtHand()
    raws = [_mail(n) for n in range(3)]
    inbox = _store(engine, INBOX, _items(raws), at_hand)
    assert {f.origin for f in inbox.facts()} == {Origin.INBOX} and len(at_hand) == 3
    again = _store(engine, SENT, _items(raws[:1], first_uid=10), at_hand)
    assert (again.new, again.facts()) == (0, [])
    assert len(at_hand) == 2  # the one seen again is no longer at hand
    with engine.connect() as conn, facts_at_hand(at_hand):
        facts = store.load_facts(conn, list(inbox.new_pks))
    assert [f.origin for f in facts] == [Origin.SENT, Origin.INBOX, Origin.INBOX]
    assert facts == _read_back(engine, list(inbox.new_pks))


def _fact(pk: int, body: str) -> MessageFacts:
    return MessageFacts(pk=pk, mailbox="support", message_id=f"m{pk}", sender=None, body_text=body)


def test_beyond_the_budget_what_comes_is_not_kept() -> None:
    """Triage asks for the oldest first: what is held is kept, what comes is read later."""
    by_count = FactsAtHand(FactsBudget(messages=3, chars=100))
    by_count.put(_fact(pk, "") for pk in range(5))
    assert by_count.take(range(5)).keys() == {0, 1, 2}
    by_chars = FactsAtHand(FactsBudget(messages=100, chars=10))
    by_chars.put([_fact(1, "abcd"), _fact(2, "efgh")])
    by_chars.put([_fact(3, "ijkl"), _fact(4, "mn")])  # 3 would make 12 characters
    assert by_chars.take([1, 2, 3, 4]).keys() == {1, 2, 4}
    by_chars.put([_fact(5, "0123456789x")])  # bigger than the budget alone
    assert (by_chars.take([5]), len(by_chars)) == ({}, 0)
    by_chars.put([_fact(6, "0123456789")])  # all of it was given back
    assert by_chars.take([6]).keys() == {6}


def test_mailboxes_importing_at_once_share_one_budget() -> None:
    """Fifty mailboxes' first imports at once hold no more than one budget: what one
    holds, the others cannot; an import's leftovers are given back when it ends."""
    budget = FactsBudget(messages=4, chars=100)
    first, second = FactsAtHand(budget), FactsAtHand(budget)
    first.put([_fact(1, "a"), _fact(2, "b"), _fact(3, "c")])
    second.put([_fact(11, "x"), _fact(12, "y")])
    assert (len(first), len(second)) == (3, 1)
    first.forget([1])
    second.put([_fact(13, "z")])
    assert len(second) == 2
    with facts_at_hand(first):
        pass  # the import ended with facts nobody asked for
    assert len(first) == 0
    second.put([_fact(14, "w"), _fact(15, "v"), _fact(16, "u")])
    assert len(second) == 4


def test_by_default_facts_at_hand_draw_on_the_process_budget() -> None:
    one, other = FactsAtHand(), FactsAtHand()
    one.put(_fact(pk, "") for pk in range(MAX_MESSAGES))
    other.put([_fact(MAX_MESSAGES, "")])
    assert (len(one), len(other)) == (MAX_MESSAGES, 0)
    one.clear()
    other.put([_fact(MAX_MESSAGES, "")])
    assert len(other) == 1
    other.clear()


def test_facts_at_hand_nobody_cleared_give_their_room_back_when_collected() -> None:
    budget = FactsBudget(messages=2, chars=100)
    forgotten = FactsAtHand(budget)
    forgotten.put([_fact(1, "a"), _fact(2, "b")])
    assert len(FactsAtHand(budget)) == 0 and not budget.take(Held(), 0)
    del forgotten
    gc.collect()
    again = FactsAtHand(budget)
    again.put([_fact(3, "c"), _fact(4, "d")])
    assert len(again) == 2


def test_facts_are_handed_over_once_and_a_put_replaces() -> None:
    at_hand = FactsAtHand()
    at_hand.put([_fact(1, "old"), _fact(2, "b")])
    at_hand.put([_fact(1, "new")])
    assert at_hand.take([1, 1, 7]) == {1: _fact(1, "new")}
    assert at_hand.take([1]) == {} and len(at_hand) == 1
    at_hand.forget([2, 9])
    assert len(at_hand) == 0


def test_load_facts_takes_what_is_at_hand_only_in_its_context(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    result = _store(engine, INBOX, _items([_mail(1), _mail(2)]), FactsAtHand())
    first, second = result.new_pks
    at_hand = FactsAtHand()
    marked = _fact(first, "put at hand")  # not what the row says: shows where it came from
    at_hand.put([marked])
    with engine.connect() as conn:
        assert store.load_facts(conn, [first])[0].body_text != "put at hand"
        with facts_at_hand(at_hand):
            facts = store.load_facts(conn, [second, first, 404])
    assert [f.pk for f in facts] == [second, first]  # in the order asked, unknown skipped
    assert facts[1] is marked and facts[0].body_text != "put at hand"


def test_an_import_puts_facts_at_hand_only_once_its_batch_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that rolls back leaves nothing at hand: its pks may be given to other mail."""
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    history = HistoryImport(triage=lambda through: None)
    where = ingest.Folder(engine, _box(), "INBOX", Origin.INBOX, lambda: NOW, history=history)
    items = _items([_mail(n) for n in range(3)])

    real = store.store_batch
    calls: list[int] = []

    def second_fails(*args: Any, **kwargs: Any) -> store.BatchResult:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk I/O error")
        return real(*args, **kwargs)

    # The batch straddles the history's cutoff: two parts, the second fails after the
    # first was stored (and its facts made) in the same transaction.
    with monkeypatch.context() as patched:
        patched.setattr(store, "store_batch", second_fails)
        with pytest.raises(RuntimeError, match="disk I/O"):
            ingest._store_parsed(where, 1, 3, items, history_below=2)
    assert len(calls) == 2 and len(history.at_hand) == 0
    ingest._store_parsed(where, 1, 3, items, history_below=10)
    assert len(history.at_hand) == 3
    sent = replace(where, name="Sent", role=Origin.SENT)  # the first seen again, filed
    ingest._store_parsed(sent, 1, 1, _items([items[0].raw]), history_below=10)
    assert len(history.at_hand) == 2
    history.triage = None  # nobody triages: nothing is collected
    ingest._store_parsed(where, 1, 7, _items([_mail(7)], first_uid=7), history_below=10)
    assert len(history.at_hand) == 2


def _box() -> MailboxSettings:
    return MailboxSettings.model_validate(
        {
            "name": "support",
            "address": "support@example.com",
            "imap": {"host": "127.0.0.1", "tls": "plain", "username": "u", "password": "p"},
        }
    )
