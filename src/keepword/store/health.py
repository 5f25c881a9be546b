"""Can `keepword run` use this store? Connect, schema revision, write permission.

For `keepword check`: it looks without changing anything (no file created, no
migration run), so a check on a fresh machine leaves no root-owned database behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from keepword.store.db import head_revision, known_revisions, make_engine, stored_revision
from keepword.store.lock import sqlite_path


@dataclass(frozen=True)
class StoreHealth:
    ok: bool
    detail: str


def _writable_dir(directory: Path) -> Path | None:
    """The first existing ancestor of directory if it is writable (mkdir -p works), else None."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe if os.access(probe, os.W_OK | os.X_OK) else None


def check_store(url: str) -> StoreHealth:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        if _writable_dir(path.parent) is None:
            return StoreHealth(False, f"{path} cannot be created: {path.parent} is not writable")
        return StoreHealth(True, f"{path} does not exist yet: created at the first `keepword run`")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = stored_revision(conn)
            writable = _can_write(conn, path, has_schema=current is not None)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return StoreHealth(False, f"cannot connect: {reason[0] if reason else type(exc).__name__}")
    finally:
        engine.dispose()
    return _verdict(current, writable)


def _verdict(current: str | None, writable: str | None) -> StoreHealth:
    head = head_revision()
    if current is not None and current not in known_revisions():
        return StoreHealth(
            False, f"schema {current} is newer than this keepword knows ({head}): upgrade keepword"
        )
    if writable is not None:
        return StoreHealth(False, f"connected, but not writable: {writable}")
    if current == head:
        return StoreHealth(True, f"connected; schema up to date ({head}); writable")
    return StoreHealth(
        True, f"connected; schema {current or 'empty'}, migrated to {head} at the next start; "
        "writable",
    )  # fmt: skip


def _can_write(conn: Connection, path: Path | None, *, has_schema: bool) -> str | None:
    """None if keepword may write here, else why not."""
    if path is not None:
        for needed in (path, path.parent):  # WAL needs the directory too
            if not os.access(needed, os.W_OK):
                return f"{needed} is read-only for this user"
        return None
    if make_url(str(conn.engine.url)).get_backend_name() != "postgresql":
        return None
    if has_schema:
        query = "SELECT has_table_privilege('message', 'INSERT, UPDATE, DELETE')"
        what = "no INSERT/UPDATE/DELETE on keepword's tables"
    else:
        query = "SELECT has_schema_privilege(current_schema(), 'CREATE')"
        what = "no CREATE in the schema (keepword creates its tables at the first start)"
    return None if conn.execute(text(query)).scalar() else what
