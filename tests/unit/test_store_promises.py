"""Promise and case repositories on a real (SQLite) store: rows <-> domain values."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, insert

from keepword.domain import outbox_keys as keys
from keepword.domain.cases import Event, EventKind
from keepword.domain.chase import held_back_note, update_key
from keepword.domain.model import PromiseAudience, PromiseKind, PromiseState
from keepword.domain.promises import Promise, break_if_due, supersede
from keepword.errors import StaleCaseError
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as store
from keepword.store.tables import message
from tests.fixtures.reports import engine as engine  # the fixture
from tests.fixtures.reports import stored_case
from tests.unit.test_outbox_keys import CASE_42_CHASE_KEYS, NOT_CASE_42_CHASE_KEYS

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def new_case(engine: Engine, mailbox: str = "support", prefix: str = "KW") -> int:
    with engine.begin() as conn:
        return stored_case(conn, mailbox, T0, reference=prefix)


def promise_for(case_id: int, made: datetime, hours: int = 8, **kw: object) -> Promise:
    return Promise(
        id=None,
        case_id=case_id,
        kind=PromiseKind.FIRST_RESPONSE,
        audience=PromiseAudience.CUSTOMER,
        made_at=made,
        due_at=made + timedelta(hours=hours),
        reason="measured",
        basis={"sample_size": 25, "quantile": 0.95},
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_keeps_every_field(engine: Engine) -> None:
    case_id = new_case(engine)
    with engine.begin() as conn:
        pid = store.insert_promise(conn, promise_for(case_id, T0, is_default=True))
    with engine.connect() as conn:
        [loaded] = store.open_promises(conn, case_id)
    assert loaded.id == pid and loaded.case_id == case_id
    assert loaded.kind is PromiseKind.FIRST_RESPONSE and loaded.to_customer
    assert loaded.made_at == T0 and loaded.due_at == T0 + timedelta(hours=8)
    assert loaded.made_at.tzinfo is not None, "aware UTC back from the store"
    assert loaded.is_default and dict(loaded.basis) == {"sample_size": 25, "quantile": 0.95}
    assert loaded.state is PromiseState.OPEN


def sqlite_steps(engine: Engine, read: Callable[[Connection], object]) -> int:
    """SQLite virtual machine instructions `read` costs (what it reads, not the clock)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        raw.set_progress_handler(count, 1)
        try:
            read(conn)
        finally:
            raw.set_progress_handler(None, 1)
    return steps[0]


def test_a_cases_open_promises_come_first_due_first_from_its_own_rows(engine: Engine) -> None:
    """The chase reads every open case's: the cost of one read must not grow with the
    other cases' open promises (it grew linearly: the read walked all of them)."""
    mine = new_case(engine)
    with engine.begin() as conn:
        later = store.insert_promise(conn, promise_for(mine, T0, hours=9))
        sooner = store.insert_promise(conn, promise_for(mine, T0, hours=2))

    def read(conn: Connection) -> object:
        assert [p.id for p in store.open_promises(conn, mine)] == [sooner, later]
        return None

    alone = sqlite_steps(engine, read)
    for n in range(300):
        other = new_case(engine, prefix=f"O{n}")
        with engine.begin() as conn:
            store.insert_promise(conn, promise_for(other, T0 + timedelta(minutes=n), hours=1))
    assert sqlite_steps(engine, read) < alone * 2, "it reads the other cases' promises"


def test_supersede_and_break_are_stored_and_leave_the_open_set(engine: Engine) -> None:
    case_id = new_case(engine)
    with engine.begin() as conn:
        first = store.insert_promise(conn, promise_for(case_id, T0))
        second = store.insert_promise(conn, promise_for(case_id, T0 + timedelta(hours=7)))
        [old, new] = store.open_promises(conn, case_id)
        assert (old.id, new.id) == (first, second)
        store.update_state(conn, supersede(old, second, T0 + timedelta(hours=7)))
        store.update_state(conn, break_if_due(new, T0 + timedelta(hours=20)))
    with engine.connect() as conn:
        assert store.open_promises(conn, case_id) == []
        assert store.case_ids_with_open_promises(conn, "support") == []
        old, new = store.promises_of_case(conn, case_id)
    assert old.state is PromiseState.SUPERSEDED and old.superseded_by == second
    assert old.resolved_at == T0 + timedelta(hours=7)
    assert new.state is PromiseState.BROKEN and "silent breach" in new.reason


def test_open_promise_cases_and_period_are_per_mailbox(engine: Engine) -> None:
    ours, theirs = new_case(engine), new_case(engine, "sales", "SA")
    with engine.begin() as conn:
        store.insert_promise(conn, promise_for(ours, T0))
        store.insert_promise(conn, promise_for(ours, T0 + timedelta(days=3)))
        store.insert_promise(conn, promise_for(theirs, T0))
    with engine.connect() as conn:
        assert store.case_ids_with_open_promises(conn, "support") == [ours]
        made = store.mailbox_promises(
            conn, ["support"], made_since=T0, made_until=T0 + timedelta(days=1)
        )
    assert [(p.case_id, p.made_at) for p in made] == [(ours, T0)]


def test_update_queued_at_reads_the_update_key_only(engine: Engine) -> None:
    case_id = new_case(engine)
    with engine.begin() as conn:
        pid = store.insert_promise(conn, promise_for(case_id, T0))
        [value] = store.open_promises(conn, case_id)
        assert store.update_queued_at(conn, value) is None
        reminder = outbox_store.OutboxEntry(
            "support",
            case_id,
            "reminder",
            f"reminder:case:{case_id}:promise:{pid}:50",
            ["alice@example.com"],
            "reminder",
            b"x",
            message_id="<r@example.com>",
        )
        outbox_store.enqueue(conn, reminder, T0 + timedelta(hours=4))
        assert store.update_queued_at(conn, value) is None
        queued = T0 + timedelta(hours=7, minutes=30)
        update = outbox_store.OutboxEntry(
            "support",
            case_id,
            "customer_update",
            update_key(case_id, pid),
            ["ann@example.org"],
            "update",
            b"x",
            message_id="<u@example.com>",
        )
        outbox_store.enqueue(conn, update, queued)
        assert store.update_queued_at(conn, value) == queued


def test_mailboxes_sharing_a_prefix_share_its_sequence(engine: Engine) -> None:
    """Both mailboxes default to "KW": each opens cases, a reference names one case."""
    ids = [new_case(engine, box) for box in ("support", "billing", "support", "billing")]
    renamed = new_case(engine, "support", prefix="SUP")  # the mailbox's prefix changed
    with engine.connect() as conn:
        refs = [case_store.load_case(conn, i).reference for i in (*ids, renamed)]
        assert refs == ["KW-1", "KW-2", "KW-3", "KW-4", "SUP-4"]
        found = case_store.find_case(conn, "kw-2")
        assert found is not None and found.mailbox == "billing"


def test_a_save_decided_on_an_older_read_is_refused(engine: Engine) -> None:
    case_id = new_case(engine)
    with engine.connect() as conn:
        first = case_store.load_case(conn, case_id)
    with engine.begin() as conn:
        saved = case_store.save_case(conn, replace(first, owner="alice@example.com"))
    assert saved.version == first.version + 1
    with pytest.raises(StaleCaseError), engine.begin() as conn:
        case_store.save_case(conn, replace(first, owner="bob@example.com"))
    with engine.connect() as conn:
        assert case_store.load_case(conn, case_id).owner == "alice@example.com"


def test_a_held_back_update_is_found_by_its_promise_only(engine: Engine) -> None:
    case_id = new_case(engine)
    with engine.begin() as conn:
        pid = store.insert_promise(conn, promise_for(case_id, T0))
        note = f"{held_back_note(pid)}: rate limit: at most 10 automatic mails a day"
        case_store.add_events(conn, case_id, [Event(EventKind.CUSTOMER_UPDATE, T0, None, note)])
        assert store.update_held_back(conn, case_id, pid)
        assert not store.update_held_back(conn, case_id, pid + 1)
        assert not store.update_held_back(conn, case_id + 1, pid)


def test_automated_mail_from_an_address_in_any_mailbox(engine: Engine) -> None:
    def stored(mailbox: str, sender: str, kind: str) -> None:
        mid = f"{mailbox}.{sender}.{kind}@example.net"
        with engine.begin() as conn:
            conn.execute(
                insert(message).values(
                    mailbox=mailbox, message_id=mid, content_digest="d", size=1,
                    from_addr=sender, headers={"auto-submitted": ["auto-replied"]},
                    origin="inbox", kind=kind, stored_at=T0,
                )
            )  # fmt: skip

    stored("billing", "bot@other.example", "automated")
    stored("support", "bot@other.example", "customer")
    stored("support", "ann@example.org", "automated")
    with engine.connect() as conn:
        found = store.automated_mail_from(conn, "Bot@Other.example")
    assert [(f.mailbox, f.sender.address if f.sender else None) for f in found] == [
        ("billing", "bot@other.example")
    ]
    assert found[0].header("auto-submitted") == ("auto-replied",)


def test_a_cases_chase_keys_are_read_by_their_ranges_and_no_others(engine: Engine) -> None:
    """What the chase reads as already queued for a case (store.outbox.keys_in_ranges
    over domain.outbox_keys.chase_key_ranges): every chase key of the case, nothing of
    another case (42 is not 421 nor 4), nor the case's other mail."""
    mine, others = CASE_42_CHASE_KEYS, NOT_CASE_42_CHASE_KEYS
    with engine.begin() as conn:
        for n, key in enumerate([*mine, *others]):
            entry = outbox_store.OutboxEntry(
                "support", None, "reminder", key, ["a@example.com"], "x", b"x",
                message_id=f"<k{n}@example.com>",
            )  # fmt: skip
            outbox_store.enqueue(conn, entry, T0)
    with engine.connect() as conn:
        assert outbox_store.keys_in_ranges(conn, keys.chase_key_ranges(42)) == set(mine)
        assert outbox_store.keys_in_ranges(conn, keys.chase_key_ranges(421)) == {others[0]}
        assert outbox_store.keys_in_ranges(conn, []) == frozenset()
