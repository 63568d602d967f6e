"""Collection in rounds: the identity graph follows what the controller recorded, in its realm."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from pydantic import BaseModel

from connectors.sql import SqlConnector, SqlSettings
from sarbot.addresses import is_private_domain
from sarbot.config import (
    CollectionSettings,
    RealmSettings,
    Section,
    Settings,
    SourceFacts,
    validate,
)
from sarbot.connector import Identifier, Identity, Record, Trust, split_account
from sarbot.errors import ConfigError
from sarbot.graph import Graph, Realms, Scope, check_realms
from sarbot.registry import ConfiguredConnector
from sarbot.steps.collect import Collection, Collector
from sarbot.testing.identity import login


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


def sql(
    name: str, url: str, *queries: dict[str, Any], trust: str = "controller"
) -> ConfiguredConnector:
    settings = validate(
        {"url": url, "queries": list(queries), "trust": trust},
        SqlSettings,
        source="t",
        base_dir=Path("."),
    )
    return ConfiguredConnector(
        name, "sql", name.title(), SourceFacts(), SqlConnector(name, settings)
    )


def connectors(stores: Path, accounts_trust: str = "controller") -> list[ConfiguredConnector]:
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
                "verify": "email",
                "yields": {"username": "login"},
                "sql": "SELECT id, email, login FROM accounts WHERE email = :email",
            },
            {
                "name": "by_login",
                "category": "Account",
                "consumes": "username",
                "key": "id",
                "verify": "login",
                "sql": "SELECT id, email, login FROM accounts WHERE login = :username",
            },
            trust=accounts_trust,
        ),
        sql(
            "logins",
            logins,
            {
                "name": "by_username",
                "category": "Login",
                "consumes": "username",
                "key": "id",
                "verify": "username",
                "yields": {"ip": "ip", "email": "alias"},
                "sql": "SELECT id, username, ip, alias FROM logins WHERE username = :username",
            },
            {
                "name": "mail",
                "category": "Work mailbox",
                "key": "id",
                "verify": "address",
                "sql": "SELECT id, address, note FROM corp_mail WHERE address = :email",
            },
            {
                "name": "firewall",
                "category": "Firewall",
                "consumes": "ip",
                "key": "id",
                "verify": "ip",
                "sql": "SELECT id, ip, what FROM firewall WHERE ip = :ip",
            },
        ),
    ]


SAME_DIRECTORY = RealmSettings(label="Acme Ltd", same_as=("sql:accounts", "sql:logins"))


def run(
    conns: list[ConfiguredConnector],
    email: str,
    realms: tuple[RealmSettings, ...] = (SAME_DIRECTORY,),
    **settings: Any,
) -> Collection:
    check_realms(realms, conns)
    collector = Collector(
        conns, CollectionSettings(**settings), structlog.get_logger(), realms=Realms(realms)
    )
    return asyncio.run(collector.collect(email))


def graph(collection: Collection) -> dict[tuple[str, str], tuple[Scope, str]]:
    return {
        (link.identifier.kind, link.identifier.value): (link.scope, link.reason)
        for link in collection.links
    }


def records(collection: Collection) -> dict[str, list[Record]]:
    return {source.name: list(source.records) for source in collection.sources}


class TestExpansion:
    def test_follows_usernames_and_emails_found_along_the_way(self, stores: Path) -> None:
        """email -> a login the controller recorded -> logins in the same realm -> a second
        email -> its mailbox."""
        found = records(run(connectors(stores), "alice@example.test"))
        assert {r.fields["login"] for r in found["accounts"]} == {"asmith"}
        logins = [r for r in found["logins"] if r.category == "Login"]
        assert [r.fields["username"] for r in logins] == ["asmith"]
        assert logins[0].found_by.value == "asmith"
        assert logins[0].found_by.origin == "accounts: query 'by_email', column login"
        assert logins[0].found_by.describe() == "login asmith at Acme Ltd"
        mail = [r for r in found["logins"] if r.category == "Work mailbox"]
        assert [r.fields["note"] for r in mail] == ["alice's work mailbox"]
        assert mail[0].found_by.origin == "logins: query 'by_username', column alias"

    def test_without_a_realm_a_login_stays_in_its_own_directory(self, stores: Path) -> None:
        """asmith in the accounts database is not asmith in the logins database unless the
        admin says they are one directory: nothing is joined by string equality alone."""
        collection = run(connectors(stores), "alice@example.test", realms=())
        found = records(collection)
        assert {r.fields["login"] for r in found["accounts"]} == {"asmith"}
        assert found["logins"] == []
        assert graph(collection)[("username", "asmith")] == (Scope.EVERYWHERE, "")

    def test_a_self_asserted_login_is_not_looked_up_anywhere(self, stores: Path) -> None:
        """A store whose logins anyone chooses: its login proves nothing, and is not looked up
        in any store, its own included."""
        conns = connectors(stores, accounts_trust="self_asserted")
        collection = run(conns, "alice@example.test", realms=())
        found = records(collection)
        assert found["logins"] == []
        assert {(r.found_by.kind, r.fields["login"]) for r in found["accounts"]} == {
            ("email", "asmith")
        }
        assert graph(collection)[("username", "asmith")] == (
            Scope.NOT_FOLLOWED,
            "chosen by whoever typed it, so it proves nothing",
        )
        [link] = [link for link in collection.links if link.identifier.value == "asmith"]
        assert link.identifier.trust is Trust.SELF_ASSERTED and link.identifier.source == "accounts"

    def test_a_value_typed_into_a_form_fetches_nobody_elses_records(self, tmp_path: Path) -> None:
        """mallory's order names alice as its invoice copy: that address is not looked up,
        not even in the shop, so alice's orders stay out of mallory's export."""
        with sqlite3.connect(tmp_path / "shop.db") as db:
            db.execute("CREATE TABLE orders (id INTEGER, email TEXT, invoice_cc TEXT, item TEXT)")
            db.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?)",
                [
                    (1, "mallory@evil.test", "alice@example.test", "mallory's order"),
                    (2, "alice@example.test", None, "alice's order, to her home address"),
                ],
            )
        shop = sql(
            "shop",
            f"sqlite:///{tmp_path / 'shop.db'}",
            {
                "name": "orders",
                "category": "Order",
                "key": "id",
                "verify": "email",
                "yields": {"email": "invoice_cc"},
                "sql": "SELECT id, email, invoice_cc, item FROM orders WHERE email = :email",
            },
            trust="self_asserted",
        )
        collection = run([shop], "mallory@evil.test", realms=())
        assert [r.fields["item"] for r in records(collection)["shop"]] == ["mallory's order"]
        assert graph(collection)[("email", "alice@example.test")][0] is Scope.NOT_FOLLOWED

    def test_a_self_asserted_store_cannot_join_a_realm(self, stores: Path) -> None:
        """The admin cannot map a directory of self-chosen names onto a controller's one."""
        conns = connectors(stores, accounts_trust="self_asserted")
        with pytest.raises(ConfigError, match="chosen by whoever typed them"):
            run(conns, "alice@example.test")

    def test_a_shared_ip_never_pulls_in_another_person(self, stores: Path) -> None:
        """The IP alice shares with bob is yielded but not followed: bob's data stays out."""
        collection = run(connectors(stores), "alice@example.test")
        everything = repr(records(collection))
        assert "bjones" not in everything and "bob" not in everything
        assert graph(collection) == {
            ("email", "alice@example.test"): (Scope.START, ""),
            ("username", "asmith"): (Scope.EVERYWHERE, ""),
            ("email", "alice.smith@corp.test"): (Scope.EVERYWHERE, ""),
            ("ip", "203.0.113.5"): (Scope.NOT_FOLLOWED, "it can belong to several people"),
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
        collection = run(connectors(stores), "shared@example.test")
        found = records(collection)
        assert [r.fields["login"] for r in found["accounts"]] == ["admin"]
        assert found["logins"] == []
        assert graph(collection)[("username", "admin")] == (
            Scope.NOT_FOLLOWED,
            "a shared account name",
        )

    def test_rounds_are_limited(self, stores: Path) -> None:
        """With one round only the verified address is looked up; what it found is kept as
        not followed, saying why."""
        collection = run(connectors(stores), "alice@example.test", max_rounds=1)
        assert [s.name for s in collection.sources if s.records] == ["accounts"]
        assert graph(collection)[("username", "asmith")] == (
            Scope.NOT_FOLLOWED,
            "found in the last round of the search",
        )

    def test_unknown_address_finds_nothing(self, stores: Path) -> None:
        """No match anywhere is an empty but complete collection."""
        collection = run(connectors(stores), "nobody@example.test")
        assert collection.complete and collection.record_count == 0


class TestRealmSettings:
    def base(self) -> dict[str, Any]:
        return {
            "controller": {"name": "X", "email": "support@redtrain.test"},
            "imap": {"host": "h", "username": "u", "password": {"env": "P"}},
            "smtp": {"host": "h"},
            "storage": {"database_url": "sqlite://", "export_dir": "exports"},
        }

    @pytest.mark.parametrize(
        ("realms", "message"),
        [
            ([{"label": "A", "same_as": ["sql:a"]}], "at least 2 items"),
            ([{"label": "A", "same_as": ["ad:ACME", "ad:acme.local"]}], "not only Windows"),
            ([{"label": "A", "same_as": ["sql:a", "sql:a"]}], "listed twice"),
            ([{"label": "A", "same_as": ["sql:a", "email"]}], "should match pattern"),
            ([{"label": "A", "same_as": ["sql:a", "ad:a/b"]}], "without /"),
            ([{"label": "A", "same_as": ["sql:a", "ad:."]}], "should match pattern"),
            (
                [
                    {"label": "A", "same_as": ["keepass:v/Clients", "ad:ACME"]},
                    {"label": "B", "same_as": ["keepass:v/Clients/Other", "sql:b"]},
                ],
                "'keepass:v/Clients/Other' is in realm 'A' too",
            ),
        ],
    )
    def test_bad_realms_are_refused_at_start_up(
        self, realms: list[dict[str, Any]], message: str
    ) -> None:
        """A realm joins nothing by accident: each namespace in one realm at most."""
        with pytest.raises(ConfigError, match=message):
            validate({**self.base(), "realms": realms}, Settings, source="c", base_dir=Path("."))

    def test_two_realms_may_share_a_windows_domain_name(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Many small clients call their domain CORP or corp.local: a domain name qualifies a
        realm's logins and joins nothing, so two realms may both name it."""
        realms = [
            {"label": "A", "same_as": ["sql:a", "ad:corp.local"]},
            {"label": "B", "same_as": ["sql:b", "ad:CORP.local"]},
        ]
        monkeypatch.setenv("P", "x")
        settings = validate(
            {**self.base(), "realms": realms},
            Settings,
            source="c",
            base_dir=Path("."),
        )
        assert [r.label for r in settings.realms] == ["A", "B"]

    def test_a_realm_must_name_configured_connectors(self, stores: Path) -> None:
        """A member naming no connector, or one of another type, is refused."""
        for member in ("sql:nothing", "keepass:accounts"):
            realm = RealmSettings(label="X", same_as=("sql:accounts", member))
            with pytest.raises(ConfigError, match="no enabled connector"):
                check_realms((realm,), connectors(stores))


class Repeating(Section):
    pass


class SeesEverythingTwice:
    """Returns the same item for every identifier it is asked about."""

    Settings: ClassVar[type[BaseModel]] = Repeating
    namespace_trust = Trust.CONTROLLER
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
                yields=(Identifier("username", "asmith", "here", trust=Trust.CONTROLLER),),
            )

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


class Broken:
    name = "broken"
    calls = 0

    def collect(self, identity: Identity) -> Iterable[Record]:
        Broken.calls += 1
        raise ConnectionError("store down")

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


class TestRoundsAndFailures:
    def test_a_record_found_again_is_exported_once(self) -> None:
        """The same item found by two identifiers appears once, with the first provenance."""
        conn = ConfiguredConnector("twice", "t", "", SourceFacts(), SeesEverythingTwice("twice"))
        collection = run([conn], "alice@example.test", realms=())
        [source] = collection.sources
        assert len(source.records) == 1
        assert source.records[0].found_by.kind == "email"
        assert SeesEverythingTwice.calls == 2

    def test_failing_connector_is_retried_then_reported(self) -> None:
        """A connector that keeps failing is tried `attempts` times and named as failed."""
        Broken.calls = 0
        good = ConfiguredConnector("twice", "t", "", SourceFacts(), SeesEverythingTwice("twice"))
        bad = ConfiguredConnector("broken", "t", "", SourceFacts(), Broken())
        collection = run([bad, good], "alice@example.test", realms=(), attempts=2)
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
        yielded = Identifier(kind, value, "somewhere", trust=Trust.CONTROLLER)

        class Yields:
            name = "yields"
            namespace_trust = Trust.CONTROLLER

            def collect(self, identity: Identity) -> Iterable[Record]:
                return [Record("Item", {}, identity.identifiers[0], yields=(yielded,))]

            def check(self) -> None:
                pass

            def close(self) -> None:
                pass

        conn = ConfiguredConnector("yields", "t", "", SourceFacts(), Yields())
        collection = run([conn], "alice@example.test", realms=())
        assert [link.scope for link in collection.links] == [Scope.START, Scope.NOT_FOLLOWED]


class Yielding:
    """A connector of the given trust that yields the same identifiers for every lookup."""

    def __init__(self, name: str, trust: Trust, *yielded: Identifier) -> None:
        self.name = name
        self.namespace_trust = trust
        self.yielded = yielded
        self.asked: list[tuple[str, ...]] = []

    def collect(self, identity: Identity) -> Iterable[Record]:
        self.asked.append(tuple(i.value for i in identity.identifiers))
        return [Record("Item", {}, identity.identifiers[0], yields=self.yielded)]

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def configured(connector: Yielding) -> ConfiguredConnector:
    return ConfiguredConnector(connector.name, "t", connector.name, SourceFacts(), connector)


class TestGraph:
    def test_yielded_addresses_are_normalised_and_non_addresses_not_followed(self) -> None:
        """A connector's raw address is compared as the requester's is; text that is not an
        address is kept in the graph, not followed, with the reason."""
        yielding = Yielding(
            "crm",
            Trust.CONTROLLER,
            Identifier("email", "Alice.Smith@Corp.TEST", "here", trust=Trust.CONTROLLER),
            Identifier("email", "not an address", "there", trust=Trust.CONTROLLER),
        )
        collection = run([configured(yielding)], "alice@example.test", realms=())
        assert graph(collection)[("email", "alice.smith@corp.test")] == (Scope.EVERYWHERE, "")
        assert graph(collection)[("email", "not an address")] == (
            Scope.NOT_FOLLOWED,
            "not a plain email address",
        )
        assert yielding.asked == [("alice@example.test",), ("alice.smith@corp.test",)]

    def test_a_connector_cannot_vouch_for_more_than_it_holds(self) -> None:
        """An identifier marked controller by a connector of self-asserted names is
        self-asserted: no connector is asked about it."""
        claims = Identifier("email", "alice.work@corp.test", "here", trust=Trust.CONTROLLER)
        website = Yielding("website", Trust.SELF_ASSERTED, claims)
        vault = Yielding("vault", Trust.CONTROLLER)
        collection = run([configured(website), configured(vault)], "alice@example.test", realms=())
        [link] = [link for link in collection.links if link.identifier.value == claims.value]
        assert (link.scope, link.identifier.trust) == (Scope.NOT_FOLLOWED, Trust.SELF_ASSERTED)
        assert website.asked == vault.asked == [("alice@example.test",)]

    def test_an_identifier_the_controller_recorded_too_is_followed_everywhere(self) -> None:
        """Found as self-asserted by one source and recorded by the controller in another:
        the controller's record decides, and every connector is asked."""
        address = "alice.work@corp.test"
        website = Yielding("website", Trust.SELF_ASSERTED, Identifier("email", address, "w"))
        vault = Yielding(
            "vault", Trust.CONTROLLER, Identifier("email", address, "v", trust=Trust.CONTROLLER)
        )
        collection = run([configured(website), configured(vault)], "alice@example.test", realms=())
        [link] = [link for link in collection.links if link.identifier.value == address]
        assert (link.scope, link.identifier.source) == (Scope.EVERYWHERE, "vault")
        assert website.asked[1] == (address,) and vault.asked[1] == (address,)

    def test_a_record_found_again_knowing_more_replaces_the_first(self) -> None:
        """Round one sees an item only as a mention; round two, knowing the person's login,
        sees it is theirs: the export has what round two found, once."""

        class Vault:
            name = "vault"
            namespace_trust = Trust.CONTROLLER

            def collect(self, identity: Identity) -> Iterable[Record]:
                login = Identifier("username", "asmith", "v", trust=Trust.CONTROLLER)
                if identity.identifiers[0].kind == "email":
                    return [Record("Mention", {"line": "asmith"}, identity.identifiers[0],
                                   yields=(login,), key="entry:1")]  # fmt: skip
                return [Record("Entry", {"all": "of it"}, identity.identifiers[0], key="entry:1")]

            def check(self) -> None:
                pass

            def close(self) -> None:
                pass

        collection = run([configured(Vault())], "alice@example.test", realms=())  # type: ignore[arg-type]
        [record] = records(collection)["vault"]
        assert (record.category, dict(record.fields)) == ("Entry", {"all": "of it"})

    def test_what_a_failed_round_found_is_not_claimed_as_searched(self) -> None:
        """A source failed: the identifiers that round found were never looked up, and the
        graph (and so the letter) says so."""
        Broken.calls = 0
        found = Identifier("email", "alice.work@corp.test", "v", trust=Trust.CONTROLLER)
        vault = Yielding("vault", Trust.CONTROLLER, found)
        broken = ConfiguredConnector("broken", "t", "", SourceFacts(), Broken())
        collection = run([configured(vault), broken], "alice@example.test", realms=(), attempts=1)
        assert collection.failed == ["broken"]
        assert graph(collection)[("email", "alice.work@corp.test")] == (
            Scope.NOT_FOLLOWED,
            "not looked up: a source could not be searched",
        )


class TestNamespaces:
    def test_a_login_is_valid_in_its_own_namespace_exactly(self) -> None:
        """A login recorded at a vault's top level or in a parent group is not valid in the
        groups below it: those may be other clients."""
        top = Identifier("username", "asmith", "v", "keepass:vault", Trust.CONTROLLER)
        assert top.covers("keepass:vault")
        assert not top.covers("keepass:vault/Clients/Other Ltd")

    def test_a_realm_covers_what_lies_inside_its_members(self) -> None:
        """The admin's realm member covers its subgroups; a longer name is not inside it."""
        acme = Identifier(
            "username",
            "asmith",
            "v",
            "keepass:vault/Clients/Acme Ltd",
            Trust.CONTROLLER,
            aliases=frozenset({"keepass:vault/Clients/Acme Ltd", "tacticalrmm:rmm/Acme Ltd"}),
        )
        assert acme.covers("keepass:vault/Clients/Acme Ltd/Laptops")
        assert acme.covers("tacticalrmm:rmm/Acme Ltd")
        assert not acme.covers("keepass:vault/Clients/Acme Ltd Holdings")
        assert not acme.covers("keepass:vault/Clients")


class TestWindowsDomains:
    """How a login's domain is read: ``ACME.`` is ``ACME`` (the root's dot), wherever it is
    written; ``.\\asmith`` is a computer's own local account, nobody's directory login."""

    ACME = ("keepass:vault/Acme", "ad:ACME")

    @pytest.mark.parametrize("member", ["ad:ACME", "ad:ACME.", "ad:acme."])
    def test_a_realms_domain_may_be_written_with_the_roots_dot(self, member: str) -> None:
        alice = Identity("", (login("asmith", "keepass:vault/Acme", member),))
        for written in ("ACME\\asmith", "ACME.\\asmith", "asmith"):
            assert alice.account(written, "keepass:vault/Acme") is not None, written
        assert alice.account("OTHER\\asmith", "keepass:vault/Acme") is None
        realms = Realms([RealmSettings(label="Acme", same_as=("sql:a", "ad:acme.example."))])
        assert realms.is_login_domain("acme.example")

    @pytest.mark.parametrize("written", [".\\asmith", "..\\asmith", "asmith@.", "KIOSK-7\\asmith"])
    def test_a_local_account_is_not_the_realms_login(self, written: str) -> None:
        """Alice's ``ACME\\asmith`` and a kiosk's local ``asmith``: two people."""
        for alice in (login("asmith", *self.ACME), login("ACME\\asmith", *self.ACME)):
            assert Identity("", (alice,)).account(written, "keepass:vault/Acme") is None
        kiosk = login(written, *self.ACME)
        assert Identity("", (kiosk,)).account("ACME\\asmith", "keepass:vault/Acme") is None
        assert Identity("", (kiosk,)).account(written, "keepass:vault/Acme") is not None

    def test_dots_alone_stay_the_domain(self) -> None:
        assert split_account(".\\asmith") == ("asmith", ".")
        assert split_account("ACME..\\asmith") == ("asmith", "ACME")

    def test_two_realms_sharing_a_domain_keep_their_logins_apart(self) -> None:
        """Acme and Beta both call their domain CORP: alice's ``CORP\\asmith`` at each is a
        login of its own, both followed, neither taken for the other."""
        realms = Realms(
            [
                RealmSettings(label="Acme", same_as=("keepass:vault/Acme", "ad:CORP")),
                RealmSettings(label="Beta", same_as=("keepass:vault/Beta", "ad:CORP")),
            ]
        )
        graph_ = Graph("alice@example.test", CollectionSettings(), realms)
        vault = replace(configured(Yielding("vault", Trust.CONTROLLER)), type="keepass")
        placed = [
            graph_.add(
                Identifier(
                    "username", "CORP\\asmith", "v", f"keepass:vault/{group}", Trust.CONTROLLER
                ),
                vault,
            )
            for group in ("Acme", "Beta")
        ]
        assert [p.realm if p else None for p in placed] == ["Acme", "Beta"]
        assert len({p.key for p in placed if p}) == 2
        assert [i.realm for i in graph_.known() if i.kind == "username"] == ["Acme", "Beta"]


class TestLoginsThatLookLikeAddresses:
    def test_a_login_at_a_private_domain_stays_in_the_group_it_was_recorded_in(self) -> None:
        """asmith@corp.local in a vault entry is a Windows login, not a mailbox, and two clients
        may both have it: it stays in its group's realm instead of becoming a global address."""
        realms = Realms(
            [
                RealmSettings(label="Acme Ltd", same_as=("keepass:vault/Acme", "ad:corp.local")),
                RealmSettings(label="Other Ltd", same_as=("keepass:vault/Other", "ad:corp.local")),
            ]
        )
        graph_ = Graph("alice@example.test", CollectionSettings(), realms)
        vault = configured(Yielding("vault", Trust.CONTROLLER))
        found = Identifier(
            "email", "ASmith@Corp.Local", "v", "keepass:vault/Acme", Trust.CONTROLLER
        )
        placed = graph_.add(found, replace(vault, type="keepass"))
        assert placed is not None
        assert (placed.kind, placed.value, placed.realm) == (
            "username",
            "asmith@corp.local",
            "Acme Ltd",
        )
        assert not placed.covers("keepass:vault/Other")
        mailbox = Identifier(
            "email", "a.smith@acme.example", "v", "keepass:vault/Acme", Trust.CONTROLLER
        )
        kept = graph_.add(mailbox, replace(vault, type="keepass"))
        assert kept is not None and (kept.kind, kept.namespace) == ("email", "email")

    @pytest.mark.parametrize("domain", ["corp.local", "ad.internal", "office.lan", "x.home.arpa"])
    def test_private_network_domains_are_not_mail_domains(self, domain: str) -> None:
        """The suffixes of private networks' directories are logins' domains."""
        assert is_private_domain(domain)
        assert not is_private_domain("example.test") and not is_private_domain("local.example")
