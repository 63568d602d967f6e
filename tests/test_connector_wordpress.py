"""The wordpress connector, on a real MariaDB server with WordPress's own tables, and on SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import phpserialize
import pytest
from sqlalchemy import Engine, column, create_engine, func, select, table, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from connectors import readonly
from connectors.statements import Paged
from connectors.wordpress import (
    UNREADABLE_SESSIONS,
    WITHHELD,
    WordpressConnector,
    WordpressSettings,
)
from sarbot.config import validate
from sarbot.connector import Connector, Identifier, Identity, Record, Trust
from sarbot.errors import ConfigError
from sarbot.testing.identity import address, asked, login
from sarbot.testing.stores import create_wordpress_tables
from tests.servers import ServerError, mariadb_server

ALICE = "alice@example.test"
PASSWORD_CANARY = "$wp$2y$10$CANARYpasswordHASHnever.exported"
ACTIVATION_CANARY = "1767052800:$generic$CANARYactivationKEY"
TOKEN_CANARIES = ("c" * 32 + "anary" + "0" * 27, "d" * 32 + "anary" + "1" * 27)
OTHER_CANARIES = ("CANARY-BOB", "CANARY-LOOKALIKE", "CANARY-ORDER", "CANARY-PLUGIN-META")
HOSTILE = (
    "alice@example.test' OR '1'='1",
    "' OR 1=1 -- ",
    "alice_w'; DROP TABLE wp_users; --",
    "%",
    "_",
    "*",
    '") OR ("a"="a',
    "alice@example.test\x00",
)

PHP_OBJECT = 'O:8:"stdClass":1:{s:2:"ip";s:9:"10.0.0.66";}'

Make = Callable[..., WordpressConnector]


def serialized(session: dict[str, Any]) -> str:
    return str(phpserialize.dumps(session).decode())


def sessions_of(*sessions: dict[str, Any]) -> str:
    return serialized(dict(zip(TOKEN_CANARIES, sessions, strict=False)))


def comment(
    comment_id: int, email: str, content: str, *, post: int = 1, author: str = "Alice", **more: Any
) -> dict[str, Any]:
    return {
        "comment_ID": comment_id,
        "comment_post_ID": post,
        "comment_author": author,
        "comment_author_email": email,
        "comment_content": content,
        **more,
    }


WORDPRESS: dict[str, list[dict[str, Any]]] = {
    "users": [
        {
            "ID": 3,
            "user_login": "alice_w",
            "user_pass": PASSWORD_CANARY,
            "user_nicename": "alice-w",
            "user_email": "Alice@Example.test",
            "user_url": "https://alice.example.test",
            "user_registered": "2020-05-06 07:08:09",
            "user_activation_key": ACTIVATION_CANARY,
            "display_name": "Alice Wonder",
        },
        {
            "ID": 4,
            "user_login": "bob",
            "user_pass": PASSWORD_CANARY,
            "user_email": "bob@example.test",
        },
        {"ID": 5, "user_login": "carol", "user_email": "carol@example.test"},
    ],
    "usermeta": [
        {"user_id": 3, "meta_key": "first_name", "meta_value": "Alice"},
        {"user_id": 3, "meta_key": "last_name", "meta_value": "Wonder"},
        {"user_id": 3, "meta_key": "nickname", "meta_value": "alice"},
        {"user_id": 3, "meta_key": "description", "meta_value": "Writes about tea."},
        {
            "user_id": 3,
            "meta_key": "wp_capabilities",
            "meta_value": 'a:1:{s:13:"administrator";b:1;}',
        },
        {"user_id": 3, "meta_key": "wp_user_level", "meta_value": "10"},
        {"user_id": 3, "meta_key": "plugin_api_token", "meta_value": "CANARY-PLUGIN-META"},
        {
            "user_id": 3,
            "meta_key": "session_tokens",
            "meta_value": sessions_of(
                {
                    "expiration": 1767225600,
                    "ip": "198.51.100.23",
                    "ua": "AliceBrowser/1.0",
                    "login": 1767052800,
                },
                {
                    "expiration": 1767312000,
                    "ip": "2001:db8::7",
                    "ua": "AlicePhone/2.0",
                    "login": 1767139200,
                },
            ),
        },
        {
            "user_id": 3,
            "meta_key": "community-events-location",
            "meta_value": serialized(
                {
                    "description": "Lisbon",
                    "country": "PT",
                    "latitude": "38.72",
                    "ip": "198.51.100.0",
                }
            ),
        },
        {"user_id": 4, "meta_key": "first_name", "meta_value": "Bob"},
        {
            "user_id": 4,
            "meta_key": "session_tokens",
            "meta_value": 'a:1:{s:64:"' + TOKEN_CANARIES[0],
        },
        {
            "user_id": 5,
            "meta_key": "session_tokens",
            "meta_value": f'a:1:{{s:64:"{TOKEN_CANARIES[1]}";{PHP_OBJECT}}}',
        },
    ],
    "posts": [
        {"ID": 1, "post_title": "Hello world", "guid": "https://blog.example.test/?p=1"},
        {"ID": 2, "post_title": "Tea notes", "guid": ""},
    ],
    "comments": [
        comment(
            11,
            ALICE,
            "First!",
            comment_author_url="https://alice.example.test",
            comment_author_IP="203.0.113.7",
            comment_agent="AliceAgent/1",
            comment_date_gmt="2024-03-04 05:06:07",
        ),
        comment(12, "ALICE@EXAMPLE.TEST", "Waiting", post=2, comment_approved="0"),
        comment(13, ALICE, "Buy now", author="A.", comment_approved="spam"),
        comment(14, ALICE, "Oops", comment_approved="trash"),
        comment(15, ALICE, "On a trashed post", comment_approved="post-trashed"),
        comment(
            16,
            "alice.old@elsewhere.test",
            "Logged in",
            author="Alice Wonder",
            comment_author_IP="192.0.2.44",
            user_id=3,
        ),
        comment(
            17,
            "bob@example.test",
            "CANARY-BOB",
            author="Bob",
            comment_author_IP="203.0.113.7",
            user_id=4,
        ),
        comment(18, "alice@example.test.evil.test", "CANARY-LOOKALIKE", author="Mallory"),
        comment(
            19,
            "woocommerce@blog.example.test",
            "CANARY-ORDER",
            author="WooCommerce",
            comment_type="order_note",
            user_id=3,
        ),
        comment(20, ALICE, "On a deleted post", post=99),
        comment(21, "", "Pingback", author="Some blog", comment_type="pingback"),
    ],
}
REQUIRED_TEXT = {
    "posts": ("post_content", "post_excerpt", "to_ping", "pinged", "post_content_filtered"),
}
OTHER_SITE: dict[str, list[dict[str, Any]]] = {
    "users": [
        {"ID": 3, "user_login": "alice_x", "user_email": ALICE, "display_name": "Alice of WPX"}
    ],
    "usermeta": [],
    "posts": [{"ID": 1, "post_title": "WPX post", "guid": "https://wpx.example.test/?p=1"}],
    "comments": [comment(11, ALICE, "WPX comment")],
}

# Mallory signed up with alice's address as his login; a website visitor chose the login asmith,
# which is also alice's Windows login at Acme.  Neither is alice.
LOOKALIKE_ACCOUNTS: dict[str, list[dict[str, Any]]] = {
    "users": [
        {"ID": 3, "user_login": "alice_w", "user_email": "Alice@Example.test"},
        {"ID": 6, "user_login": ALICE, "user_email": "mallory@evil.test"},
        {"ID": 7, "user_login": "asmith", "user_email": "asmith.home@example.net"},
    ],
    "usermeta": [{"user_id": 6, "meta_key": "first_name", "meta_value": "CANARY-MALLORY-NAME"}],
    "posts": [{"ID": 1, "post_title": "Hello", "guid": "https://wpa.example.test/?p=1"}],
    "comments": [
        comment(11, ALICE, "Alice, logged in", user_id=3),
        comment(12, "mallory@evil.test", "CANARY-MALLORY", author="alice", user_id=6),
        comment(13, "asmith.home@example.net", "CANARY-WEB-ASMITH", author="asmith", user_id=7),
        comment(14, ALICE, "Alice, as a guest"),
    ],
}
# Four customers MariaDB's utf8mb4_unicode_520_ci cannot tell apart two by two: ß is ss there,
# ü is u.  The straße and müller addresses are stored one in Unicode, one in ASCII (IDNA).
COLLATION_SITE: dict[str, list[dict[str, Any]]] = {
    "users": [
        {"ID": 1, "user_login": "strasse", "user_email": "anna@strasse.test"},
        {"ID": 2, "user_login": "straße", "user_email": "anna@straße.test"},
        {"ID": 3, "user_login": "muller", "user_email": "carl@muller.test"},
        {"ID": 4, "user_login": "müller", "user_email": "carl@xn--mller-kva.test"},
    ],
    "usermeta": [],
    "posts": [{"ID": 1, "post_title": "Hello", "guid": "https://wpc.example.test/?p=1"}],
    "comments": [
        comment(1, "anna@strasse.test", "by the strasse anna", author="Anna"),
        comment(2, "anna@xn--strae-oqa.test", "by the straße anna", author="Anna"),
        comment(3, "carl@muller.test", "by the muller carl", author="Carl"),
        comment(4, "carl@müller.test", "by the müller carl", author="Carl"),
    ],
}


def insert_site(engine: Engine, prefix: str, site: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as connection:
        for name, rows in site.items():
            for row in rows:
                values = dict.fromkeys(REQUIRED_TEXT.get(name, ()), "") | row
                target = table(f"{prefix}{name}", *(column(key) for key in values))
                connection.execute(target.insert().values(values))


def build_site(url: str, prefix: str, site: dict[str, list[dict[str, Any]]]) -> None:
    engine = create_engine(url)
    try:
        create_wordpress_tables(engine, prefix)
        insert_site(engine, prefix, site)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def mariadb() -> Iterator[str]:
    """One MariaDB server for the module, holding the 'wp_' and 'wpx_' sites, and the
    look-alike sites 'wpa_' (accounts) and 'wpc_' (collation)."""
    try:
        with mariadb_server() as url:
            build_site(url, "wp_", WORDPRESS)
            build_site(url, "wpx_", OTHER_SITE)
            build_site(url, "wpa_", LOOKALIKE_ACCOUNTS)
            build_site(url, "wpc_", COLLATION_SITE)
            yield url
    except ServerError as exc:
        pytest.fail(f"MariaDB could not be started: {exc}", pytrace=False)


@pytest.fixture
def sqlite_site(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'wordpress.db'}"
    build_site(url, "wp_", WORDPRESS)
    return url


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    made: list[WordpressConnector] = []

    def factory(url: str, **settings: Any) -> WordpressConnector:
        data = {"url": url, **settings}
        valid = validate(data, WordpressSettings, source="test", base_dir=tmp_path)
        made.append(WordpressConnector("blog", valid))
        return made[-1]

    yield factory
    for connector in made:
        connector.close()


WEBSITE = "wordpress:blog"


def website_login(value: str) -> Identifier:
    """A login this website yielded: chosen by whoever signed up, valid on this site only."""
    return login(value, WEBSITE, trust=Trust.SELF_ASSERTED)


def by_username(value: str) -> Identity:
    return asked(website_login(value))


def by_key(records: Iterable[Record]) -> dict[str, Record]:
    found: dict[str, Record] = {}
    for record in records:
        assert record.key not in found, f"{record.key} exported twice"
        found[record.key] = record
    return found


def comment_keys(records: Iterable[Record]) -> set[str]:
    return {r.key for r in records if r.category == "Website comment"}


def dump(records: Iterable[Record]) -> str:
    """Everything a record carries into an export, as text."""
    return json.dumps(
        [
            [r.category, dict(r.fields), r.location, r.key, list(r.notes)]
            + [[y.kind, y.value, y.origin] for y in r.yields]
            for r in records
        ]
    )


class TestComments:
    def test_every_approval_state_is_exported_by_email(self, mariadb: str, make: Make) -> None:
        """Approved, pending, spam, trashed and post-trashed comments by the address are found."""
        identity = Identity.verified(ALICE)
        records = by_key(make(mariadb).collect(identity))
        statuses = {k: r.fields["Status"] for k, r in records.items() if k.startswith("comment:")}
        assert statuses == {
            "comment:11": "approved",
            "comment:12": "pending",
            "comment:13": "spam",
            "comment:14": "trash",
            "comment:15": "post trashed",
            "comment:16": "approved",
            "comment:20": "approved",
        }
        assert records["comment:12"].found_by is identity.identifiers[0]

    def test_fields_location_and_links(self, mariadb: str, make: Make) -> None:
        """A comment carries what WordPress's exporter exports, its post and where it is stored."""
        records = by_key(make(mariadb).collect(Identity.verified(ALICE)))
        comment = records["comment:11"]
        assert dict(comment.fields) == {
            "Author": "Alice",
            "Email": ALICE,
            "Website": "https://alice.example.test",
            "IP address": "203.0.113.7",
            "User agent": "AliceAgent/1",
            "Date (GMT)": "2024-03-04T05:06:07+00:00",
            "Content": "First!",
            "Status": "approved",
            "Type": "comment",
            "Post title": "Hello world",
            "Post link": "https://blog.example.test/?p=1",
            "Comment link": "https://blog.example.test/?p=1#comment-11",
        }
        assert comment.location == "table wp_comments, comment_ID 11"
        assert comment.yields == (
            Identifier(
                "ip",
                "203.0.113.7",
                "wordpress 'blog': table wp_comments, comment_ID 11",
                "ip",
                Trust.SELF_ASSERTED,
            ),
        )
        orphan = records["comment:20"].fields
        assert (orphan["Post title"], orphan["Post link"], orphan["Date (GMT)"]) == (
            None,
            None,
            None,
        )

    def test_site_url_links_posts_without_guid(self, mariadb: str, make: Make) -> None:
        """A post with no guid is linked through site_url, and not at all without it."""
        plain = by_key(make(mariadb).collect(Identity.verified(ALICE)))
        linked = by_key(
            make(mariadb, site_url="https://blog.example.test/").collect(Identity.verified(ALICE))
        )
        assert plain["comment:12"].fields["Post link"] is None
        assert linked["comment:12"].fields["Post link"] == "https://blog.example.test/?p=2"
        assert linked["comment:12"].fields["Comment link"] == (
            "https://blog.example.test/?p=2#comment-12"
        )

    def test_comments_by_account_with_another_address(self, mariadb: str, make: Make) -> None:
        """A comment written while logged in is found through the account, whatever its email."""
        identity = Identity.verified(ALICE)
        records = by_key(make(mariadb).collect(identity))
        assert records["comment:16"].fields["Email"] == "alice.old@elsewhere.test"
        assert records["comment:16"].found_by is identity.identifiers[0]

    def test_other_peoples_comments_never_appear(self, mariadb: str, make: Make) -> None:
        """Comments by others are absent, even from the same IP or with a look-alike address."""
        records = list(make(mariadb).collect(Identity.verified(ALICE)))
        assert not {"comment:17", "comment:18", "comment:21"} & comment_keys(records)
        text = dump(records)
        for canary in (*OTHER_CANARIES, "bob@example.test", "Mallory"):
            assert canary not in text
        assert "203.0.113.7" in text

    def test_order_notes_are_skipped_by_default(self, mariadb: str, make: Make) -> None:
        """Shop order notes under the account are left out unless skip_comment_types is emptied."""
        default = comment_keys(make(mariadb).collect(Identity.verified(ALICE)))
        everything = comment_keys(
            make(mariadb, skip_comment_types=[]).collect(Identity.verified(ALICE))
        )
        assert "comment:19" not in default
        assert everything - default == {"comment:19"}


class TestAccount:
    def test_account_and_profile_are_exported(self, mariadb: str, make: Make) -> None:
        """The account found by its address carries its columns and its profile meta."""
        identity = Identity.verified(ALICE)
        account = by_key(make(mariadb).collect(identity))["user:3"]
        assert account.category == "Website account"
        assert dict(account.fields) == {
            "User ID": 3,
            "Login name": "alice_w",
            "Nice name": "alice-w",
            "Email": "Alice@Example.test",
            "Website": "https://alice.example.test",
            "Registered (GMT)": "2020-05-06T07:08:09+00:00",
            "Display name": "Alice Wonder",
            "First name": "Alice",
            "Last name": "Wonder",
            "Nickname": "alice",
            "Biographical info": "Writes about tea.",
        }
        assert account.location == "table wp_users, ID 3"
        assert account.notes == (WITHHELD,)
        assert account.found_by is identity.identifiers[0]

    def test_events_location_is_exported(self, mariadb: str, make: Make) -> None:
        """The dashboard events location WordPress's exporter exports is read from its PHP array."""
        location = by_key(make(mariadb).collect(Identity.verified(ALICE)))["user:3:events-location"]
        assert dict(location.fields) == {
            "City": "Lisbon",
            "Country": "PT",
            "Latitude": "38.72",
            "IP address": "198.51.100.0",
        }

    def test_secrets_and_other_meta_never_appear(self, mariadb: str, make: Make) -> None:
        """No password hash, reset key, token, role or other meta reaches any record."""
        connector = make(mariadb)
        records = [
            *connector.collect(Identity.verified(ALICE)),
            *connector.collect(by_username("alice_w")),
            *connector.collect(Identity.verified("bob@example.test")),
            *connector.collect(Identity.verified("carol@example.test")),
        ]
        text = dump(records)
        for secret in (
            PASSWORD_CANARY,
            ACTIVATION_CANARY,
            *TOKEN_CANARIES,
            "CANARY-PLUGIN-META",
            "administrator",
            "user_level",
        ):
            assert secret not in text

    def test_username_is_yielded_and_email_only_when_new(self, mariadb: str, make: Make) -> None:
        """Login and address are yielded, except the identifier that found the account; both
        were typed by whoever signed up, so they are self-asserted, the login this site's."""
        connector = make(mariadb)
        by_email = by_key(connector.collect(Identity.verified(ALICE)))["user:3"]
        by_name = by_key(connector.collect(by_username("alice_w")))["user:3"]
        origin = "wordpress 'blog': wp_users.%s of user ID 3"
        user_login = Identifier(
            "username", "alice_w", origin % "user_login", WEBSITE, Trust.SELF_ASSERTED
        )
        assert by_email.yields == (user_login,)
        assert by_name.yields == (
            Identifier("email", ALICE, origin % "user_email", "email", Trust.SELF_ASSERTED),
        )


class TestSessions:
    def test_sessions_are_parsed_without_tokens(self, mariadb: str, make: Make) -> None:
        """Each login session gives IP, browser and UTC times; the token hashes never appear."""
        records = by_key(make(mariadb).collect(Identity.verified(ALICE)))
        sessions = [r for r in records.values() if r.category == "Website login session"]
        assert [dict(s.fields) for s in sessions] == [
            {
                "IP address": "198.51.100.23",
                "User agent": "AliceBrowser/1.0",
                "Logged in (UTC)": "2025-12-30T00:00:00+00:00",
                "Expires (UTC)": "2026-01-01T00:00:00+00:00",
            },
            {
                "IP address": "2001:db8::7",
                "User agent": "AlicePhone/2.0",
                "Logged in (UTC)": "2025-12-31T00:00:00+00:00",
                "Expires (UTC)": "2026-01-02T00:00:00+00:00",
            },
        ]
        where = "table wp_usermeta, user_id 3, meta_key session_tokens"
        assert sessions[0].location == where
        assert sessions[0].yields == (
            Identifier(
                "ip", "198.51.100.23", f"wordpress 'blog': {where}", "ip", Trust.SELF_ASSERTED
            ),
        )
        text = dump(sessions)
        assert not any(token in text or token[:16] in text for token in TOKEN_CANARIES)

    def test_malformed_sessions_are_noted_not_fatal(self, mariadb: str, make: Make) -> None:
        """Broken serialized sessions are skipped with a note; the rest of the account is kept."""
        records = by_key(make(mariadb).collect(Identity.verified("bob@example.test")))
        assert records["user:4"].fields["First name"] == "Bob"
        assert UNREADABLE_SESSIONS in records["user:4"].notes
        assert not [r for r in records.values() if r.category == "Website login session"]

    def test_php_objects_are_refused(self, mariadb: str, make: Make) -> None:
        """A session array holding a PHP object is not instantiated or exported, only noted."""
        records = by_key(make(mariadb).collect(Identity.verified("carol@example.test")))
        assert UNREADABLE_SESSIONS in records["user:5"].notes
        assert "10.0.0.66" not in dump(records.values())
        assert set(records) == {"user:5"}


class TestUsernames:
    def test_username_finds_account_and_its_comments(self, mariadb: str, make: Make) -> None:
        """A username, in any case, finds the account, its sessions and its logged-in comments."""
        identity = by_username("ALICE_W")
        records = by_key(make(mariadb).collect(identity))
        assert set(records) == {
            "user:3",
            "user:3:events-location",
            "user:3:session:2025-12-30T00:00:00+00:00/2026-01-01T00:00:00+00:00/1",
            "user:3:session:2025-12-31T00:00:00+00:00/2026-01-02T00:00:00+00:00/1",
            "comment:16",
        }
        assert all(r.found_by is identity.identifiers[0] for r in records.values())

    def test_usernames_can_be_ignored(self, mariadb: str, make: Make) -> None:
        """With match_usernames off, a username finds nothing."""
        assert list(make(mariadb, match_usernames=False).collect(by_username("alice_w"))) == []


class TestHostileInput:
    def test_injection_shaped_identifiers_find_nothing(self, mariadb: str, make: Make) -> None:
        """SQL-shaped and wildcard values are plain values: they match and change nothing."""
        connector = make(mariadb)
        identifiers = tuple(i for v in HOSTILE for i in (address(v), website_login(v)))
        assert list(connector.collect(asked(*identifiers))) == []
        assert len(comment_keys(connector.collect(Identity.verified(ALICE)))) == 7
        engine = create_engine(mariadb)
        with engine.connect() as connection:
            users = connection.scalar(select(func.count()).select_from(table("wp_users")))
        engine.dispose()
        assert users == 3

    def test_collation_lookalikes_find_nothing(self, mariadb: str, make: Make) -> None:
        """Values MySQL's accent-insensitive collation calls equal to Alice's are not Alice's."""
        lookalikes = (
            address("älice@example.test"),
            address("alice@example.test\u00ad"),
            website_login("ALİCE_W"),
            website_login("alicé_w"),
        )
        assert list(make(mariadb).collect(asked(*lookalikes))) == []

    def test_blank_identifiers_find_nothing(self, mariadb: str, make: Make) -> None:
        """An empty value does not match comments that have no author email (pingbacks)."""
        blank = tuple(i for v in ("", "  ") for i in (address(v), website_login(v)))
        assert list(make(mariadb).collect(asked(*blank))) == []


class TestLookalikes:
    ACME_LOGIN = login(
        "asmith", "keepass:vault/Clients/Acme Ltd", "ad:ACME", "tacticalrmm:rmm/Acme Ltd"
    )

    def test_a_vault_login_is_not_a_website_login(self, mariadb: str, make: Make) -> None:
        """Alice's Windows login asmith is not the website's asmith: her search finds her own
        account and comments only; the website's asmith, by address or by the login the site
        yielded, finds theirs only."""
        connector = make(mariadb, table_prefix="wpa_")
        alice = by_key(connector.collect(asked(address(ALICE), self.ACME_LOGIN)))
        assert set(alice) == {"user:3", "comment:11", "comment:14"}
        assert "asmith" not in dump(alice.values())
        visitor = by_key(connector.collect(asked(address("asmith.home@example.net"))))
        assert set(visitor) == {"user:7", "comment:13"}
        assert visitor["user:7"].yields == (
            Identifier(
                "username",
                "asmith",
                "wordpress 'blog': wpa_users.user_login of user ID 7",
                WEBSITE,
                Trust.SELF_ASSERTED,
            ),
        )
        again = by_key(connector.collect(by_username("asmith")))
        assert set(again) == {"user:7", "comment:13"}
        assert "Alice" not in dump([*visitor.values(), *again.values()])

    def test_an_address_as_a_login_is_not_that_address(self, mariadb: str, make: Make) -> None:
        """Mallory's login is alice's address: alice's search does not find his account, his
        search yields it as a login (never as an address), and that login finds only his."""
        connector = make(mariadb, table_prefix="wpa_")
        alice = by_key(connector.collect(Identity.verified(ALICE)))
        assert set(alice) == {"user:3", "comment:11", "comment:14"}
        assert "CANARY-MALLORY" not in dump(alice.values())
        mallory = by_key(connector.collect(Identity.verified("mallory@evil.test")))
        assert set(mallory) == {"user:6", "comment:12"}
        assert [(y.kind, y.value, y.namespace) for y in mallory["user:6"].yields] == [
            ("username", ALICE, WEBSITE)
        ]
        again = by_key(connector.collect(by_username(ALICE)))
        assert set(again) == {"user:6", "comment:12"}
        assert "Alice, " not in dump(again.values())

    def test_the_collation_alone_would_mix_them_up(self, mariadb: str) -> None:
        """The premise: MariaDB itself answers strasse with straße, muller with müller, and
        anna@strasse.test with anna@straße.test."""
        engine = create_engine(mariadb)
        try:
            with engine.connect() as connection:

                def ids(sql: str, value: str) -> set[int]:
                    return {int(row[0]) for row in connection.execute(text(sql), {"v": value})}

                users = "SELECT ID FROM wpc_users WHERE user_login = :v"
                assert ids(users, "strasse") == {1, 2}
                assert ids(users, "muller") == {3, 4}
                emails = "SELECT ID FROM wpc_users WHERE user_email = :v"
                assert ids(emails, "anna@strasse.test") == {1, 2}
                comments = "SELECT comment_ID FROM wpc_comments WHERE comment_author_email = :v"
                assert ids(comments, "carl@muller.test") == {3, 4}
        finally:
            engine.dispose()

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("anna@strasse.test", {"user:1", "comment:1"}),
            ("anna@xn--strae-oqa.test", {"user:2", "comment:2"}),  # anna@straße.test
            ("carl@muller.test", {"user:3", "comment:3"}),
            ("carl@xn--mller-kva.test", {"user:4", "comment:4"}),  # carl@müller.test
        ],
    )
    def test_collation_twins_by_address(
        self, mariadb: str, make: Make, value: str, expected: set[str]
    ) -> None:
        """Each look-alike address finds its own account and comment, however it is stored
        (Unicode or ASCII domain), and never the twin's."""
        assert set(by_key(make(mariadb, table_prefix="wpc_").collect(asked(address(value))))) == (
            expected
        )

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("strasse", "user:1"), ("STRAßE", "user:2"), ("Muller", "user:3"), ("MÜLLER", "user:4")],
    )
    def test_collation_twins_by_login(
        self, mariadb: str, make: Make, value: str, expected: str
    ) -> None:
        """Each look-alike login, in any case, finds its own account only."""
        found = by_key(make(mariadb, table_prefix="wpc_").collect(by_username(value)))
        assert set(found) == {expected}


class TestSettingsAndPrefix:
    @pytest.mark.parametrize("prefix", ["wp_; DROP TABLE wp_users", "wp-", "", "w" * 33, "wp_`"])
    def test_unsafe_prefixes_are_refused(self, prefix: str, tmp_path: Path) -> None:
        """A table prefix outside [A-Za-z0-9_]{1,32} fails at start-up with the key's name."""
        with pytest.raises(ConfigError, match="table_prefix"):
            validate(
                {"url": "sqlite://", "table_prefix": prefix},
                WordpressSettings,
                source="test",
                base_dir=tmp_path,
            )

    def test_each_prefix_reads_only_its_own_site(self, mariadb: str, make: Make) -> None:
        """Two sites in one database: each connector sees only the tables of its prefix."""
        wpx = by_key(make(mariadb, table_prefix="wpx_").collect(Identity.verified(ALICE)))
        assert set(wpx) == {"user:3", "comment:11"}
        assert wpx["user:3"].fields["Display name"] == "Alice of WPX"
        assert wpx["comment:11"].fields["Content"] == "WPX comment"
        assert wpx["comment:11"].location == "table wpx_comments, comment_ID 11"
        assert "WPX" not in dump(make(mariadb).collect(Identity.verified(ALICE)))

    def test_check_runs_a_harmless_query(self, mariadb: str, make: Make) -> None:
        """check() passes on a WordPress database and fails when the tables are not there."""
        connector = make(mariadb)
        connector.check()
        assert isinstance(connector, Connector)
        with pytest.raises(ProgrammingError, match="nope_users"):
            make(mariadb, table_prefix="nope_").check()


class TestSqlite:
    def test_sqlite_exports_what_mariadb_exports(
        self, mariadb: str, sqlite_site: str, make: Make
    ) -> None:
        """The same site on SQLite gives exactly the records MariaDB gives."""
        for identity in (Identity.verified(ALICE), by_username("alice_w")):
            on_mariadb = dump(make(mariadb).collect(identity))
            on_sqlite = dump(make(sqlite_site).collect(identity))
            assert on_sqlite == on_mariadb
        assert "2020-05-06T07:08:09+00:00" in on_sqlite

    def test_sqlite_is_opened_read_only(self, sqlite_site: str, make: Make) -> None:
        """The connector's SQLite connection cannot change the website's database."""
        connector = make(sqlite_site)
        with (
            connector.engine.connect() as connection,
            pytest.raises(OperationalError, match="readonly"),
        ):
            connection.exec_driver_sql("DELETE FROM wp_comments")
        path = sqlite_site.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path)) as check:
            assert check.execute("SELECT count(*) FROM wp_comments").fetchone() == (11,)


class TestDroppedConnection:
    """A pooled connection the server closed: replaced before use after a pause, and in the
    short window of one collection's lookups, only the attempt that met it fails."""

    @staticmethod
    def connection_id(connector: WordpressConnector) -> int:
        with connector.engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())

    def test_an_idle_connection_is_checked_and_replaced(
        self, mariadb: str, make: Make, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(readonly, "PING_AFTER", 0.0)
        connector = make(mariadb)
        before = dump(connector.collect(Identity.verified(ALICE)))
        killed = self.connection_id(connector)
        on_mariadb(mariadb, f"KILL {killed}")
        assert dump(connector.collect(Identity.verified(ALICE))) == before
        assert self.connection_id(connector) != killed

    def test_within_the_window_one_attempt_fails_and_the_next_reconnects(
        self, mariadb: str, make: Make, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(readonly, "PING_AFTER", 3600.0)  # however slow this machine is
        connector = make(mariadb)
        before = dump(connector.collect(Identity.verified(ALICE)))
        on_mariadb(mariadb, f"KILL {self.connection_id(connector)}")
        with pytest.raises(OperationalError) as raised:
            list(connector.collect(Identity.verified(ALICE)))
        assert raised.value.connection_invalidated
        assert dump(connector.collect(Identity.verified(ALICE))) == before


# Two look-alike people on one site: alice, whose address is written in every case and with
# the root's trailing dot (all one address: a local part compares ignoring case), and alice2;
# addresses that only look like alice's are other people's.  3,000 guests make the tables
# big enough for the database to prefer an index over a scan.
TWINS: dict[str, list[dict[str, Any]]] = {
    "users": [
        {"ID": 1, "user_login": "alice_w", "user_email": "Alice@Example.test"},
        {"ID": 2, "user_login": "alice2", "user_email": "alice2@example.test"},
    ],
    "usermeta": [
        {"user_id": 1, "meta_key": "first_name", "meta_value": "Alice"},
        {"user_id": 2, "meta_key": "first_name", "meta_value": "CANARY-ALICE2"},
    ],
    "posts": [{"ID": 1, "post_title": "Hello", "guid": "https://wpi.example.test/?p=1"}],
    "comments": [
        comment(1, ALICE, "as typed"),
        comment(2, "ALICE@EXAMPLE.TEST", "shouting"),
        comment(3, "Alice@Example.Test.", "with the root's dot"),
        comment(4, "old@elsewhere.test", "logged in", user_id=1),
        comment(5, "alice+news@example.test", "CANARY-SUBADDRESS", author="?"),
        comment(6, "alice@example.test.evil.test", "CANARY-LOOKALIKE", author="?"),
        comment(7, "xalice@example.test", "CANARY-X", author="?"),
        comment(8, "alice2@example.test", "CANARY-ALICE2", author="Alice Two"),
        comment(9, "ALICE2@example.test", "CANARY-ALICE2-LOUD", author="Alice Two"),
        *(
            comment(100 + n, f"guest{n}@example.test", "CANARY-GUEST", author="Guest")
            for n in range(3000)
        ),
    ],
}
ALICE_KEYS = {"user:1", "comment:1", "comment:2", "comment:3", "comment:4"}
ALICE2_KEYS = {"user:2", "comment:8", "comment:9"}


@pytest.fixture(scope="module")
def twins(mariadb: str) -> str:
    """The 'wpi_' site on the module's MariaDB, with the index the connector adds to core's."""
    build_site(mariadb, "wpi_", TWINS)
    engine = create_engine(mariadb)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE TABLE wpi_comments, wpi_users, wpi_usermeta")
    engine.dispose()
    return mariadb


def on_mariadb(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


class TestIndexedLookup:
    def test_each_twin_sees_all_their_own_and_nothing_of_the_other(
        self, twins: str, make: Make
    ) -> None:
        """Alice's address in any case, or with the root's dot, is hers; alice2's, a
        sub-address or a longer domain are not."""
        connector = make(twins, table_prefix="wpi_")
        alice = by_key(connector.collect(Identity.verified(ALICE)))
        alice2 = by_key(connector.collect(Identity.verified("alice2@example.test")))
        assert set(alice) == ALICE_KEYS
        assert set(alice2) == ALICE2_KEYS
        assert "CANARY" not in dump(alice.values())
        assert "Alice@Example.Test." in dump(alice.values())
        assert "CANARY-ALICE2-LOUD" in dump(alice2.values())
        assert "Alice@" not in dump(alice2.values()).replace("Alice Two", "")

    def test_the_lookups_use_the_indexes(
        self, twins: str, make: Make, sent_statements: list[tuple[str, Any]]
    ) -> None:
        """MariaDB answers each of the connector's own queries from an index, not a scan."""
        on_mariadb(twins, "CREATE INDEX sarbot_user_id ON wpi_comments (user_id)")
        try:
            connector = make(twins, table_prefix="wpi_")
            assert set(by_key(connector.collect(Identity.verified(ALICE)))) == ALICE_KEYS
            lookups = [(sql, params) for sql, params in sent_statements if "FROM wpi_" in sql]
            assert len(lookups) == 4  # the account, its profile, comments by address, by account
            engine = create_engine(twins)
            with engine.connect() as connection:
                for sql, params in lookups:
                    plans = connection.exec_driver_sql("EXPLAIN " + sql, params).mappings().all()
                    first = plans[0]
                    assert first["key"], (sql, first)
                    assert first["type"] != "ALL", (sql, first)
            engine.dispose()
        finally:
            on_mariadb(twins, "DROP INDEX sarbot_user_id ON wpi_comments")

    def test_check_warns_until_the_indexes_exist(self, twins: str, make: Make) -> None:
        """Core WordPress has no index on comments' user_id: check() names it; with it, and
        with core's, nothing; without core's index on user_email it names that one."""
        connector = make(twins, table_prefix="wpi_")
        [warning] = connector.check()
        assert "user_id of wpi_comments" in warning
        assert "CREATE INDEX sarbot_wpi_comments_user_id ON wpi_comments (user_id)" in warning
        on_mariadb(twins, "CREATE INDEX sarbot_user_id ON wpi_comments (user_id)")
        try:
            assert connector.check() == []
            on_mariadb(twins, "DROP INDEX user_email ON wpi_users")
            [warning] = connector.check()
            assert "user_email of wpi_users" in warning
        finally:
            on_mariadb(
                twins,
                "CREATE INDEX user_email ON wpi_users (user_email)",
                "DROP INDEX sarbot_user_id ON wpi_comments",
            )

    def test_a_case_sensitive_collation_is_named_and_still_matched(
        self, twins: str, make: Make
    ) -> None:
        """With a binary collation the index cannot ignore case: check() says so, and the
        lookup compares lower case instead, so no spelling is missed."""
        binary = "varchar(100) NOT NULL DEFAULT '' COLLATE utf8mb4_bin"
        on_mariadb(
            twins,
            f"ALTER TABLE wpi_users MODIFY user_email {binary}",
            f"ALTER TABLE wpi_comments MODIFY comment_author_email {binary}",
        )
        try:
            connector = make(twins, table_prefix="wpi_")
            warnings = connector.check()
            assert any("wpi_users.user_email compares case-sensitively" in w for w in warnings)
            assert any("comment_author_email compares case-sensitively" in w for w in warnings)
            assert set(by_key(connector.collect(Identity.verified(ALICE)))) == ALICE_KEYS
            alice2 = by_key(connector.collect(Identity.verified("alice2@example.test")))
            assert set(alice2) == ALICE2_KEYS
        finally:
            collated = "varchar(100) NOT NULL DEFAULT '' COLLATE utf8mb4_unicode_520_ci"
            on_mariadb(
                twins,
                f"ALTER TABLE wpi_users MODIFY user_email {collated}",
                f"ALTER TABLE wpi_comments MODIFY comment_author_email {collated}",
            )

    def test_sqlite_finds_the_same(self, twins: str, tmp_path: Path, make: Make) -> None:
        """On SQLite (no collation ignores case there) the twins get the same records."""
        url = f"sqlite:///{tmp_path / 'twins.db'}"
        build_site(url, "wpi_", TWINS)
        for address_, keys in ((ALICE, ALICE_KEYS), ("alice2@example.test", ALICE2_KEYS)):
            on_sqlite = dump(make(url, table_prefix="wpi_").collect(Identity.verified(address_)))
            on_maria = dump(make(twins, table_prefix="wpi_").collect(Identity.verified(address_)))
            assert on_sqlite == on_maria
            assert {r[3] for r in json.loads(on_sqlite)} == keys

    def test_many_rows_are_streamed_in_order_after_the_first_page(self, twins: str) -> None:
        """A lookup with more rows than a page gets every row once, in order: the first page
        whole, the rest streamed."""
        comments = table("wpi_comments", column("comment_ID"), column("comment_author_email"))
        query = select(comments.c.comment_ID).where(comments.c.comment_author_email.like("guest%"))
        engine = create_engine(twins)
        with engine.connect() as connection:
            paged = Paged.of(query, comments.c.comment_ID, 7)
            ids = [row[0] for row in paged.rows(connection, {})]
        engine.dispose()
        assert ids == list(range(100, 3100))
