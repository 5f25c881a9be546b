"""A bounce about our acknowledgement, through triage and the chase over a real SQLite
store (pipeline.bounces): the address is recorded as refused, the team is told, and
no update follows it. No mail servers: tests/fixtures/chase_store.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepword.domain.model import PromiseAudience, PromiseState
from keepword.store import refusals
from tests.fixtures.bounces import dsn
from tests.fixtures.chase_store import StoreDesk
from tests.fixtures.desk import mail

MONDAY = datetime(2026, 11, 2, 8, tzinfo=UTC)  # business hours Mon-Fri 09-17 UTC
ANN = "ann@example.org"


def at(hour: int, minute: int = 0) -> datetime:
    return MONDAY.replace(hour=hour, minute=minute)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[StoreDesk]:
    made = StoreDesk(tmp_path, calendar={"timezone": "UTC"})
    made.triage(at(8))  # first contact: an empty mailbox
    yield made
    made.engine.dispose()


def acknowledged(desk: StoreDesk) -> Any:
    """Ann's new case at 09:00, its acknowledgement queued and taken by the relay."""
    desk.deliver(mail(("Ann Lee", ANN), "Help", date=at(9)), at(9))
    desk.triage(at(9))
    desk.drain(at(9, 1))
    [ack] = [r for r in desk.outbox() if r.kind == "acknowledgement"]
    return ack


def test_a_bounce_of_the_acknowledgement_stops_updates_and_tells_the_team(
    desk: StoreDesk,
) -> None:
    ack = acknowledged(desk)
    desk.deliver_raw(dsn(ack.message_id, ANN), at(9, 5))
    desk.triage(at(9, 5))
    with desk.engine.connect() as conn:
        [refusal] = refusals.refusals_about(conn, "support", ack.case_id, ANN)
    assert (refusal.outbox_id, refusal.address, refusal.at) == (ack.id, ANN, at(9, 5))
    assert refusal.reply == "bounced: 5.1.1 smtp; 550 5.1.1 no such user"
    assert (
        "delivery_failed",
        f"acknowledgement to {ANN} bounced: 5.1.1 smtp; 550 5.1.1 no such user",
    ) in desk.events(ack.case_id)
    for minute in range(6, 8 * 60, 10):
        desk.chase(at(9) + timedelta(minutes=minute))
    [notice] = [r for r in desk.outbox() if r.kind == "customer_unreachable"]
    assert notice.case_id == ack.case_id
    assert [r for r in desk.outbox() if r.kind == "customer_update"] == []
    first, target = desk.promises(ack.case_id)
    assert first.state is PromiseState.WITHDRAWN
    assert target.audience is PromiseAudience.TEAM


def test_a_bounce_counts_only_for_the_address_our_mail_went_to(desk: StoreDesk) -> None:
    """A report naming our mail but another address (a forwarding server's, a forgery)
    cannot stop mail to the customer; neither can a warning or a report about mail that
    is not ours."""
    ack = acknowledged(desk)
    desk.deliver_raw(dsn(ack.message_id, "someone@else.example"), at(9, 5))
    desk.deliver_raw(dsn(ack.message_id, ANN, action="delayed", status="4.4.7"), at(9, 6))
    desk.deliver_raw(dsn("not.ours@example.net", ANN), at(9, 7))
    desk.triage(at(9, 8))
    with desk.engine.connect() as conn:
        assert refusals.refusals_about(conn, "support", ack.case_id, ANN) == []
    assert desk.chase(at(16)).updates == 1  # the customer hears of the new time as usual
