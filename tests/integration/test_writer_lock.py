"""Exactly one writer per store: a second `run`, `run --once` or `import` is refused.

The first writer is the daemon as systemd runs it (tests.integration.test_daemon's
rig, with its fake worker); the others are plain `keepword` processes on the same
config, refused before they touch a server. The lock dies with its process: after a
SIGKILL of the daemon the next `run --once` works at once. SQLite (flock beside the
file) and PostgreSQL (advisory lock on a dedicated connection).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from keepword.cli.common import EXIT_BUSY
from tests.fixtures.postgres import Postgres
from tests.integration import test_daemon as rig
from tests.integration.test_daemon import (
    PASSWORD_ENV,
    DaemonProcess,
    config_text,
    ready,
    run_keepword,
)

pytestmark = pytest.mark.integration

daemon = rig.daemon  # the daemon rig's fixtures, under their own names
imap_port = rig.imap_port


def second_writer_is_refused(kw: DaemonProcess, *command: str) -> None:
    result = run_keepword(kw.config, *command, env={PASSWORD_ENV: "not-used"})
    assert result.returncode == EXIT_BUSY, (command, result.stderr)
    assert f"another keepword (pid {kw.pid}" in result.stderr, result.stderr
    assert "writes this store" in result.stderr
    assert "systemctl stop keepword" in result.stderr  # what to do instead
    assert "Traceback" not in result.stderr


def refused_while_running_then_free_after_sigkill(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path, url: str | None
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}, database_url=url))
    kw.start()
    kw.wait_notify(ready)
    # On PostgreSQL a second `run` is welcome: instances share the mailboxes by lease
    # (tests/integration/test_instances.py); what works every mailbox alone is refused.
    alone = (("run", "--once"), ("import", "--quiet"))
    for command in alone if url else (*alone, ("run",)):
        second_writer_is_refused(kw, *command)
    assert kw.alive()

    os.kill(kw.pid, signal.SIGKILL)  # no clean-up at all: the lock must die with it
    assert kw.proc is not None
    kw.proc.wait(timeout=10)
    after = daemon("--once", name="-after")
    after.start()
    assert after.proc is not None
    assert after.proc.wait(timeout=30) == 0, after.log()
    assert "chase support" in after.calls.read_text()


def test_sqlite_one_writer(
    daemon: Callable[..., DaemonProcess],
    imap_port: int,
    tmp_path: Path,
) -> None:
    refused_while_running_then_free_after_sigkill(daemon, imap_port, tmp_path, None)
    assert (tmp_path / "keepword.db.lock").exists()


def test_postgresql_one_writer(
    daemon: Callable[..., DaemonProcess],
    imap_port: int,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    refused_while_running_then_free_after_sigkill(daemon, imap_port, tmp_path, postgres_url)


def test_readers_need_no_lock(
    daemon: Callable[..., DaemonProcess],
    imap_port: int,
    tmp_path: Path,
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}))
    kw.start()
    kw.wait_notify(ready)
    kw.wait_call(r"^drain support")
    for command in (("status", "--json"), ("cases", "--json"), ("stats",)):
        result = run_keepword(kw.config, *command)
        assert result.returncode in (0, 1), (command, result.stderr)
        assert "another keepword" not in result.stderr
    code, _ = kw.stop(timeout=10)
    assert code == 0


def test_postgresql_restart_the_daemon_takes_its_lock_again(
    daemon: Callable[..., DaemonProcess],
    imap_port: int,
    tmp_path: Path,
    postgres: Postgres,
    postgres_url: str,
) -> None:
    """A server restart ends the lock's session; the daemon notices and takes it back."""
    kw = daemon()
    config = config_text(tmp_path, imap_port, {"support": 60}, database_url=postgres_url)
    kw.config.write_text(config)
    kw.start()
    kw.wait_notify(ready)
    postgres.restart()
    kw.wait_log(r"writer lock lost", timeout=30)
    kw.wait_log(r"writer lock taken again", timeout=30)
    second_writer_is_refused(kw, "run", "--once")
    code, _ = kw.stop(timeout=10)
    assert code == 0, kw.log()
