"""The demo's stores: where the privacy policy says data about a person is held.

alice is in all three: the secure vault (an entry for her
workstation login ``asmith``, with a password that must never appear
anywhere), the website's WordPress database (her comments and account), and
the monitoring (Tactical RMM) database, where ``asmith`` is logged in on two
computers.  Only the vault links her address to ``asmith``: the export shows
the RMM data because identity expansion follows that link.  Bob is in every
store too, sharing alice's office IP address, and must never appear in her
export.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import phpserialize
from pykeepass import create_database
from sqlalchemy import column, create_engine, table

from sarbot.testing.stores import create_tacticalrmm_tables, create_wordpress_tables

OFFICE_IP = "203.0.113.24"

# A canary: the demo checks it appears nowhere alice can see.
VAULT_PASSWORD_OF_ALICE = "DEMO-CANARY-" + secrets.token_hex(8)


def build_vault(path: Path, master_password: str, alice: str) -> None:
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
    bob.set_custom_property("Email", "bob@example.test")
    vault.save()


def _insert(url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for name, items in rows.items():
            for row in items:
                connection.execute(table(name, *(column(k) for k in row)).insert().values(row))
    engine.dispose()


def build_wordpress(url: str, alice: str) -> None:
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
                    "user_email": "bob@example.test",
                    "user_registered": "2025-12-01 10:00:00",
                    "display_name": "Bob Jones",
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
                    "comment_author_email": "bob@example.test",
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
            "clients_client": [{"id": 1, "name": "Acme Ltd"}],
            "clients_site": [{"id": 1, "client_id": 1, "name": "Head office"}],
            "agents_agent": [
                _agent(14, "ACME-WS-014", "ACME\\asmith", "ACME\\asmith"),
                _agent(7, "ACME-LT-007", "None", "asmith"),
                _agent(20, "ACME-WS-020", "ACME\\bjones", "ACME\\bjones"),
            ],
            "software_installedsoftware": [
                {"agent_id": 14, "software": json.dumps(software)},
                {"agent_id": 7, "software": json.dumps(software[:1])},
            ],
        },
    )
