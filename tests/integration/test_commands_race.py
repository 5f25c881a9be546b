"""Commands by mail racing `keepword assign` for real, on PostgreSQL (row locks, read
committed): a daemon thread triages command mails while a CLI thread assigns the same
case over and over. Whatever the interleaving, no update is lost: every note of every
command mail and every owner change of the CLI is on the timeline exactly once, and
every command mail got exactly one confirmation.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keepword.cli import cases as cli_cases
from keepword.errors import StaleCaseError
from keepword.store.db import open_store
from keepword.store.tables import case, case_event, message
from tests.fixtures.chase_store import ALICE, CAROL, StoreDesk
from tests.fixtures.desk import TEAM_PROOF, mail

pytestmark = pytest.mark.integration

MONDAY = datetime(2026, 11, 2, 9, tzinfo=UTC)
ANN = ("Ann Lee", "ann@example.org")
MAILS = 12
ASSIGNS = 12


@pytest.fixture
def desk(tmp_path: Path, postgres_url: str) -> Iterator[StoreDesk]:
    made = StoreDesk(tmp_path, calendar={"timezone": "UTC"})
    made.engine.dispose()
    made.engine = open_store(postgres_url)
    made.triage(MONDAY - timedelta(hours=1))  # first contact: an empty mailbox
    yield made
    made.engine.dispose()


def test_command_mails_and_cli_assigns_at_once_lose_no_update(desk: StoreDesk) -> None:
    desk.deliver(mail(ANN, "Charged twice", date=MONDAY), MONDAY)
    assert desk.triage(MONDAY).opened == 1
    for n in range(MAILS):
        at = MONDAY + timedelta(seconds=n + 1)
        body = f"#note note {n}\n#{'close' if n % 2 else 'reopen'}\n"
        desk.deliver(mail(("Alice", ALICE), "[KW-1] x", body, date=at, headers=TEAM_PROOF), at)
    start = threading.Barrier(2)
    failures: list[BaseException] = []
    raced: list[str] = []  # the lost races, each decided again: how often it happened

    def daemon() -> None:
        start.wait()
        now = MONDAY + timedelta(minutes=1)
        for _ in range(50):  # each failed message is retried a minute or more later
            result = desk.triage(now)
            raced.extend(result.errors)
            if result.triaged == 0 and _all_triaged(desk):
                return
            now += timedelta(hours=1)
        failures.append(AssertionError("command mails still untriaged"))

    def cli() -> None:
        start.wait()
        for n in range(ASSIGNS):
            owner = CAROL if n % 2 == 0 else ALICE  # the commands never move the owner
            args = argparse.Namespace(reference="KW-1", address=owner, by=CAROL)
            for _ in range(100):  # `keepword assign` decides again on a changed case
                try:
                    cli_cases._apply(desk.engine, cli_cases._assign, args)
                    break
                except StaleCaseError as exc:
                    raced.append(str(exc))
                    continue
            else:
                failures.append(AssertionError("the CLI never got its assign in"))

    threads = [threading.Thread(target=daemon), threading.Thread(target=cli)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures and not any(t.is_alive() for t in threads)

    with desk.engine.connect() as conn:
        case_id = conn.execute(select(case.c.id)).scalar_one()
        events = list(
            conn.execute(
                select(case_event.c.kind, case_event.c.actor, case_event.c.detail)
                .where(case_event.c.case_id == case_id)
                .order_by(case_event.c.id)
            )
        )
    notes = sorted(e.detail for e in events if e.kind == "note")
    assert notes == sorted(f"note {n}" for n in range(MAILS))
    cli_moves = [e for e in events if e.kind == "owner_changed" and "from the CLI" in e.detail]
    assert len(cli_moves) == ASSIGNS  # each assign changed the owner: none was lost
    confirmations = [r for r in desk.outbox() if r.kind == "command_reply"]
    assert len(confirmations) == MAILS
    print(f"{len(raced)} lost race(s), each decided again")


def _all_triaged(desk: StoreDesk) -> bool:
    with desk.engine.connect() as conn:
        left = conn.execute(select(message.c.id).where(message.c.triaged_at.is_(None))).first()
    return left is None
