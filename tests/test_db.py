"""The state database: migrations agree with the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select, text

from sarbot import db
from sarbot.errors import ConfigError
from sarbot.models import Base, Request
from sarbot.states import RequestState
from tests.servers import postgres_server


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def assert_schema_matches_models(engine: Engine) -> None:
    db.upgrade(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert db.current_revision(engine) == db.head_revision()


def round_trip(engine: Engine) -> None:
    received = datetime(2026, 1, 30, 23, 59, tzinfo=UTC)
    with db.session_factory(engine).begin() as session:
        session.add(
            Request(
                reference="SAR-2026-0001",
                email="alice@example.test",
                state=RequestState.RECEIVED,
                attempts=0,
                token_hash="0" * 64,
                code_hash="1" * 64,
                confirmation_failures=0,
                thread="",
                received_at=received,
                expires_at=received + timedelta(days=14),
            )
        )
    with db.session_factory(engine)() as session:
        request = session.scalar(select(Request))
        assert request is not None
        assert request.state is RequestState.RECEIVED
        assert request.received_at == received
        assert request.received_at.tzinfo is not None


class TestSqlite:
    def test_migrations_match_models(self, tmp_path: Path) -> None:
        """Upgrading an empty SQLite database gives exactly the models' schema."""
        assert_schema_matches_models(db.make_engine(f"sqlite:///{tmp_path / 'state.db'}"))

    def test_crash_safe_settings(self, tmp_path: Path) -> None:
        """SQLite runs in WAL mode with full synchronous writes."""
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        with engine.connect() as connection:
            assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert connection.scalar(text("PRAGMA synchronous")) == 2

    def test_values_round_trip(self, tmp_path: Path) -> None:
        """States and timezone-aware timestamps come back as they went in."""
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        db.upgrade(engine)
        round_trip(engine)

    def test_running_needs_a_current_schema(self, tmp_path: Path) -> None:
        """The daemon refuses an unmigrated database with a hint."""
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        with pytest.raises(ConfigError, match="run 'sarbot db upgrade' first"):
            db.require_current_schema(engine)
        db.upgrade(engine)
        db.require_current_schema(engine)


class TestPostgres:
    def test_migrations_match_models(self, postgres_url: str) -> None:
        """The same migrations give the models' schema on a real PostgreSQL server."""
        engine = db.make_engine(postgres_url)
        assert_schema_matches_models(engine)
        round_trip(engine)
        engine.dispose()
