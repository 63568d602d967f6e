"""audit chain: hash-chained, append-only audit events

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
APPEND_ONLY = "the audit trail is append-only"


def _hash(row: sa.Row[tuple[object, ...]], prev_hash: str) -> str:
    # The same content, in the same order, as sarbot.store.audit.event_hash.
    # Stored as naive UTC (SQLite gives text back); sarbot reads it timezone-aware.
    moment = row.at if isinstance(row.at, datetime) else datetime.fromisoformat(str(row.at))
    at = moment.replace(tzinfo=UTC).isoformat()
    content = [
        row.id,
        row.request_id,
        at,
        row.event,
        row.from_state,
        row.to_state,
        row.reason,
        row.actor,
        prev_hash,
    ]
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    events = sa.table(
        "audit_events",
        *(
            sa.column(n)
            for n in (
                "id",
                "request_id",
                "at",
                "event",
                "from_state",
                "to_state",
                "reason",
                "actor",
                "prev_hash",
                "hash",
            )
        ),
    )
    prev_hash, last_id = GENESIS, None
    for row in connection.execute(sa.select(events).order_by(events.c.id)).all():
        digest = _hash(row, prev_hash)
        connection.execute(
            events.update().where(events.c.id == row.id).values(prev_hash=prev_hash, hash=digest)
        )
        prev_hash, last_id = digest, row.id
    if last_id is not None:
        head = sa.table("audit_head", sa.column("id"), sa.column("last_id"), sa.column("hash"))
        connection.execute(head.insert().values(id=1, last_id=last_id, hash=prev_hash))
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_audit_events_hash"), ["hash"])
    if connection.dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
    elif connection.dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    elif connection.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_events_hash"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
    op.drop_table("audit_head")
