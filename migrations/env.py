"""Alembic environment: the engine is handed over by ``sarbot.store.db.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from sarbot.faults import CrashPoints
from sarbot.store.models import Base

engine = context.config.attributes.get("engine")
crash_points = context.config.attributes.get("crash_points") or CrashPoints()
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through 'sarbot db upgrade'")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        on_version_apply=lambda ctx, step, heads, run_args: crash_points.point("migration"),
    )
    context.run_migrations()
