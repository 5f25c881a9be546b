"""domain.reachability: when an address the relay refused for good may be written to
again, and which refused mails the team still has to hear of."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepword.domain.outbox_keys import promise_id_of, unreachable_key
from keepword.domain.owners import AwayPeriod, away_label
from keepword.domain.reachability import (
    Refusal,
    bounce_about_the_address,
    member_unreachable,
    notices_due,
    permanent_reply,
    refusals_of_mail,
    refuses_the_address,
    standing_refusal,
    unreachable_reason,
)

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ANN = "ann@example.org"


def refusal(outbox_id: int, minutes: float, case_id: int | None = 7) -> Refusal:
    at = T0 + timedelta(minutes=minutes)
    return Refusal(outbox_id, ANN, "acknowledgement", "550 5.1.1 no such user", at, case_id)


@pytest.mark.parametrize(
    ("reply", "permanent"),
    [
        ("550 5.1.1 no such user", True),
        ("553 mailbox name not allowed", True),
        (" 554 rejected", True),
        ("451 4.3.0 try later", False),
        ("452 too many recipients", False),
        ("250 ok", False),
        ("5", False),
        ("", False),
        ("55x odd", False),
    ],
)
def test_only_a_5xx_reply_refuses_for_good(reply: str, permanent: bool) -> None:
    assert permanent_reply(reply) is permanent


def test_no_refusal_no_standing_refusal() -> None:
    assert standing_refusal([], None) is None
    assert standing_refusal([], T0) is None


def test_a_refusal_stands_until_the_address_writes_again() -> None:
    refused = refusal(1, 0)
    assert standing_refusal([refused], None) == refused
    assert standing_refusal([refused], T0 - timedelta(minutes=1)) == refused  # wrote before
    assert standing_refusal([refused], T0) == refused  # the same instant proves nothing
    assert standing_refusal([refused], T0 + timedelta(seconds=1)) is None


def test_the_latest_refusal_counts() -> None:
    """Written to again after the first refusal, then refused again: it stands again."""
    first, second = refusal(1, 0), refusal(2, 60)
    heard = T0 + timedelta(minutes=30)
    assert standing_refusal([second, first], heard) == second
    assert standing_refusal([first], heard) is None


@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
    st.none() | st.integers(-100, 10_100),
)
def test_a_refusal_stands_exactly_when_nothing_came_after_the_latest(
    minutes: list[int], heard: int | None
) -> None:
    refusals = [refusal(i, m) for i, m in enumerate(minutes)]
    heard_at = None if heard is None else T0 + timedelta(minutes=heard)
    standing = standing_refusal(refusals, heard_at)
    latest = max(minutes)
    if heard is not None and heard > latest:
        assert standing is None
    else:
        assert standing is not None and standing.at == T0 + timedelta(minutes=latest)


def test_the_reason_names_the_mail_the_address_and_the_reply() -> None:
    reason = unreachable_reason(refusal(1, 0))
    assert reason == (
        f"the acknowledgement to {ANN} was refused for good: 550 5.1.1 no such user; "
        "it has not written since"
    )


def test_one_notice_per_refused_mail_of_the_case_oldest_first() -> None:
    mine_late, mine_early, other = refusal(3, 10), refusal(2, 5), refusal(4, 1, case_id=8)
    due = notices_due(7, [mine_late, other, mine_early], frozenset())
    assert due == [mine_early, mine_late]
    told = frozenset({unreachable_key(mine_early)})
    assert notices_due(7, [mine_late, other, mine_early], told) == [mine_late]


def test_the_notice_key_is_in_the_cases_chase_range_and_about_no_promise() -> None:
    key = unreachable_key(refusal(9, 0))
    assert key == "unreachable:case:7:outbox:9"
    assert promise_id_of(key) is None


def test_the_refusals_of_a_mail_are_its_5xx_addresses_lowercased() -> None:
    replies = {"Ann@Example.ORG": "550 no such user", "bob@example.org": "451 later", " ": "550"}
    [only] = refusals_of_mail(3, "customer_update", 7, replies, T0)
    assert only == Refusal(3, ANN, "customer_update", "550 no such user", T0, 7)


def test_a_refused_member_is_away_for_the_default_days_unless_already_away() -> None:
    today = T0.date()
    period = member_unreachable("Bob@Example.com", "550 no such user", today, 7, [])
    assert period is not None
    assert (period.address, period.start, period.back_on) == (
        "bob@example.com",
        today,
        today + timedelta(days=7),
    )
    assert period.why == "mail to them is refused for good: 550 no such user"
    assert away_label(period) == period.why
    already = AwayPeriod("bob@example.com", today - timedelta(days=1), today + timedelta(days=1))
    assert member_unreachable("bob@example.com", "550", today, 7, [already]) is None
    ended = AwayPeriod("bob@example.com", today - timedelta(days=9), today)
    assert member_unreachable("bob@example.com", "550", today, 7, [ended]) is not None
    assert away_label(already) == "out-of-office"


@pytest.mark.parametrize(
    ("reply", "about_the_address"),
    [
        ("550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown", True),
        ("550-5.1.1 The email account that you tried to reach does not exist", True),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found", True),
        ("552 5.2.2 mailbox full", True),
        ("550 no such user here", True),  # no enhanced status, no policy words
        ("554 5.7.1 <ann@example.org>: Relay access denied", False),  # a broken login
        ("550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain", False),
        ("550 relay not permitted", False),
        ("554 Relay access denied", False),
        ("550 5.7.1 Message rejected as spam", False),  # about the mail, not the address
        ("553 5.3.0 system not accepting network messages", False),
        ("450 4.1.1 try later", False),
        ("451 temporary failure", False),
    ],
)
def test_only_a_refusal_of_the_address_itself_counts(reply: str, about_the_address: bool) -> None:
    assert refuses_the_address(reply) is about_the_address


@pytest.mark.parametrize(
    ("summary", "about_the_address"),
    [
        ("5.1.1 smtp; 550 5.1.1 no such user", True),
        ("5.1.1", True),
        ("failure notice", True),  # qmail: no status, a detector found it permanent
        ("Undeliverable Mail", True),
        ("5.7.1 smtp; 550 5.7.1 Message content rejected, UBE", False),
        ("5.0.0 smtp; 550 Recipient does not exist", True),  # Postfix: no remote status
        ("5.0.0 smtp; 554 Relay access denied", False),
        ("Mail rejected: blocked by policy", False),
    ],
)
def test_a_bounce_counts_only_when_about_the_address(summary: str, about_the_address: bool) -> None:
    assert bounce_about_the_address(summary) is about_the_address
