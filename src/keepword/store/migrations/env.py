"""Alembic environment: runs on the engine keepword hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from keepword.store.db import write_transaction
from keepword.store.tables import metadata

engine = context.config.attributes["engine"]

# One real transaction for the whole upgrade, DDL included. pysqlite's own transaction
# handling begins only before DML, so a CREATE TABLE would commit on its own: a stop
# during a migration's copy then left its new table behind, and every later start
# failed on "table already exists". write_transaction begins explicitly on SQLite.
with write_transaction(engine) as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
