"""export parts and encryption: a file per outgoing message, the requester's OpenPGP key

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("export_path")
        batch_op.add_column(sa.Column("pgp_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("encryption_note", sa.Text(), nullable=True))
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.add_column(sa.Column("file_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.drop_column("file_path")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("encryption_note")
        batch_op.drop_column("pgp_key")
        batch_op.add_column(sa.Column("export_path", sa.Text(), nullable=True))
