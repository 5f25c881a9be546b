"""case.prefix with an index on (prefix, number); an index on (mailbox, subject_key)

Mailboxes that share a reference prefix share its numbers; finding the next number
must be an index lookup, not a scan of every reference. The subject rule's lookup
(same correspondent, same subject key) scanned every case of the mailbox without
its own index: 2.4 ms a message at 15k cases and growing (bench/triage.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("prefix", sa.String(length=10), nullable=False, server_default="")
        )
        batch_op.create_index("ix_case_prefix_number", ["prefix", "number"], unique=False)
        batch_op.create_index("ix_case_mailbox_subject", ["mailbox", "subject_key"], unique=False)
    # References are PREFIX-NUMBER (domain.cases.format_reference): the prefix is the
    # part before the last "-". Done in Python, the same on every backend.
    case = sa.table(
        "case", sa.column("id", sa.Integer), sa.column("reference"), sa.column("prefix")
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(case.c.id, case.c.reference)).all()
    if rows:
        bind.execute(
            case.update()
            .where(case.c.id == sa.bindparam("case_id"))
            .values(prefix=sa.bindparam("new_prefix")),
            [{"case_id": i, "new_prefix": ref.rpartition("-")[0]} for i, ref in rows],
        )


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_index("ix_case_mailbox_subject")
        batch_op.drop_index("ix_case_prefix_number")
        batch_op.drop_column("prefix")
