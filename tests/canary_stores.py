"""Real stores for every built-in connector, with canaries where secrets and other people live.

alice has data in each store, carrying a visible marker
(``ALICE-VISIBLE-<connector name>-<hex>``) that must reach her.  Next to it sit
unique canaries (``CANARY-<purpose>-<hex>``) exactly where a secret or another
person's data is kept: the vault's master password and her entry's password,
history, OTP seeds and protected or secret-named fields; WordPress password
hashes, session tokens, activation keys and meta; columns a CRM query does not
select; other people's accounts, comments, sessions, logins, computers, paths
and mail (one to a lookalike of her address); sudo command lines and query-string
tokens; the database passwords in the connectors' URLs, and wrong passwords that
make two connectors fail until ``Stores.mend``.  WordPress and the CRM live on
MariaDB and Tactical RMM on PostgreSQL, each read by an account whose password
is a canary; the contact-form mailbox is a real one on the mail stack.
"""

from __future__ import annotations

import gzip
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import phpserialize
from imapclient import IMAPClient
from pykeepass import PyKeePass
from pykeepass.pykeepass import BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD
from sqlalchemy import Engine, column, create_engine, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from sarbot.testing import Correspondent
from sarbot.testing.stores import create_wordpress_tables, tacticalrmm_statements

ALICE_LOGIN = "asmith"  # her account on the office systems, known only to the vault
ALICE_WP_LOGIN = "alice_w"
BOB_LOGIN = "bjones"
OFFICE_IP = "203.0.113.24"
CONTACT_FOLDER = "Contact form"
CRM_URL_ENV = "SARBOT_CANARY_CRM_URL"


class Canaries:
    """Unique strings: secrets that must never leave sarbot, and alice's data that must."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.visible: dict[str, str] = {}

    def secret(self, purpose: str) -> str:
        return _new(self.secrets, "CANARY", purpose)

    def shown(self, purpose: str) -> str:
        return _new(self.visible, "ALICE-VISIBLE", purpose)


def _new(book: dict[str, str], prefix: str, purpose: str) -> str:
    assert purpose not in book, f"purpose {purpose} used twice"
    book[purpose] = f"{prefix}-{purpose}-{secrets.token_hex(8)}"
    return book[purpose]


@dataclass(frozen=True)
class People:
    """The addresses of everyone in the stores, each a real mailbox on the mail stack."""

    alice: str
    bob: str
    carol: str
    mallory: str


@dataclass(frozen=True)
class Databases:
    """SQLAlchemy URLs of the administrator accounts of the database servers."""

    mariadb: str
    postgres: str


# ----- KeePass ----------------------------------------------------------------------------


def build_vault(path: Path, people: People, c: Canaries) -> Path:
    """A KDBX 4 vault; returns the file holding its master password (itself a canary)."""
    master = c.secret("vault-master-password")
    blank = PyKeePass(BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD)
    kdf = blank.kdbx.header.value.dynamic_header.kdf_parameters.data.dict
    kdf["M"].value, kdf["I"].value = 1 << 20, 2  # cheap Argon2, so the test stays fast
    blank.filename, blank.password = str(path), master
    blank.save()
    vault = PyKeePass(str(path), master)
    acme = vault.add_group(vault.add_group(vault.root_group, "Clients"), "Acme Ltd")
    otp = f"otpauth://totp/Acme:{ALICE_LOGIN}?secret={c.secret('vault-otp-uri')}&issuer=Acme"
    entry = vault.add_entry(
        acme,
        f"Workstation login {c.shown('vault')}",
        ALICE_LOGIN,
        c.secret("vault-old-password"),
        url="rdp://acme-ws-014.acme.test",
        otp=otp,
    )
    entry.set_custom_property("Email", people.alice)
    entry.set_custom_property("Badge number", c.secret("vault-protected-field"), protect=True)
    entry.set_custom_property("Door code", c.secret("vault-named-secret-field"))
    entry.set_custom_property("TOTP Seed", c.secret("vault-totp-seed"))
    entry.set_custom_property("Recovery PIN", c.secret("vault-recovery-pin"))
    entry.save_history()  # the old password stays in the entry's history
    entry.password = c.secret("vault-password")
    # bob's entry names alice only in its notes: exported, but bob's login is not followed.
    vault.add_entry(
        acme, "Printer admin", BOB_LOGIN, c.secret("vault-bob-password"), notes=people.alice
    )
    vault.add_entry(acme, c.secret("vault-carol-entry"), people.carol, c.secret("vault-carol-pw"))
    vault.save()
    master_file = path.with_suffix(".master")
    master_file.write_text(master + "\n", encoding="utf-8")
    return master_file


# ----- WordPress and the CRM (MariaDB) -----------------------------------------------------


def with_password(url: str, password: str) -> str:
    """The MariaDB account's password changed to ``password``; the URL that logs in with it."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET PASSWORD = PASSWORD(:password)"), {"password": password})
    finally:
        engine.dispose()
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _insert(engine: Engine, rows: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as connection:
        for name, items in rows.items():
            for row in items:
                connection.execute(table(name, *(column(k) for k in row)).insert().values(row))


def _sessions(token: str, ip: str) -> str:
    now = int(time.time())
    session = {"expiration": now + 86400, "ip": ip, "ua": "Firefox/128.0", "login": now - 3600}
    return str(phpserialize.dumps({token: session}).decode())


def _comment(number: int, email: str, author: str, content: str, **more: Any) -> dict[str, Any]:
    return {
        "comment_ID": number,
        "comment_post_ID": 10,
        "comment_author": author,
        "comment_author_email": email,
        "comment_author_IP": OFFICE_IP,
        "comment_date_gmt": "2026-03-02 10:14:00",
        "comment_content": content,
        **more,
    }


def _meta(user_id: int, key: str, value: str) -> dict[str, Any]:
    return {"user_id": user_id, "meta_key": key, "meta_value": value}


def build_wordpress(engine: Engine, people: People, c: Canaries) -> None:
    create_wordpress_tables(engine, "wp_")
    bob_name = c.secret("wp-bob-name")
    posts = ("post_content", "post_excerpt", "to_ping", "pinged", "post_content_filtered")
    alice = {
        "ID": 2,
        "user_login": ALICE_WP_LOGIN,
        "user_pass": c.secret("wp-password-hash"),
        "user_email": people.alice,
        "user_registered": "2025-11-03 09:12:00",
        "user_activation_key": c.secret("wp-activation-key"),
        "display_name": "Alice Smith",
    }
    bob = {"ID": 3, "user_login": "bob_w", "user_pass": c.secret("wp-bob-password-hash"),
           "user_email": people.bob, "display_name": bob_name}  # fmt: skip
    _insert(
        engine,
        {
            "wp_users": [alice, bob],
            "wp_usermeta": [
                _meta(2, "first_name", "Alice"),
                _meta(2, "session_tokens", _sessions(c.secret("wp-session-token"), OFFICE_IP)),
                _meta(2, "plugin_api_key", c.secret("wp-plugin-meta")),
                _meta(3, "session_tokens", _sessions(c.secret("wp-bob-session"), OFFICE_IP)),
            ],
            "wp_posts": [{"ID": 10, "post_title": "MFA", **dict.fromkeys(posts, "")}],
            "wp_comments": [
                _comment(1, people.alice, "Alice", f"Thanks! {c.shown('website')}", user_id=2),
                # bob, from alice's office IP address (which is never followed).
                _comment(2, people.bob, bob_name, c.secret("wp-bob-comment"), user_id=3),
                _comment(3, people.alice + ".evil.test", "A", c.secret("wp-lookalike-comment")),
            ],
        },
    )


def build_crm(engine: Engine, people: People, c: Canaries) -> None:
    """A table for the ``sql`` connector, whose query selects no secret column."""
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE crm_customers (id INTEGER PRIMARY KEY, email VARCHAR(320) NOT NULL,"
            " name VARCHAR(200) NOT NULL, plan VARCHAR(200) NOT NULL,"
            " password_hash VARCHAR(200) NOT NULL, api_key VARCHAR(200) NOT NULL)"
        )
    names = ("id", "email", "name", "plan", "password_hash", "api_key")
    rows = [
        (1, people.alice, "Alice Smith", c.shown("crm"), c.secret("crm-password-hash"),
         c.secret("crm-api-key")),
        (2, people.bob, c.secret("crm-bob-name"), "Basic", c.secret("crm-bob-password-hash"),
         c.secret("crm-bob-api-key")),
    ]  # fmt: skip
    _insert(engine, {"crm_customers": [dict(zip(names, row, strict=True)) for row in rows]})


# ----- Tactical RMM (PostgreSQL) -----------------------------------------------------------


def _agent(number: int, hostname: str, logged_in: str, last: str, **more: Any) -> dict[str, Any]:
    return {
        "id": number,
        "agent_id": f"agent-{number:04d}",
        "hostname": hostname,
        "site_id": 1,
        "operating_system": "Microsoft Windows 11 Pro, 64bit (build 22631)",
        "public_ip": OFFICE_IP,
        "last_seen": "2026-03-01 09:30:00+00",
        "total_ram": 16,
        "logged_in_username": logged_in,
        "last_logged_in_user": last,
        **more,
    }


def rmm_rows(c: Canaries) -> dict[str, list[dict[str, Any]]]:
    other = c.secret("rmm-other-user")  # another person who logged in on alice's computer
    wmi = {
        "cpu": [[{"Name": "Intel(R) Core(TM) i5-1245U", "NumberOfCores": 10}]],
        "comp_sys": [[{"Model": "OptiPlex 7090", "UserName": f"CORP\\{other}"}]],
        "os": [[{"RegisteredUser": c.secret("rmm-registered-owner")}]],
        "network_config": [[{"IPAddress": ["192.168.10.14"]}]],
    }
    disks = [
        {"device": "C:", "fstype": "NTFS", "total": "476G", "used": "201G", "percent": 42},
        {"device": f"\\\\files\\{c.secret('rmm-network-share')}", "fstype": "SMB"},
    ]
    software = [
        {"name": f"{c.shown('monitoring')} Suite", "version": "1.0", "publisher": "Acme"},
        {
            "name": "Zoom",
            "location": f"C:\\Users\\{other}\\AppData\\Roaming\\Zoom",
            "uninstall": c.secret("rmm-uninstall-command"),
        },
    ]
    return {
        "clients_client": [{"id": 1, "name": "Acme Ltd"}],
        "clients_site": [{"id": 1, "client_id": 1, "name": "Head office"}],
        "agents_agent": [
            _agent(
                14,
                "ACME-WS-014",
                f"CORP\\{ALICE_LOGIN}",
                f"CORP\\{other}",
                description=c.secret("rmm-description"),
                disks=disks,
                wmi_detail=wmi,
            ),
            _agent(20, c.secret("rmm-bob-hostname"), f"CORP\\{BOB_LOGIN}", f"CORP\\{BOB_LOGIN}"),
        ],
        "software_installedsoftware": [
            {"id": 1, "agent_id": 14, "software": software},
            {"id": 2, "agent_id": 20, "software": [{"name": c.secret("rmm-bob-software")}]},
        ],
    }


def build_rmm(admin_url: str, c: Canaries) -> str:
    """Tactical RMM's tables, read by a role that must log in with a password (a canary)."""
    password = c.secret("rmm-database-password")
    engine = create_engine(admin_url)
    json_columns = {"disks", "wmi_detail", "software"}
    try:
        with engine.begin() as connection:
            for statement in tacticalrmm_statements(sqlite=False):
                connection.exec_driver_sql(statement)
            for name, rows in rmm_rows(c).items():
                for row in rows:
                    marks = [f"CAST(:{k} AS jsonb)" if k in json_columns else f":{k}" for k in row]
                    insert = f"INSERT INTO {name} ({', '.join(row)}) VALUES ({', '.join(marks)})"  # noqa: S608
                    values = {k: json.dumps(v) if k in json_columns else v for k, v in row.items()}
                    connection.execute(text(insert), values)
            connection.exec_driver_sql(
                f"CREATE ROLE trmm_reader LOGIN PASSWORD '{password}'"  # a generated hex canary
            )
            connection.exec_driver_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO trmm_reader")
            hba = Path(str(connection.exec_driver_sql("SHOW hba_file").scalar_one()))
            rule = "host all trmm_reader 127.0.0.1/32 scram-sha-256\n"
            hba.write_text(rule + hba.read_text())
            connection.exec_driver_sql("SELECT pg_reload_conf()")
    finally:
        engine.dispose()
    reader = make_url(admin_url).set(username="trmm_reader", password=password)
    _wait_until_refused(reader.set(password="wrong").render_as_string(hide_password=False))
    return reader.render_as_string(hide_password=False)


def _wait_until_refused(url: str, timeout: float = 10.0) -> None:
    """PostgreSQL reloads its access rules asynchronously: wait until a wrong password fails."""
    deadline = time.monotonic() + timeout
    while True:
        engine = create_engine(url)
        try:
            with engine.connect():
                pass
        except OperationalError:
            return
        finally:
            engine.dispose()
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL still lets trmm_reader in without its password")
        time.sleep(0.1)


# ----- access logs -------------------------------------------------------------------------


def _sudo(at: str, user: str, target: str, command: str, failure: str = "") -> str:
    reason = f"{failure} attempts ; " if failure else ""
    return (
        f"Mar  1 {at} gw1 sudo:   {user} : {reason}TTY=pts/0 ; PWD=/home/{user} ;"
        f" USER={target} ; COMMAND=/usr/bin/mysql -p{command}"
    )


def write_logs(folder: Path, c: Canaries) -> list[dict[str, Any]]:
    """auth.log and its gzip rotation, an nginx log and a JSON-lines log; their sources."""
    folder.mkdir()
    auth = [
        f"Mar  1 09:00:01 gw1 sshd[1001]: Accepted publickey for {ALICE_LOGIN} from 192.0.2.10"
        " port 50001 ssh2",
        _sudo("09:05:00", ALICE_LOGIN, "root", c.secret("log-sudo-command")),
        _sudo("09:06:00", ALICE_LOGIN, "root", c.secret("log-failed-sudo"), "3 incorrect password"),
        f"Mar  1 09:10:05 gw1 sshd[1002]: Accepted password for {c.secret('log-other-user')}"
        " from 192.0.2.10 port 40000 ssh2",
        _sudo("09:11:00", BOB_LOGIN, ALICE_LOGIN, c.secret("log-sudo-as-alice")),
    ]
    rotated = [
        f"Feb 27 08:00:00 gw1 sshd[900]: Accepted password for {ALICE_LOGIN} from 192.0.2.11"
        " port 51000 ssh2",
        f"Feb 27 08:01:00 gw1 sshd[901]: Failed password for {c.secret('log-rotated-user')}"
        " from 192.0.2.11 port 51001 ssh2",
    ]
    web = [
        f'192.0.2.10 - {ALICE_LOGIN} [01/Mar/2026:10:00:00 +0100] "GET /wiki/'
        f'{c.shown("logs")}?token={c.secret("log-query-token")} HTTP/1.1" 200 512 "-" "x"',
        f'192.0.2.10 - {ALICE_LOGIN} [01/Mar/2026:10:01:00 +0100] "GET /admin/users/'
        f'{c.secret("log-other-address")}@example.test/edit HTTP/1.1" 200 10 "-" "x"',
        f'198.51.100.20 - {BOB_LOGIN} [01/Mar/2026:10:02:00 +0100] "GET /private/'
        f'{c.secret("log-bob-path")} HTTP/1.1" 200 10 "-" "x"',
    ]
    vpn = [
        {"time": "2026-03-01T11:00:00Z", "user": ALICE_LOGIN, "ip": "192.0.2.10",
         "action": "vpn.connect", "status": "ok", "cookie": c.secret("log-json-cookie")},
        {"time": "2026-03-01T11:05:00Z", "user": c.secret("log-json-other-user"),
         "ip": "192.0.2.10", "action": "vpn.connect", "status": "ok"},
    ]  # fmt: skip
    (folder / "auth.log").write_text("\n".join(auth) + "\n")
    (folder / "auth.log.1.gz").write_bytes(gzip.compress(("\n".join(rotated) + "\n").encode()))
    (folder / "access.log").write_text("\n".join(web) + "\n")
    (folder / "vpn.jsonl").write_text("".join(json.dumps(line) + "\n" for line in vpn))
    return [
        {"paths": [str(folder / "auth.log*")], "format": "auth", "label": "SSH", "year": 2026},
        {"paths": [str(folder / "access.log")], "format": "combined", "label": "Intranet"},
        {"paths": [str(folder / "vpn.jsonl")], "format": "jsonl", "label": "VPN"},
    ]


# ----- the company's IMAP mailbox ----------------------------------------------------------


def _mail(sender: str, to: str, subject: str, body: str, **headers: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = "Tue, 03 Feb 2026 10:11:12 +0100"
    message["Message-ID"] = make_msgid(domain="redtrain.test")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes(policy=policy.SMTP)


def fill_contact_mailbox(box: Correspondent, people: People, c: Canaries) -> None:
    """alice's contact-form message, and mail between other people (one to a lookalike of her)."""
    client = IMAPClient(box.server.host, port=box.server.imap_port, ssl=False, timeout=30)
    client.starttls(box.server.tls())
    client.login(box.address, box.server.password)
    with client:
        client.create_folder(CONTACT_FOLDER)
    form = "Website <website@redtrain.test>"
    box.append(
        _mail(form, box.address, f"Contact form: {c.shown('mailbox')}", "Please call me back.",
              Reply_To=people.alice),
        CONTACT_FOLDER,
    )  # fmt: skip
    box.append(_mail(people.bob, people.carol, "Payroll", c.secret("mail-others")), CONTACT_FOLDER)
    box.append(
        _mail(people.carol, people.mallory, "Hello", c.secret("mail-lookalike"),
              Cc=people.alice + ".evil.test"),
        CONTACT_FOLDER,
    )  # fmt: skip


# ----- all of it, as sarbot's [[connectors]] tables ----------------------------------------


@dataclass(frozen=True)
class Stores:
    """The ``[[connectors]]`` tables, and secret files that hold a wrong secret until mended."""

    tables: list[dict[str, Any]]
    right: dict[Path, str]
    realms: list[dict[str, Any]]

    def mend(self) -> None:
        for path, secret in self.right.items():
            path.write_text(secret + "\n")


def build_stores(
    folder: Path,
    people: People,
    c: Canaries,
    databases: Databases,
    contact: Correspondent,
    setenv: Callable[[str, str], None],
) -> Stores:
    """Every store filled, secrets given as references; two of them wrong at first (canaries)."""
    master_file = build_vault(folder / "vault.kdbx", people, c)
    mariadb_url = with_password(databases.mariadb, c.secret("mariadb-password"))
    engine = create_engine(mariadb_url)
    try:
        build_wordpress(engine, people, c)
        build_crm(engine, people, c)
    finally:
        engine.dispose()
    wordpress_url = folder / "wordpress-url"
    wordpress_url.write_text(mariadb_url + "\n")
    setenv(CRM_URL_ENV, mariadb_url)
    rmm_url = make_url(build_rmm(databases.postgres, c))
    rmm_url_file, mailbox_password = folder / "rmm-url", folder / "mailbox-password"
    wrong_url = rmm_url.set(password=c.secret("rmm-wrong-password"))
    rmm_url_file.write_text(wrong_url.render_as_string(hide_password=False) + "\n")
    mailbox_password.write_text(c.secret("mailbox-wrong-password") + "\n")
    right = {
        rmm_url_file: rmm_url.render_as_string(hide_password=False),
        mailbox_password: contact.server.password,
    }
    sources = write_logs(folder / "logs", c)
    fill_contact_mailbox(contact, people, c)
    tables: list[dict[str, Any]] = [
        {
            "name": "vault",
            "type": "keepass",
            "description": "Our secure vault",
            "path": str(folder / "vault.kdbx"),
            "password": {"file": str(master_file)},
            "custom_fields_secret": ["Door code"],
            "owner_fields": ["Email"],
        },
        {
            "name": "website",
            "type": "wordpress",
            "description": "Our website",
            "url": {"file": str(wordpress_url)},
            "site_url": "https://www.redtrain.test",
        },
        {
            "name": "crm",
            "type": "sql",
            "description": "Customer records",
            "url": {"env": CRM_URL_ENV},
            "queries": [
                {
                    "name": "customers",
                    "category": "Customer",
                    "sql": "SELECT id, name, email, plan FROM crm_customers WHERE email = :email",
                    "key": "id",
                    "verify": "email",
                }
            ],
        },
        {
            "name": "monitoring",
            "type": "tacticalrmm",
            "description": "Monitored computers",
            "url": {"file": str(rmm_url_file)},
        },
        {"name": "logs", "type": "access_log", "description": "Access logs", "sources": sources},
        {
            "name": "mailbox",
            "type": "imap_mailbox",
            "description": "Contact-form mail",
            "host": contact.server.host,
            "port": contact.server.imap_port,
            "security": "starttls",
            "ca_file": contact.server.ca_file,
            "username": contact.address,
            "password": {"file": str(mailbox_password)},
            "folders": [CONTACT_FOLDER],
            "own_domains": ["redtrain.test"],
        },
    ]
    # One organisation: its vault group, its monitored computers, its Windows domain, and
    # the logs of the systems its staff log in to.
    acme = [
        "keepass:vault/Clients/Acme Ltd",
        "tacticalrmm:monitoring/Acme Ltd",
        "ad:CORP",
        *(f"access_log:logs/{source['label']}" for source in sources),
    ]
    return Stores(tables, right, [{"label": "Acme Ltd", "same_as": acme}])
