"""store.checkpoints: SQLite's WAL copied into the database by a thread of its own."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from keepword.runtime.daemon import Daemon
from keepword.store.checkpoints import BackgroundCheckpoints
from keepword.store.db import open_store
from tests.unit.test_scheduler import write_config

MEBIBYTE = bytes(range(256)) * 4096
THREAD = "kw-wal-checkpoints"


def _write(engine: Engine, mebibytes: int) -> None:
    """`mebibytes` commits of 1 MiB each, as a writer of the store commits."""
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
        conn.commit()
        for _ in range(mebibytes):
            conn.exec_driver_sql("INSERT INTO filler VALUES (?)", (MEBIBYTE,))
            conn.commit()


def _database_bytes(tmp_path: Path) -> int:
    return (tmp_path / "kw.db").stat().st_size


def _running() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD]


def test_the_thread_copies_the_wal_into_the_database_while_a_writer_commits(
    tmp_path: Path,
) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with BackgroundCheckpoints(engine, every=0.02) as checkpoints:
        _write(engine, 12)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            _database_bytes(tmp_path) >= 12 * 1024 * 1024 and checkpoints.checkpoints
        ):  # the file grows while a checkpoint runs, which is counted once it returns
            time.sleep(0.02)
        assert _database_bytes(tmp_path) >= 12 * 1024 * 1024
        assert checkpoints.checkpoints > 0


def test_without_it_the_writers_leave_12_mib_in_the_wal(tmp_path: Path) -> None:
    """The control: what the test above finds copied, the thread copied."""
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    _write(engine, 12)
    time.sleep(0.1)
    assert _database_bytes(tmp_path) < 1024 * 1024


def test_stop_ends_the_thread_and_gives_its_connection_back(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    checkpoints = BackgroundCheckpoints(engine, every=0.01).start()
    deadline = time.monotonic() + 10
    while checkpoints.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _running() and engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    checkpoints.stop()
    assert not _running()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_store_nobody_writes_to_is_looked_at_less_and_less_often(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with BackgroundCheckpoints(engine, every=0.01, idle_every=1.0) as checkpoints:
        time.sleep(1.0)
        idle = checkpoints.checkpoints
        _write(engine, 1)  # somebody writes: the next tick copies it, then 0.01 s again
        seen = checkpoints.checkpoints + 1
        deadline = time.monotonic() + 10
        while checkpoints.checkpoints < seen and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(1.0)
        after = checkpoints.checkpoints - seen
    assert idle <= 12  # 0.01, 0.02, ... 0.64 s: 6 or 7 (at a fixed 0.01 s: ~100)
    assert after >= 4  # 0.01, 0.02, 0.04, 0.08 s ... (at idle's 1 s: 1, at most 2)


class _FailingAtFirst(BackgroundCheckpoints):
    """Its first three checkpoints fail (a disk error, a bug): the thread goes on."""

    failures = 0

    def _checkpoint(self, sqlite: Any) -> tuple[int, ...]:
        if self.failures < 3:
            self.failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return super()._checkpoint(sqlite)


def test_a_failing_checkpoint_is_tried_again(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/kw.db")
    with _FailingAtFirst(engine, every=0.01, idle_every=0.05) as checkpoints:
        deadline = time.monotonic() + 10
        while checkpoints.checkpoints < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert checkpoints.failures == 3 and checkpoints.checkpoints >= 2
        assert _running()


def test_a_store_without_a_wal_file_gets_no_thread() -> None:
    for engine in (
        create_engine("sqlite://"),
        create_engine("postgresql+psycopg://keepword@127.0.0.1:9/keepword"),  # never connected
    ):
        assert not BackgroundCheckpoints.wanted(engine)
        with BackgroundCheckpoints(engine):
            assert not _running()


def test_the_daemon_checkpoints_from_its_start_to_its_release(tmp_path: Path) -> None:
    daemon = Daemon(write_config(tmp_path, {"shop": 60}))
    daemon._start()
    try:
        assert len(_running()) == 1
    finally:
        daemon._release()
    assert not _running()
