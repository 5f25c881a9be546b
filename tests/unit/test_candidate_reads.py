"""What threading reads of the store for a message, in one or two statements
(store.cases.read_candidates, store.cases.referenced_mail): the same cases, in the same
order, as one lookup per rule would find."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from keepword.store import cases as case_store
from keepword.store.deferred import deferring
from keepword.store.tables import case_correspondent, message, outbox
from tests.fixtures.chase_store import SUPPORT, StoreDesk
from tests.fixtures.statements import recorded

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _case(desk: StoreDesk, mailbox: str, key: str, people: list[str], updated: datetime) -> int:
    return desk.new_case(
        START,
        people[0],
        key,
        mailbox=mailbox,
        subject_key=key,
        updated=updated,
        correspondents=tuple(people),
    )


def test_one_read_finds_the_tagged_case_the_referenced_ones_and_the_subjects(
    tmp_path: Path,
) -> None:
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    at = [START + timedelta(hours=h) for h in range(6)]
    old_ann = _case(desk, box, "refund", ["ann@example.org"], at[1])
    new_ann = _case(desk, box, "refund", ["ann@example.org", "bob@example.org"], at[3])
    bob = _case(desk, box, "refund", ["bob@example.org"], at[2])
    other_box = _case(desk, "sales", "refund", ["ann@example.org"], at[4])
    other_subject = _case(desk, box, "invoice", ["ann@example.org"], at[5])
    tagged = _case(desk, box, "hello", ["zed@example.org"], at[0])
    with desk.engine.connect() as conn:
        reference = case_store.load_case(conn, tagged).reference
        read = case_store.read_candidates(
            conn,
            box,
            case_ids=[other_subject],
            tag=reference.lower(),  # as a customer may type it
            subject_key="refund",
            addresses=["Bob@Example.org", "ann@example.org"],
        )
        nothing = case_store.read_candidates(conn, box, subject_key="", addresses=["a@b.c"])
    assert read.tagged == tagged
    # each address in turn, the latest case first; a case of both addresses twice
    assert read.by_subject == (new_ann, bob, new_ann, old_ann)
    assert set(read.candidates) == {tagged, other_subject, new_ann, bob, old_ann}
    assert other_box not in read.states, "another mailbox's case is no subject match"
    # the correspondents are the case's all, not only the one that matched
    assert read.candidates[new_ann].correspondents == {"ann@example.org", "bob@example.org"}
    assert read.states[bob].subject_key == "refund" and read.states[bob].id == bob
    assert (nothing.candidates, nothing.tagged, nothing.by_subject) == ({}, None, ())


def _stored(desk: StoreDesk, mid: str, sender: str, to: str, cc: str | None = None) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Order"
    msg["Date"], msg["Message-ID"] = format_datetime(START), f"<{mid}>"
    if cc:
        msg["Cc"] = cc
    msg.set_content("Where is it?")
    desk.deliver(msg, START)


def test_the_referenced_mail_names_its_cases_and_everyone_it_went_between(
    tmp_path: Path,
) -> None:
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    first = _case(desk, box, "order", ["ann@example.org"], START)
    second = _case(desk, box, "order", ["cy@example.org"], START)
    _stored(desk, "a@x", "Ann@Example.org", SUPPORT, cc="Dee@example.org")
    _stored(desk, "b@x", "cy@example.org", SUPPORT)
    _stored(desk, "untriaged@x", "eve@example.org", SUPPORT)
    with desk.engine.begin() as conn:
        for mid, case_id in (("a@x", first), ("b@x", second)):
            conn.execute(update(message).where(message.c.message_id == mid).values(case_id=case_id))
        conn.execute(
            insert(outbox).values(
                mailbox=box,
                case_id=first,
                kind="ack",
                dedup_key="ack:1",
                message_id="ack1@kw",
                recipients=["Gus@example.org"],
                state="sent",
                created_at=START,
            )
        )
    with desk.engine.connect() as conn:
        ids = ["ack1@kw", "untriaged@x", "b@x", "a@x", "unknown@x"]
        found = case_store.referenced_mail(conn, box, ids)
        none = case_store.referenced_mail(conn, box, [])
    # stored mail first, in the order of the ids, then keepword's own
    assert found.case_ids == (second, first)
    people = {"ann@example.org", "dee@example.org", SUPPORT, "gus@example.org"}
    assert found.participants(first) == people
    assert found.participants(second) == {"cy@example.org", SUPPORT}
    assert found.participants(999) == frozenset()
    assert none.case_ids == ()


# -- a batch's pool (store.cases.prefetch_candidates) ----------------------------------------


def _question(reference: str) -> dict[str, Any]:
    return {
        "tag": reference.lower(),
        "subject_key": "refund",
        "addresses": ["Bob@Example.org", "ann@example.org"],
    }


def test_a_batch_pool_answers_as_the_store_does_without_a_statement(tmp_path: Path) -> None:
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    at = [START + timedelta(hours=h) for h in range(6)]
    _case(desk, box, "refund", ["ann@example.org"], at[1])
    _case(desk, box, "refund", ["ann@example.org", "bob@example.org"], at[3])
    _case(desk, box, "refund", ["bob@example.org"], at[2])
    _case(desk, "sales", "refund", ["ann@example.org"], at[4])
    other_subject = _case(desk, box, "invoice", ["ann@example.org"], at[5])
    tagged = _case(desk, box, "hello", ["zed@example.org"], at[0])
    with desk.engine.connect() as conn:
        reference = case_store.load_case(conn, tagged).reference
        question = {**_question(reference), "case_ids": [other_subject]}
        from_store = case_store.read_candidates(conn, box, **question)
    lookup = case_store.Lookup((reference,), "refund", ("bob@example.org", "ann@example.org"))
    with desk.engine.begin() as conn, deferring(conn):
        conn.execute(update(message).values(case_id=other_subject))  # no mail: no rows
        case_store.prefetch_candidates(conn, box, [lookup])
        with recorded(desk.engine) as statements:
            pooled = case_store.read_candidates(conn, box, **{**question, "case_ids": []})
        # the case ids it did not look up: read from the store, the same answer
        with recorded(desk.engine) as fallback:
            asked_more = case_store.read_candidates(conn, box, **question)
    assert statements == []
    assert len(fallback) == 1
    assert asked_more.candidates == from_store.candidates
    assert asked_more.by_subject == from_store.by_subject
    assert pooled.tagged == from_store.tagged
    assert pooled.by_subject == from_store.by_subject
    assert pooled.states == {i: s for i, s in from_store.states.items() if i != other_subject}


def test_cases_a_batch_opens_and_saves_are_in_its_pool_as_stored(tmp_path: Path) -> None:
    """A case opened in the batch joins the pool with its correspondents, and a saved one
    as a fresh read would give it (times in UTC, the version moved on)."""
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    kept = _case(desk, box, "refund", ["ann@example.org"], START)
    lookup = case_store.Lookup((), "refund", ("ann@example.org", "cy@example.org"))
    question = {"subject_key": "refund", "addresses": ["cy@example.org", "ann@example.org"]}
    with desk.engine.begin() as conn, deferring(conn):
        case_store.prefetch_candidates(conn, box, [lookup])
        before = case_store.read_candidates(conn, box, **question).states[kept]
        later = before.updated_at.astimezone(timezone(timedelta(hours=2))) + timedelta(hours=1)
        case_store.save_case(conn, replace(before, updated_at=later), correspondents=["cy@x.org"])
        opened = case_store.save_case(
            conn,
            replace(before, id=None, reference="KW", opened_at=later, updated_at=later),
            prefix="KW",
            correspondents=["cy@example.org"],
        )
        with recorded(desk.engine) as statements:
            pooled = case_store.read_candidates(conn, box, **question)
        fresh = case_store.read_candidates(conn, box, **{**question, "case_ids": [999]})
    assert statements == []
    assert pooled.by_subject == fresh.by_subject == (opened.id, kept)
    assert pooled.candidates[kept].correspondents == {"ann@example.org", "cy@x.org"}
    assert pooled.states == fresh.states
    assert pooled.candidates == fresh.candidates
    assert pooled.states[kept].version == before.version + 1
    assert pooled.states[kept].updated_at.tzinfo is UTC, "as a read gives it back"


def test_a_case_the_pool_never_read_sends_the_batch_back_to_the_store(tmp_path: Path) -> None:
    """The pool knows only the correspondents of the cases it read: a batch that saves
    another case (one a fallback read found) reads from the store from then on."""
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    elsewhere = _case(desk, box, "refund", ["bob@example.org"], START)
    lookup = case_store.Lookup((), "refund", ("ann@example.org",))
    question = {"subject_key": "refund", "addresses": ["ann@example.org"]}
    with desk.engine.begin() as conn, deferring(conn):
        case_store.prefetch_candidates(conn, box, [lookup])
        assert case_store.read_candidates(conn, box, **question).states == {}
        state = case_store.load_case(conn, elsewhere)
        case_store.save_case(conn, state, correspondents=["ann@example.org"])
        found = case_store.read_candidates(conn, box, **question)
    assert set(found.states) == {elsewhere}
    assert found.candidates[elsewhere].correspondents == {"ann@example.org", "bob@example.org"}


def test_a_batch_writes_correspondents_at_its_end_or_before_a_read_of_them(
    tmp_path: Path,
) -> None:
    """A batch's new correspondents wait with its other rows (a statement a case less);
    a case the pool holds is saved without reading its correspondents; a read of them
    from the store writes the waiting ones first, so it finds what one at a time would."""
    desk = StoreDesk(tmp_path)
    box = desk.box.name
    kept = _case(desk, box, "refund", ["ann@example.org"], START)
    lookup = case_store.Lookup((), "refund", ("ann@example.org",))
    people = select(func.count()).select_from(case_correspondent)
    with desk.engine.begin() as conn, deferring(conn):
        case_store.prefetch_candidates(conn, box, [lookup])
        question = {"subject_key": "refund", "addresses": ["ann@example.org"]}
        before = case_store.read_candidates(conn, box, **question).states[kept]
        with recorded(desk.engine) as saves:
            case_store.save_case(conn, before, correspondents=["cy@example.org", "ann@x.org"])
            opened = case_store.save_case(
                conn,
                replace(before, id=None, reference="KW"),
                prefix="KW",
                correspondents=["dee@example.org"],
            )
        waiting = conn.execute(people).scalar()
        asked = {"subject_key": "refund", "addresses": ["cy@example.org", "dee@example.org"]}
        from_store = case_store.read_candidates(conn, box, case_ids=[999], **asked)
    with desk.engine.connect() as conn:
        written = conn.execute(people).scalar()
        after = case_store.read_candidates(conn, box, **asked)
    assert not [s for s in saves if "case_correspondent" in s], saves
    assert waiting == 1, "only the stored case's own correspondent before the read"
    assert from_store.by_subject == after.by_subject == (kept, opened.id)
    assert from_store.candidates == after.candidates
    assert after.candidates[kept].correspondents == {
        "ann@example.org",
        "ann@x.org",
        "cy@example.org",
    }
    assert written == 4
