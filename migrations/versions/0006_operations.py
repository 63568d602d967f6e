"""operations: deadlines, manual requests, operator mail, and purging the audit trail's oldest part

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sarbot.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APPEND_ONLY = "the audit trail is append-only"
ANCHORED = "COALESCE((SELECT MAX(last_id) FROM audit_anchors), 0)"


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(
            sa.Column("received_via", sa.String(length=16), nullable=False, server_default="email")
        )
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("due_on", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("extended_due_on", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("extension_reason", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_requests_due_on"), ["due_on"], unique=False)
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "audit_anchors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", sarbot.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_anchors")),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # Events up to the newest anchor may be purged; nothing else may ever be deleted.
        op.execute("DROP TRIGGER audit_events_no_delete")
        op.execute(
            f"CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"WHEN OLD.id > {ANCHORED} BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_anchors_no_{action.lower()} "
                f"BEFORE {action} ON audit_anchors BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'DELETE' AND OLD.id <= {ANCHORED} THEN RETURN OLD; END IF; "
            f"RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE FUNCTION audit_anchors_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_anchors_append_only BEFORE UPDATE OR DELETE ON audit_anchors "
            "FOR EACH ROW EXECUTE FUNCTION audit_anchors_append_only()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_anchors_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_anchors_no_delete")
        op.execute("DROP TRIGGER audit_events_no_delete")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_anchors_append_only ON audit_anchors")
        op.execute("DROP FUNCTION IF EXISTS audit_anchors_append_only()")
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
    op.drop_table("audit_anchors")
    with op.batch_alter_table("outgoing_mail") as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_due_on"))
        for name in ("extension_reason", "extended_due_on", "due_on", "note", "received_via"):
            batch_op.drop_column(name)
