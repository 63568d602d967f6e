"""The end-to-end demo: alice asks for her data and gets it, through real mail servers.

Run by ``make demo`` after the mail stack is up.  It writes ``.demo/`` (a
website database, the config and the state database), then plays alice.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

from sarbot.testing import Correspondent, MailServer, subject_contains

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
SUPPORT = "support@redtrain.test"
ALICE = "alice@example.test"
SARBOT = [str(ROOT / ".venv" / "bin" / "sarbot"), "--config", str(DEMO / "config.toml")]

CONFIG = """\
# Written by `make demo`. See config.example.toml for every setting.
[controller]
name = "Red Train IT Ltd"
email = "{support}"
website = "https://www.redtrain.test"
privacy_contact = "privacy@redtrain.test"

[imap]
host = "127.0.0.1"
port = 10143
security = "starttls"
ca_file = "{ca}"
username = "{support}"
password = {{ file = "secrets/imap-password" }}
poll_interval = 5

[smtp]
host = "127.0.0.1"
port = 10025
security = "starttls"
ca_file = "{ca}"

[storage]
database_url = "sqlite:///{demo}/sarbot.db"
export_dir = "{demo}/exports"

[logging]
format = "console"

[[connectors]]
name = "website"
type = "sql"
description = "Comments left on our website"
url = "sqlite:///{demo}/website.db"

[[connectors.queries]]
name = "comments"
category = "Website comment"
sql = \"\"\"
SELECT comment_date AS date, comment_author AS name, comment_author_email AS email,
       comment_author_url AS website, comment_author_IP AS ip_address,
       comment_agent AS browser, comment_content AS comment
FROM wp_comments WHERE lower(comment_author_email) = :email
\"\"\"
"""

COMMENTS = [
    (
        "Alice Example",
        "alice@example.test",
        "https://alice.example.test",
        "192.0.2.10",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        "2026-03-02 10:14:00",
        "Thanks, the guide to setting up MFA was really clear.",
    ),
    (
        "Alice Example",
        "Alice@Example.test",
        "",
        "192.0.2.10",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        "2026-05-19 08:01:00",
        "Is the backup service available for home users too?",
    ),
    (
        "Bob Other",
        "bob@example.test",
        "",
        "198.51.100.7",
        "Mozilla/5.0 (Windows NT 10.0) Edge/126.0",
        "2026-04-11 16:40:00",
        "Great post!",
    ),
]


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def write_demo_files() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "secrets").mkdir(parents=True, mode=0o700)
    password = DEMO / "secrets" / "imap-password"
    password.write_text("test\n")
    password.chmod(0o600)
    with sqlite3.connect(DEMO / "website.db") as db:
        db.execute(
            "CREATE TABLE wp_comments (comment_ID INTEGER PRIMARY KEY, comment_author TEXT,"
            " comment_author_email TEXT, comment_author_url TEXT, comment_author_IP TEXT,"
            " comment_agent TEXT, comment_date TEXT, comment_content TEXT)"
        )
        db.executemany(
            "INSERT INTO wp_comments (comment_author, comment_author_email, comment_author_url,"
            " comment_author_IP, comment_agent, comment_date, comment_content)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            COMMENTS,
        )
    ca = ROOT / ".mailstack" / "ca.pem"
    (DEMO / "config.toml").write_text(CONFIG.format(support=SUPPORT, ca=ca, demo=DEMO))


def sarbot(*args: str) -> None:
    print(f"$ sarbot {' '.join(args)}", flush=True)
    subprocess.run([*SARBOT, *args], check=True)


def main() -> int:
    server = MailServer(ca_file=str(ROOT / ".mailstack" / "ca.pem"))
    alice, support = Correspondent(server, ALICE), Correspondent(server, SUPPORT)

    step("Writing .demo/: a website database with alice's comments, and the config")
    write_demo_files()
    for person in (alice, support):
        person.send(person.address, "mailbox warm-up")  # creates the mailbox on first delivery
        person.wait_for(subject_contains("mailbox warm-up"))
        person.clear()
    sarbot("db", "upgrade")

    step(f"alice sends 'GDPR DATA REQUEST' to {SUPPORT}")
    alice.send(SUPPORT, "GDPR DATA REQUEST", "Please send me a copy of the data you hold about me.")
    support.wait_for(subject_contains("GDPR DATA REQUEST"))
    sarbot("run", "--once")

    step("alice reads the acknowledgement and replies to it")
    ack = alice.wait_for(subject_contains("Please confirm"))
    print(f"Subject: {ack['Subject']}")
    alice.reply(ack)
    support.wait_for(subject_contains("Re: [SAR-"))

    step("sarbot collects, packages and delivers")
    sarbot("run", "--once")

    step("What alice received")
    export = alice.wait_for(subject_contains("A copy of your personal data"))
    for message in alice.messages():
        print(f"  From: {message['From']}  Subject: {message['Subject']}")
    body = export.get_body(preferencelist=("plain",))
    assert body is not None
    print("\n" + body.get_content())
    for part in export.iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        print(f"Attachment {part.get_filename()} ({len(data)} bytes):")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                print(f"  {info.filename:<15} {info.file_size:>7} bytes")

    step("Done. The mail stack is still running; try:")
    print("  .venv/bin/sarbot --config .demo/config.toml requests list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
