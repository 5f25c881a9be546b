"""keepword.pipeline.isolation: one failing item never stops the items behind it."""

from __future__ import annotations

import logging

import pytest

from keepword.pipeline.isolation import each_isolated, isolated

log = logging.getLogger("test")


class NotNowError(Exception):
    pass


def work(item: int) -> int:
    if item == 2:
        raise RuntimeError("a bug")
    if item == 3:
        raise NotNowError("changed meanwhile")
    return item * 10


def test_every_item_is_tried_and_each_outcome_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = each_isolated(
        [1, 2, 3, 4], work, what=lambda i: f"item {i}", log=log, expected=(NotNowError,)
    )
    assert outcome.done == [(1, 10), (4, 40)]
    assert outcome.failed == [2] and outcome.skipped == [3]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["item 2 failed; tried again next run"]
    assert failed[0].exc_info is not None  # the traceback is kept for the operator


def test_one_unit_of_work() -> None:
    assert isolated(lambda: 5, what="x", log=log).value == 5
    attempt = isolated(lambda: work(2), what="x", log=log)
    assert attempt.failed and not attempt.ok and attempt.value is None


def test_interrupts_are_not_swallowed() -> None:
    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        isolated(stop, what="x", log=log)


def test_a_retry_policy_takes_the_failure_instead_of_the_default_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Triage's policy (record the retry, log by attempt) gets the exception itself."""
    seen: list[Exception] = []
    problem = ValueError("bad data")

    def fails() -> int:
        raise problem

    attempt = isolated(fails, what="message 7", log=logging.getLogger("t"), on_failure=seen.append)
    assert attempt.failed and attempt.error is problem and seen == [problem]
    assert not caplog.records  # the policy decides what is logged
