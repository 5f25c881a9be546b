from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keepword.config import LimitSettings
from keepword.domain.acknowledge import MAX_DEFERRAL, Decision, Policy, Sent, decide, reply_address
from keepword.domain.limits import PlannedMail
from keepword.domain.model import Address, Kind, MessageFacts, OutboxKind
from tests.fixtures.facts import message_facts

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TEAM = frozenset({"support@example.com", "alice@example.com"})
LIMITS = LimitSettings()


def facts(**overrides: Any) -> MessageFacts:
    sender = overrides.pop("sender", Address("ann@example.org", "Ann"))
    return message_facts(sender, **{"message_id": "a@example.org", "date": NOW, **overrides})


def decided(
    msg: MessageFacts, kind: Kind = Kind.CUSTOMER, *, follow_up_notes: bool = False, **kw: Any
) -> Decision:
    sent: dict[str, Any] = {
        "new_case": True,
        "acknowledged": False,
        "note_sent_today": False,
        "cutoff": NOW - timedelta(hours=1),
        "planned": PlannedMail(),
    }
    sent.update(kw)
    return decide(msg, kind, Sent(**sent), Policy(TEAM, follow_up_notes, LIMITS), NOW)


def run(msg: MessageFacts, kind: Kind = Kind.CUSTOMER, **kw: Any) -> OutboxKind | None:
    return decided(msg, kind, **kw).send


def test_new_customer_case_is_acknowledged_once() -> None:
    assert run(facts()) is OutboxKind.ACKNOWLEDGEMENT
    assert run(facts(), new_case=False, acknowledged=True) is None


@pytest.mark.parametrize("kind", [Kind.AUTOMATED, Kind.STAFF, Kind.OWN])
def test_never_to_robots_team_or_ourselves(kind: Kind) -> None:
    assert run(facts(), kind) is None


def test_never_for_history_quarantine_or_old_mail() -> None:
    assert run(facts(is_history=True)) is None
    assert run(facts(quarantined=True)) is None
    assert run(facts(date=NOW - timedelta(days=2))) is None


def test_reply_to_wins_and_team_reply_to_is_refused() -> None:
    msg = facts(reply_to=(Address("alice@example.com"),))
    assert reply_address(msg) == "alice@example.com"
    assert run(msg) is None
    assert run(facts(sender=None)) is None


def test_follow_up_note_only_when_configured_and_once_a_day() -> None:
    follow = {"new_case": False, "acknowledged": True}
    assert run(facts(), **follow) is None
    assert run(facts(), follow_up_notes=True, **follow) is OutboxKind.FOLLOW_UP_NOTE
    assert run(facts(), follow_up_notes=True, note_sent_today=True, **follow) is None


def test_history_case_gets_its_one_acknowledgement_on_first_new_mail() -> None:
    assert run(facts(), new_case=False, acknowledged=False) is OutboxKind.ACKNOWLEDGEMENT


def minutes_ago(*minutes: int) -> tuple[datetime, ...]:
    return tuple(NOW - timedelta(minutes=m) for m in minutes)


@pytest.mark.parametrize(
    ("planned", "until"),
    [
        # 3 to this address in the last hour: the 4th waits until the oldest is an hour old
        (PlannedMail(to_address=minutes_ago(50, 20, 5)), NOW + timedelta(minutes=10)),
        # 10 in the last day
        (
            PlannedMail(to_address=minutes_ago(23 * 60, *range(20 * 60, 11 * 60, -60))),
            NOW + timedelta(hours=1),
        ),
        # the global hourly limit from this mailbox in the last hour (forged senders)
        (
            PlannedMail(from_mailbox=minutes_ago(*[30] * LimitSettings().global_per_hour)),
            NOW + timedelta(minutes=30),
        ),
    ],
)
def test_rate_limits_defer_the_acknowledgement_never_drop_it(
    planned: PlannedMail, until: datetime
) -> None:
    result = decided(facts(), cutoff=None, planned=planned)
    assert result.send is OutboxKind.ACKNOWLEDGEMENT
    assert result.slot is not None and result.slot.at == until
    assert result.held is not None and result.held.startswith("rate limit")


def test_within_the_limits_it_goes_out_now() -> None:
    result = decided(
        facts(),
        cutoff=None,
        planned=PlannedMail(to_address=minutes_ago(90, 80), from_mailbox=minutes_ago(1)),
    )
    assert result.slot is not None and result.slot.at == NOW and result.held is None


def test_an_address_with_a_day_of_mail_queued_is_a_flood_and_recorded_as_such() -> None:
    # 20 planned over the coming day (a robot answering every acknowledgement): one more
    # would wait beyond MAX_DEFERRAL, so it is not queued - with the reason, not silently.
    planned = PlannedMail(to_address=tuple(NOW + timedelta(hours=h) for h in range(0, 24, 1))[:20])
    result = decided(facts(), cutoff=None, planned=planned)
    assert result.send is None
    assert "writes like a robot" in result.reason and "rate limit" in result.reason
    assert timedelta(days=1) == MAX_DEFERRAL
