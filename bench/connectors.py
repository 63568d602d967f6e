"""Connectors at scale: one person's lookup in a million rows, beside the bare indexed query.

    .venv/bin/python -m bench connectors [--scale smoke|full]

A throw-away MariaDB gets a WordPress site (core's schema from
``sarbot/testing/schemas/wordpress.sql``, 1M comments, 50k accounts with their
profile rows), loaded with ``LOAD DATA LOCAL INFILE``, plus the index the connector
asks for (``wp_comments.user_id``); a throw-away PostgreSQL gets a Tactical RMM
database (1M agents at 500 clients, software for 1 agent in 100), loaded with
``COPY``, plus the two ``lower()`` indexes.  Each lookup is the connector's
``collect`` as the collect step calls it (``list(connector.collect(identity))``); its
baseline sends the same statements for the same rows through the bare driver and
fetches them.  Fastest of 30 of each, taken in turns, after a warm-up; peak RSS of
the process and the Python memory one lookup allocates (tracemalloc) show that
memory stays flat.
"""

from __future__ import annotations

import csv
import json
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from bench.common import Row, Scale, fastest, peak_rss_mb, reset_peak_rss
from connectors.indexed import spellings_of
from connectors.tacticalrmm import TacticalRmmConnector, TacticalRmmSettings
from connectors.tacticalrmm.people import Subject
from connectors.wordpress import WordpressConnector, WordpressSettings
from sarbot.config import validate
from sarbot.connector import Identity
from sarbot.testing.identity import address, asked, login
from sarbot.testing.stores import create_wordpress_tables, tacticalrmm_statements
from tests.servers import mariadb_server, postgres_server

SIZES = {"smoke": 3_000, "full": 1_000_000}
GOAL = "<= 1.5x"
RUNS = 30
ALICE = "alice@example.test"
GUEST = "guest42@mail42.test"
ALICE_SPELLINGS = ("Alice@Example.test", "ALICE@EXAMPLE.TEST", ALICE, "alice@example.test.")
COMMENT_COLUMNS = [
    "comment_ID",
    "comment_post_ID",
    "comment_author",
    "comment_author_email",
    "comment_author_url",
    "comment_author_IP",
    "comment_date",
    "comment_date_gmt",
    "comment_content",
    "comment_approved",
    "comment_agent",
    "comment_type",
    "user_id",
]
SKIPPED = ("order_note", "webhook_delivery", "action_log")


def run(scale: Scale) -> list[Row]:
    size = SIZES[scale]
    rows = []
    with mariadb_server() as url:
        rows += wordpress(url, size)
    with postgres_server() as url:
        rows += tacticalrmm(url, size)
    return rows


def timed(work: str, lookup: Callable[[], object], bare: Callable[[], object], note: str) -> Row:
    """The fastest of ``RUNS`` of each, taken in turns: a lookup takes milliseconds, so a
    moment's noise on the machine would otherwise decide the ratio."""
    lookup(), bare()  # warm: connection pool, plans, caches
    best_lookup = best_bare = float("inf")
    for _ in range(RUNS):
        best_lookup = min(best_lookup, fastest(1, lookup))
        best_bare = min(best_bare, fastest(1, bare))
    return Row(work, best_lookup, best_bare, goal=GOAL, note=note)


def allocated_mb(lookup: Callable[[], object]) -> float:
    """The peak of Python memory allocated while one lookup runs, in MiB."""
    tracemalloc.start()
    try:
        lookup()
        return tracemalloc.get_traced_memory()[1] / 1024 / 1024
    finally:
        tracemalloc.stop()


def memory_rows(name: str, size: int, before: float, lookup: Callable[[], object]) -> list[Row]:
    return [
        Row(
            f"{name}: peak RSS of the process during the lookups",
            peak_rss_mb(),
            unit="MiB",
            note=f"{before:.0f} MiB as they started",
        ),
        Row(
            f"{name}: Python memory one lookup allocates",
            allocated_mb(lookup),
            unit="MiB",
            note=f"tracemalloc peak, {size:,} rows in the table",
        ),
    ]


# WordPress on MariaDB


def tsv(folder: Path, name: str, rows: Iterator[tuple[object, ...]]) -> Path:
    path = folder / f"{name}.tsv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
        writer.writerows(rows)
    return path


def comment_rows(size: int, users: int, heavy: int) -> Iterator[tuple[object, ...]]:
    """``size`` comments: alice's ``heavy`` (by address in four spellings, a tenth by her
    account under an older address), alice2's, and guests' and members' (ten each)."""
    guests = max(1, size // 10)
    for n in range(1, size + 1):
        guest = n % guests
        user_id, email = 0, f"guest{guest}@mail{guest % 53}.test"
        if n <= heavy:
            email = ALICE_SPELLINGS[n % 4]
            user_id = users + 1 if n % 10 == 0 else 0
            email = "alice.old@elsewhere.test" if user_id else email
        elif n <= heavy + 20:
            email = "alice2@example.test"
        elif n % 5 < 2:
            user_id = n % users + 1
            email = f"user{user_id}@site{user_id % 97}.test"
        day = f"2024-{n % 12 + 1:02d}-{n % 28 + 1:02d} 10:{n % 60:02d}:00"
        yield (
            n, n % 1000 + 1, f"Commenter {n % 977}", email, "", f"203.0.{n % 256}.{n % 199}",
            day, day, f"Comment {n} on tea, kettles and the proper temperature of water.",
            "1", "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0", "comment", user_id,
        )  # fmt: skip


def wordpress(url: str, size: int) -> list[Row]:
    users, heavy = max(50, size // 20), max(40, size // 5000)
    engine = create_engine(url, connect_args={"local_infile": True})
    create_wordpress_tables(engine)
    with tempfile.TemporaryDirectory(prefix="sarbot-bench-") as folder:
        base = Path(folder)
        people = [
            (i, f"user{i}", f"user{i}@site{i % 97}.test", f"User {i}") for i in range(1, users + 1)
        ]
        people += [
            (users + 1, "alice_w", "Alice@Example.test", "Alice"),
            (users + 2, "alice2", "alice2@example.test", "Alice Two"),
        ]
        profile = ("first_name", "last_name", "nickname")
        meta = ((i, key, f"{key} {i}") for i, *_ in people for key in profile)
        posts = (
            (i, f"Post {i}", f"https://blog.test/?p={i}", "", "", "", "", "")
            for i in range(1, 1001)
        )
        comments = comment_rows(size, users, heavy)
        files = {
            "wp_users (ID, user_login, user_email, display_name)": tsv(base, "users", iter(people)),
            "wp_usermeta (user_id, meta_key, meta_value)": tsv(base, "usermeta", meta),
            "wp_posts (ID, post_title, guid, post_content, post_excerpt, to_ping, pinged, "
            "post_content_filtered)": tsv(base, "posts", posts),
            f"wp_comments ({', '.join(COMMENT_COLUMNS)})": tsv(base, "comments", comments),
        }
        with engine.begin() as connection:
            for target, path in files.items():
                table, columns = target.split(" ", 1)
                connection.exec_driver_sql(
                    f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table} "
                    f"FIELDS TERMINATED BY '\\t' ESCAPED BY '' {columns}"
                )
            connection.exec_driver_sql("CREATE INDEX sarbot_user_id ON wp_comments (user_id)")
            connection.exec_driver_sql("ANALYZE TABLE wp_comments, wp_users, wp_usermeta")
    reset_peak_rss()  # the lookups' peak, not the data generation's or another bench's
    before = peak_rss_mb()
    settings = validate({"url": url}, WordpressSettings, source="bench", base_dir=Path("."))
    connector = WordpressConnector("website", settings)
    try:
        assert not connector.check(), "an index the connector needs is missing"
        alice, guest = Identity.verified(ALICE), Identity.verified(GUEST)
        found = len(list(connector.collect(alice)))
        guest_found = len(list(connector.collect(guest)))
        rows = [
            timed(
                f"wordpress on MariaDB, {size:,} comments: a frequent commenter with an account",
                lambda: list(connector.collect(alice)),
                lambda: bare_wordpress(engine, [*ALICE_SPELLINGS[2:]], users + 1),
                f"{found} records; baseline: the same 4 statements, raw PyMySQL",
            ),
            timed(
                f"wordpress on MariaDB, {size:,} comments: a guest commenter",
                lambda: list(connector.collect(guest)),
                lambda: bare_wordpress(engine, [GUEST, GUEST + "."], None),
                f"{guest_found} records; baseline: the same 2 statements, raw PyMySQL",
            ),
        ]
        return rows + memory_rows("wordpress", size, before, lambda: list(connector.collect(alice)))
    finally:
        connector.close()
        engine.dispose()


def bare_wordpress(engine: Engine, spellings: list[str], user_id: int | None) -> int:
    """The connector's statements for the same rows, through the bare driver."""
    marks = ", ".join(["%s"] * len(spellings))
    comments = (
        f"SELECT c.{', c.'.join(COMMENT_COLUMNS)}, p.post_title, p.guid FROM wp_comments c "  # noqa: S608
        "LEFT OUTER JOIN wp_posts p ON c.comment_post_ID = p.ID WHERE {} "
        "AND c.comment_type NOT IN (%s, %s, %s) ORDER BY c.comment_ID"
    )
    fetched = 0
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        for sql, params in (
            (
                "SELECT ID, user_login, user_nicename, user_email, user_url, user_registered, "  # noqa: S608
                f"display_name FROM wp_users WHERE user_email IN ({marks}) ORDER BY ID",
                spellings,
            ),
            (
                "SELECT meta_key, meta_value FROM wp_usermeta WHERE user_id = %s AND meta_key "
                "IN ('first_name', 'last_name', 'nickname', 'description', 'session_tokens', "
                "'community-events-location') ORDER BY meta_key",
                [user_id],
            ),
            (comments.format(f"c.comment_author_email IN ({marks})"), [*spellings, *SKIPPED]),
            (comments.format("c.user_id = %s"), [user_id, *SKIPPED]),
        ):
            if user_id is None and params[0] is None:
                continue
            cursor.execute(sql, params)
            fetched += len(cursor.fetchall())
    finally:
        connection.close()
    return fetched


# Tactical RMM on PostgreSQL

ACME_REALM = (
    "keepass:vault/Clients/Acme Ltd",
    "ad:ACME",
    "ad:acme.local",
    "tacticalrmm:rmm/Acme Ltd",
)
ALICE_AGENTS = ("ACME\\asmith", "asmith", "asmith@acme.local", "ACME\\ASMITH", "ACME.\\asmith")
TWIN_AGENTS = ("asmith", "OTHER\\asmith", "asmith@other.local")
AGENT_COLUMNS = [
    "agent_id",
    "hostname",
    "site_id",
    "operating_system",
    "public_ip",
    "total_ram",
    "disks",
    "logged_in_username",
    "last_logged_in_user",
    "wmi_detail",
]
DISKS = json.dumps(
    [{"device": "C:", "fstype": "NTFS", "total": "465G", "used": "121G", "free": "343G"}]
)
WMI = json.dumps(
    {
        "cpus": ["AMD Ryzen 7 PRO 5850U"],
        "make_model": "LENOVO ThinkPad T14s",
        "serialnumber": "PF3ABCDE",
        "local_ips": ["10.0.0.15/24"],
    }
)
SOFTWARE = json.dumps(
    [
        {"name": f"Program {n}", "version": f"{n}.0", "publisher": "Vendor", "size": "5.4 MB"}
        for n in range(40)
    ]
)


def agent_rows(size: int, clients: int) -> Iterator[tuple[object, ...]]:
    """Agents 1..size; alice's five at client 1 (Acme Ltd), the other asmith's three at
    client 2, everyone else userN at their own client, written in each of the three forms."""
    for n in range(1, size + 1):
        client = n % clients + 1
        if n <= len(ALICE_AGENTS):
            client, now, last = 1, ALICE_AGENTS[n - 1], "ACME\\bjones"
            now, last = (last, now) if n == 2 else (now, last)
        elif n <= len(ALICE_AGENTS) + len(TWIN_AGENTS):
            client, now, last = 2, TWIN_AGENTS[n - 6], "None"
        else:
            user = f"user{n % 5000}"
            forms = (user, f"CO{client}\\{user}", f"{user}@co{client}.local")
            now = forms[n % 3]
            last = "None" if n % 5 == 0 else f"CO{client}\\user{(n + 7) % 5000}"
        site = 2 * client - 1 + n % 2
        ip = f"198.51.{n % 256}.{n % 251}"
        yield (f"agent-{n:010d}", f"PC-{n}", site, "Windows 11", ip, 16, DISKS, now, last, WMI)


def tacticalrmm(url: str, size: int) -> list[Row]:
    clients = max(5, size // 2000)
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in tacticalrmm_statements(sqlite=False):
            connection.exec_driver_sql(statement)
    connection_raw = engine.raw_connection()
    try:
        cursor: Any = connection_raw.cursor()
        names = ["Acme Ltd", "Other Ltd", *(f"Client {k}" for k in range(3, clients + 1))]
        with cursor.copy("COPY clients_client (id, name) FROM STDIN") as copy:
            for k, name in enumerate(names, 1):
                copy.write_row((k, name))
        with cursor.copy("COPY clients_site (id, client_id, name) FROM STDIN") as copy:
            for k in range(1, clients + 1):
                copy.write_row((2 * k - 1, k, "HQ"))
                copy.write_row((2 * k, k, "Branch"))
        with cursor.copy(f"COPY agents_agent ({', '.join(AGENT_COLUMNS)}) FROM STDIN") as copy:
            for row in agent_rows(size, clients):
                copy.write_row(row)
        with cursor.copy("COPY software_installedsoftware (agent_id, software) FROM STDIN") as copy:
            for n in range(1, size + 1):
                if n <= 8 or n % 100 == 0:
                    copy.write_row((n, SOFTWARE))
        for column in ("logged_in_username", "last_logged_in_user"):
            cursor.execute(f"CREATE INDEX sarbot_{column} ON agents_agent (lower({column}))")
        connection_raw.commit()
        cursor.execute("ANALYZE")
        connection_raw.commit()
    finally:
        connection_raw.close()
    reset_peak_rss()  # the lookups' peak, not the data generation's or another bench's
    before = peak_rss_mb()
    settings = validate({"url": url}, TacticalRmmSettings, source="bench", base_dir=Path("."))
    connector = TacticalRmmConnector("rmm", settings)
    identity = asked(address("alice.smith@acme.test"), login("asmith", *ACME_REALM))
    try:
        assert not connector.check(), "an index the connector needs is missing"
        found = len(list(connector.collect(identity)))
        spellings = sorted({s.lower() for i in identity.identifiers for s in spellings_of(i)})
        lookup = timed(
            f"tacticalrmm on PostgreSQL, {size:,} agents: a login at one client and an address",
            lambda: list(connector.collect(identity)),
            lambda: bare_tacticalrmm(engine, spellings),
            f"{found} computers; baseline: the candidate rows whole and their software, "
            "2 statements, raw psycopg",
        )
        statements = timed(
            "tacticalrmm: of that lookup, the connector's statements alone",
            lambda: statements_of(connector, identity),
            lambda: bare_tacticalrmm(engine, spellings),
            "the rest of the lookup builds the records: inventory, software, identity checks, "
            "withholding",
        )
        return [
            lookup,
            statements,
            *memory_rows("tacticalrmm", size, before, lambda: list(connector.collect(identity))),
        ]
    finally:
        connector.close()
        engine.dispose()


def statements_of(connector: TacticalRmmConnector, identity: Identity) -> int:
    """What the connector asks the database in a lookup, without building records."""
    subject = Subject.of(identity, connector.name)
    fetched = 0
    with connector.engine.connect() as connection:
        for page in connector._candidates(connection, subject):
            linked = [row["id"] for row in page if subject.linked(row)]
            fetched += len(page) + len(connector._software(connection, linked))
    return fetched


def bare_tacticalrmm(engine: Engine, spellings: list[str]) -> int:
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT a.id, a.agent_id, a.hostname, a.operating_system, a.public_ip, a.last_seen, "
            "a.boot_time, a.total_ram, a.disks, a.wmi_detail, a.site_id, a.logged_in_username, "
            "a.last_logged_in_user, s.name, c.name FROM agents_agent a "
            "LEFT JOIN clients_site s ON s.id = a.site_id LEFT JOIN clients_client c "
            "ON c.id = s.client_id WHERE lower(a.logged_in_username) = ANY(%s) "
            "OR lower(a.last_logged_in_user) = ANY(%s) ORDER BY a.id",
            [spellings, spellings],
        )
        agents = cursor.fetchall()
        cursor.execute(
            "SELECT agent_id, software FROM software_installedsoftware "
            "WHERE agent_id = ANY(%s) ORDER BY id",
            [[row[0] for row in agents]],
        )
        return len(agents) + len(cursor.fetchall())
    finally:
        connection.close()
