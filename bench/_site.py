"""A sarbot installation for the mail benchmarks (burst, latency), on the real mail stack.

``Site`` is a folder with a config, an SQLite state database, an export folder, a KeePass
vault and an SQLite store that an ``sql`` connector reads: every requester has a customer
row and a few tickets there, and every tenth one a vault entry whose ``UserName`` is a
login the identity graph follows (a second round of lookups). The mail stack is the one
``sarbot.testing.stack`` names (``SARBOT_MAILSTACK_*``), started by ``scripts/mailstack up``.

The baselines do the same mail I/O with the same libraries, without sarbot: FETCH the
messages sarbot read (imapclient) and send as many messages of the same sizes, to the same
recipients, on one SMTP connection (aiosmtplib, STARTTLS).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import aiosmtplib
from imapclient import IMAPClient
from pykeepass import create_database

from sarbot.app import App
from sarbot.config import Settings, load_settings
from sarbot.store import db
from sarbot.testing import MailServer, stack
from sarbot.testing.config import write_config

PASSWORD = "test"  # noqa: S105 (the test stack's password for every mailbox)
VAULT_PASSWORD = "bench-" + secrets.token_hex(8)
TICKETS = 3
TICKET_BYTES = 400
VAULT_EVERY = 10
"""Every tenth requester has a vault entry (a login the identity graph follows)."""

SETTINGS = """
[requests]
acks_per_sender_per_day = 1000000
acks_per_domain_per_day = 1000000
acks_per_hour = 1000000

[[connectors]]
name = "vault"
type = "keepass"
description = "Our secure vault"
path = "{vault}"
password = {{ file = "vault-password" }}
owner_fields = ["Email"]

[[connectors]]
name = "crm"
type = "sql"
description = "Customer database"
url = "sqlite:///{store}"
[[connectors.queries]]
name = "customer"
category = "Customer record"
sql = "SELECT email, name, phone, since FROM customers WHERE email = :email"
verify = "email"
[[connectors.queries]]
name = "tickets"
category = "Support ticket"
sql = "SELECT id, email, subject, body FROM tickets WHERE email = :email ORDER BY id"
key = "id"
verify = "email"
"""


def ensure_stack() -> MailServer:
    """The mail stack up (started if it is not), as the tests start it."""
    root = stack.REPO_ROOT
    result = subprocess.run(
        [str(root / "scripts" / "mailstack"), "up"], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/mailstack up failed:\n{result.stdout}\n{result.stderr}")
    return MailServer(ca_file=str(stack.ca_file(root)))


def fresh(local: str, domain: str) -> str:
    return f"{local}-{uuid.uuid4().hex[:10]}@{domain}"


class Site:
    """A sarbot installation in ``root`` for ``count`` requesters."""

    def __init__(
        self, root: Path, server: MailServer, count: int, *, imap: dict[str, object] | None = None
    ) -> None:
        self.root = root
        self.server = server
        self.support = fresh("support", "redtrain.test")
        self.requesters = [fresh(f"burst{n}", "example.test") for n in range(count)]
        self.config = root / "config.toml"
        vault, store = root / "vault.kdbx", root / "store.db"
        (root / "vault-password").write_text(VAULT_PASSWORD + "\n")
        write_config(
            self.config,
            self.support,
            server=server,
            database_url=f"sqlite:///{root / 'state.db'}",
            export_dir=root / "exports",
            imap={"timeout": 30, **(imap or {})},  # type: ignore[dict-item]
            smtp={"timeout": 60},
            extra=SETTINGS.format(vault=vault, store=store),
        )
        self._fill(vault, store)
        db.upgrade(self.app().engine)

    def settings(self) -> Settings:
        return load_settings(self.config)

    def app(self) -> App:
        return App(self.config, self.settings())

    def _fill(self, vault_path: Path, store_path: Path) -> None:
        vault = create_database(str(vault_path), password=VAULT_PASSWORD)
        clients = vault.add_group(vault.root_group, "Clients")
        acme = vault.add_group(clients, "Acme Ltd")
        with sqlite3.connect(store_path) as store:
            store.execute("CREATE TABLE customers (email TEXT, name TEXT, phone TEXT, since TEXT)")
            store.execute(
                "CREATE TABLE tickets (id INTEGER PRIMARY KEY, email TEXT, subject TEXT, body TEXT)"
            )
            store.execute("CREATE INDEX customers_email ON customers (email)")
            store.execute("CREATE INDEX tickets_email ON tickets (email)")
            for n, person in enumerate(self.requesters):
                store.execute(
                    "INSERT INTO customers VALUES (?, ?, ?, ?)",
                    (person, f"Customer {n}", f"+44 20 7946 {n % 10000:04d}", "2021-03-04"),
                )
                store.executemany(
                    "INSERT INTO tickets (email, subject, body) VALUES (?, ?, ?)",
                    [
                        (person, f"Ticket {t}", secrets.token_hex(TICKET_BYTES // 2))
                        for t in range(TICKETS)
                    ],
                )
                if n % VAULT_EVERY == 0:
                    entry = vault.add_entry(
                        acme,
                        f"Customer {n} - workstation login",
                        f"user{n}",
                        secrets.token_hex(8),
                        force_creation=True,
                    )
                    entry.set_custom_property("Email", person)
        store.close()
        vault.save()

    # -- mail ------------------------------------------------------------------------------

    def imap(self, user: str | None = None) -> IMAPClient:
        client = IMAPClient(self.server.host, port=self.server.imap_port, ssl=False, timeout=60)
        client.starttls(self.server.tls())
        client.login(user or self.support, PASSWORD)
        return client

    def request_mail(self, sender: str) -> bytes:
        message = EmailMessage()
        message["From"] = sender
        message["To"] = self.support
        message["Subject"] = "GDPR DATA REQUEST"
        message["Date"] = format_datetime(_now())
        message["Message-ID"] = make_msgid(domain="example.test")
        message.set_content("Please send me a copy of the personal data you hold about me.\n")
        return message.as_bytes(policy=policy.SMTP)

    def append(self, raws: Sequence[bytes], folder: str = "INBOX") -> None:
        """Put messages into the support mailbox as delivered (one IMAP session)."""
        with self.imap() as client:
            for raw in raws:
                client.append(folder, raw)


def confirmation(ack: bytes, sender: str) -> bytes:
    """A requester's reply to their acknowledgement, as a mail client writes it."""
    original = message_from_bytes(ack, policy=policy.default)
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = str(original["From"])
    reply["Subject"] = f"Re: {original['Subject']}"
    reply["Date"] = format_datetime(_now())
    reply["Message-ID"] = make_msgid(domain="example.test")
    reply["In-Reply-To"] = str(original["Message-ID"])
    reply["References"] = str(original["Message-ID"])
    reply.set_content("Yes, this is me.\n")
    return reply.as_bytes(policy=policy.SMTP)


def _now() -> datetime:
    return datetime.now(UTC)


# -- the baselines ------------------------------------------------------------------------


def bare_fetch(site: Site, folder: str, count: int) -> int:
    """FETCH the whole of the ``count`` newest messages of ``folder`` (one IMAP session)."""
    with site.imap() as client:
        client.select_folder(folder, readonly=True)
        uids = sorted(client.search(["ALL"]))[-count:]
        fetched = 0
        for start in range(0, len(uids), 100):
            data = client.fetch(uids[start : start + 100], ["BODY.PEEK[]"])
            fetched += sum(len(item[b"BODY[]"]) for item in data.values())
    return fetched


def smtp(server: MailServer) -> aiosmtplib.SMTP:
    """A client for the stack's SMTP submission, STARTTLS with its CA (``async with`` it)."""
    return aiosmtplib.SMTP(
        hostname=server.host,
        port=server.smtp_port,
        start_tls=True,
        tls_context=server.tls(),
        timeout=60,
    )


async def _bare_send(site: Site, mails: Sequence[tuple[str, int]]) -> None:
    async with smtp(site.server) as client:
        for recipient, size in mails:
            await client.sendmail(site.support, [recipient], filler(site.support, recipient, size))


def bare_send(site: Site, mails: Sequence[tuple[str, int]]) -> None:
    """Send one message of each size to each recipient, all on one SMTP connection."""
    asyncio.run(_bare_send(site, mails))


def filler(sender: str, recipient: str, size: int) -> bytes:
    """A message of ``size`` bytes: headers and base64-like lines."""
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: baseline\r\n"
        f"Message-ID: {make_msgid(domain='redtrain.test')}\r\n\r\n"
    ).encode()
    line = b"A" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b"B" * max(0, size - len(head) - len(body))


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...``; then ``t[0]`` is the seconds the block took."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


@dataclass
class Sent:
    """A message sarbot handed to SMTP: to whom, and its bytes."""

    recipient: str
    raw: bytes
