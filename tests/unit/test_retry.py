from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keepword.retry import IDLE_RETRY, MAILBOX_RETRY, OUTBOX_RETRY, RetryPolicy


@pytest.mark.parametrize(
    ("failures", "draw", "expected"),
    [
        (0, 1.0, 0.0),  # no failure, no wait
        (1, 0.0, 2.5),  # half the first step at least
        (1, 1.0, 5.0),
        (2, 1.0, 10.0),
        (4, 0.5, 30.0),
        (9, 1.0, 900.0),  # capped at 15 minutes
        (10_000, 0.0, 450.0),  # no overflow however long it fails
    ],
)
def test_mailbox_retry_doubles_with_equal_jitter_up_to_the_cap(
    failures: int, draw: float, expected: float
) -> None:
    assert MAILBOX_RETRY.delay(failures, lambda: draw) == pytest.approx(expected)


def test_outbox_and_idle_steps() -> None:
    assert [OUTBOX_RETRY.step(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert [IDLE_RETRY.step(n) for n in (1, 2, 3, 10)] == [1, 2, 4, 300]


@given(
    first=st.floats(0.1, 100),
    cap_factor=st.floats(1, 1000),
    failures=st.integers(1, 100_000),
    draw=st.floats(0, 1),
)
def test_a_wait_is_between_half_and_all_of_a_step_that_never_shrinks(
    first: float, cap_factor: float, failures: int, draw: float
) -> None:
    policy = RetryPolicy(first=first, cap=first * cap_factor)
    step = policy.step(failures)
    assert first <= step <= policy.cap
    assert step / 2 <= policy.delay(failures, lambda: draw) <= step
    assert policy.step(failures + 1) >= step
