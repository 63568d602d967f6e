"""A string is not a person: two people who look alike, through the whole request path.

Each test puts two people who look alike into real stores (KeePass files, WordPress
and a CRM on MariaDB, Tactical RMM on PostgreSQL, access logs on disk), has each of
them ask for their data through the real mail stack, and asserts on the two exports:
neither holds anything of the other's, and each holds all of their own.  What each
person owns carries a unique marker; the markers of one must all reach that person
and none may reach the other.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pykeepass import PyKeePass
from pykeepass.pykeepass import BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD
from sqlalchemy import Engine, column, create_engine, table, text
from sqlalchemy.engine import make_url

from sarbot.cli.main import cli
from sarbot.store.states import RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing.stores import create_wordpress_tables, tacticalrmm_statements
from tests.conftest import Bot, BotFactory, unique
from tests.servers import ServerError, mariadb_server, postgres_server

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")
VAULT_MASTER = "identity-test-vault"  # a throw-away vault's password


# ----- the servers and the stores ---------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    mariadb: str
    postgres: str


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """MariaDB (WordPress, a CRM) and PostgreSQL (Tactical RMM): real servers, one per module."""
    try:
        with mariadb_server() as mariadb, postgres_server() as postgres:
            yield Servers(mariadb, postgres)
    except ServerError as exc:
        pytest.fail(f"a database server could not start: {exc}", pytrace=False)


class Marks:
    """Unique strings that stand for one person's data."""

    def __init__(self) -> None:
        self.by_owner: dict[str, dict[str, str]] = {}

    def __call__(self, owner: str, what: str) -> str:
        value = f"{owner.upper()}-{what}-{secrets.token_hex(6)}"
        self.by_owner.setdefault(owner, {})[what] = value
        return value

    def of(self, owner: str) -> dict[str, str]:
        return self.by_owner.get(owner, {})


@dataclass
class Stores:
    """The connectors and realms of one test, built in its own folder and databases."""

    folder: Path
    servers: Servers
    tables: list[dict[str, Any]] = field(default_factory=list)
    realms: list[dict[str, Any]] = field(default_factory=list)

    def vault(self, groups: dict[str, list[dict[str, Any]]]) -> None:
        """A KDBX 4 vault (cheap key derivation); entries by group path."""
        path = self.folder / "vault.kdbx"
        blank = PyKeePass(BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD)
        kdf = blank.kdbx.header.value.dynamic_header.kdf_parameters.data.dict
        kdf["M"].value, kdf["I"].value = 1 << 20, 2
        blank.filename, blank.password = str(path), VAULT_MASTER
        blank.save()
        vault = PyKeePass(str(path), VAULT_MASTER)
        for group_path, entries in groups.items():
            group = vault.root_group
            for name in group_path.split("/"):
                group = vault.find_groups(name=name, group=group, first=True, recursive=False) or (
                    vault.add_group(group, name)
                )
            for entry in entries:
                made = vault.add_entry(
                    group,
                    entry["title"],
                    entry["username"],
                    secrets.token_hex(8),
                    notes=entry.get("notes"),
                )
                for name, value in entry.get("fields", {}).items():
                    made.set_custom_property(name, value)
        vault.save()
        secret = self.folder / "vault-password"
        secret.write_text(VAULT_MASTER + "\n")
        self.tables.append(
            {
                "name": "vault",
                "type": "keepass",
                "description": "Our vault",
                "path": str(path),
                "password": {"file": str(secret)},
                "owner_fields": ["Email"],
            }
        )

    def wordpress(self, users: list[dict[str, Any]], comments: list[dict[str, Any]]) -> None:
        prefix = f"wp{secrets.token_hex(3)}_"
        engine = create_engine(self.servers.mariadb)
        try:
            create_wordpress_tables(engine, prefix)
            _insert(engine, {f"{prefix}users": users, f"{prefix}comments": comments})
        finally:
            engine.dispose()
        self.tables.append(
            {
                "name": "website",
                "type": "wordpress",
                "description": "Our website",
                "url": self.servers.mariadb,
                "table_prefix": prefix,
            }
        )

    def crm(self, rows: list[tuple[str, str]]) -> None:
        """A CRM table (email, note) for the ``sql`` connector, on MariaDB's *_ci collation."""
        name = f"crm_{secrets.token_hex(3)}"
        engine = create_engine(self.servers.mariadb)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, email VARCHAR(320), "
                    "note VARCHAR(200))"
                )
            items = [{"id": n, "email": e, "note": note} for n, (e, note) in enumerate(rows, 1)]
            _insert(engine, {name: items})
        finally:
            engine.dispose()
        self.tables.append(
            {
                "name": "crm",
                "type": "sql",
                "description": "Customer records",
                "url": self.servers.mariadb,
                "queries": [
                    {
                        "name": "customers",
                        "category": "Customer",
                        "sql": f"SELECT id, email, note FROM {name} WHERE email = :email",  # noqa: S608
                        "key": "id",
                        "verify": "email",
                    }
                ],
            }
        )

    def rmm(self, clients: dict[str, list[tuple[str, str, str]]]) -> None:
        """Tactical RMM on its own PostgreSQL database: agents (hostname, logged in, last
        logged in) by client."""
        database = f"rmm_{secrets.token_hex(4)}"
        admin = create_engine(self.servers.postgres, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {database}")
        finally:
            admin.dispose()
        url = make_url(self.servers.postgres).set(database=database)
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                for statement in tacticalrmm_statements(sqlite=False):
                    connection.exec_driver_sql(statement)
                agent = 0
                for number, (client, agents) in enumerate(clients.items(), 1):
                    connection.execute(
                        text("INSERT INTO clients_client (id, name) VALUES (:id, :name)"),
                        {"id": number, "name": client},
                    )
                    connection.execute(
                        text(
                            "INSERT INTO clients_site (id, client_id, name)"
                            " VALUES (:id, :id, 'Head office')"
                        ),
                        {"id": number},
                    )
                    for hostname, logged_in, last in agents:
                        agent += 1
                        connection.execute(
                            text(
                                "INSERT INTO agents_agent (id, agent_id, hostname, site_id,"
                                " public_ip, last_seen, logged_in_username, last_logged_in_user)"
                                " VALUES (:id, :agent_id, :hostname, :site, :ip,"
                                " '2026-03-01 09:30:00+00', :now, :last)"
                            ),
                            {
                                "id": agent,
                                "agent_id": f"agent-{agent}",
                                "hostname": hostname,
                                "site": number,
                                "ip": f"198.18.0.{agent}",
                                "now": logged_in,
                                "last": last,
                            },
                        )
        finally:
            engine.dispose()
        self.tables.append(
            {
                "name": "monitoring",
                "type": "tacticalrmm",
                "description": "Monitored computers",
                "url": url.render_as_string(hide_password=False),
            }
        )

    def logs(self, sources: dict[str, tuple[str, list[str]]]) -> None:
        """Log files by label: (format, lines)."""
        folder = self.folder / "logs"
        folder.mkdir()
        configured = []
        for number, (label, (log_format, lines)) in enumerate(sources.items()):
            path = folder / f"{number}.log"
            path.write_text("\n".join(lines) + "\n")
            source: dict[str, Any] = {"paths": [str(path)], "format": log_format, "label": label}
            if log_format == "auth":
                source["year"] = 2026
            configured.append(source)
        self.tables.append(
            {
                "name": "logs",
                "type": "access_log",
                "description": "Access logs",
                "sources": configured,
            }
        )

    def realm(self, label: str, *same_as: str) -> None:
        self.realms.append({"label": label, "same_as": list(same_as)})


def _insert(engine: Engine, rows: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as connection:
        for name, items in rows.items():
            for row in items:
                connection.execute(table(name, *(column(k) for k in row)).insert().values(row))


@pytest.fixture
def stores(tmp_path: Path, servers: Servers) -> Stores:
    folder = tmp_path / "stores"
    folder.mkdir()
    return Stores(folder, servers)


def wp_user(number: int, login: str, email: str, display: str) -> dict[str, Any]:
    return {
        "ID": number,
        "user_login": login,
        "user_pass": "$P$B" + secrets.token_hex(14),
        "user_nicename": login[:50],
        "user_email": email,
        "user_registered": "2026-01-05 10:00:00",
        "display_name": display,
    }


def wp_comment(number: int, email: str, author: str, content: str, user: int = 0) -> dict[str, Any]:
    return {
        "comment_ID": number,
        "comment_post_ID": 1,
        "comment_author": author,
        "comment_author_email": email,
        "comment_author_IP": "203.0.113.24",
        "comment_date_gmt": "2026-03-02 10:14:00",
        "comment_content": content,
        "comment_approved": "1",
        "user_id": user,
    }


# ----- asking, and reading the answer ------------------------------------------------------


@dataclass(frozen=True)
class Export:
    """What one person received: the data document and every byte of the mail, unzipped."""

    data: dict[str, Any]
    everything: str
    reference: str

    def records(self, source: str) -> list[dict[str, Any]]:
        return next((s["records"] for s in self.data["sources"] if s["name"] == source), [])

    def graph(self) -> dict[str, dict[str, str]]:
        return {link["described"]: link for link in self.data["identifiers"]}


def ask(bot: Bot, person: Correspondent) -> Export:
    """The person asks, confirms from their mailbox, and gets their export."""
    person.send(bot.address, "GDPR DATA REQUEST", "Please send me my data.")
    bot.support.wait_for(lambda m: person.address in str(m["From"]) and "GDPR" in str(m["Subject"]))
    bot.run_once()
    ack = person.wait_for(ACK)
    person.reply(ack)
    bot.support.wait_for(
        lambda m: person.address in str(m["From"]) and "Re: [" in str(m["Subject"])
    )
    bot.run_once()
    export = person.wait_for(EXPORT)
    [request] = [r for r in bot.requests() if r.email == person.address]
    assert request.state is RequestState.DELIVERED, request.last_error
    texts: list[str] = [export.as_string()]
    data: dict[str, Any] | None = None
    for part in export.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            for name in archive.namelist():
                texts.append(archive.read(name).decode("utf-8", "replace"))
            data = json.loads(archive.read("data.json"))
    assert data is not None, "the export carries no data.json"
    return Export(data, "\n".join(texts), request.reference)


def owns(export: Export, marks: Marks, owner: str, other: str) -> None:
    """Every one of the owner's markers is in the export, and none of the other's."""
    missing = [what for what, value in marks.of(owner).items() if value not in export.everything]
    assert not missing, f"{owner} did not get their own: {missing}"
    leaked = [what for what, value in marks.of(other).items() if value in export.everything]
    assert not leaked, f"{owner} got {other}'s data: {leaked}"


def graph_shown(bot: Bot, reference: str) -> list[dict[str, str]]:
    """The identity graph as ``sarbot requests show REF --json`` gives it to an operator."""
    result = CliRunner().invoke(
        cli,
        ["requests", "show", reference, "--json"],
        obj={"app": bot.app, "config_path": bot.app.config_path},
    )
    assert result.exit_code == 0, result.output
    graph: list[dict[str, str]] = json.loads(result.output)["identity_graph"]
    return graph


def acme(stores: Stores, *more: str) -> None:
    """Acme Ltd under its names: the vault group, the RMM client, its Windows domain."""
    stores.realm(
        "Acme Ltd",
        "keepass:vault/Clients/Acme Ltd",
        "tacticalrmm:monitoring/Acme Ltd",
        "ad:ACME",
        *more,
    )


def alice_entry(marks: Marks, address: str, **more: Any) -> dict[str, Any]:
    return {
        "title": f"Workstation login {marks('alice', 'vault-title')}",
        "username": "asmith",
        "fields": {"Email": address, "Desk": marks("alice", "vault-desk")},
        **more,
    }


# ----- the lookalikes ------------------------------------------------------------------------


class TestSelfChosenNames:
    @pytest.mark.parametrize("login", ["asmith", "ACME\\asmith", "alice"])
    def test_a_website_login_equal_to_someone_elses_reaches_nothing_of_theirs(
        self, make_bot: BotFactory, person: Person, stores: Stores, login: str
    ) -> None:
        """mallory signs up on the website as alice's Windows login, or as alice's address:
        her export holds her website account only; alice's holds all of hers and none of
        mallory's."""
        marks = Marks()
        alice, mallory = person("alice", "example.test"), person("mallory", "evil.test")
        login = alice.address if login == "alice" else login
        stores.vault({"Clients/Acme Ltd": [alice_entry(marks, alice.address)]})
        stores.rmm(
            {
                "Acme Ltd": [
                    (marks("alice", "pc"), "ACME\\asmith", "ACME\\asmith"),
                    (marks("alice", "laptop"), "None", "asmith"),
                ]
            }
        )
        stores.wordpress(
            users=[
                wp_user(2, "alice_w", alice.address, marks("alice", "wp-name")),
                wp_user(3, login, mallory.address, marks("mallory", "wp-name")),
            ],
            comments=[
                wp_comment(1, alice.address, "Alice", marks("alice", "comment"), user=2),
                wp_comment(2, mallory.address, login, marks("mallory", "comment"), user=3),
            ],
        )
        acme(stores)
        bot = make_bot(connectors=stores.tables, realms=stores.realms)

        theirs = ask(bot, mallory)
        owns(theirs, marks, "mallory", "alice")
        assert theirs.records("vault") == [] and theirs.records("monitoring") == []
        shown = {(g["kind"], g["value"]): g for g in graph_shown(bot, theirs.reference)}
        chosen = shown[("username", login)]
        assert (chosen["trust"], chosen["scope"]) == ("self_asserted", "not_followed")
        assert chosen["reason"] == "chosen by whoever typed it, so it proves nothing"
        # The letter says what was not followed, and why.
        assert f"- login {login}: chosen by whoever typed it, so it proves nothing" in (
            theirs.everything
        )
        # The audit trail holds the graph's digest and counts, not the identifiers.
        [event] = [e for e in bot.audit() if e.event == "collect.graph"]
        assert " not followed; graph sha256:" in event.reason
        assert login not in event.reason
        shown_text = (
            CliRunner()
            .invoke(
                cli,
                ["requests", "show", theirs.reference],
                obj={"app": bot.app, "config_path": bot.app.config_path},
            )
            .output
        )
        assert "identity graph (the last collection):" in shown_text
        assert "self_asserted  not_followed" in shown_text

        hers = ask(bot, alice)
        owns(hers, marks, "alice", "mallory")
        assert len(hers.records("monitoring")) == 2
        assert hers.graph()["login asmith at Acme Ltd"]["scope"] == "everywhere"


class TestVaultMentions:
    def test_another_persons_entry_that_mentions_alice_gives_her_only_the_mention(
        self, make_bot: BotFactory, person: Person, stores: Stores
    ) -> None:
        """bob's entry says "Approved by: alice@..." and mentions her in its notes: alice
        gets those lines and nothing else of it, and bob's login is not followed into his
        computer; bob gets his whole entry, with alice's address withheld from it."""
        marks = Marks()
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        bob_notes = (
            f"Reset only with approval from {alice.address}.\n"
            f"Alarm contact: {marks('bob', 'notes-line')}"
        )
        stores.vault(
            {
                "Clients/Acme Ltd": [
                    alice_entry(marks, alice.address),
                    {
                        "title": f"Printer admin {marks('bob', 'title')}",
                        "username": "bjones",
                        "notes": bob_notes,
                        "fields": {
                            "Email": bob.address,
                            "Approved by": alice.address,
                            "Phone": marks("bob", "phone"),
                        },
                    },
                ]
            }
        )
        stores.rmm(
            {
                "Acme Ltd": [
                    (marks("alice", "pc"), "ACME\\asmith", "ACME\\asmith"),
                    (marks("bob", "pc"), "ACME\\bjones", "ACME\\bjones"),
                ]
            }
        )
        acme(stores)
        bot = make_bot(connectors=stores.tables, realms=stores.realms)

        hers = ask(bot, alice)
        owns(hers, marks, "alice", "bob")
        [mention] = [r for r in hers.records("vault") if r["category"] != "Vault entry"]
        assert mention["fields"] == {
            "Group": "Clients/Acme Ltd",
            "Notes": f"Reset only with approval from {alice.address}.",
            "Approved by": alice.address,
            **{k: mention["fields"][k] for k in ("Created", "Modified", "Expires", "Expiry time")},
        }
        assert "bjones" not in hers.everything
        assert "bjones" not in json.dumps(graph_shown(bot, hers.reference))

        his = ask(bot, bob)
        owns(his, marks, "bob", "alice")
        assert alice.address not in his.everything
        [entry] = his.records("vault")
        assert entry["fields"]["Custom fields"]["Approved by"] == "[withheld: about another person]"


class TestTwoClients:
    def test_two_people_called_asmith_at_two_clients_get_their_own_only(
        self, make_bot: BotFactory, person: Person, stores: Stores
    ) -> None:
        """ACME\\asmith and OTHERLTD\\asmith are two people: each gets their own vault entry,
        computers and log lines, never the other's; a computer at Acme used by OTHERLTD\\asmith
        goes to neither; a computer alice was only the last to use hides who uses it now."""
        marks = Marks()
        alice, andrew = person("alice", "example.test"), person("andrew", "example.test")
        stores.vault(
            {
                "Clients/Acme Ltd": [alice_entry(marks, alice.address)],
                "Clients/Other Ltd": [
                    {
                        "title": f"Login {marks('andrew', 'vault-title')}",
                        "username": "OTHERLTD\\asmith",
                        "fields": {"Email": andrew.address},
                    }
                ],
            }
        )
        stores.rmm(
            {
                "Acme Ltd": [
                    (marks("alice", "pc"), "ACME\\asmith", "ACME\\asmith"),
                    (marks("alice", "laptop"), "ACME\\cjones", "asmith"),
                    (f"VISITOR-{secrets.token_hex(4)}", "OTHERLTD\\asmith", "OTHERLTD\\asmith"),
                ],
                "Other Ltd": [
                    (marks("andrew", "pc"), "OTHERLTD\\asmith", "OTHERLTD\\asmith"),
                    (marks("andrew", "laptop"), "asmith", "asmith"),
                ],
            }
        )
        ssh = (
            "Mar  1 09:00:0{n} gw1 sshd[10{n}]: Accepted publickey for asmith from {ip}"
            " port 5000{n} ssh2"
        )
        stores.logs(
            {
                "Acme gateway": ("auth", [ssh.format(n=1, ip="192.0.2.11")]),
                "Other gateway": ("auth", [ssh.format(n=2, ip="198.51.100.12")]),
            }
        )
        acme(stores, "access_log:logs/Acme gateway")
        stores.realm(
            "Other Ltd",
            "keepass:vault/Clients/Other Ltd",
            "tacticalrmm:monitoring/Other Ltd",
            "ad:OTHERLTD",
            "access_log:logs/Other gateway",
        )
        bot = make_bot(connectors=stores.tables, realms=stores.realms)

        hers = ask(bot, alice)
        owns(hers, marks, "alice", "andrew")
        assert "VISITOR-" not in hers.everything
        assert [r["fields"]["Source IP"] for r in hers.records("logs")] == ["192.0.2.11"]
        laptop = next(
            r
            for r in hers.records("monitoring")
            if r["fields"]["Hostname"] == marks.of("alice")["laptop"]
        )
        assert laptop["fields"]["Public IP address"].startswith("[withheld")
        assert laptop["fields"]["Last seen"].startswith("[withheld")
        assert laptop["fields"]["Logged-in user"] == "[another person: withheld]"

        his = ask(bot, andrew)
        owns(his, marks, "andrew", "alice")
        assert "VISITOR-" not in his.everything
        assert [r["fields"]["Source IP"] for r in his.records("logs")] == ["198.51.100.12"]
        assert his.graph()["login OTHERLTD\\asmith at Other Ltd"]["scope"] == "everywhere"

    def test_a_login_written_like_an_address_at_a_private_domain_is_two_people(
        self, make_bot: BotFactory, person: Person, stores: Stores
    ) -> None:
        """Both clients' domains are corp.local: asmith@corp.local at Acme is alice, at Other
        Ltd someone else. Neither gets the other's vault entry or computer."""
        marks = Marks()
        alice, andrew = person("alice", "example.test"), person("andrew", "example.test")
        stores.vault(
            {
                "Clients/Acme Ltd": [
                    {"title": marks("alice", "vault"), "username": "asmith@corp.local",
                     "fields": {"Email": alice.address}},
                ],
                "Clients/Other Ltd": [
                    {"title": marks("andrew", "vault"), "username": "asmith@corp.local",
                     "fields": {"Email": andrew.address}},
                ],
            }
        )  # fmt: skip
        stores.rmm(
            {
                "Acme Ltd": [(marks("alice", "pc"), "asmith@corp.local", "asmith@corp.local")],
                "Other Ltd": [(marks("andrew", "pc"), "asmith@corp.local", "asmith@corp.local")],
            }
        )
        stores.realm(
            "Acme Ltd",
            "keepass:vault/Clients/Acme Ltd",
            "tacticalrmm:monitoring/Acme Ltd",
            "ad:corp.local",
        )
        stores.realm(
            "Other Ltd",
            "keepass:vault/Clients/Other Ltd",
            "tacticalrmm:monitoring/Other Ltd",
            "ad:corp.local",
        )
        bot = make_bot(connectors=stores.tables, realms=stores.realms)
        hers = ask(bot, alice)
        owns(hers, marks, "alice", "andrew")
        assert hers.graph()["login asmith@corp.local at Acme Ltd"]["scope"] == "everywhere"
        owns(ask(bot, andrew), marks, "andrew", "alice")

    def test_a_login_at_the_top_of_the_vault_is_not_valid_in_every_group(
        self, make_bot: BotFactory, person: Person, stores: Stores
    ) -> None:
        """alice's entry sits at the vault's top level: her login asmith does not make another
        client's asmith entry hers."""
        marks = Marks()
        alice, andrew = person("alice", "example.test"), person("andrew", "example.test")
        stores.vault(
            {
                "Staff": [],
                "Clients/Other Ltd": [
                    {"title": marks("andrew", "vault"), "username": "asmith",
                     "fields": {"Email": andrew.address}},
                ],
            }
        )  # fmt: skip
        vault = PyKeePass(str(stores.folder / "vault.kdbx"), VAULT_MASTER)
        top = vault.add_entry(vault.root_group, marks("alice", "vault"), "asmith", "x")
        top.set_custom_property("Email", alice.address)
        vault.save()
        bot = make_bot(connectors=stores.tables)
        owns(ask(bot, alice), marks, "alice", "andrew")


class TestInternationalAddresses:
    def test_an_address_at_strasse_is_not_the_one_at_strasse_with_sharp_s(
        self, make_bot: BotFactory, person: Person, mailstack: MailServer, stores: Stores
    ) -> None:
        """alice@straße.test and alice@strasse.test are two people, although MariaDB's
        collation and Python's casefold() take ß for ss: each gets their own CRM row,
        comment and vault entry, stored in whichever form, and never the other's."""
        marks = Marks()
        local = unique("alice", "x").partition("@")[0]
        sharp = Correspondent(mailstack, f"{local}@xn--strae-oqa.test")
        double = Correspondent(mailstack, f"{local}@strasse.test")
        unicode_sharp = f"{local}@straße.test"
        stores.crm(
            [
                (unicode_sharp, marks("sharp", "crm")),
                (double.address, marks("double", "crm")),
            ]
        )
        stores.wordpress(
            users=[],
            comments=[
                wp_comment(1, unicode_sharp, "A", marks("sharp", "comment")),
                wp_comment(2, double.address, "A", marks("double", "comment")),
            ],
        )
        stores.vault(
            {
                "Staff": [
                    {"title": marks("sharp", "vault"), "username": unicode_sharp},
                    {"title": marks("double", "vault"), "username": double.address},
                ]
            }
        )
        bot = make_bot(connectors=stores.tables)

        owns(ask(bot, sharp), marks, "sharp", "double")
        owns(ask(bot, double), marks, "double", "sharp")
        assert {r.email for r in bot.requests()} == {sharp.address, double.address}


class TestAddressesInLinks:
    def test_a_visit_to_a_link_with_alices_address_names_no_visitor(
        self, make_bot: BotFactory, person: Person, stores: Stores
    ) -> None:
        """Anyone may open a link carrying alice's address: alice gets the fact of the visit
        without who, from where or when; bob, who opened one, gets his visit without her
        address; alice's own signed-in visits stay whole."""
        marks = Marks()
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        stores.vault(
            {
                "Clients/Acme Ltd": [
                    alice_entry(marks, alice.address),
                    {"title": "Bob", "username": "bjones", "fields": {"Email": bob.address}},
                ]
            }
        )
        web = '{ip} - {user} [01/Mar/2026:10:0{n}:00 +0000] "GET {path} HTTP/1.1" 200 10 "-" "x"'
        stores.logs(
            {
                "Portal": (
                    "combined",
                    [
                        web.format(
                            ip="192.0.2.10",
                            user="asmith",
                            n=1,
                            path=f"/wiki/{marks('alice', 'page')}",
                        ),
                        web.format(
                            ip="198.51.100.7",
                            user="bjones",
                            n=2,
                            path=f"/reset?email={alice.address}",
                        ),
                        web.format(
                            ip="203.0.113.99",
                            user="-",
                            n=3,
                            path=f"/unsubscribe?email={alice.address}",
                        ),
                    ],
                )
            }
        )
        stores.realm("Acme Ltd", "keepass:vault/Clients/Acme Ltd", "access_log:logs/Portal")
        bot = make_bot(connectors=stores.tables, realms=stores.realms)

        hers = ask(bot, alice)
        owns(hers, marks, "alice", "bob")
        lines = {r["fields"]["Action"]: r["fields"] for r in hers.records("logs")}
        assert set(lines) == {
            f"GET /wiki/{marks.of('alice')['page']}",
            f"GET /reset?email={alice.address}",
            f"GET /unsubscribe?email={alice.address}",
        }
        for action in (
            f"GET /reset?email={alice.address}",
            f"GET /unsubscribe?email={alice.address}",
        ):
            assert set(lines[action]) == {"Log", "Action", "Status"}
        assert "198.51.100.7" not in hers.everything and "203.0.113.99" not in hers.everything
        assert "bjones" not in hers.everything

        his = ask(bot, bob)
        [visit] = his.records("logs")
        assert visit["fields"]["Source IP"] == "198.51.100.7"
        assert visit["fields"]["Action"] == "GET /reset"
        assert alice.address not in his.everything
