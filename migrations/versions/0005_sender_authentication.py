"""sender authentication: the evidence, whether it authenticated, why a request waits for review

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("authentication", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("authenticated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("review_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("review_reason")
        batch_op.drop_column("authenticated")
        batch_op.drop_column("authentication")
