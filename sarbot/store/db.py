"""The state database: engine set-up, sessions and schema migrations."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from sarbot.errors import ConfigError
from sarbot.faults import CrashPoints


def make_engine(url: str) -> Engine:
    """An engine for the state database.  SQLite gets settings that survive a crash."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # sarbot issues BEGIN itself (below), so the driver must not.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    """Writers take turns from the start of a transaction, so none works on a stale snapshot."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def forget_cleared(engine: Engine) -> None:
    """Make cleared values unrecoverable from the database files.

    SQLite overwrites deleted content (``secure_delete``), but older versions of
    a page stay in the write-ahead log until a checkpoint; this one copies the
    current pages back and empties the log.  Other databases keep dead row
    versions until they vacuum; see docs/security.md.
    """
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()  # outside any transaction: the driver is in autocommit mode
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine, crash_points: CrashPoints | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(files("migrations")))
    config.attributes["engine"] = engine
    config.attributes["crash_points"] = crash_points or CrashPoints()
    return config


def upgrade(
    engine: Engine, revision: str = "head", *, crash_points: CrashPoints | None = None
) -> str | None:
    """Apply the migrations up to ``revision``.

    A schema already ahead of this code (another instance, upgraded first,
    migrated it) is left as it is when this code runs on it, and its revision
    is returned; when this code does not, ConfigError says to upgrade it.
    """
    if revision == "head":
        current = current_revision(engine)
        if current is not None and current not in known_revisions():
            return require_current_schema(engine)
    command.upgrade(_alembic_config(engine, crash_points), revision)
    return None


def head_revision() -> str | None:
    return ScriptDirectory.from_config(
        _alembic_config(create_engine("sqlite://"))
    ).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def known_revisions() -> set[str]:
    """Every revision this code's migrations know."""
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    return {revision.revision for revision in script.walk_revisions()}


def require_current_schema(engine: Engine) -> str | None:
    """Refuse to run against a schema this code cannot run on.

    A schema at this code's latest migration runs.  One behind it needs
    ``sarbot db upgrade``.  One ahead of it (another instance, upgraded first,
    migrated it) runs if its ``schema_compatibility`` row names a revision this
    code knows; its revision is returned then, for the caller to log.
    """
    current, head = current_revision(engine), head_revision()
    if current == head:
        return None
    known = known_revisions()
    if current is None or current in known:
        raise ConfigError(
            f"the state database is at revision {current or 'none'}, not {head}: "
            "run 'sarbot db upgrade' first"
        )
    oldest = _oldest_code(engine)
    if oldest is not None and oldest in known:
        return current
    raise ConfigError(
        f"the state database is at revision {current}, newer than this sarbot knows ({head}), "
        f"and needs code at {oldest or 'an unknown revision'} or later: upgrade this instance"
    )


def _oldest_code(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            found = connection.scalar(
                text("SELECT oldest_code FROM schema_compatibility WHERE id = 1")
            )
    except DBAPIError:
        return None
    return str(found) if found is not None else None
