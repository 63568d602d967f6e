"""The connector contract, the registry, and the built-in ``sql`` connector."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel

from connectors.sql import SqlConnector, SqlSettings
from sarbot.config import ConnectorEntry, Section, validate
from sarbot.connector import ENTRY_POINT_GROUP, Connector, Identity, Record
from sarbot.errors import ConfigError
from sarbot.registry import build_connectors, discover_types


@pytest.fixture
def website(tmp_path: Path) -> str:
    path = tmp_path / "site.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE c (who TEXT, email TEXT, posted TIMESTAMP, blob BLOB)")
        conn.executemany(
            "INSERT INTO c VALUES (?, ?, ?, ?)",
            [
                ("Alice", "alice@example.test", "2026-01-02 03:04:05", b"\x00\x01"),
                ("Alice again", "Alice@Example.Test", None, None),
                ("Bob", "bob@example.test", None, None),
                ("Robert'); DROP TABLE c;--", "alice@example.test' or '1'='1", None, None),
            ],
        )
    return f"sqlite:///{path}"


def sql_connector(
    url: str, sql: str = "SELECT who, posted, blob FROM c WHERE lower(email) = :email"
) -> SqlConnector:
    settings = validate(
        {"url": url, "queries": [{"name": "comments", "category": "Comment", "sql": sql}]},
        SqlSettings,
        source="test",
        base_dir=Path("."),
    )
    return SqlConnector("website", settings)


class TestSqlConnector:
    def test_finds_only_the_identity(self, website: str) -> None:
        """Rows bound to the address are returned, with provenance; others are not."""
        connector = sql_connector(website)
        records = list(connector.collect(Identity.verified("alice@example.test")))
        connector.close()
        assert [r.fields["who"] for r in records] == ["Alice", "Alice again"]
        assert records[0].fields["blob"] == "<2 bytes of binary data>"
        assert records[0].found_by.describe() == "email alice@example.test"
        assert records[0].location == "query 'comments'"
        assert isinstance(connector, Connector)

    def test_identity_is_bound_not_interpolated(self, website: str) -> None:
        """A hostile identifier value is a value, never SQL."""
        connector = sql_connector(website)
        records = list(connector.collect(Identity.verified("alice@example.test' or '1'='1")))
        assert [r.fields["who"] for r in records] == ["Robert'); DROP TABLE c;--"]
        assert len(list(connector.collect(Identity.verified("bob@example.test")))) == 1

    def test_sqlite_is_opened_read_only(self, website: str) -> None:
        """A query cannot change the website's database."""
        connector = sql_connector(
            website, "WITH x AS (SELECT 1) SELECT * FROM c WHERE email = :email"
        )
        with connector.engine.connect() as connection, pytest.raises(Exception, match="readonly"):
            connection.exec_driver_sql("DELETE FROM c")

    @pytest.mark.parametrize(
        ("sql", "message"),
        [
            ("DELETE FROM c WHERE email = :email", "must be a SELECT"),
            ("SELECT * FROM c", "must bind exactly :email"),
            ("SELECT * FROM c WHERE email = :email OR who = :who", "must bind exactly :email"),
        ],
    )
    def test_queries_are_checked_at_start_up(self, website: str, sql: str, message: str) -> None:
        """Only SELECTs that bind exactly the identifier are accepted."""
        with pytest.raises(ConfigError, match=message):
            sql_connector(website, sql)


class FakeSettings(Section):
    answer: str = "42"


class FakeConnector:
    """A third-party connector type, registered by a fixture instead of an entry point."""

    Settings: ClassVar[type[BaseModel]] = FakeSettings

    def __init__(self, name: str, settings: FakeSettings) -> None:
        self.name = name
        self.answer = settings.answer

    def collect(self, identity: Identity) -> Iterable[Record]:
        return [Record("Fact", {"answer": self.answer}, identity.identifiers[0])]

    def close(self) -> None:
        pass


class TestRegistry:
    def test_builtin_sql_is_an_entry_point(self) -> None:
        """The built-in connector registers through the same entry-point group as plugins."""
        names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        assert names["sql"] == "connectors.sql:SqlConnector"
        assert discover_types()["sql"].load() is SqlConnector  # type: ignore[union-attr]

    def test_third_party_type_is_built_and_validated(self) -> None:
        """A registered type gets its own settings validated, with the key path on error."""
        entries = (ConnectorEntry.model_validate({"name": "crm", "type": "fake", "answer": "yes"}),)
        [built] = build_connectors(
            entries, {"fake": FakeConnector}, base_dir=Path("."), source="cfg"
        )
        assert built.name == "crm" and isinstance(built.connector, FakeConnector)
        bad = (ConnectorEntry.model_validate({"name": "crm", "type": "fake", "answr": "yes"}),)
        with pytest.raises(
            ConfigError, match=r"connectors\[0\]\.answr: unknown key \(did you mean 'answer'\?\)"
        ):
            build_connectors(bad, {"fake": FakeConnector}, base_dir=Path("."), source="cfg")

    def test_unknown_type_lists_the_known_ones(self) -> None:
        """A typo in a type name is an error that lists what is installed."""
        entries = (ConnectorEntry(name="crm", type="nope"),)
        with pytest.raises(ConfigError, match=r"unknown connector type 'nope' \(known: fake\)"):
            build_connectors(entries, {"fake": FakeConnector}, base_dir=Path("."), source="cfg")

    def test_disabled_connectors_are_not_built(self) -> None:
        """``enabled = false`` keeps a connector configured but unused."""
        entries = (ConnectorEntry(name="crm", type="nope", enabled=False),)
        assert build_connectors(entries, {}, base_dir=Path("."), source="cfg") == []


class TestSqlVerify:
    def test_verify_drops_rows_the_database_matched_loosely(self, tmp_path: Path) -> None:
        """A loosely matched row is dropped unless its column equals the identifier."""
        path = tmp_path / "loose.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE c (who TEXT, email TEXT)")
            conn.executemany(
                "INSERT INTO c VALUES (?, ?)",
                [("Alice", " Alice@Example.test "), ("Not alice", "älice@example.test")],
            )
        loose = "SELECT who, email FROM c WHERE email LIKE '%lice@example.test%' AND :email <> ''"
        settings = validate(
            {
                "url": f"sqlite:///{path}",
                "queries": [{"name": "q", "category": "C", "sql": loose, "verify": "email"}],
            },
            SqlSettings,
            source="test",
            base_dir=tmp_path,
        )
        records = list(SqlConnector("c", settings).collect(Identity.verified("alice@example.test")))
        assert [r.fields["who"] for r in records] == ["Alice"]
