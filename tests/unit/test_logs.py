"""Log format (terminal and journal), mailbox/case context, secret redaction."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from keepword.adapters import logs
from keepword.mail.bounces import read_bounce
from tests.corpora import CORPORA, needs_corpora


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    logs.forget_secrets()


def test_readable_format_has_time_level_logger_and_context(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=False)
    with logs.log_context(mailbox="support", case="KW-42"):
        logging.getLogger("keepword.test").warning("owner changed")
    line = captured.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z][A-Za-z0-9+-]* "  # the zone, named
        r"WARNING keepword\.test \[support/KW-42\] owner changed",
        line,
    ), line


def test_journal_format_has_priority_and_no_time(captured: io.StringIO) -> None:
    logs.setup_logging("DEBUG", stream=captured, journal=True)
    log = logging.getLogger("keepword.test")
    with logs.log_context(mailbox="billing"):
        log.error("login refused")
        log.info("polled")
        log.debug("detail")
    assert captured.getvalue().splitlines() == [
        "<3>keepword.test [billing] login refused",
        "<6>keepword.test [billing] polled",
        "<7>keepword.test [billing] detail",
    ]


def test_every_traceback_line_keeps_the_priority(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("keepword.test").exception("poll failed")
    lines = captured.getvalue().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


@needs_corpora
def test_reading_a_bounce_at_info_logs_nothing_of_the_detectors(captured: io.StringIO) -> None:
    """flufl.bounce names each of its detectors at INFO for every delivery report: ~17
    lines in the journal for each bounce the daemon reads."""
    logs.setup_logging("INFO", stream=captured, journal=False)
    bounce = read_bounce((CORPORA / "cpython-test_email" / "msg_16.txt").read_bytes())
    assert bounce is not None and bounce.failed, "a delivery report that names a failure"
    assert captured.getvalue() == ""


def test_extra_overrides_context_and_context_is_reset(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=True)
    log = logging.getLogger("keepword.test")
    with logs.log_context(mailbox="support"):
        log.info("one", extra={"case": "KW-7"})
    log.info("two")
    assert captured.getvalue().splitlines() == [
        "<6>keepword.test [support/KW-7] one",
        "<6>keepword.test two",
    ]


def test_context_follows_asyncio_tasks(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=True)
    log = logging.getLogger("keepword.test")

    async def poll(name: str) -> None:
        with logs.log_context(mailbox=name):
            await asyncio.sleep(0.01)
            log.info("polled")

    async def both() -> None:
        await asyncio.gather(poll("a"), poll("b"))

    asyncio.run(both())
    assert sorted(captured.getvalue().splitlines()) == [
        "<6>keepword.test [a] polled",
        "<6>keepword.test [b] polled",
    ]


def test_registered_secret_is_masked_in_message_args_and_traceback(
    captured: io.StringIO,
) -> None:
    logs.setup_logging("INFO", stream=captured, journal=False)
    logs.register_secret("hunter2-Secret")
    log = logging.getLogger("keepword.test")
    log.warning("login with %s failed", "hunter2-Secret")
    try:
        raise ValueError("server echoed hunter2-Secret")
    except ValueError:
        log.exception("oops")
    text = captured.getvalue()
    assert "hunter2" not in text
    assert "login with *** failed" in text
    assert "ValueError: server echoed ***" in text


def test_short_values_are_not_registered(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=True)
    logs.register_secret("abc")
    logging.getLogger("keepword.test").info("abc def")
    assert captured.getvalue() == "<6>keepword.test abc def\n"


def test_setup_twice_keeps_one_handler(captured: io.StringIO) -> None:
    logs.setup_logging("INFO", stream=captured, journal=True)
    logs.setup_logging("INFO", stream=captured, journal=True)
    logging.getLogger("keepword.test").info("once")
    assert captured.getvalue() == "<6>keepword.test once\n"


def test_journal_stream_is_matched_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert logs.stream_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:1"})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not logs.stream_is_journal(stream, {})


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (25, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
    ],
)
def test_syslog_priority(level: int, priority: int) -> None:
    assert logs.syslog_priority(level) == priority
