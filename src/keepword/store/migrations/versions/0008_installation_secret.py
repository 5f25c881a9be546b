"""The installation secret: the key of keepword's outgoing Message-IDs (issue 12)

- installation_secret: one row (id 1) with 32 random bytes, made by this migration.
  domain.message_ids keys every outgoing Message-ID with it, so nobody outside can
  compute the id of another case's mail. Rows already in the outbox keep their ids.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 11:00:00
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "installation_secret",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation_secret")),
    )
    op.bulk_insert(
        table,
        [{"id": 1, "secret": secrets.token_bytes(32), "created_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_table("installation_secret")
