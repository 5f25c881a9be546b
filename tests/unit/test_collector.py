"""The cyclic collector's pace: raised for every keepword command, never lowered."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from keepword.cli import main
from keepword.cli.collector import YOUNG_GENERATION_THRESHOLD, pace_collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("thresholds")
def test_pace_raises_the_young_generation_and_keeps_the_older_ones() -> None:
    gc.set_threshold(700, 12, 13)
    pace_collector()
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 12, 13)


@pytest.mark.usefixtures("thresholds")
def test_pace_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD * 5, 10, 10)
    pace_collector()
    assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD * 5


@pytest.mark.usefixtures("thresholds")
def test_every_command_runs_at_that_pace(capsys: pytest.CaptureFixture[str]) -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "keepword" in capsys.readouterr().out
    assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD
