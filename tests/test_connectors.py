"""The connector contract, the registry, and the built-in ``sql`` connector."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text

from connectors.sql import SqlConnector, SqlSettings
from sarbot.config import CollectionSettings, ConnectorEntry, Section, SourceFacts, validate
from sarbot.connector import ENTRY_POINT_GROUP, Connector, Identifier, Identity, Record, Trust
from sarbot.errors import ConfigError, ConnectorError
from sarbot.graph import Graph, Realms
from sarbot.registry import ConfiguredConnector, build_connectors, discover_types
from sarbot.testing.identity import address, asked, login
from tests.servers import ServerError, mariadb_server


@pytest.fixture
def website(tmp_path: Path) -> str:
    path = tmp_path / "site.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE c (who TEXT, email TEXT, posted TIMESTAMP, blob BLOB, login TEXT)"
        )
        conn.executemany(
            "INSERT INTO c VALUES (?, ?, ?, ?, ?)",
            [
                ("Alice", "alice@example.test", "2026-01-02 03:04:05", b"\x00\x01", "asmith"),
                ("Alice again", "Alice@Example.Test", None, None, "ASmith"),
                ("Bob", "bob@example.test", None, None, "bsmith"),
                (
                    "Robert'); DROP TABLE c;--",
                    "alice@example.test' or '1'='1",
                    None,
                    None,
                    "x' or '1'='1",
                ),
            ],
        )
    return f"sqlite:///{path}"


def sql_connector(
    url: str,
    sql: str = "SELECT who, email, posted, blob FROM c WHERE lower(email) = :email",
    *,
    name: str = "website",
    trust: str | None = None,
    **query: Any,
) -> SqlConnector:
    spec = {"name": "comments", "category": "Comment", "sql": sql, "verify": "email", **query}
    data: dict[str, Any] = {"url": url, "queries": [spec]}
    if trust is not None:
        data["trust"] = trust
    settings = validate(data, SqlSettings, source="test", base_dir=Path("."))
    assert isinstance(settings, SqlSettings)
    return SqlConnector(name, settings)


def collect(connector: SqlConnector, identity: Identity) -> list[Record]:
    try:
        return list(connector.collect(identity))
    finally:
        connector.close()


class TestSqlConnector:
    def test_finds_only_the_identity(self, website: str) -> None:
        """Rows bound to the address are returned, with provenance; others are not."""
        connector = sql_connector(website)
        records = list(connector.collect(Identity.verified("alice@example.test")))
        connector.close()
        assert [r.fields["who"] for r in records] == ["Alice", "Alice again"]
        assert records[0].fields["blob"] == "<2 bytes of binary data>"
        assert records[0].found_by.describe() == "email address alice@example.test"
        assert records[0].location == "query 'comments'"
        assert all(r.yields == () for r in records)
        assert isinstance(connector, Connector)

    def test_identity_is_bound_not_interpolated(self, website: str) -> None:
        """A hostile identifier value is a value, never SQL: it finds exactly the row holding
        it (the verify column echoes the bound value, so every row the database returned shows)."""
        by_login = "SELECT who, :username AS asked FROM c WHERE login = :username"
        hostile = login("x' or '1'='1", "sql:website")
        connector = sql_connector(website, by_login, consumes="username", verify="asked")
        records = collect(connector, asked(hostile))
        assert [r.fields["who"] for r in records] == ["Robert'); DROP TABLE c;--"]
        by_email = sql_connector(website)
        assert collect(by_email, Identity.verified("alice@example.test' or '1'='1")) == []
        assert len(collect(sql_connector(website), Identity.verified("bob@example.test"))) == 1
        with sqlite3.connect(website.removeprefix("sqlite:///")) as conn:
            assert conn.execute("SELECT count(*) FROM c").fetchone() == (4,)

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

    @pytest.mark.parametrize("verify", [None, ""])
    def test_verify_is_required(self, website: str, verify: str | None) -> None:
        """Every query names the column each row is checked against: none, or an empty one, is
        a configuration error."""
        query = {"name": "q", "category": "C", "sql": "SELECT * FROM c WHERE email = :email"}
        if verify is not None:
            query["verify"] = verify
        with pytest.raises(ConfigError, match="verify"):
            validate(
                {"url": website, "queries": [query]}, SqlSettings, source="t", base_dir=Path(".")
            )

    def test_a_verify_column_the_query_does_not_return_is_an_error(self, website: str) -> None:
        """A row that cannot be checked is never exported: the lookup fails, naming the setting."""
        connector = sql_connector(website, "SELECT who FROM c WHERE lower(email) = :email")
        with pytest.raises(ConnectorError, match=r"no column 'email'.*verify"):
            collect(connector, Identity.verified("alice@example.test"))

    def test_the_trust_setting_defaults_to_self_asserted(self, website: str) -> None:
        """Unless the admin says the controller writes the database, what it yields is
        self-asserted; either way usernames belong to the connector's namespace."""
        sql = "SELECT who, email, login FROM c WHERE lower(email) = :email"
        yields = {"username": "login", "email": "email"}
        for trust, expected in ((None, Trust.SELF_ASSERTED), ("controller", Trust.CONTROLLER)):
            connector = sql_connector(website, sql, trust=trust, yields=yields)
            assert connector.namespace_trust is expected
            [first, *_] = collect(connector, Identity.verified("alice@example.test"))
            origin = "website: query 'comments', column"
            assert first.yields == (
                Identifier("username", "asmith", f"{origin} login", "sql:website", expected),
                Identifier("email", "alice@example.test", f"{origin} email", "email", expected),
            )
        with pytest.raises(ConfigError, match="trust"):
            sql_connector(website, sql, trust="verified")


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

    def check(self) -> None:
        """Nothing to reach: the answer is in the settings."""

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
        assert isinstance(built.connector, Connector)
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


# ----- on MariaDB, whose *_ci collations call straße and strasse, müller and muller equal ------

CUSTOMERS = [
    (1, "strasse", "anna@strasse.test", "order of the strasse customer"),
    (2, "straße", "anna@straße.test", "order of the straße customer"),
    (3, "muller", "carl@muller.test", "order of the muller customer"),
    (4, "müller", "carl@müller.test", "order of the müller customer"),
]
BY_LOGIN = "SELECT id, login, email, note FROM customers WHERE login = :username"
BY_EMAIL = "SELECT id, login, email, note FROM customers WHERE email = :email"
# A query that finds every address with the same local part: verify alone decides.
BY_LOCAL_PART = (
    "SELECT id, login, email, note FROM customers "
    "WHERE email LIKE CONCAT(SUBSTRING_INDEX(:email, '@', 1), '@%') ORDER BY id"
)


@pytest.fixture(scope="module")
def crm() -> Iterator[str]:
    """A real MariaDB database (utf8mb4_unicode_520_ci) with four look-alike customers."""
    try:
        with mariadb_server() as url:
            engine = create_engine(url)
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    "CREATE TABLE customers (id INT PRIMARY KEY, login VARCHAR(60),"
                    " email VARCHAR(100), note VARCHAR(200))"
                )
                for row in CUSTOMERS:
                    connection.execute(
                        text("INSERT INTO customers VALUES (:id, :login, :email, :note)"),
                        dict(zip(("id", "login", "email", "note"), row, strict=True)),
                    )
            engine.dispose()
            yield url
    except ServerError as exc:
        pytest.fail(f"MariaDB could not be started: {exc}", pytrace=False)


def crm_ids(
    url: str, sql: str, identity: Identity, consumes: str = "email", **more: Any
) -> list[Any]:
    """The customers the connector exports (once each: sarbot keeps one record per key)."""
    verify = "login" if consumes == "username" else "email"
    connector = sql_connector(
        url, sql, name="crm", consumes=consumes, verify=verify, key="id", **more
    )
    return sorted({r.key: r.fields["id"] for r in collect(connector, identity)}.values())


def database_ids(url: str, sql: str, value: str) -> set[Any]:
    """What MariaDB itself answers: the loose match the connector must narrow."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {row.id for row in connection.execute(text(sql), {"v": value})}
    finally:
        engine.dispose()


class TestSqlOnMariaDB:
    def test_the_collation_matches_loosely(self, crm: str) -> None:
        """The premise: MariaDB's unicode_520_ci takes ß for ss and ü for u, in logins and
        addresses alike, so a query alone would hand one customer the other's rows."""
        by_login = "SELECT id FROM customers WHERE login = :v"
        by_email = "SELECT id FROM customers WHERE email = :v"
        assert database_ids(crm, by_login, "strasse") == {1, 2}
        assert database_ids(crm, by_login, "müller") == {3, 4}
        assert database_ids(crm, by_email, "anna@strasse.test") == {1, 2}
        assert database_ids(crm, by_email, "carl@muller.test") == {3, 4}

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("strasse", [1]),
            ("straße", [2]),
            ("STRASSE", [1]),
            ("STRAßE", [2]),
            ("muller", [3]),
            ("müller", [4]),
            ("MÜLLER", [4]),
        ],
    )
    def test_logins_are_verified_exactly(self, crm: str, value: str, expected: list[int]) -> None:
        """Each look-alike login finds its own customer only, whatever the case."""
        identity = asked(login(value, "sql:crm", trust=Trust.SELF_ASSERTED))
        assert crm_ids(crm, BY_LOGIN, identity, "username") == expected

    @pytest.mark.parametrize("sql", [BY_EMAIL, BY_LOCAL_PART], ids=["equal", "local-part"])
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("anna@strasse.test", [1]),
            ("anna@xn--strae-oqa.test", [2]),  # anna@straße.test, as sarbot normalises it
            ("carl@muller.test", [3]),
            ("carl@xn--mller-kva.test", [4]),  # carl@müller.test
        ],
    )
    def test_addresses_are_verified_exactly(
        self, crm: str, sql: str, value: str, expected: list[int]
    ) -> None:
        """The database answers anna@strasse.test with both annas' rows (as it does a query
        that returns every address with her local part); only her own is exported, and the
        anna of straße.test gets hers, stored with the domain as she wrote it."""
        assert crm_ids(crm, sql, asked(address(value))) == expected

    def test_a_login_of_another_directory_is_not_looked_up(self, crm: str) -> None:
        """A vault login is somebody in the vault, not the CRM's customer of the same name;
        only a realm that names this database makes it one."""
        vault = login("strasse", "keepass:vault/Staff")
        assert crm_ids(crm, BY_LOGIN, asked(vault), "username") == []
        in_realm = login("strasse", "keepass:vault/Staff", "sql:crm")
        assert crm_ids(crm, BY_LOGIN, asked(in_realm), "username") == [1]
        other_crm = login("strasse", "sql:crm2")
        assert crm_ids(crm, BY_LOGIN, asked(other_crm), "username") == []

    def test_a_yielded_address_is_normalised(self, crm: str) -> None:
        """An address a row yields, as stored, becomes the address sarbot compares in the
        identity graph: normalised (IDNA 2008), once, for every connector."""
        connector = sql_connector(
            crm,
            BY_LOGIN,
            name="crm",
            consumes="username",
            verify="login",
            yields={"email": "email"},
        )
        identity = asked(login("müller", "sql:crm", trust=Trust.SELF_ASSERTED))
        [record] = collect(connector, identity)
        [yielded] = record.yields
        graph = Graph("x@example.test", CollectionSettings(), Realms(()))
        source = ConfiguredConnector("crm", "sql", "", SourceFacts(), connector)
        graph.add(yielded, source)  # self-asserted here: kept in the graph, not followed
        [link] = [link for link in graph.ordered() if link.identifier.source == "crm"]
        assert (link.identifier.kind, link.identifier.value) == ("email", "carl@xn--mller-kva.test")
