"""sd_notify over a real AF_UNIX datagram socket in a temp dir (and the abstract namespace)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keepword.adapters import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_with_status(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("2 mailboxes")
    assert _received(notify_socket) == "READY=1\nSTATUS=2 mailboxes"


def test_status_is_one_line(notify_socket: socket.socket) -> None:
    assert sdnotify.status("polling\nsupport")
    assert _received(notify_socket) == "STATUS=polling support"


def test_watchdog_and_stopping(notify_socket: socket.socket) -> None:
    assert sdnotify.watchdog()
    assert _received(notify_socket) == "WATCHDOG=1"
    assert sdnotify.stopping()
    assert _received(notify_socket) == "STOPPING=1"


def test_reloading_carries_monotonic_time(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    first, second = _received(notify_socket).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(value) <= after


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"keepword-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_without_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_unreachable_socket_is_not_fatal(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    assert sdnotify.notify("READY=1", environ=env) is False


def test_relative_socket_path_is_refused() -> None:
    assert sdnotify.socket_address("relative/sock") is None
    assert sdnotify.socket_address("@abc") == b"\0abc"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(environ=env) == expected
