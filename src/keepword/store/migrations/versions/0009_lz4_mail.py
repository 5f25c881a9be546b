"""Mail compressed with lz4 on PostgreSQL (issue 14)

PostgreSQL compresses large values (TOAST) with pglz unless told otherwise; importing a
history spent more of its time compressing mail than writing it: 6,000 messages stored
in 4.5 s with pglz, 2.0 s with lz4 (PostgreSQL 15 on this machine). Needs PostgreSQL 14
built with lz4 (Debian's is); any other server keeps pglz. The method is per value:
mail stored before stays readable as it is. SQLite: nothing to do.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 20:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The columns that hold a mail or most of one.
LARGE = {"message": ("raw", "body_text", "headers"), "outbox": ("raw",)}


def upgrade() -> None:
    _compress_with("lz4")


def downgrade() -> None:
    _compress_with("default")


def _compress_with(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not _has_lz4(bind):
        return
    for table, columns in LARGE.items():
        for column in columns:
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION {method}')


def _has_lz4(bind: sa.Connection) -> bool:
    """PostgreSQL 14 or later, built with lz4: it offers lz4 as a TOAST compression."""
    offered = bind.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return offered is not None and "lz4" in offered
