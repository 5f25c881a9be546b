"""A supervisor that stops reading never blocks keepword: the datagram is dropped."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from keepword import sdnotify


def test_a_full_notify_queue_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        results: list[bool] = []
        sender = threading.Thread(
            target=lambda: results.extend(sdnotify.watchdog() for _ in range(500)), daemon=True
        )
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "sd_notify blocked on a full queue"
        assert results[0] is True and results[-1] is False  # sent while it fit, then dropped
