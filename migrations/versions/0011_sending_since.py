"""messages being handed to SMTP: when the handing over began

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sarbot.store.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new nullable column: code at 0009 runs on this schema as it did before
    # (it neither reads nor writes the column), so oldest_code stays.
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.add_column(
            sa.Column("sending_since", sarbot.store.models.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.drop_column("sending_since")
