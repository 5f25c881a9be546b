"""Addresses the relay refused for good

- address_refusal: a customer address the relay refused (5xx to RCPT TO), with the
  refused mail and the reply, so automatic mail to it stops until it writes again and
  the case's team is told (domain.reachability).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "address_refusal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"], name=op.f("fk_address_refusal_outbox_id_outbox")
        ),
        sa.ForeignKeyConstraint(
            ["case_id"], ["case.id"], name=op.f("fk_address_refusal_case_id_case")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_address_refusal")),
        sa.UniqueConstraint("outbox_id", "address", name="uq_address_refusal_outbox_id_address"),
    )
    op.create_index(
        "ix_address_refusal_mailbox_address",
        "address_refusal",
        ["mailbox", "address"],
        unique=False,
    )
    op.create_index("ix_address_refusal_case_id", "address_refusal", ["case_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_address_refusal_case_id", table_name="address_refusal")
    op.drop_index("ix_address_refusal_mailbox_address", table_name="address_refusal")
    op.drop_table("address_refusal")
