"""Exactly one writer per store: a lock that dies with the process that holds it.

SQLite: `fcntl.flock` on "<database>.lock" beside the database file, with the holder's
pid written into it. PostgreSQL: a session-level `pg_try_advisory_lock` on a dedicated
connection kept open for the life of the process, named by its `application_name`.
On PostgreSQL the daemon (`keepword run`) takes the lock *shared*: any number of
instances run side by side and share the mailboxes by lease (keepword.store.leases),
while `run --once` and `import`, which work every mailbox without leases, still take it
exclusively and are refused while any instance runs (and the other way round).
Either way the kernel or the server drops the lock when the process dies, SIGKILL
included, so there is no stale lock to clean up by hand, and a second writer (`run`,
`run --once`, `import`) is refused at once instead of sending duplicates.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from keepword.errors import StoreBusyError, StoreError

# pg_try_advisory_lock(bigint): below 2**31, so pg_locks shows it as classid 0, objid KEY.
ADVISORY_KEY: Final = 0x6B77_7772  # "kwwr"
APPLICATION_PREFIX: Final = "keepword writer"

WHAT_TO_DO: Final = (
    "stop it first (systemctl stop keepword), or leave the running service to do the "
    "work: it polls, chases and sends on its own, and `keepword status` shows it"
)


class WriterLock(Protocol):
    def acquire(self) -> None: ...

    def alive(self) -> bool: ...

    def release(self) -> None: ...

    def describe(self) -> str: ...


def busy(holder: str, store: str) -> StoreBusyError:
    return StoreBusyError(f"another keepword ({holder}) writes this store ({store}); {WHAT_TO_DO}")


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory databases and other backends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


class FileLock:
    """flock on "<db>.lock"; the file stays (an empty lock file is harmless), the lock not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StoreError(f"cannot open the writer lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise busy(holder, str(self.path.with_suffix(""))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def alive(self) -> bool:
        return self._fd is not None  # a flock is only lost with its descriptor

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def describe(self) -> str:
        return f"flock {self.path}"


def _read_holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


class AdvisoryLock:
    """pg_try_advisory_lock on its own connection, held until release or process death."""

    def __init__(self, url: str, *, shared: bool = False) -> None:
        self.url = url
        self.shared = shared
        self.name = f"{APPLICATION_PREFIX} pid {os.getpid()} on {socket.gethostname()}"[:63]
        self._engine = create_engine(
            url, poolclass=NullPool, connect_args={"application_name": self.name}
        )
        self._conn: Connection | None = None

    def acquire(self) -> None:
        store = make_url(self.url).render_as_string(hide_password=True)
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the database {store}: {_first_line(exc)}") from exc
        try:
            function = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
            taken = conn.execute(text(f"SELECT {function}(:k)"), {"k": ADVISORY_KEY})
            if not taken.scalar():
                holder = _advisory_holder(conn)
                conn.close()
                raise busy(holder, store)
        except SQLAlchemyError as exc:
            conn.close()
            raise StoreError(f"cannot take the writer lock in {store}: {_first_line(exc)}") from exc
        self._conn = conn

    def alive(self) -> bool:
        """Is the connection (and with it the lock) still there? A server restart ends both."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()  # ends the session: the server drops the lock
            self._conn = None
        self._engine.dispose()

    def describe(self) -> str:
        mode = "shared " if self.shared else ""
        return f"PostgreSQL {mode}advisory lock {ADVISORY_KEY} ({self.name})"


def _advisory_holder(conn: Connection) -> str:
    row = conn.execute(
        text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
            "AND l.objid = :k AND l.objsubid = 1"
        ),
        {"k": ADVISORY_KEY},
    ).first()
    if row is None:
        return "pid unknown"
    name = str(row.application_name or "")
    found = name.removeprefix(APPLICATION_PREFIX).strip() if name else ""
    return found or f"a client at {row.client_addr}"


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


class NoLock:
    """In-memory SQLite: nobody else can see the store."""

    def acquire(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def describe(self) -> str:
        return "none (in-memory store)"


def leased(url: str) -> bool:
    """Does `keepword run` on this store share the mailboxes by lease (PostgreSQL)?"""
    return make_url(url).get_backend_name() == "postgresql"


def acquire_writer_lock(url: str, *, shared: bool = False) -> WriterLock:
    """Take the store's writer lock or raise StoreBusyError naming the holder.

    `shared` (PostgreSQL only: the leased daemon) admits other shared holders; SQLite
    has one writer whatever is asked.
    """
    if leased(url):
        lock: AdvisoryLock | FileLock = AdvisoryLock(url, shared=shared)
    else:
        path = sqlite_path(url)
        if path is None:
            return NoLock()
        lock = FileLock(path.with_name(path.name + ".lock"))
    lock.acquire()
    return lock


MIGRATION_KEY: Final = 0x6B77_6D67  # "kwmg"


@contextlib.contextmanager
def migrations_serialized(url: str) -> Iterator[None]:
    """Instances starting together on one PostgreSQL migrate one after the other.

    A blocking session-level advisory lock on its own connection: the first instance
    migrates, the others wait and then find nothing left to do. SQLite has one writer.
    """
    if not leased(url):
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    store = make_url(url).render_as_string(hide_password=True)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot reach the database {store}: {_first_line(exc)}") from exc
    try:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_KEY})
        yield
    finally:
        with contextlib.suppress(SQLAlchemyError):
            conn.close()  # ends the session, and with it the lock
        engine.dispose()
