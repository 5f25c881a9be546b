"""Engine creation (SQLite in WAL mode by default) and schema migration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from keepword.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, make the directory and turn on WAL + foreign keys."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # A server restart kills every pooled connection: test each one before use, so the
    # next job reconnects instead of failing (SQLite has no server to lose).
    # hide_parameters: a failed statement's error names the SQL, never the values bound
    # to it. They are customers' mail (a batch of 500 bodies once filled a warning line).
    engine = create_engine(
        url, future=True, pool_pre_ping=not url.startswith("sqlite"), hide_parameters=True
    )
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# SQLite copies the WAL into the database (a checkpoint, with two fsyncs) whenever a
# commit leaves it over 1,000 pages (4 MiB). A first import writes the mail through the
# WAL, and triage then rewrites many of the same pages (the message rows just stored,
# the indexes, the cases): every 64 MiB instead, a page rewritten meanwhile is copied
# once, and a 20,000-mail history gets into cases ~4% sooner (docs/benchmarks.md,
# twenty-eighth wave). The WAL file is cut back to the same size after a checkpoint.
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI read while the daemon writes; busy_timeout rides out short locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
    cursor.close()


def concurrent_writers(engine: Engine) -> bool:
    """Whether two connections' write transactions run side by side (SQLite has one
    writer: a second waits for the first's commit)."""
    return engine.dialect.name != "sqlite"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction that savepoints (`conn.begin_nested()`) work in; committed
    when the block ends, rolled back if it raises.

    pysqlite's own transaction handling emits BEGIN only before the first INSERT/UPDATE
    and so breaks SAVEPOINT (SQLAlchemy's documented caveat): on SQLite this connection
    runs in the driver's autocommit mode and the transaction is begun here, IMMEDIATE -
    the write lock is taken at once (waiting out busy_timeout like any write), so what
    the block reads cannot go stale before it writes. The pool restores the driver's mode
    when the connection goes back.
    """
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                yield conn
            return
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision`, the newest by default (idempotent).

    A store already at the newest revision is told by one query, without alembic: every
    command and every start opens the store, and importing alembic and reading its
    scripts cost ~0.15 s of each."""
    if revision == "head" and _at_head(engine):
        return
    from alembic import command

    try:
        command.upgrade(_alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate database {engine.url!r}: {exc}") from exc


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return stored_revision(conn) == head_revision()
    except SQLAlchemyError:  # alembic meets it again, and says what it is
        return False


def known_revisions() -> frozenset[str]:
    """Every migration's revision: each one's file is named after its revision
    (`0012_message_content.py`), which a test holds to alembic's own idea of them."""
    return frozenset(
        path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py")
    )


def head_revision() -> str:
    """The newest migration's revision (`known_revisions`)."""
    return max(known_revisions())


def stored_revision(conn: Connection) -> str | None:
    """The revision the store's schema is at; None for a store without one (new). A
    store that cannot be read raises, as any query."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return str(found[0]) if len(found) == 1 else None


def open_store(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())
