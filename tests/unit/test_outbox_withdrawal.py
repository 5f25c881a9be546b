"""domain.outbox.withdrawal: a queued mail that is no longer true is not sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keepword.domain.model import CaseStatus, OutboxKind
from keepword.domain.outbox import ABOUT_WAITING, CaseNow, withdrawal

QUEUED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("kind", sorted(ABOUT_WAITING))
def test_mail_about_a_waiting_case_is_withdrawn_once_the_team_replied(kind: OutboxKind) -> None:
    answered = CaseNow(CaseStatus.WAITING_ON_CUSTOMER, QUEUED + timedelta(minutes=5))
    reason = withdrawal(kind, QUEUED, answered)
    assert reason is not None and "replied" in reason


@pytest.mark.parametrize("kind", sorted(ABOUT_WAITING))
def test_mail_about_a_closed_case_is_withdrawn(kind: OutboxKind) -> None:
    reason = withdrawal(kind, QUEUED, CaseNow(CaseStatus.CLOSED, None))
    assert reason is not None and "closed" in reason


@pytest.mark.parametrize("kind", sorted(ABOUT_WAITING))
def test_a_case_still_waiting_keeps_its_mail(kind: OutboxKind) -> None:
    earlier_reply = QUEUED - timedelta(days=1)  # a reply before the customer wrote again
    assert withdrawal(kind, QUEUED, CaseNow(CaseStatus.WAITING_ON_TEAM, earlier_reply)) is None
    assert withdrawal(kind, QUEUED, CaseNow(CaseStatus.NEW, None)) is None


@pytest.mark.parametrize("kind", [OutboxKind.DIGEST, OutboxKind.LEAD_ALERT])
def test_digests_and_lead_alerts_describe_a_moment_and_always_go(kind: OutboxKind) -> None:
    assert withdrawal(kind, QUEUED, CaseNow(CaseStatus.CLOSED, QUEUED + timedelta(1))) is None
