"""Staff away: absences recorded from team members' own out-of-office auto-replies

- staff_away: who is away from which day until which first day back (issue 12:
  owners), so new cases skip them, their open cases move and the predictor counts
  only the staff on duty.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff_away",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("back_on", sa.Date(), nullable=False),
        sa.Column("why", sa.Text(), nullable=True),
        sa.Column("until_they_write", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("message_pk", sa.Integer(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_pk"], ["message.id"], name=op.f("fk_staff_away_message_pk_message")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_away")),
        sa.UniqueConstraint(
            "mailbox", "address", "start", name="uq_staff_away_mailbox_address_start"
        ),
    )
    op.create_index(
        "ix_staff_away_mailbox_back_on", "staff_away", ["mailbox", "back_on"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_staff_away_mailbox_back_on", table_name="staff_away")
    op.drop_table("staff_away")
