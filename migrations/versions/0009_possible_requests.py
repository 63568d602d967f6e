"""possible requests: the words that made a mail look like one, and where the mailbox stood

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("recognised_by", sa.Text(), nullable=True))
    with op.batch_alter_table("mailbox_positions") as batch_op:
        # A folder sarbot already watched has no mail from before its start.
        batch_op.add_column(
            sa.Column("history_until_uid", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("mailbox_positions") as batch_op:
        batch_op.drop_column("history_until_uid")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("recognised_by")
