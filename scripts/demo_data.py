"""The demo's stores: where the privacy policy says data about a person is held.

alice is in all five: the secure vault (an entry for her workstation login
``asmith`` at the client Acme Ltd, with a password that must never appear
anywhere), the website's WordPress database (her comments and account), the
monitoring (Tactical RMM) database, where ``asmith`` is logged in on two
computers, a copy of a contact-form mail she sent, kept in a folder of the
support mailbox, and the access logs of systems she connected to: the web
server (lines naming her address) and Acme's VPN gateway (lines naming
``ACME\\asmith``).  Only the vault links her address to ``asmith``: the export
shows the monitoring and VPN data because identity expansion follows that
link, within the realm Acme Ltd.

A string is not a person, so the stores hold look-alikes that must never
appear in her export: bob, in every store and sharing alice's office IP
address; andrew, another ``asmith``, at the client Harbour Ltd (vault,
monitoring, and his SSH logins on Harbour's file server); mallory, who chose
the website login ``asmith``; and "m" + alice's address (``malice@...``), in
the web log and the contact-form folder.  ``LOOKALIKES_ONLY`` and
``ALICE_ONLY`` list text that is in one side's data and never the other's.
"""

from __future__ import annotations

import gzip
import json
import secrets
import time
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import phpserialize
from pykeepass import create_database
from sqlalchemy import column, create_engine, table

from sarbot.testing.stores import create_tacticalrmm_tables, create_wordpress_tables

OFFICE_IP = "203.0.113.24"
HOME_IP_OF_ALICE = "198.51.100.14"
IP_OF_ANDREW = "192.0.2.41"
BOB = "bob@example.test"
CONTACT_FOLDER = "Contact form"
WEBSITE_SENDER = "Red Train website <website@redtrain.test>"

# Text that is only in alice's data, and text that is only in the look-alikes' (with their
# addresses, which the demo knows): each must never be in the other side's export.
ALICE_ONLY = ("Alice Smith", "alice_s", "ACME-WS-014", "ACME-LT-007", HOME_IP_OF_ALICE,
              "07700 900123", "Backup for home users")  # fmt: skip
LOOKALIKES_ONLY = ("Harbour", "HARBOUR", "HBR-WS-003", "harbour-fs1", IP_OF_ANDREW, "Andrew",
                   "A. Smith", "Bob", "bjones", BOB, "Quote request")  # fmt: skip


def lookalike_address(alice: str) -> str:
    """Another person's address that holds alice's whole: ``malice@...``."""
    return "m" + alice


# A canary: the demo checks it appears nowhere alice can see.
VAULT_PASSWORD_OF_ALICE = "DEMO-CANARY-" + secrets.token_hex(8)


def build_vault(path: Path, master_password: str, alice: str, andrew: str) -> None:
    vault = create_database(str(path), password=master_password)
    clients = vault.add_group(vault.root_group, "Clients")
    acme = vault.add_group(clients, "Acme Ltd")
    entry = vault.add_entry(
        acme,
        "Alice Smith - workstation login",
        "asmith",
        VAULT_PASSWORD_OF_ALICE,
        url="rdp://acme-ws-014.acme.test",
        notes="Managed workstation account under the Acme Ltd support contract.",
    )
    entry.set_custom_property("Email", alice)
    entry.set_custom_property("Recovery PIN", secrets.token_hex(3), protect=True)
    contract = vault.add_binary(b"%PDF-1.4\n% Acme Ltd managed services contract (demo)\n")
    entry.add_attachment(contract, "acme-managed-services-contract.pdf")
    bob = vault.add_entry(acme, "Bob Jones - workstation login", "bjones", secrets.token_hex(8))
    bob.set_custom_property("Email", BOB)
    # Another client's asmith: the same login in another directory is another person.
    harbour = vault.add_group(clients, "Harbour Ltd")
    other = vault.add_entry(
        harbour,
        "Andrew Smith - file server login",
        "asmith",
        secrets.token_hex(8),
        url="ssh://harbour-fs1.harbour.test",
    )
    other.set_custom_property("Email", andrew)
    vault.save()


def _insert(url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for name, items in rows.items():
            for row in items:
                connection.execute(table(name, *(column(k) for k in row)).insert().values(row))
    engine.dispose()


def build_wordpress(url: str, alice: str, mallory: str) -> None:
    engine = create_engine(url)
    create_wordpress_tables(engine, "wp_")
    engine.dispose()
    now = int(time.time())
    sessions = {
        secrets.token_hex(32): {
            "expiration": now + 2 * 86400,
            "ip": OFFICE_IP,
            "ua": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0",
            "login": now - 3600,
        }
    }
    post = {
        "post_content": "",
        "post_excerpt": "",
        "to_ping": "",
        "pinged": "",
        "post_content_filtered": "",
        "post_status": "publish",
        "post_type": "post",
    }
    firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0"
    _insert(
        url,
        {
            "wp_users": [
                {
                    "ID": 2,
                    "user_login": "alice_s",
                    "user_pass": "$P$B" + secrets.token_hex(14),
                    "user_nicename": "alice-s",
                    "user_email": alice,
                    "user_url": "https://alice.example.test",
                    "user_registered": "2025-11-03 09:12:00",
                    "display_name": "Alice Smith",
                },
                {
                    "ID": 3,
                    "user_login": "bjones",
                    "user_pass": "$P$B" + secrets.token_hex(14),
                    "user_nicename": "bjones",
                    "user_email": BOB,
                    "user_registered": "2025-12-01 10:00:00",
                    "display_name": "Bob Jones",
                },
                {
                    # Anyone may sign up as "asmith": a login chosen on the website is not
                    # the Windows login asmith at Acme Ltd, and is never followed.
                    "ID": 4,
                    "user_login": "asmith",
                    "user_pass": "$P$B" + secrets.token_hex(14),
                    "user_nicename": "asmith",
                    "user_email": mallory,
                    "user_registered": "2026-11-20 22:41:00",
                    "display_name": "A. Smith",
                },
            ],
            "wp_usermeta": [
                {"user_id": 2, "meta_key": "first_name", "meta_value": "Alice"},
                {"user_id": 2, "meta_key": "last_name", "meta_value": "Smith"},
                {
                    "user_id": 2,
                    "meta_key": "session_tokens",
                    "meta_value": phpserialize.dumps(sessions).decode(),
                },
            ],
            "wp_posts": [
                {
                    "ID": 10,
                    "post_title": "Setting up multi-factor authentication",
                    "guid": "https://www.redtrain.test/?p=10",
                    "post_date": "2026-02-20 09:00:00",
                    **post,
                },
            ],
            "wp_comments": [
                {
                    "comment_ID": 1,
                    "comment_post_ID": 10,
                    "comment_author": "Alice Smith",
                    "comment_author_email": alice,
                    "comment_author_url": "https://alice.example.test",
                    "comment_author_IP": OFFICE_IP,
                    "comment_date": "2026-03-02 10:14:00",
                    "comment_date_gmt": "2026-03-02 10:14:00",
                    "comment_approved": "1",
                    "comment_agent": firefox,
                    "user_id": 2,
                    "comment_content": "Thanks, the guide to setting up MFA was really clear.",
                },
                {
                    "comment_ID": 2,
                    "comment_post_ID": 10,
                    "comment_author": "Alice",
                    "comment_author_email": alice.capitalize(),
                    "comment_author_IP": OFFICE_IP,
                    "comment_date": "2026-05-19 08:01:00",
                    "comment_date_gmt": "2026-05-19 08:01:00",
                    "comment_approved": "0",
                    "comment_agent": firefox,
                    "user_id": 0,
                    "comment_content": "Is the backup service available for home users too?",
                },
                {
                    "comment_ID": 3,
                    "comment_post_ID": 10,
                    "comment_author": "Bob Jones",
                    "comment_author_email": BOB,
                    "comment_author_IP": OFFICE_IP,
                    "comment_date": "2026-04-11 16:40:00",
                    "comment_date_gmt": "2026-04-11 16:40:00",
                    "comment_approved": "1",
                    "comment_agent": "Mozilla/5.0 Edge/126.0",
                    "user_id": 3,
                    "comment_content": "Great post!",
                },
            ],
        },
    )


def _agent(
    number: int, hostname: str, logged_in: str | None, last: str | None, **more: Any
) -> dict[str, Any]:
    disks = [
        {
            "device": "C:",
            "fstype": "NTFS",
            "total": "476.3G",
            "used": "201.7G",
            "free": "274.6G",
            "percent": 42,
        }
    ]
    wmi = {
        "cpu": [[{"Name": "Intel(R) Core(TM) i5-1245U", "NumberOfCores": 10}]],
        "comp_sys_prod": [[{"Vendor": "Dell Inc."}]],
        "network_config": [[{"Description": "Ethernet", "IPAddress": [f"192.168.10.{number}"]}]],
    }
    return {
        "id": number,
        "agent_id": f"demo-agent-{number:04d}",
        "hostname": hostname,
        "site_id": 1,
        "plat": "windows",
        "operating_system": "Microsoft Windows 11 Pro, 64bit (build 22631)",
        "public_ip": OFFICE_IP,
        "last_seen": "2026-11-26 08:55:00",
        "total_ram": 16,
        "logged_in_username": logged_in,
        "last_logged_in_user": last,
        "disks": json.dumps(disks),
        "wmi_detail": json.dumps(wmi),
        **more,
    }


def build_rmm(url: str) -> None:
    engine = create_engine(url)
    create_tacticalrmm_tables(engine)
    engine.dispose()
    software = [
        {
            "name": "Microsoft 365 Apps for business",
            "version": "16.0.17928",
            "publisher": "Microsoft Corporation",
            "install_date": "2026-01-12",
        },
        {
            "name": "Mozilla Firefox",
            "version": "128.0",
            "publisher": "Mozilla",
            "install_date": "2026-07-09",
        },
    ]
    _insert(
        url,
        {
            "clients_client": [{"id": 1, "name": "Acme Ltd"}, {"id": 2, "name": "Harbour Ltd"}],
            "clients_site": [
                {"id": 1, "client_id": 1, "name": "Head office"},
                {"id": 2, "client_id": 2, "name": "Bakery"},
            ],
            "agents_agent": [
                _agent(14, "ACME-WS-014", "ACME\\asmith", "ACME\\asmith"),
                _agent(7, "ACME-LT-007", "None", "asmith"),
                _agent(20, "ACME-WS-020", "ACME\\bjones", "ACME\\bjones"),
                # Harbour Ltd's asmith (andrew), on a computer of another client.
                _agent(
                    31, "HBR-WS-003", "HARBOUR\\asmith", "asmith", site_id=2, public_ip="192.0.2.80"
                ),
            ],
            "software_installedsoftware": [
                {"agent_id": 14, "software": json.dumps(software)},
                {"agent_id": 7, "software": json.dumps(software[:1])},
            ],
        },
    )


# ----- copies of contact-form mail, kept in a folder of the support mailbox --------------------


def _contact_form_mail(
    support: str, sent: datetime, visitor: str, subject: str, form: dict[str, str]
) -> bytes:
    """A mail as the website's contact form sends it: from the website, the visitor in Reply-To."""
    message = EmailMessage()
    message["From"] = WEBSITE_SENDER
    message["To"] = support
    message["Reply-To"] = visitor
    message["Subject"] = f"Contact form: {subject}"
    message["Date"] = format_datetime(sent)
    message["Message-ID"] = f"<contact-form-{secrets.token_hex(8)}@www.redtrain.test>"
    message.set_content("".join(f"{field}: {value}\n" for field, value in form.items()))
    return bytes(message)


def contact_form_mails(support: str, alice: str) -> list[tuple[bytes, datetime]]:
    """The folder's mail, each with the date it arrived: alice's, bob's and a look-alike's."""
    malice = lookalike_address(alice)
    mails = [
        (
            datetime.fromisoformat("2026-05-14T09:12:40+01:00"),
            f"Alice Smith <{alice}>",
            "Backup for home users",
            {
                "Name": "Alice Smith",
                "Email": alice,
                "Phone": "07700 900123",
                "Message": "We use your backup service at work. Is it available for home "
                "users too? I have two laptops at home.",
            },
        ),
        (
            datetime.fromisoformat("2026-06-02T15:30:05+01:00"),
            f"Bob Jones <{BOB}>",
            "New starter",
            {"Name": "Bob Jones", "Email": BOB, "Message": "Please set up a laptop for June."},
        ),
        (
            datetime.fromisoformat("2026-09-08T11:03:51+01:00"),
            f"M. Alice <{malice}>",
            "Quote request",
            {"Name": "M. Alice", "Email": malice, "Message": "A quote for five workstations?"},
        ),
    ]
    return [
        (_contact_form_mail(support, sent, visitor, subject, form), sent)
        for sent, visitor, subject, form in mails
    ]


# ----- access logs of systems people connect to ------------------------------------------------

FIREFOX_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0"


def _web_line(ip: str, user: str, when: str, request: str, status: int) -> str:
    return f'{ip} - {user} [{when}] "{request} HTTP/1.1" {status} 5120 "-" "{FIREFOX_UA}"\n'


def build_logs(folder: Path, alice: str) -> None:
    """The web server's log (rotated and gzipped too), Acme's VPN gateway, Harbour's SSH.

    On the web server, clients download their tools from an area where they log in with
    their address; the contact form's thank-you page carries the sender's address in its
    web address, so a line of anyone who opens that link names it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    malice = lookalike_address(alice)
    thanks = "GET /contact/thanks/?from={}&form=contact"
    older = _web_line(HOME_IP_OF_ALICE, alice, "03/Mar/2026:18:40:02 +0000",
                      "GET /downloads/acme/", 200)  # fmt: skip
    with gzip.open(folder / "www.access.log.1.gz", "wt") as rotated:
        rotated.write(older)
        rotated.write(_web_line(OFFICE_IP, BOB, "04/Mar/2026:09:01:00 +0000", "GET /", 200))
    (folder / "www.access.log").write_text(
        _web_line(HOME_IP_OF_ALICE, "-", "14/May/2026:09:12:41 +0100",
                  thanks.format(quote(alice, safe="")), 200)
        + _web_line(HOME_IP_OF_ALICE, alice, "14/May/2026:09:20:13 +0100",
                    "GET /downloads/acme/RemoteSupport.exe", 200)
        + _web_line(OFFICE_IP, BOB, "02/Jun/2026:15:30:06 +0100", "GET /downloads/acme/", 200)
        + _web_line("192.0.2.99", "-", "08/Sep/2026:11:03:52 +0100",
                    thanks.format(quote(malice, safe="")), 200)
        + _web_line("192.0.2.99", malice, "08/Sep/2026:11:05:09 +0100", "GET /downloads/", 401)
    )  # fmt: skip
    vpn = [
        ("2026-11-23T07:58:02+00:00", "asmith", HOME_IP_OF_ALICE, "VPN login", "failed"),
        ("2026-11-23T07:58:31+00:00", "ACME\\asmith", HOME_IP_OF_ALICE, "VPN login", "success"),
        ("2026-11-23T08:01:10+00:00", "ACME\\asmith", HOME_IP_OF_ALICE,
         "RDP session to ACME-WS-014", "success"),
        ("2026-11-23T08:15:44+00:00", "ACME\\bjones", OFFICE_IP, "VPN login", "success"),
    ]  # fmt: skip
    (folder / "acme-vpn.jsonl").write_text(
        "".join(
            json.dumps({"time": t, "user": u, "ip": ip, "action": a, "status": s,
                        "session": secrets.token_hex(4)}) + "\n"
            for t, u, ip, a, s in vpn
        )
    )  # fmt: skip
    (folder / "harbour-fs1.auth.log").write_text(
        f"2026-10-02T09:14:03+01:00 harbour-fs1 sshd[2211]: Accepted password for asmith from "
        f"{IP_OF_ANDREW} port 50522 ssh2\n"
        "2026-10-02T09:14:03+01:00 harbour-fs1 sshd[2211]: pam_unix(sshd:session): session "
        "opened for user asmith(uid=1001) by (uid=0)\n"
        "2026-10-02T09:31:40+01:00 harbour-fs1 sshd[2211]: pam_unix(sshd:session): session "
        "closed for user asmith\n"
    )
