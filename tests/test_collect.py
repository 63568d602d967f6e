"""Collection in rounds: identity expansion follows strong identifiers only."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from pydantic import BaseModel

from connectors.sql import SqlConnector, SqlSettings
from sarbot.collect import Collection, Collector
from sarbot.config import CollectionSettings, Section, SourceFacts, validate
from sarbot.connector import Identifier, Identity, Record
from sarbot.errors import ConfigError
from sarbot.registry import ConfiguredConnector


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    """A directory with accounts (email -> username), logins (by username, with IPs) and a
    firewall log (by IP), where alice and bob share an office IP address."""
    with sqlite3.connect(tmp_path / "accounts.db") as db:
        db.execute("CREATE TABLE accounts (id INTEGER, email TEXT, login TEXT)")
        db.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?)",
            [
                (1, "alice@example.test", "asmith"),
                (2, "bob@example.test", "bjones"),
                (3, "shared@example.test", "admin"),
            ],
        )
    with sqlite3.connect(tmp_path / "logins.db") as db:
        db.execute("CREATE TABLE logins (id INTEGER, username TEXT, ip TEXT, alias TEXT)")
        db.executemany(
            "INSERT INTO logins VALUES (?, ?, ?, ?)",
            [
                (1, "asmith", "203.0.113.5", "alice.smith@corp.test"),
                (2, "bjones", "203.0.113.5", None),
                (3, "admin", "198.51.100.1", None),
            ],
        )
        db.execute("CREATE TABLE corp_mail (id INTEGER, address TEXT, note TEXT)")
        db.executemany(
            "INSERT INTO corp_mail VALUES (?, ?, ?)",
            [(1, "alice.smith@corp.test", "alice's work mailbox"), (2, "bob@corp.test", "bob's")],
        )
        db.execute("CREATE TABLE firewall (id INTEGER, ip TEXT, what TEXT)")
        db.executemany(
            "INSERT INTO firewall VALUES (?, ?, ?)",
            [(1, "203.0.113.5", "bob visited a site")],
        )
    return tmp_path


def sql(name: str, url: str, *queries: dict[str, Any]) -> ConfiguredConnector:
    settings = validate(
        {"url": url, "queries": list(queries)},
        SqlSettings,
        source="t",
        base_dir=Path("."),
    )
    return ConfiguredConnector(
        name, "sql", name.title(), SourceFacts(), SqlConnector(name, settings)
    )


def connectors(stores: Path) -> list[ConfiguredConnector]:
    accounts = f"sqlite:///{stores / 'accounts.db'}"
    logins = f"sqlite:///{stores / 'logins.db'}"
    return [
        sql(
            "accounts",
            accounts,
            {
                "name": "by_email",
                "category": "Account",
                "key": "id",
                "yields": {"username": "login"},
                "sql": "SELECT id, email, login FROM accounts WHERE email = :email",
            },
        ),
        sql(
            "logins",
            logins,
            {
                "name": "by_username",
                "category": "Login",
                "consumes": "username",
                "key": "id",
                "yields": {"ip": "ip", "email": "alias"},
                "sql": "SELECT id, username, ip, alias FROM logins WHERE username = :username",
            },
            {
                "name": "mail",
                "category": "Work mailbox",
                "key": "id",
                "sql": "SELECT id, address, note FROM corp_mail WHERE address = :email",
            },
            {
                "name": "firewall",
                "category": "Firewall",
                "consumes": "ip",
                "key": "id",
                "sql": "SELECT id, ip, what FROM firewall WHERE ip = :ip",
            },
        ),
    ]


def run(conns: list[ConfiguredConnector], email: str, **settings: Any) -> Collection:
    collector = Collector(conns, CollectionSettings(**settings), structlog.get_logger())
    return asyncio.run(collector.collect(email))


def records(collection: Collection) -> dict[str, list[Record]]:
    return {source.name: list(source.records) for source in collection.sources}


class TestExpansion:
    def test_follows_usernames_and_emails_found_along_the_way(self, stores: Path) -> None:
        """email -> vault-like username -> logins -> a second email -> its mailbox."""
        found = records(run(connectors(stores), "alice@example.test"))
        assert [r.fields["login"] for r in found["accounts"]] == ["asmith"]
        logins = [r for r in found["logins"] if r.category == "Login"]
        assert [r.fields["username"] for r in logins] == ["asmith"]
        assert logins[0].found_by.value == "asmith"
        assert logins[0].found_by.origin == "accounts: query 'by_email', column login"
        mail = [r for r in found["logins"] if r.category == "Work mailbox"]
        assert [r.fields["note"] for r in mail] == ["alice's work mailbox"]
        assert mail[0].found_by.origin == "logins: query 'by_username', column alias"

    def test_a_shared_ip_never_pulls_in_another_person(self, stores: Path) -> None:
        """The IP alice shares with bob is yielded but not followed: bob's data stays out."""
        collection = run(connectors(stores), "alice@example.test")
        everything = repr(records(collection))
        assert "bjones" not in everything and "bob" not in everything
        assert {(i.kind, i.value) for i in collection.identifiers} == {
            ("email", "alice@example.test"),
            ("username", "asmith"),
            ("email", "alice.smith@corp.test"),
        }

    def test_following_ip_addresses_is_refused_in_config(self) -> None:
        """An admin cannot make IP addresses (or names) a followed kind."""
        with pytest.raises(ConfigError, match="ip can identify several people"):
            validate(
                {"strong_identifiers": ["email", "ip"]},
                CollectionSettings,
                source="c",
                base_dir=Path("."),
            )

    def test_generic_account_names_are_not_followed(self, stores: Path) -> None:
        """A shared 'admin' login linked to an address does not pull in the admin's logins."""
        found = records(run(connectors(stores), "shared@example.test"))
        assert [r.fields["login"] for r in found["accounts"]] == ["admin"]
        assert found["logins"] == []

    def test_rounds_are_limited(self, stores: Path) -> None:
        """With one round only the verified address is looked up."""
        collection = run(connectors(stores), "alice@example.test", max_rounds=1)
        assert [s.name for s in collection.sources if s.records] == ["accounts"]

    def test_unknown_address_finds_nothing(self, stores: Path) -> None:
        """No match anywhere is an empty but complete collection."""
        collection = run(connectors(stores), "nobody@example.test")
        assert collection.complete and collection.record_count == 0


class Repeating(Section):
    pass


class SeesEverythingTwice:
    """Returns the same item for every identifier it is asked about."""

    Settings: ClassVar[type[BaseModel]] = Repeating
    calls = 0

    def __init__(self, name: str) -> None:
        self.name = name

    def collect(self, identity: Identity) -> Iterable[Record]:
        SeesEverythingTwice.calls += 1
        for identifier in identity.identifiers:
            yield Record(
                "Item",
                {"id": 1},
                identifier,
                key="item:1",
                yields=(Identifier("username", "asmith", "here"),),
            )

    def close(self) -> None:
        pass


class Broken:
    name = "broken"
    calls = 0

    def collect(self, identity: Identity) -> Iterable[Record]:
        Broken.calls += 1
        raise ConnectionError("store down")

    def close(self) -> None:
        pass


class TestRoundsAndFailures:
    def test_a_record_found_again_is_exported_once(self) -> None:
        """The same item found by two identifiers appears once, with the first provenance."""
        conn = ConfiguredConnector("twice", "t", "", SourceFacts(), SeesEverythingTwice("twice"))
        collection = run([conn], "alice@example.test")
        [source] = collection.sources
        assert len(source.records) == 1
        assert source.records[0].found_by.kind == "email"
        assert SeesEverythingTwice.calls == 2

    def test_failing_connector_is_retried_then_reported(self) -> None:
        """A connector that keeps failing is tried `attempts` times and named as failed."""
        Broken.calls = 0
        good = ConfiguredConnector("twice", "t", "", SourceFacts(), SeesEverythingTwice("twice"))
        bad = ConfiguredConnector("broken", "t", "", SourceFacts(), Broken())
        collection = run([bad, good], "alice@example.test", attempts=2)
        assert collection.failed == ["broken"]
        assert not collection.complete
        assert Broken.calls == 2
        assert [s.name for s in collection.sources] == ["twice"]


class TestNeverFollow:
    @pytest.mark.parametrize(
        ("kind", "value"),
        [
            ("username", "CORP\\Administrator"),
            ("username", "admin@router.local"),
            ("email", "support@acme.test"),
            ("username", "ROOT"),
        ],
    )
    def test_generic_names_are_not_followed_in_any_form(self, kind: str, value: str) -> None:
        """A shared account stays unfollowed with a domain, as an address, or in capitals."""
        yielded = Identifier(kind, value, "somewhere")

        class Yields:
            name = "yields"

            def collect(self, identity: Identity) -> Iterable[Record]:
                return [Record("Item", {}, identity.identifiers[0], yields=(yielded,))]

            def close(self) -> None:
                pass

        conn = ConfiguredConnector("yields", "t", "", SourceFacts(), Yields())
        collection = run([conn], "alice@example.test")
        assert [i.value for i in collection.identifiers] == ["alice@example.test"]
