"""Instances: several `keepword run` on one PostgreSQL share the mailboxes by lease

- keepword_instance: every running instance and its heartbeat (for balancing and
  `keepword status`).
- mailbox_lease: which instance works each mailbox, until when, and the epoch that
  fences a holder that lost it (keepword.store.leases).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keepword_instance",
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_keepword_instance")),
    )
    op.create_table(
        "mailbox_lease",
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_mailbox_lease")),
    )


def downgrade() -> None:
    op.drop_table("mailbox_lease")
    op.drop_table("keepword_instance")
