"""Reliability: triage retry state, the first import's cutoff, job runs, done-folder index

- message.triage_attempts / triage_retry_at / triage_error: a triage that fails for a
  reason other than the mail itself is retried with backoff instead of quarantined.
- folder_state.history_below_uid: the first import's cutoff (UIDNEXT when keepword
  first met the folder), recorded before that import starts, so a crash during it does
  not turn mail that arrived meanwhile into history.
- job_run: when each job of each mailbox last ran, for `status` and overdue warnings.
- ix_message_location_role: the done-folder scan of every poll reads only its rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("triage_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("triage_retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("triage_error", sa.Text(), nullable=True))
    with op.batch_alter_table("folder_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("history_below_uid", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("message_location", schema=None) as batch_op:
        batch_op.create_index(
            "ix_message_location_role", ["mailbox", "role", "handled_at"], unique=False
        )
    op.create_table(
        "job_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("job", sa.String(length=20), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mailbox", "job", name="uq_job_run_mailbox_job"),
    )


def downgrade() -> None:
    op.drop_table("job_run")
    with op.batch_alter_table("message_location", schema=None) as batch_op:
        batch_op.drop_index("ix_message_location_role")
    with op.batch_alter_table("folder_state", schema=None) as batch_op:
        batch_op.drop_column("history_below_uid")
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("triage_error")
        batch_op.drop_column("triage_retry_at")
        batch_op.drop_column("triage_attempts")
