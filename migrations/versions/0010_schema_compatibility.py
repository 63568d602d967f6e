"""schema compatibility: the oldest code that can run on the schema

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "schema_compatibility",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("oldest_code", sa.String(32), nullable=False),
    )
    # A new table: code at 0009 runs on this schema as it did before.
    op.bulk_insert(table, [{"id": 1, "oldest_code": "0009"}])


def downgrade() -> None:
    op.drop_table("schema_compatibility")
