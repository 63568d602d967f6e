"""The state database: migrations agree with the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select, text

from sarbot.errors import ConfigError
from sarbot.store import db
from sarbot.store.audit import verify
from sarbot.store.lifecycle import audit
from sarbot.store.models import Base, Request
from sarbot.store.states import RequestState
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
                reference="SAR-2026-48213907",
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

    def test_an_instance_runs_on_a_newer_schema_it_survives(self, tmp_path: Path) -> None:
        """Upgrading one instance at a time: the old code runs on a schema migrated ahead of it
        while the new schema says old code survives it, and is refused once it does not."""
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        db.upgrade(engine)
        assert db.require_current_schema(engine) is None
        head = db.head_revision()
        with engine.begin() as connection:  # as a later release's additive migration leaves it
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9001'")
        assert db.require_current_schema(engine) == "9001"
        # the old instance's service runs 'sarbot db upgrade' before it starts: left as it is
        assert db.upgrade(engine) == "9001"
        assert db.current_revision(engine) == "9001"
        with engine.begin() as connection:  # a later migration that drops what this code reads
            connection.exec_driver_sql("UPDATE schema_compatibility SET oldest_code = '9001'")
        with pytest.raises(ConfigError, match=f"newer than this sarbot knows \\({head}\\)"):
            db.require_current_schema(engine)
        with pytest.raises(ConfigError, match="upgrade this instance"):
            db.upgrade(engine)
        assert db.current_revision(engine) == "9001"


class TestPostgres:
    def test_migrations_match_models(self, postgres_url: str) -> None:
        """The same migrations give the models' schema on a real PostgreSQL server."""
        engine = db.make_engine(postgres_url)
        assert_schema_matches_models(engine)
        round_trip(engine)
        engine.dispose()


class TestAuditChain:
    def engine(self, tmp_path: Path) -> Engine:
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        db.upgrade(engine)
        return engine

    def add_events(self, engine: Engine, count: int) -> None:
        with db.session_factory(engine).begin() as session:
            for n in range(count):
                audit(session, None, f"test.{n}", at=datetime(2026, 1, 1, tzinfo=UTC), reason="x")

    def test_events_form_an_intact_chain(self, tmp_path: Path) -> None:
        """Events written through sarbot verify, each linked to the one before."""
        engine = self.engine(tmp_path)
        self.add_events(engine, 5)
        with db.session_factory(engine)() as session:
            result = verify(session)
        assert (result.intact, result.events) == (True, 5)

    def test_the_table_refuses_updates_and_deletes(self, tmp_path: Path) -> None:
        """The database itself refuses to change or remove an event."""
        engine = self.engine(tmp_path)
        self.add_events(engine, 1)
        for sql in ("UPDATE audit_events SET reason = 'y'", "DELETE FROM audit_events"):
            with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
                connection.exec_driver_sql(sql)

    @pytest.mark.parametrize(
        ("tamper", "broken_at"),
        [
            ("UPDATE audit_events SET reason = 'nothing happened' WHERE id = 3", 3),
            ("DELETE FROM audit_events WHERE id = 2", 3),
            ("UPDATE audit_events SET at = '2025-01-01 00:00:00' WHERE id = 4", 4),
            ("DELETE FROM audit_events WHERE id = 5", 4),
        ],
    )
    def test_an_edit_behind_the_triggers_breaks_the_chain(
        self, tmp_path: Path, tamper: str, broken_at: int
    ) -> None:
        """Someone who drops the triggers and edits a row is caught at that row."""
        engine = self.engine(tmp_path)
        self.add_events(engine, 5)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER audit_events_no_update")
            connection.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
            connection.exec_driver_sql(tamper)
        with db.session_factory(engine)() as session:
            result = verify(session)
        assert not result.intact
        assert result.broken_at == broken_at

    def test_existing_events_are_chained_by_the_migration(self, tmp_path: Path) -> None:
        """A database from before the chain gets its old events chained on upgrade."""
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        db.upgrade(engine, "0003")
        with engine.begin() as connection:
            for n in range(3):
                connection.execute(
                    text(
                        "INSERT INTO audit_events (at, event, reason, actor) "
                        "VALUES (:at, :event, 'r', 'daemon')"
                    ),
                    {"at": f"2026-01-0{n + 1} 10:00:00.000001", "event": f"old.{n}"},
                )
        db.upgrade(engine)
        self.add_events(engine, 2)
        with db.session_factory(engine)() as session:
            result = verify(session)
        assert (result.intact, result.events) == (True, 5)


class TestPostgresAuditChain:
    def test_the_trail_is_append_only_on_postgresql(self, postgres_url: str) -> None:
        """PostgreSQL refuses changes to the trail too, and the chain verifies."""
        engine = db.make_engine(postgres_url)
        db.upgrade(engine)
        with db.session_factory(engine).begin() as session:
            audit(session, None, "pg.test", at=datetime(2026, 1, 1, tzinfo=UTC))
        with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
            connection.exec_driver_sql("UPDATE audit_events SET reason = 'y'")
        with db.session_factory(engine)() as session:
            assert verify(session).intact
        engine.dispose()
