"""An index on the outbox's Sent copy state

- ix_outbox_mailbox_sent_copy: the drains ask every few seconds for sent mail whose copy
  failed or was put off by a surge (store.outbox.copies_due, copies_deferred); without
  it each question read every sent row of the store (46 ms at 20,000, 193 ms at 100,000
  on SQLite), an idle cost that grew with the years.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_mailbox_sent_copy", "outbox", ["mailbox", "sent_copy"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_mailbox_sent_copy", table_name="outbox")
