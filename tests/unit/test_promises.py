from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from keepword.domain.model import PromiseAudience, PromiseKind, PromiseState
from keepword.domain.promises import (
    Promise,
    break_if_due,
    is_held_back,
    keep,
    make_promise,
    never_told,
    on_case_paused,
    on_customer_follow_up,
    on_staff_reply,
    supersede,
    withdraw,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DUE = T0 + timedelta(hours=4)


@dataclass(frozen=True)
class FakeWindow:
    minutes: int
    due_at: datetime
    is_default: bool = False
    basis: Mapping[str, object] = field(default_factory=lambda: {"quantile": 0.9})


@dataclass(frozen=True)
class FakeCase:
    id: int | None
    first_response_at: datetime | None


def promise(
    audience: PromiseAudience = PromiseAudience.CUSTOMER, pid: int = 7, due: datetime = DUE
) -> Promise:
    return Promise(
        id=pid,
        case_id=42,
        kind=PromiseKind.FIRST_RESPONSE,
        audience=audience,
        made_at=T0,
        due_at=due,
    )


def test_make_promise_copies_the_window() -> None:
    window = FakeWindow(240, DUE, is_default=True)
    made = make_promise(42, PromiseKind.FIRST_RESPONSE, PromiseAudience.CUSTOMER, T0, window, "ack")
    assert (made.id, made.case_id, made.made_at, made.due_at) == (None, 42, T0, DUE)
    assert made.is_open and made.to_customer and made.is_default
    assert dict(made.basis) == {"quantile": 0.9}
    assert made.reason == "ack"


def test_a_reply_before_due_keeps_the_promise() -> None:
    kept = keep(promise(), DUE - timedelta(minutes=1))
    assert kept.state is PromiseState.KEPT
    assert kept.resolved_at == DUE - timedelta(minutes=1)
    assert "before due" in kept.reason


def test_a_reply_exactly_at_due_keeps_the_promise() -> None:
    assert keep(promise(), DUE).state is PromiseState.KEPT


def test_a_late_reply_breaks_the_promise_and_records_lateness() -> None:
    broken = keep(promise(), DUE + timedelta(minutes=95))
    assert broken.state is PromiseState.BROKEN
    assert "95 min after due" in broken.reason


def test_transitions_refuse_a_resolved_promise() -> None:
    kept = keep(promise(), T0)
    with pytest.raises(ValueError, match="kept"):
        keep(kept, T0)
    with pytest.raises(ValueError, match="kept"):
        withdraw(kept, T0, "closed")
    with pytest.raises(ValueError, match="kept"):
        supersede(kept, 8, T0)


def test_break_if_due_leaves_a_promise_alone_until_due() -> None:
    p = promise()
    assert break_if_due(p, DUE) is p
    kept = keep(p, T0)
    assert break_if_due(kept, DUE + timedelta(days=1)) is kept


def test_a_customer_promise_past_due_unannounced_is_a_silent_breach() -> None:
    broken = break_if_due(promise(), DUE + timedelta(seconds=1))
    assert broken.state is PromiseState.BROKEN
    assert broken.resolved_at == DUE  # the breach happened at the due time
    assert broken.reason.startswith("silent breach")


def test_an_announced_breach_is_not_silent() -> None:
    broken = break_if_due(promise(), DUE + timedelta(hours=1), announced=True)
    assert broken.state is PromiseState.BROKEN
    assert "silent" not in broken.reason and "announced" in broken.reason


def test_a_breach_whose_update_the_limit_held_back_is_broken_not_silent() -> None:
    broken = break_if_due(promise(), DUE + timedelta(hours=1), held=True)
    assert broken.state is PromiseState.BROKEN and is_held_back(broken)
    assert "silent" not in broken.reason and "rate limit" in broken.reason
    assert not is_held_back(break_if_due(promise(), DUE + timedelta(hours=1)))
    # An update that did go out in time wins over a held-back note.
    assert not is_held_back(break_if_due(promise(), DUE + timedelta(1), announced=True, held=True))


def test_a_missed_team_target_is_internal() -> None:
    broken = break_if_due(promise(PromiseAudience.TEAM), DUE + timedelta(hours=1))
    assert broken.state is PromiseState.BROKEN
    assert broken.reason.startswith("internal target missed")


def test_supersede_before_due_is_an_announced_revision() -> None:
    at = DUE - timedelta(minutes=30)
    old = supersede(promise(), 8, at)
    assert old.state is PromiseState.SUPERSEDED
    assert (old.superseded_by, old.resolved_at) == (8, at)
    assert "before due" in old.reason


@pytest.mark.parametrize("late", [timedelta(0), timedelta(minutes=1)])
def test_supersede_at_or_after_due_is_refused(late: timedelta) -> None:
    with pytest.raises(ValueError, match="too late"):
        supersede(promise(), 8, DUE + late)


def test_withdraw_records_why() -> None:
    gone = withdraw(promise(), T0, "case closed")
    assert (gone.state, gone.reason, gone.resolved_at) == (
        PromiseState.WITHDRAWN,
        "case closed",
        T0,
    )


def test_staff_reply_resolves_every_open_promise() -> None:
    late_one = promise(pid=1, due=T0 + timedelta(minutes=10))
    timely = promise(pid=2)
    team = promise(PromiseAudience.TEAM, pid=3)
    already = keep(promise(pid=4), T0)
    at = T0 + timedelta(hours=1)
    result = on_staff_reply([late_one, timely, team, already], at)
    assert [(p.id, p.state) for p in result] == [
        (1, PromiseState.BROKEN),
        (2, PromiseState.KEPT),
        (3, PromiseState.KEPT),
    ]


def test_closing_withdraws_open_promises_but_keeps_breaches_broken() -> None:
    overdue = promise(pid=1, due=T0 + timedelta(minutes=10))
    running = promise(pid=2)
    result = on_case_paused([overdue, running], T0 + timedelta(hours=1), "case closed")
    assert [(p.id, p.state) for p in result] == [
        (1, PromiseState.BROKEN),
        (2, PromiseState.WITHDRAWN),
    ]
    assert result[1].reason == "case closed"


def test_follow_up_after_a_team_reply_opens_a_team_target() -> None:
    window = FakeWindow(120, T0 + timedelta(hours=3))
    at = T0 + timedelta(hours=1)
    case = FakeCase(42, T0 + timedelta(minutes=30))
    replied = keep(promise(), T0 + timedelta(minutes=30))
    [new] = on_customer_follow_up(case, [replied], at, window)
    assert new.kind is PromiseKind.NEXT_RESPONSE
    assert new.audience is PromiseAudience.TEAM  # internal: never mailed to the customer
    assert (new.case_id, new.made_at, new.due_at, new.id) == (42, at, window.due_at, None)
    assert new.is_open


def test_follow_up_while_a_promise_is_open_changes_nothing() -> None:
    window = FakeWindow(120, T0 + timedelta(hours=3))
    case = FakeCase(42, T0)
    assert on_customer_follow_up(case, [promise()], T0, window) == []


def test_follow_up_before_any_team_reply_makes_no_promise_here() -> None:
    window = FakeWindow(120, T0 + timedelta(hours=3))
    assert on_customer_follow_up(FakeCase(42, None), [], T0, window) == []


def test_follow_up_needs_a_stored_case() -> None:
    window = FakeWindow(120, T0 + timedelta(hours=3))
    with pytest.raises(ValueError, match="stored case"):
        on_customer_follow_up(FakeCase(None, T0), [], T0, window)


def test_promises_are_immutable_values() -> None:
    p = promise()
    assert replace(p, reason="x") != p
    with pytest.raises(AttributeError):
        p.state = PromiseState.KEPT  # type: ignore[misc]


# -- an update withdrawn before it left: the customer never heard the new time -------------


def untold_pair(at: datetime) -> tuple[Promise, Promise]:
    new = replace(promise(pid=8), made_at=at, due_at=DUE + timedelta(hours=8))
    return supersede(promise(), 8, at), new


@pytest.mark.parametrize(
    ("reply", "state"),
    [(DUE - timedelta(minutes=10), "kept"), (DUE + timedelta(hours=1), "broken")],
)
def test_the_old_promise_of_an_untold_update_is_judged_by_the_reply(
    reply: datetime, state: str
) -> None:
    old, new = untold_pair(DUE - timedelta(minutes=30))
    judged, untold = never_told(old, keep(new, reply), reply, reply + timedelta(minutes=1))
    assert (judged.state.value, judged.superseded_by, judged.resolved_at) == (state, None, reply)
    assert untold.state is PromiseState.WITHDRAWN and "never told" in untold.reason


def test_with_no_reply_the_old_promise_is_withdrawn_or_if_due_broken_but_held() -> None:
    old, new = untold_pair(DUE - timedelta(minutes=30))
    before, _ = never_told(old, new, None, DUE - timedelta(minutes=5))
    after, _ = never_told(old, new, None, DUE + timedelta(minutes=5))
    earlier_reply, _ = never_told(old, new, T0 - timedelta(days=1), DUE - timedelta(minutes=5))
    assert before.state is PromiseState.WITHDRAWN
    assert after.state is PromiseState.BROKEN and is_held_back(after)
    assert earlier_reply.state is PromiseState.WITHDRAWN  # a reply to an earlier question


def test_never_told_refuses_a_pair_that_is_not_old_and_its_revision() -> None:
    old, new = untold_pair(DUE - timedelta(minutes=30))
    with pytest.raises(ValueError, match="did not supersede"):
        never_told(old, replace(new, id=9), None, DUE)
