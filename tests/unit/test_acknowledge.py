from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keepword.config import LimitSettings
from keepword.domain.acknowledge import SentCounts, decide, reply_address
from keepword.domain.model import Address, Kind, MessageFacts, OutboxKind

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TEAM = frozenset({"support@example.com", "alice@example.com"})
LIMITS = LimitSettings()


def facts(**overrides: object) -> MessageFacts:
    base: dict[str, object] = {
        "pk": 1,
        "mailbox": "support",
        "message_id": "a@example.org",
        "sender": Address("ann@example.org", "Ann"),
        "date": NOW,
    }
    base.update(overrides)
    return MessageFacts(**base)  # type: ignore[arg-type]


def run(msg: MessageFacts, kind: Kind = Kind.CUSTOMER, **kw: object) -> OutboxKind | None:
    args: dict[str, object] = {
        "new_case": True,
        "acknowledged": False,
        "note_sent_today": False,
        "follow_up_notes": False,
        "cutoff": NOW - timedelta(hours=1),
        "team": TEAM,
        "counts": SentCounts(),
        "limits": LIMITS,
    }
    args.update(kw)
    return decide(msg, kind, **args).send  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    "counts",
    [
        SentCounts(to_recipient_last_hour=3),
        SentCounts(to_recipient_last_day=10),
        SentCounts(all_last_hour=200),
    ],
)
def test_rate_limits_stop_floods_even_for_customers(counts: SentCounts) -> None:
    result = decide(
        facts(),
        Kind.CUSTOMER,
        new_case=True,
        acknowledged=False,
        note_sent_today=False,
        follow_up_notes=False,
        cutoff=None,
        team=TEAM,
        counts=counts,
        limits=LIMITS,
    )
    assert result.send is None and result.reason.startswith("rate limit")
