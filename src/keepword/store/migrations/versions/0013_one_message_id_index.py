"""One index for a message's Message-ID

- ix_message_mailbox_message_id (mailbox, message_id) goes: the unique identity index
  (mailbox, message_id, content_digest) begins with the same columns and serves every
  lookup by Message-ID (the store's duplicate check, the mail triage finds referenced),
  on SQLite and PostgreSQL alike. Each stored message updated both.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_message_mailbox_message_id", table_name="message")


def downgrade() -> None:
    op.create_index(
        "ix_message_mailbox_message_id", "message", ["mailbox", "message_id"], unique=False
    )
