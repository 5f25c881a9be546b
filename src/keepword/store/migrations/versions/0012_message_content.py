"""A message's bytes and text in a table of their own (issue 14)

- message_content (message_pk, raw, body_text): the mail, written once, never updated.
- message loses raw and body_text.

Triage updates every message row once (its kind, case, triaged_at). SQLite rewrites a
whole row on any UPDATE, so with the mail in the row (~28 KB a message) triaging a
20,000-message history rewrote 550 MB through the WAL, and every question about the
untriaged mail (which comes next, which failed) walked each row's overflow pages to
reach the columns behind the mail: 43 ms a question at 20,000. PostgreSQL keeps large
values apart already (TOAST) and gains little, but has one schema.

The upgrade copies every stored mail once: allow free disk space about the size of the
database. SQLite keeps the freed pages for the mail that comes next (`VACUUM` returns
them to the file system, if wanted). The downgrade puts the mail back into the row
(`raw` nullable then: SQLite adds no NOT NULL column without a default).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

MOVED = ("raw", "body_text")


def upgrade() -> None:
    op.create_table(
        "message_content",
        sa.Column("message_pk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_pk"], ["message.id"], name=op.f("fk_message_content_message_pk_message")
        ),
        sa.PrimaryKeyConstraint("message_pk", name=op.f("pk_message_content")),
    )
    _compress_with_lz4()
    op.execute(
        "INSERT INTO message_content (message_pk, raw, body_text)"
        " SELECT id, raw, body_text FROM message ORDER BY id"
    )
    for column in MOVED:  # native on SQLite 3.35+ and PostgreSQL: no table rebuild
        op.execute(f'ALTER TABLE message DROP COLUMN "{column}"')


def downgrade() -> None:
    op.add_column("message", sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.add_column("message", sa.Column("body_text", sa.Text(), nullable=True))
    op.execute(
        "UPDATE message SET"
        " raw = (SELECT raw FROM message_content WHERE message_pk = message.id),"
        " body_text = (SELECT body_text FROM message_content WHERE message_pk = message.id)"
    )
    op.drop_table("message_content")


def _compress_with_lz4() -> None:
    """As migration 0009 set for the columns the mail came from."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    offered = bind.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    if offered is not None and "lz4" in offered:
        for column in MOVED:
            op.execute(f'ALTER TABLE message_content ALTER COLUMN "{column}" SET COMPRESSION lz4')
