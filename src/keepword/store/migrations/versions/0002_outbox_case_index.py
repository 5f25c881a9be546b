"""index outbox.case_id

`keepword case KW-42` and the chase look up a case's outgoing mail by case_id; without
the index that is a scan of the whole outbox, which only grows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_case_id", ["case_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_case_id")
