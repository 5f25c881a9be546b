"""The predictor's recent cases as numpy columns give, to the bit, what the arithmetic
written case by case gives (the reading below is the code the columns replaced): the
sample a promise reads, the order share, the residuals nearest the queue met now, and
the Kaplan-Meier quantile."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepword.domain.predict import km_quantile
from keepword.domain.recent import RecentCases, km_quantile_of

START = datetime(2026, 1, 5, 8, tzinfo=UTC)


@dataclass
class _Case:
    """One case as the predictor held it before: an object a case."""

    opened_at: datetime
    position: float
    pace: float
    ahead: int
    overtaken: int
    response: float | None = None


def _sample(recent: list[_Case], days: int, at_least: int) -> list[_Case]:
    if not recent:
        return []
    since = recent[-1].opened_at - timedelta(days=days)
    out: list[_Case] = []
    for case in reversed(recent):
        if case.opened_at < since and len(out) >= at_least:
            break
        out.append(case)
    return out


def _order_share(sample: list[_Case]) -> float:
    overtaken = ahead = 0
    for case in sample:
        if case.response is not None:
            overtaken += case.overtaken
            ahead += case.ahead
    return 1.0 if ahead < 50 else min(1.5, max(0.1, overtaken / ahead))


def _residuals(
    position: float, sample: list[_Case], share: float, matched: tuple[float, int] | None
) -> tuple[list[float], list[float]]:
    expected_of = [c.ahead * share * c.pace for c in sample]
    chosen: list[int] = list(range(len(sample)))
    if matched is not None:
        near, count = matched
        distance = [abs(expected - near) for expected in expected_of]
        chosen = sorted(chosen, key=distance.__getitem__)[:count]
    events: list[float] = []
    censored: list[float] = []
    for index in chosen:
        case, expected = sample[index], expected_of[index]
        if case.response is not None:
            events.append(case.response - expected)
        else:
            censored.append(position - case.position - expected)
    return events, censored


# Minutes on a coarse grid, so equal values (ties in distance and in time) are common,
# and off it, so the order of the operations shows in the rounding.
minutes = st.one_of(st.integers(0, 400).map(lambda m: m * 7.5), st.floats(0.0, 3000.0))
steps = st.lists(
    st.tuples(
        st.integers(0, 3000),  # minutes since the last arrival
        st.one_of(st.sampled_from([0.0, 3.5, 12.25]), st.floats(0.1, 90.0)),  # pace
        st.integers(0, 60),  # ahead
        st.one_of(st.none(), minutes),  # response, if answered
        st.integers(-30, 30),  # overtaken
    ),
    max_size=300,
)


@given(
    steps=steps,
    days=st.sampled_from([1, 3, 28]),
    at_least=st.sampled_from([0, 5, 300]),
    horizon_days=st.sampled_from([None, 2, 20]),
    near=minutes,
    count=st.integers(1, 200),
    position=st.floats(0, 50_000),
)
def test_the_columns_give_what_the_cases_gave(
    steps: list[tuple[int, float, int, float | None, int]],
    days: int,
    at_least: int,
    horizon_days: int | None,
    near: float,
    count: int,
    position: float,
) -> None:
    columns = RecentCases(capacity=4)  # small: the columns grow and compact on the way
    cases: list[_Case] = []
    at = START
    for gap, pace, ahead, response, overtaken in steps:
        at += timedelta(minutes=gap)
        case = _Case(at, gap * 1.37, pace, ahead, overtaken)
        row = columns.add(at, case.position, pace, ahead, overtaken)
        cases.append(case)
        if response is not None:
            case.response = response
            columns.answered(row, response, overtaken)
        if horizon_days is not None:
            horizon = at - timedelta(days=horizon_days)
            columns.forget_before(horizon)
            cases = [c for c in cases if c.opened_at >= horizon]
    for sample, expected in (
        (columns.newest_first(days, at_least), _sample(cases, days, at_least)),
        (columns.newest_first(), list(reversed(cases))),
    ):
        assert len(sample) == len(expected)
        share = sample.order_share()
        assert share == _order_share(expected)
        for matched in (None, (near, count)):
            events, censored = sample.residuals(position, share, matched)
            want_events, want_censored = _residuals(position, expected, share, matched)
            assert events.tolist() == want_events
            assert censored.tolist() == want_censored
            for level in (0.5, 0.9, 0.97):
                assert km_quantile_of(events, censored, level) == km_quantile(
                    want_events, want_censored, level
                )


def test_an_answer_to_a_forgotten_case_changes_nothing() -> None:
    columns = RecentCases(capacity=2)
    old = columns.add(START, 0.0, 1.0, 0, 0)
    columns.add(START + timedelta(days=5), 10.0, 1.0, 1, 0)
    columns.forget_before(START + timedelta(days=1))
    columns.add(START + timedelta(days=6), 20.0, 1.0, 2, 0)  # compacts: row ids stay
    columns.answered(old, 99.0, 3)
    sample = columns.newest_first()
    assert len(sample) == 2 and bool(np.isnan(sample.response).all())


def test_km_quantile_of_arrays_refuses_a_level_outside_0_1() -> None:
    empty = np.array([], dtype=float)
    with pytest.raises(ValueError, match="not in"):
        km_quantile_of(empty, empty, 1.0)
    assert km_quantile_of(empty, empty, 0.5) is None
    assert km_quantile_of(np.array([math.inf]), empty, 0.5) == math.inf
