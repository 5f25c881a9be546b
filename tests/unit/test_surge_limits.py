"""The rate limits over a surge: read once a run (MailboxContext.planned_mail) and
followed from the run's own mail, they give every mail the slot the old per-mail read
of the store gave."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from keepword.config import LimitSettings
from keepword.domain.limits import DAY, Book, PlannedMail, Timeline, next_slot
from keepword.pipeline import context as context_module
from keepword.pipeline.acknowledge import acknowledge_case
from keepword.pipeline.context import CUSTOMER_FACING, MailboxContext
from keepword.pipeline.triage import triage_pending
from keepword.store import outbox as outbox_store
from tests.fixtures.chase_store import SUPPORT, StoreDesk

NOW = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
LIMITS = {"per_sender_per_hour": 2, "per_sender_per_day": 4, "global_per_hour": 9}


class StoreEveryMailDesk(MailboxContext):
    """The old path: the limits read from the store for every mail."""

    def planned_mail(self, conn: Connection, recipient: str | None) -> PlannedMail:
        to_address, from_mailbox = outbox_store.automatic_mail_times(
            conn, self.box.name, recipient, CUSTOMER_FACING, since=self.now - DAY
        )
        return PlannedMail(tuple(to_address), tuple(from_mailbox))


def _mail(sender: str, subject: str, at: datetime, n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = SUPPORT
    msg["Subject"] = subject
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = f"<surge-{n}@example.net>"
    msg.set_content("Is the shop down?")
    return msg


def _surge(tmp: Path, desk_type: type[MailboxContext], seed: int) -> StoreDesk:
    """Automatic mail already out (some of it to the surge's own senders, some from
    another mailbox), then a surge in which some customers write several times, triaged
    in one or two passes: limits tight enough that many mails are deferred."""
    rng = random.Random(seed)
    desk = StoreDesk(tmp, limits=LIMITS, promise={"follow_up_notes": True})
    senders = [f"c{i}@example.org" for i in range(rng.randint(5, 25))]
    for _ in range(rng.randint(0, 12)):
        to = rng.choice([*senders, "other@example.org"])
        at = NOW - timedelta(minutes=rng.randint(1, 30 * 60))
        desk.automatic_mail(None, to, at, kind=rng.choice(CUSTOMER_FACING))
    start = NOW - timedelta(minutes=10)
    for n in range(rng.randint(10, 60)):
        sender = rng.choice(senders)
        subject = f"Outage {rng.randint(0, 3)}"  # the same subject again: a follow-up
        desk.deliver(_mail(sender, subject, start + timedelta(seconds=7 * n), n), NOW)
    passes = [NOW, NOW + timedelta(minutes=rng.choice([0, 20, 70]))]
    for now in passes:
        context = desk_type(desk.settings, desk.box, desk.engine, desk.renderer, now)
        assert not triage_pending(context, acknowledger=acknowledge_case).errors
        if rng.random() < 0.5:
            desk.drain(now)  # what went out counts where it went out
    return desk


def _decisions(desk: StoreDesk) -> list[tuple[Any, ...]]:
    rows = [
        (r.kind, tuple(r.recipients), r.next_attempt_at, r.created_at, r.case_id)
        for r in desk.outbox()
    ]
    events = [desk.events(case_id) for case_id in range(1, 80)]
    return [*rows, *events]


@pytest.mark.parametrize("seed", range(12))
def test_a_surge_gets_the_same_slots_as_reading_the_store_per_mail(
    tmp_path: Path, seed: int
) -> None:
    once = _decisions(_surge(tmp_path / "once", MailboxContext, seed))
    every = _decisions(_surge(tmp_path / "every", StoreEveryMailDesk, seed))
    assert once == every


def test_some_surges_are_deferred_by_every_kind_of_limit(tmp_path: Path) -> None:
    """The generator above exercises the limits, not only the fast path."""
    reasons: set[str] = set()
    for seed in range(6):
        desk = _surge(tmp_path / str(seed), MailboxContext, seed)
        for case_id in range(1, 80):
            reasons |= {d.split(": ")[-1] for k, d in desk.events(case_id) if k == "deferred"}
    assert any("this mailbox an hour" in r for r in reasons)
    assert any("this address an hour" in r for r in reasons)


def test_a_run_reads_the_planned_mail_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[datetime] = []
    read = outbox_store.automatic_mail_rows

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[-1])
        return read(*args, **kwargs)

    monkeypatch.setattr(context_module.outbox_store, "automatic_mail_rows", counted)
    desk = StoreDesk(tmp_path, limits=LIMITS)
    for n in range(20):
        desk.deliver(_mail(f"c{n}@example.org", "Down?", NOW - timedelta(seconds=n), n), NOW)
    assert desk.triage(NOW).acknowledged == 20
    assert len(reads) == 1


def test_a_rolled_back_mail_leaves_the_book(tmp_path: Path) -> None:
    desk = StoreDesk(tmp_path, limits=LIMITS)
    context = desk.desk_at(NOW)
    with desk.engine.connect() as conn:
        assert not context.planned_mail(conn, "a@example.org").to_address
        context.note_planned("a@example.org", NOW)
        assert list(context.planned_mail(conn, "a@example.org").to_address) == [NOW]
        context.forget_run_state()  # its transaction rolled back: the store says again
        assert not context.planned_mail(conn, "a@example.org").to_address


def test_the_book_counts_what_the_store_query_counts() -> None:
    since = NOW - DAY
    rows = [
        ("support", ("a@example.org",), NOW - timedelta(hours=2)),
        ("sales", ("a@example.org", "a@example.org"), NOW - timedelta(hours=1)),
        ("support", ("b@example.org",), NOW + timedelta(hours=3)),
        ("support", ("a@example.org",), since - timedelta(seconds=1)),
    ]
    book = Book.of("support", rows, since)
    planned = book.planned("a@example.org")
    assert list(planned.to_address) == [NOW - timedelta(hours=2), NOW - timedelta(hours=1)]
    assert list(planned.from_mailbox) == [NOW - timedelta(hours=2), NOW + timedelta(hours=3)]
    assert list(book.planned(None).to_address) == []
    book.add("b@example.org", NOW)
    assert list(book.planned("b@example.org").to_address) == [NOW, NOW + timedelta(hours=3)]


def test_a_timeline_is_taken_as_it_is() -> None:
    times = Timeline([NOW - timedelta(minutes=m) for m in (5, 50, 20)])
    assert list(times) == sorted(times)
    limits = LimitSettings(per_sender_per_hour=3, per_sender_per_day=10, global_per_hour=3)
    slot = next_slot(NOW, to_address=(), from_mailbox=times, limits=limits)
    assert slot.at == NOW - timedelta(minutes=50) + timedelta(hours=1)
