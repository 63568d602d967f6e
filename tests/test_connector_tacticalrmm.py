"""The ``tacticalrmm`` connector against a real PostgreSQL Tactical RMM schema, and on SQLite."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from connectors import readonly
from connectors.indexed import like_whole
from connectors.tacticalrmm import (
    LAST_USER_NOTE,
    NOW_WITHHELD,
    OTHERS_NOTE,
    WITHHELD_DEVICE,
    WITHHELD_TEXT,
    WITHHELD_USER,
    TacticalRmmConnector,
    TacticalRmmSettings,
)
from connectors.tacticalrmm import connector as rmm_connector
from connectors.tacticalrmm.inventory import SOFTWARE_KEYS, ip_of, software
from connectors.tacticalrmm.people import Withholder, _texts_of
from sarbot.config import validate
from sarbot.connector import Identifier, Identity, JSONValue, Record, Trust
from sarbot.errors import ConfigError
from sarbot.testing.identity import address, asked, login
from sarbot.testing.stores import tacticalrmm_statements
from tests.servers import ServerError, postgres_server

JSON_COLUMNS = {"disks", "wmi_detail", "software"}
ORIGIN = "keepass 'vault': entry 'Staff/Alice', UserName field"
# The admin's realm: the vault's Staff group, the Windows domain (NetBIOS CORP, DNS corp.test)
# and the RMM client Acme Ltd name the same people.
ACME_REALM = ("keepass:vault/Staff", "ad:CORP", "ad:corp.test", "tacticalrmm:rmm/Acme Ltd")
OTHER_CO_REALM = ("tacticalrmm:rmm/Other Co", "ad:OTHERCO")
# Strings that only other people's data and free text hold: none may reach a record.
CANARIES = ("basmith", "canary", "karen", "bob's")


def boot(hour: int) -> float:
    return datetime(2026, 2, 28, hour, tzinfo=UTC).timestamp()


CLIENTS = [{"id": 1, "name": "Acme Ltd"}, {"id": 2, "name": "Other Co"}]
SITES: list[dict[str, Any]] = [
    {"id": 1, "client_id": 1, "name": "HQ"},
    {"id": 2, "client_id": 1, "name": "Branch"},
    {"id": 3, "client_id": 2, "name": "Main"},
]
ALICE_DESKTOP_WMI: dict[str, Any] = {
    "cpu": [
        [
            {
                "Name": "Intel(R) Core(TM) i7-11700 CPU @ 2.50GHz",
                "NumberOfCores": 8,
                "NumberOfLogicalProcessors": 16,
            }
        ]
    ],
    "comp_sys": [[{"Model": "OptiPlex 7090", "UserName": "CORP\\asmith"}]],
    "comp_sys_prod": [[{"Vendor": "Dell Inc.", "IdentifyingNumber": "5CG1234XYZ"}]],
    "bios": [[{"SerialNumber": "5CG1234XYZ"}]],
    "os": [[{"Caption": "Windows 11 Pro", "RegisteredUser": "Karen CANARY-OWNER"}]],
    "network_config": [
        [{"Description": "Ethernet", "IPAddress": ["192.168.1.20", "fe80::1c2b:3d4e:5f60:7a8b"]}],
        [{"Description": "WAN Miniport", "IPAddress": None}],
    ],
}
SHARED_PC_WMI: dict[str, Any] = {
    "cpu": [[{"Name": "Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz"}]],
    "comp_sys": [[{"Model": "EliteDesk 800 G4", "UserName": "CORP\\basmith"}]],
    "comp_sys_prod": [[{"Vendor": "HP"}]],
    "bios": [[{"SerialNumber": "MXL9876ABC"}]],
    "os": [[{"RegisteredUser": "basmith", "Organization": "Acme"}]],
    "network_config": [[{"IPAddress": ["192.168.1.44"]}]],
}
LINUX_WMI: dict[str, Any] = {
    "cpus": ["AMD Ryzen 7 PRO 5850U with Radeon Graphics"],
    "local_ips": ["10.0.0.15/24", "127.0.0.1/8"],
    "make_model": "LENOVO ThinkPad T14s",
    "serialnumber": "PF3ABCDE",
    "disks": ["Samsung MZVL2512 NVMe nvme0n1 512 GB"],
}
WINDOWS_DISKS: list[dict[str, Any]] = [
    {
        "device": "C:",
        "fstype": "NTFS",
        "total": "465.3G",
        "used": "121.9G",
        "free": "343.3G",
        "percent": 26,
    }
]
AGENTS: list[dict[str, Any]] = [
    {
        "id": 1,
        "agent_id": "AgEnTaLiCeDeSkToP0001",
        "hostname": "ACME-WS-01",
        "site_id": 1,
        "plat": "windows",
        "operating_system": "Microsoft Windows 11 Pro, 64bit (build 22631)",
        "public_ip": "203.0.113.10",
        "last_seen": "2026-03-01 09:30:00",
        "boot_time": boot(8),
        "total_ram": 16,
        "logged_in_username": "CORP\\asmith",
        "last_logged_in_user": "CORP\\asmith",
        "description": "Karen's old laptop CANARY-DESC",
        "disks": WINDOWS_DISKS,
        "wmi_detail": ALICE_DESKTOP_WMI,
    },
    {
        "id": 2,
        "agent_id": "AgEnTaLiCeLaPtOp00002",
        "hostname": "acme-lt-07",
        "site_id": 2,
        "plat": "linux",
        "operating_system": "Ubuntu 24.04 x86_64 6.8.0-45-generic",
        "public_ip": "198.51.100.7",
        "last_seen": "2026-03-02 17:05:00",
        "boot_time": boot(7),
        "total_ram": 32,
        "logged_in_username": "None",
        "last_logged_in_user": "ASmith@Corp.Test",
        "disks": [
            {
                "device": "/dev/nvme0n1p2",
                "fstype": "ext4",
                "total": "475.6 GB",
                "used": "129.1 GB",
                "free": "346.5 GB",
                "percent": 27,
            },
            {
                "device": "//nas.corp.test/karen",
                "fstype": "cifs",
                "total": "2.0 TB",
                "used": "1.1 TB",
                "free": "0.9 TB",
                "percent": 55,
            },
        ],
        "wmi_detail": LINUX_WMI,
    },
    {
        "id": 3,
        "agent_id": "AgEnTbObDeSkToP000003",
        "hostname": "ACME-WS-02",
        "site_id": 1,
        "public_ip": "203.0.113.10",
        "logged_in_username": "basmith",
        "last_logged_in_user": "CORP\\basmith",
        "description": "Bob's computer",
    },
    {
        "id": 4,
        "agent_id": "AgEnTsHaReDpC00000004",
        "hostname": "BASMITH-PC",
        "site_id": 1,
        "operating_system": "Microsoft Windows 10 Pro, 64bit (build 19045)",
        "public_ip": "203.0.113.10",
        "last_seen": "2026-03-03 12:00:00",
        "total_ram": 8,
        "logged_in_username": "CORP\\basmith",
        "last_logged_in_user": "asmith",
        "description": "Bob's computer CANARY-DESC",
        "disks": WINDOWS_DISKS,
        "wmi_detail": SHARED_PC_WMI,
    },
    {
        "id": 5,
        "agent_id": "AgEnToThErCo00000005",
        "hostname": "OTHER-01",
        "site_id": 3,
        "logged_in_username": "OTHERCO\\asmith",
        "last_logged_in_user": "OTHERCO\\asmith",
    },
    {
        "id": 6,
        "agent_id": "AgEnTjUeRgEn000000006",
        "hostname": "ACME-WS-06",
        "site_id": 2,
        "logged_in_username": "CORP\\JÜRGEN.STRAßER",
        "last_logged_in_user": "None",
    },
]
SOFTWARE: list[dict[str, Any]] = [
    {
        "id": 1,
        "agent_id": 1,
        "software": [
            {
                "name": "7-Zip 23.01 (x64)",
                "version": "23.01",
                "publisher": "Igor Pavlov",
                "install_date": "2024-01-15 00:00:00 +0000 UTC",
                "size": "5.4 MB",
                "source": "",
                "location": "C:\\Program Files\\7-Zip\\",
                "uninstall": '"C:\\Program Files\\7-Zip\\Uninstall.exe"',
            },
            {
                "name": "Zoom",
                "version": "5.17.5",
                "publisher": "Zoom Video Communications, Inc.",
                "install_date": "2025-06-01 00:00:00 +0000 UTC",
                "size": "",
                "location": "C:\\Users\\karen\\AppData\\Roaming\\Zoom\\bin CANARY-PATH",
                "uninstall": "C:\\Users\\karen\\AppData\\Roaming\\Zoom\\uninstall\\Installer.exe",
            },
            {"name": "Google Chrome", "version": "122.0.6261.112"},
        ],
    },
    {
        "id": 2,
        "agent_id": 4,
        "software": [
            {
                "name": "Mozilla Firefox (x64 en-GB)",
                "version": "124.0.1",
                "publisher": "Mozilla",
                "install_date": "",
                "size": "238.0 MB",
                "location": "C:\\Program Files\\Mozilla Firefox",
            },
            {
                "name": "basmith's macros",
                "version": "1.0",
                "publisher": "CORP\\basmith",
                "install_date": "2025-11-02 00:00:00 +0000 UTC",
                "size": "",
                "location": "C:\\Users\\basmith\\AppData\\Local\\Macros",
            },
        ],
    },
    {"id": 3, "agent_id": 3, "software": [{"name": "Bob's CANARY tool", "version": "1"}]},
]

WINDOWS_DISKS_OUT: list[dict[str, Any]] = [
    {
        "Device": "C:",
        "File system": "NTFS",
        "Total": "465.3G",
        "Used": "121.9G",
        "Free": "343.3G",
        "Percent used": 26,
    }
]
ALICE_DESKTOP: dict[str, Any] = {
    "Hostname": "ACME-WS-01",
    "Client": "Acme Ltd",
    "Site": "HQ",
    "Agent ID": "AgEnTaLiCeDeSkToP0001",
    "Operating system": "Microsoft Windows 11 Pro, 64bit (build 22631)",
    "Public IP address": "203.0.113.10",
    "Local IP addresses": ["192.168.1.20", "fe80::1c2b:3d4e:5f60:7a8b"],
    "Last seen": "2026-03-01T09:30:00+00:00",
    "Logged-in user": "CORP\\asmith",
    "Last logged-in user": "CORP\\asmith",
    "Last boot": "2026-02-28T08:00:00+00:00",
    "Make and model": "Dell Inc. OptiPlex 7090",
    "Serial number": "5CG1234XYZ",
    "CPU": ["Intel(R) Core(TM) i7-11700 CPU @ 2.50GHz, 8C/16T"],
    "Total RAM (GB)": 16,
    "Disks": WINDOWS_DISKS_OUT,
    "Installed software": [
        {
            "Name": "7-Zip 23.01 (x64)",
            "Version": "23.01",
            "Publisher": "Igor Pavlov",
            "Install date": "2024-01-15 00:00:00 +0000 UTC",
            "Size": "5.4 MB",
        },
        {
            "Name": "Zoom",
            "Version": "5.17.5",
            "Publisher": "Zoom Video Communications, Inc.",
            "Install date": "2025-06-01 00:00:00 +0000 UTC",
            "Size": "",
        },
        {
            "Name": "Google Chrome",
            "Version": "122.0.6261.112",
            "Publisher": None,
            "Install date": None,
            "Size": None,
        },
    ],
}
ALICE_LAPTOP: dict[str, Any] = {
    "Hostname": "acme-lt-07",
    "Client": "Acme Ltd",
    "Site": "Branch",
    "Agent ID": "AgEnTaLiCeLaPtOp00002",
    "Operating system": "Ubuntu 24.04 x86_64 6.8.0-45-generic",
    # Nobody is logged in now: alice was the last, so where it is now is not hers to see.
    "Public IP address": NOW_WITHHELD,
    "Local IP addresses": ["10.0.0.15"],
    "Last seen": NOW_WITHHELD,
    "Logged-in user": None,
    "Last logged-in user": "ASmith@Corp.Test",
    "Last boot": "2026-02-28T07:00:00+00:00",
    "Make and model": "LENOVO ThinkPad T14s",
    "Serial number": "PF3ABCDE",
    "CPU": ["AMD Ryzen 7 PRO 5850U with Radeon Graphics"],
    "Total RAM (GB)": 32,
    "Disks": [
        {
            "Device": "/dev/nvme0n1p2",
            "File system": "ext4",
            "Total": "475.6 GB",
            "Used": "129.1 GB",
            "Free": "346.5 GB",
            "Percent used": 27,
        },
        {
            "Device": WITHHELD_DEVICE,
            "File system": "cifs",
            "Total": "2.0 TB",
            "Used": "1.1 TB",
            "Free": "0.9 TB",
            "Percent used": 55,
        },
    ],
    "Installed software": [],
}
SHARED_PC: dict[str, Any] = {
    "Hostname": WITHHELD_TEXT,
    "Client": "Acme Ltd",
    "Site": "HQ",
    "Agent ID": "AgEnTsHaReDpC00000004",
    "Operating system": "Microsoft Windows 10 Pro, 64bit (build 19045)",
    # Bob is logged in now; alice was only the last before him.
    "Public IP address": NOW_WITHHELD,
    "Local IP addresses": ["192.168.1.44"],
    "Last seen": NOW_WITHHELD,
    "Logged-in user": WITHHELD_USER,
    "Last logged-in user": "asmith",
    "Last boot": None,
    "Make and model": "HP EliteDesk 800 G4",
    "Serial number": "MXL9876ABC",
    "CPU": ["Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz"],
    "Total RAM (GB)": 8,
    "Disks": WINDOWS_DISKS_OUT,
    "Installed software": [
        {
            "Name": "Mozilla Firefox (x64 en-GB)",
            "Version": "124.0.1",
            "Publisher": "Mozilla",
            "Install date": "",
            "Size": "238.0 MB",
        },
        {
            "Name": WITHHELD_TEXT,
            "Version": "1.0",
            "Publisher": WITHHELD_TEXT,
            "Install date": "2025-11-02 00:00:00 +0000 UTC",
            "Size": "",
        },
    ],
}
OTHER_CO: dict[str, Any] = {
    "Hostname": "OTHER-01",
    "Client": "Other Co",
    "Site": "Main",
    "Agent ID": "AgEnToThErCo00000005",
    "Operating system": None,
    "Public IP address": None,
    "Local IP addresses": [],
    "Last seen": None,
    "Logged-in user": "OTHERCO\\asmith",
    "Last logged-in user": "OTHERCO\\asmith",
    "Last boot": None,
    "Make and model": None,
    "Serial number": None,
    "CPU": [],
    "Total RAM (GB)": None,
    "Disks": [],
    "Installed software": [],
}


# ----- building the databases -------------------------------------------------------------


Rows = list[dict[str, Any]]


def load(
    url: str,
    clients: Rows = CLIENTS,
    sites: Rows = SITES,
    agents: Rows = AGENTS,
    software: Rows = SOFTWARE,
) -> None:
    """Create the schema and the test data; JSON goes in as jsonb or, on SQLite, as text."""
    postgres = url.startswith("postgresql")
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in tacticalrmm_statements(sqlite=not postgres):
            connection.exec_driver_sql(statement)
        for table, rows in (
            ("clients_client", clients),
            ("clients_site", sites),
            ("agents_agent", agents),
            ("software_installedsoftware", software),
        ):
            for row in rows:
                names = list(row)
                marks = [
                    f"CAST(:{n} AS jsonb)" if postgres and n in JSON_COLUMNS else f":{n}"
                    for n in names
                ]
                params = {n: json.dumps(v) if n in JSON_COLUMNS else v for n, v in row.items()}
                if postgres and row.get("last_seen"):
                    params["last_seen"] = f"{row['last_seen']}+00"
                insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(marks)})"  # noqa: S608
                connection.execute(text(insert), params)
    engine.dispose()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        with postgres_server() as url:
            load(url)
            yield url
    except ServerError as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('trmm') / 'tacticalrmm.db'}"
    load(url)
    return url


def connector(url: str, **options: Any) -> TacticalRmmConnector:
    settings = validate(
        {"url": url, **options}, TacticalRmmSettings, source="test", base_dir=Path(".")
    )
    assert isinstance(settings, TacticalRmmSettings)
    return TacticalRmmConnector("rmm", settings)


def collect(url: str, identity: Identity, **options: Any) -> list[Record]:
    rmm = connector(url, **options)
    try:
        return list(rmm.collect(identity))
    finally:
        rmm.close()


def acme(value: str) -> Identifier:
    """A login the vault's Staff group records, valid in the realm of the Acme Ltd client."""
    return dataclasses.replace(login(value, *ACME_REALM), origin=ORIGIN)


def usernames(*values: str) -> Identity:
    return asked(*(acme(v) for v in values))


# Other Co's asmith: another person, in another realm.
OTHER_ASMITH = asked(login("asmith", *OTHER_CO_REALM))


def keys(records: list[Record]) -> list[str]:
    return [r.key for r in records]


def serialized(records: list[Record]) -> str:
    """Everything the records carry (a realm's namespaces, a set, in order)."""
    return json.dumps([dataclasses.asdict(r) for r in records], ensure_ascii=False, default=sorted)


PROGRAM_FIELDS = dict.fromkeys(SOFTWARE_KEYS.values())


ALICE_KEYS = [
    "agent:AgEnTaLiCeDeSkToP0001",
    "agent:AgEnTaLiCeLaPtOp00002",
    "agent:AgEnTsHaReDpC00000004",
]


class TestFinding:
    def test_username_finds_every_computer_it_used(self, postgres_url: str) -> None:
        """``asmith`` finds the agents of its client it is or was logged in to, in any of the
        three forms; Other Co's ``OTHERCO\\asmith`` is another person."""
        identity = usernames("asmith")
        records = collect(postgres_url, identity)
        assert keys(records) == ALICE_KEYS
        assert all(r.found_by is identity.identifiers[0] for r in records)
        assert {r.category for r in records} == {"Monitored computer"}
        assert keys(collect(postgres_url, OTHER_ASMITH)) == ["agent:AgEnToThErCo00000005"]

    def test_a_longer_account_name_does_not_match(self, postgres_url: str) -> None:
        """``smith`` finds nothing; bob's ``basmith`` finds only bob's agents, not alice's."""
        assert collect(postgres_url, usernames("smith")) == []
        assert keys(collect(postgres_url, usernames("basmith"))) == [
            "agent:AgEnTbObDeSkToP000003",
            "agent:AgEnTsHaReDpC00000004",
        ]

    def test_case_is_ignored(self, postgres_url: str) -> None:
        """A username matches whatever the case it was recorded in."""
        assert keys(collect(postgres_url, usernames("ASMITH"))) == ALICE_KEYS

    def test_non_ascii_names_match_ignoring_case(self, postgres_url: str, sqlite_url: str) -> None:
        """``jürgen.straßer`` finds CORP\\JÜRGEN.STRAßER whatever the database lowers."""
        for url in (postgres_url, sqlite_url):
            assert keys(collect(url, usernames("jürgen.straßer"))) == [
                "agent:AgEnTjUeRgEn000000006"
            ]
            assert collect(url, usernames("jurgen.strasser")) == []

    def test_named_domains_must_agree(self, postgres_url: str) -> None:
        """When both sides name a domain it is the same one, or two the realm declares the same
        (CORP and corp.test here); when one side does, it is a domain of the realm."""
        assert keys(collect(postgres_url, usernames("asmith@corp.test"))) == ALICE_KEYS
        assert keys(collect(postgres_url, usernames("CORP\\asmith"))) == ALICE_KEYS
        assert collect(postgres_url, usernames("OTHERCO\\asmith")) == []

    def test_email_matches_only_the_recorded_user_at_domain(self, postgres_url: str) -> None:
        """An address finds the agent that recorded exactly that address (in any case) as its
        user, at any client: an address is global."""
        identity = Identity.verified("asmith@corp.test")
        records = collect(postgres_url, identity)
        assert keys(records) == ["agent:AgEnTaLiCeLaPtOp00002"]
        assert records[0].found_by is identity.identifiers[0]
        assert collect(postgres_url, Identity.verified("asmith@example.test")) == []

    def test_other_identifier_kinds_are_not_searched(self, postgres_url: str) -> None:
        """Weak identifiers (an IP address, a hostname) never select a computer."""
        identity = asked(
            Identifier("ip", "203.0.113.10", ORIGIN, "ip"),
            Identifier("hostname", "ACME-WS-01", ORIGIN, "hostname"),
        )
        assert collect(postgres_url, identity) == []

    def test_identifiers_are_bound_not_interpolated(self, postgres_url: str) -> None:
        """Quotes and LIKE wildcards in an identifier are data: they match nothing here."""
        assert collect(postgres_url, usernames("x' OR '1'='1", "%", "a_mith", "")) == []

    def test_clients_setting_limits_the_search(self, postgres_url: str) -> None:
        """With ``clients``, agents of other clients are not searched."""
        assert keys(collect(postgres_url, usernames("asmith"), clients=["Acme Ltd"])) == ALICE_KEYS
        assert collect(postgres_url, usernames("asmith"), clients=["Other Co"]) == []
        assert collect(postgres_url, OTHER_ASMITH, clients=["Acme Ltd"]) == []
        assert len(collect(postgres_url, OTHER_ASMITH, clients=["Other Co"])) == 1


class TestExport:
    def test_computer_is_exported_in_full(self, postgres_url: str) -> None:
        """Names, addresses, users, hardware, disks and software, as recorded."""
        [desktop, laptop, _] = collect(postgres_url, usernames("asmith"))
        assert dict(desktop.fields) == ALICE_DESKTOP
        assert desktop.location == "agents_agent id 1 (ACME-WS-01)"
        assert desktop.notes == ()
        assert dict(laptop.fields) == ALICE_LAPTOP
        assert laptop.notes == (LAST_USER_NOTE,)
        [other] = collect(postgres_url, OTHER_ASMITH)
        assert dict(other.fields) == OTHER_CO
        assert other.yields == (
            Identifier(
                "hostname",
                "OTHER-01",
                "tacticalrmm 'rmm': agents_agent id 5, hostname",
                "hostname",
                Trust.CONTROLLER,
            ),
        )

    def test_addresses_and_hostname_are_yielded_with_their_origin(self, postgres_url: str) -> None:
        """The hostname and the public and local addresses are weak identifiers of the person."""
        [desktop, laptop, *_] = collect(postgres_url, usernames("asmith"))
        where = "tacticalrmm 'rmm': agents_agent id 1"
        assert desktop.yields == (
            Identifier(
                "hostname", "ACME-WS-01", f"{where}, hostname", "hostname", Trust.CONTROLLER
            ),
            Identifier("ip", "203.0.113.10", f"{where}, public_ip", "ip", Trust.CONTROLLER),
            Identifier(
                "ip",
                "192.168.1.20",
                f"{where}, wmi_detail, local IP addresses",
                "ip",
                Trust.CONTROLLER,
            ),
            Identifier(
                "ip",
                "fe80::1c2b:3d4e:5f60:7a8b",
                f"{where}, wmi_detail, local IP addresses",
                "ip",
                Trust.CONTROLLER,
            ),
        )
        # The public address is withheld (alice was only the last user), so not yielded.
        assert [(y.kind, y.value) for y in laptop.yields] == [
            ("hostname", "acme-lt-07"),
            ("ip", "10.0.0.15"),
        ]

    def test_software_can_be_left_out(self, postgres_url: str) -> None:
        """``include_software = false`` exports the computer without its programs."""
        [desktop, *_] = collect(postgres_url, usernames("asmith"), include_software=False)
        assert dict(desktop.fields) == {
            k: v for k, v in ALICE_DESKTOP.items() if k != "Installed software"
        }


class TestOtherPeople:
    def test_another_users_name_is_withheld(self, postgres_url: str) -> None:
        """On the computer bob is logged in to, bob's name and text naming him are withheld."""
        shared = collect(postgres_url, usernames("asmith"))[2]
        assert dict(shared.fields) == SHARED_PC
        assert shared.notes == (OTHERS_NOTE, LAST_USER_NOTE)
        assert shared.location == "agents_agent id 4 (hostname withheld)"
        where = "tacticalrmm 'rmm': agents_agent id 4"
        assert shared.yields == (
            Identifier(
                "ip",
                "192.168.1.44",
                f"{where}, wmi_detail, local IP addresses",
                "ip",
                Trust.CONTROLLER,
            ),
        )

    def test_the_subject_is_not_withheld_from_their_own_record(self, postgres_url: str) -> None:
        """Bob's own request shows bob and withholds alice instead; he is logged in now, so
        where the computer is now is his to see."""
        [_, shared] = collect(postgres_url, usernames("basmith"))
        assert shared.fields["Logged-in user"] == "CORP\\basmith"
        assert shared.fields["Last logged-in user"] == WITHHELD_USER
        assert shared.fields["Hostname"] == "BASMITH-PC"
        assert shared.fields["Public IP address"] == "203.0.113.10"
        assert shared.fields["Last seen"] == "2026-03-03T12:00:00+00:00"
        assert shared.notes == (OTHERS_NOTE,)

    def test_names_found_in_earlier_rounds_are_the_persons_own(self, postgres_url: str) -> None:
        """A name the person was found under earlier is theirs: it is not withheld as another's."""
        basmith = acme("basmith")
        alias = dataclasses.replace(acme("asmith"), origin="an earlier round")
        identity = asked(basmith, known=(alias,))
        [_, shared] = collect(postgres_url, identity)
        assert shared.fields["Logged-in user"] == "CORP\\basmith"
        assert shared.fields["Last logged-in user"] == "asmith"
        assert shared.fields["Hostname"] == "BASMITH-PC"
        assert shared.notes == ()

    def test_a_program_naming_another_user_is_withheld_and_shown_to_him(
        self, tmp_path: Path
    ) -> None:
        """The only mention of bjones on alice's computer is a program's name: withheld from
        her (the programs' texts reach the withholding as they are read), shown to him."""
        url = f"sqlite:///{tmp_path / 'rmm.db'}"
        agent = {
            **AGENTS[0],
            "hostname": "ACME-WS-09",
            "logged_in_username": "CORP\\asmith",
            "last_logged_in_user": "CORP\\bjones",
            "wmi_detail": {},
        }
        programs = [
            {"name": "Backup for BJones", "publisher": "Vendor"},
            {"name": "Firefox", "publisher": "Mozilla"},
        ]
        load(url, agents=[agent], software=[{"id": 1, "agent_id": 1, "software": programs}])
        [hers] = collect(url, usernames("asmith"))
        assert hers.fields["Hostname"] == "ACME-WS-09"
        assert hers.fields["Last logged-in user"] == WITHHELD_USER
        assert hers.fields["Installed software"] == [
            {**PROGRAM_FIELDS, "Name": WITHHELD_TEXT, "Publisher": "Vendor"},
            {**PROGRAM_FIELDS, "Name": "Firefox", "Publisher": "Mozilla"},
        ]
        assert "bjones" not in serialized([hers]).casefold()
        [his] = collect(url, usernames("bjones"))
        assert his.fields["Logged-in user"] == WITHHELD_USER
        assert his.fields["Installed software"] == [
            {**PROGRAM_FIELDS, "Name": "Backup for BJones", "Publisher": "Vendor"},
            {**PROGRAM_FIELDS, "Name": "Firefox", "Publisher": "Mozilla"},
        ]

    def test_no_other_persons_data_reaches_any_record(self, postgres_url: str) -> None:
        """Bob's name, the description, owner and install paths are in no record of alice's."""
        records = collect(postgres_url, usernames("asmith", "CORP\\asmith", "asmith@corp.test"))
        records += collect(postgres_url, Identity.verified("asmith@corp.test"))
        assert len(records) == 4
        text_of_records = serialized(records).casefold()
        assert "otherco" not in text_of_records and "other-01" not in text_of_records
        text_of_records = serialized(records).casefold()
        assert [c for c in CANARIES if c in text_of_records] == []


# ----- two clients, each with an asmith ----------------------------------------------------

TWIN_CLIENTS: Rows = [{"id": 1, "name": "Acme Ltd"}, {"id": 2, "name": "Other Ltd"}]
TWIN_SITES: Rows = [
    {"id": 1, "client_id": 1, "name": "HQ"},
    {"id": 2, "client_id": 2, "name": "Main"},
]


def twin(number: int, hostname: str, site: int, now: str, last: str, ip: str) -> dict[str, Any]:
    return {
        "id": number,
        "agent_id": f"AgEnTtWiN{number:012d}",
        "hostname": hostname,
        "site_id": site,
        "public_ip": ip,
        "last_seen": f"2026-03-0{number % 9} 12:00:00",
        "logged_in_username": now,
        "last_logged_in_user": last,
        "description": f"CANARY-TWIN-{number}",
    }


TWIN_AGENTS: Rows = [
    twin(11, "ACME-PC-11", 1, "ACME\\asmith", "ACME\\asmith", "203.0.113.11"),
    twin(12, "OTHER-PC-12", 2, "asmith", "asmith", "198.51.100.12"),
    twin(13, "OTHER-PC-13", 2, "OTHERLTD\\asmith", "OTHERLTD\\asmith", "198.51.100.13"),
    twin(14, "ACME-PC-14", 1, "OTHERLTD\\asmith", "ACME\\asmith", "203.0.113.14"),
    twin(15, "ACME-PC-15", 1, "ACME\\bjones", "asmith", "203.0.113.15"),
    twin(16, "ACME-PC-16", 1, "OTHERLTD\\asmith", "OTHERLTD\\asmith", "203.0.113.16"),
    twin(17, "WEIß-NB", 1, "ACME\\Weiß", "ACME\\bjones", "203.0.113.17"),
]
TWIN_ALICE = asked(
    login("asmith", "keepass:vault/Clients/Acme Ltd", "ad:ACME", "tacticalrmm:rmm/Acme Ltd")
)
TWIN_OTHER = asked(
    login("asmith", "keepass:vault/Clients/Other Ltd", "ad:OTHERLTD", "tacticalrmm:rmm/Other Ltd")
)
TWIN_BJONES = asked(
    login("bjones", "keepass:vault/Clients/Acme Ltd", "ad:ACME", "tacticalrmm:rmm/Acme Ltd")
)


@pytest.fixture(scope="module")
def twins_url(postgres_url: str) -> str:
    """A second database on the same PostgreSQL server: two clients, each with an asmith."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE twins")
    engine.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/twins"
    load(url, TWIN_CLIENTS, TWIN_SITES, TWIN_AGENTS, [])
    return url


def by_agent(records: list[Record]) -> dict[int, Record]:
    return {int(r.location.split()[2]): r for r in records}


class TestClientNamesWithASlash:
    def test_a_client_named_like_a_path_is_not_inside_another(self, tmp_path: Path) -> None:
        """Clients ``Acme Ltd`` and ``Acme Ltd/Beta JV`` each have an asmith.  The realm that
        names ``Acme Ltd`` does not reach the other client; a realm naming that client (its
        ``/`` written ``%2F``) reaches its asmith only."""
        url = f"sqlite:///{tmp_path / 'slash.db'}"
        clients = [
            {"id": 1, "name": "Acme Ltd"},
            {"id": 2, "name": "Acme Ltd/Beta JV"},
            {"id": 3, "name": "Acme Ltd%2FBeta JV"},  # written as the other would be, once
        ]
        sites = [*TWIN_SITES, {"id": 3, "client_id": 3, "name": "Main"}]
        agents = [
            twin(21, "ACME-PC-21", 1, "asmith", "asmith", "203.0.113.21"),
            twin(22, "JV-PC-22", 2, "asmith", "asmith", "198.51.100.22"),
            twin(23, "PC-23", 3, "asmith", "asmith", "198.51.100.23"),
        ]
        load(url, clients, sites, agents, [])
        jv = asked(login("asmith", "keepass:vault/JV", "tacticalrmm:rmm/Acme Ltd%2FBeta JV"))
        third = asked(login("asmith", "keepass:vault/3", "tacticalrmm:rmm/Acme Ltd%252FBeta JV"))
        alice = by_agent(collect(url, TWIN_ALICE))
        other = by_agent(collect(url, jv))
        assert sorted(alice) == [21] and sorted(other) == [22]
        assert sorted(by_agent(collect(url, third))) == [23]
        assert "198.51.100.22" not in serialized(list(alice.values()))
        assert "203.0.113.21" not in serialized(list(other.values()))


class TestTwoAsmiths:
    def test_each_asmith_gets_the_computers_of_their_own_client(self, twins_url: str) -> None:
        """Acme's asmith and Other Ltd's: a bare asmith or OTHERLTD\\asmith at Other Ltd is not
        Acme's, ACME\\asmith is not Other Ltd's, and OTHERLTD\\asmith at Acme is neither's."""
        alice = by_agent(collect(twins_url, TWIN_ALICE))
        other = by_agent(collect(twins_url, TWIN_OTHER))
        assert sorted(alice) == [11, 14, 15]
        assert sorted(other) == [12, 13]
        assert all(r.found_by is TWIN_ALICE.identifiers[0] for r in alice.values())
        assert all(r.found_by is TWIN_OTHER.identifiers[0] for r in other.values())
        for number in (12, 13):
            record = other[number]
            assert record.fields["Logged-in user"] == record.fields["Last logged-in user"]
            assert record.fields["Public IP address"] == f"198.51.100.{number}"
            assert record.notes == ()
        mine = serialized(list(alice.values()))
        for absent in ("OTHER-PC", "198.51.100", "OTHERLTD", "bjones", "203.0.113.16", "CANARY"):
            assert absent not in mine
        theirs = serialized(list(other.values()))
        for absent in ("ACME-PC", "203.0.113", "ACME\\\\", "CANARY"):
            assert absent not in theirs

    def test_a_computer_linked_only_by_its_last_user_hides_where_it_is_now(
        self, twins_url: str
    ) -> None:
        """Alice was the last to log in to ACME-PC-14 and ACME-PC-15, where someone else is
        logged in now: their current IP address and last-seen time, and the current user,
        are withheld from her.  Bjones, logged in now, sees them and not alice."""
        alice = by_agent(collect(twins_url, TWIN_ALICE))
        assert alice[11].fields["Public IP address"] == "203.0.113.11"
        assert alice[11].fields["Last seen"] == "2026-03-02T12:00:00+00:00"
        assert alice[11].notes == ()
        assert [(y.kind, y.value) for y in alice[11].yields] == [
            ("hostname", "ACME-PC-11"),
            ("ip", "203.0.113.11"),
        ]
        for number, last in ((14, "ACME\\asmith"), (15, "asmith")):
            record = alice[number]
            assert record.fields["Public IP address"] == NOW_WITHHELD
            assert record.fields["Last seen"] == NOW_WITHHELD
            assert record.fields["Logged-in user"] == WITHHELD_USER
            assert record.fields["Last logged-in user"] == last
            assert record.notes == (OTHERS_NOTE, LAST_USER_NOTE)
            assert [(y.kind, y.value) for y in record.yields] == [("hostname", f"ACME-PC-{number}")]
        bjones = by_agent(collect(twins_url, TWIN_BJONES))
        assert sorted(bjones) == [15, 17]
        his = bjones[15]
        assert his.fields["Logged-in user"] == "ACME\\bjones"
        assert his.fields["Last logged-in user"] == WITHHELD_USER
        assert his.fields["Public IP address"] == "203.0.113.15"
        assert his.fields["Last seen"] == "2026-03-06T12:00:00+00:00"
        assert his.notes == (OTHERS_NOTE,)
        assert "asmith" not in serialized([his]).casefold()

    def test_an_address_finds_no_login(self, twins_url: str) -> None:
        """asmith's address is not the account asmith at any client."""
        assert collect(twins_url, asked(address("asmith@acme.test"))) == []

    def test_a_name_with_sharp_s_is_withheld_too(self, twins_url: str) -> None:
        """The computer named after Weiß, who is logged in now, does not show her name."""
        record = by_agent(collect(twins_url, TWIN_BJONES))[17]
        assert record.fields["Logged-in user"] == WITHHELD_USER
        assert record.fields["Hostname"] == WITHHELD_TEXT
        assert "weiß" not in serialized([record]).lower()


class TestSqlite:
    def test_sqlite_gives_the_same_records(self, sqlite_url: str, postgres_url: str) -> None:
        """The demo's SQLite database, JSON held as text, exports exactly what PostgreSQL does."""
        records = collect(sqlite_url, usernames("asmith"))
        assert [dict(r.fields) for r in records] == [ALICE_DESKTOP, ALICE_LAPTOP, SHARED_PC]
        assert serialized(records) == serialized(collect(postgres_url, usernames("asmith")))
        other = collect(sqlite_url, OTHER_ASMITH)
        assert [dict(r.fields) for r in other] == [OTHER_CO]
        assert serialized(other) == serialized(collect(postgres_url, OTHER_ASMITH))


# Text made of what folding treats specially: cases, final and other sigmas, the dotted I,
# a combining accent, NUL, quotes and backslashes, spaces.
TRICKY = st.text(alphabet="abAB \u03a3\u03c3\u03c2\u0130iIe\u0301\u00e9\0'\"\\-.", max_size=8)


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


class TestWithholding:
    @settings(max_examples=300, deadline=None)  # an example can take 0.4 s on a busy machine
    @given(data=st.data())
    def test_the_one_search_never_lets_a_name_through(self, data: st.DataObject) -> None:
        """Scrubbing a whole value after one search of its joined texts gives what going
        through every text does; the texts hold the names, written in other cases."""
        others = data.draw(st.lists(TRICKY, max_size=3), "others")
        own = data.draw(st.lists(TRICKY, max_size=2), "own")
        names = st.sampled_from([*others, *own, "x"])
        written = names.flatmap(lambda n: st.sampled_from([n, n.upper(), n.lower(), n.title()]))
        texts = st.lists(written | TRICKY, max_size=3).map("".join)
        value = data.draw(json_values(texts), "value")
        fields: dict[str, JSONValue] = {"Value": value}
        withhold = Withholder(others, own)
        assert withhold.scrub_fields(fields, {}) == withhold._scrub(fields)

    @settings(max_examples=200, deadline=None)  # an example can take 0.4 s on a busy machine
    @given(data=st.data())
    def test_the_programs_texts_are_gathered_as_they_are_read(self, data: st.DataObject) -> None:
        """The programs hand the withholding exactly the texts they show, so that they are
        not walked twice; scrubbing a record with them gives what going through every text
        does, whatever the documents hold (JSON text on SQLite, parsed on PostgreSQL)."""
        people = st.sampled_from(["bob", "ACME\\Weiß", "ACME\\jürgen", "王伟"]) | TRICKY
        others = data.draw(st.lists(people, min_size=1, max_size=3), "others")
        names = st.sampled_from([*others, "x"])
        written = names.flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()]))
        texts = written | st.lists(written | TRICKY, max_size=3).map(" ".join)
        program = st.dictionaries(
            st.sampled_from([*SOFTWARE_KEYS, "location"]), json_values(texts), max_size=6
        )
        document = st.lists(program | json_values(texts), max_size=4) | json_values(texts)
        documents = data.draw(st.lists(document | document.map(json.dumps), max_size=3))
        gathered: list[str] = []
        programs = software(documents, gathered)
        shown: list[str] = []
        _texts_of(programs, shown)
        assert sorted(gathered) == sorted(shown)
        fields: dict[str, JSONValue] = {
            "Hostname": data.draw(texts, "hostname"),
            "Installed software": programs,
        }
        withhold = Withholder(others, ["ACME\\asmith"])
        scrubbed = withhold.scrub_fields(fields, {"Installed software": gathered})
        assert scrubbed == withhold._scrub(fields)

    @pytest.mark.parametrize(
        ("other", "text"),
        [
            ("bob", "Bobs-MacBook-Pro"),
            ("ACME\\Weiß", "WEISS-NB"),
            ("ACME\\İlker", "ILKER-PC"),
            ("ACME\\Jürgen", "JURGEN-LT"),
            ("ACME\\王伟", "王伟的宏"),
        ],
    )
    def test_a_name_written_otherwise_is_withheld(self, other: str, text: str) -> None:
        """Another person's name in a text that writes it in capitals, without its accents,
        with an ``s`` after it, or in a script without spaces; the subject's own names and
        words that only begin with a short name are kept."""
        kept = {"Own": "ASMITH-PC", "Word": "Bobsleigh", "Tool": "Visual Studio"}
        withhold = Withholder([other], ["ACME\\asmith"])
        scrubbed = withhold.scrub_fields({"Hostname": text, **kept}, {})
        assert scrubbed == {"Hostname": WITHHELD_TEXT, **kept}
        assert withhold.names_other(text)
        assert not Withholder(["carol"], ["ACME\\asmith"]).names_other(text)

    def test_the_subjects_name_otherwise_written_does_not_hide_anothers(self) -> None:
        """``JURGENS-MBP`` may be Jürgens's or Jurgen's: shown to neither while the other is
        a user of the computer.  The subject's own name as written is still taken out."""
        assert Withholder(["ACME\\jurgen"], ["ACME\\Jürgens"]).names_other("JURGENS-MBP")
        assert Withholder(["ACME\\Jürgens"], ["ACME\\jurgen"]).names_other("JURGENS-MBP")
        assert not Withholder(["ACME\\asmith"], ["ACME\\basmith"]).names_other("BASMITH-PC")

    @given(
        text=st.ip_addresses().map(str) | TRICKY,
        prefix=st.sampled_from(
            ["", "/24", "/64", "/33", "/255.255.255.0", "/x", "%eth0", "%Carol Jones", "%2/64"]
        ),
        space=st.sampled_from(["", " ", "\t"]),
    )
    def test_an_address_is_read_as_an_interface_is(
        self, text: str, prefix: str, space: str
    ) -> None:
        written = f"{space}{text}{prefix}{space}"
        try:
            expected: object = ipaddress.ip_interface(written.strip()).ip
        except ValueError:
            expected = None
        assert ip_of(written) == expected
        assert "%" not in str(ip_of(written))  # a zone is any text: never exported


class TestReadOnly:
    def test_postgresql_transactions_are_read_only(self, postgres_url: str) -> None:
        """On PostgreSQL the connector's connections cannot write, whatever the account may do."""
        rmm = connector(postgres_url)
        refused = pytest.raises(Exception, match="read-only transaction")
        with rmm.engine.connect() as connection, refused:
            connection.exec_driver_sql("DELETE FROM software_installedsoftware")
        rmm.close()
        assert len(collect(postgres_url, usernames("asmith"))) == 3

    def test_a_pooled_connection_stays_read_only_after_a_lookup(self, postgres_url: str) -> None:
        """Read-only is the session's own setting (``connectors/readonly.py``), not a state
        put on for a lookup and taken off when the connection goes back to the pool: after
        lookups, the same connection, taken from the pool again, still cannot write."""
        rmm = connector(postgres_url)
        try:
            assert len(list(rmm.collect(usernames("asmith")))) == 3
            pid = TestDroppedConnection.backend(rmm)
            with rmm.engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid
                with pytest.raises(Exception, match="read-only transaction"):
                    connection.exec_driver_sql("DELETE FROM software_installedsoftware")
        finally:
            rmm.close()
        assert len(collect(postgres_url, usernames("asmith"))) == 3

    def test_sqlite_is_opened_read_only(self, sqlite_url: str) -> None:
        """The connector cannot change the SQLite database it reads."""
        rmm = connector(sqlite_url)
        with rmm.engine.connect() as connection, pytest.raises(Exception, match="readonly"):
            connection.exec_driver_sql("DELETE FROM agents_agent")
        rmm.close()
        assert len(collect(sqlite_url, usernames("asmith"))) == 3


class TestPreparedStatements:
    """The lookup's statements are compiled once and sent as SQL text: every page, every
    number of spellings and both databases give what a connector built afresh gives, and
    a failing statement still keeps what was looked for out of its error."""

    @pytest.mark.parametrize("database", ["postgres_url", "sqlite_url"])
    def test_a_person_on_several_pages_is_read_whole(
        self,
        database: str,
        request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch,
        sent_statements: list[tuple[str, Any]],
    ) -> None:
        """Read two computers a page, the three of asmith at Acme take two pages: the second
        starts after the first's last computer, and together they are the whole lookup."""
        url = request.getfixturevalue(database)
        whole = serialized(collect(url, usernames("asmith")))
        monkeypatch.setattr(rmm_connector, "PAGE", 2)
        rmm = connector(url)
        sent_statements.clear()  # only this connector's
        try:
            assert serialized(list(rmm.collect(usernames("asmith")))) == whole
        finally:
            rmm.close()
        pages = [sql for sql, _ in sent_statements if "FROM agents_agent" in sql]
        assert len(pages) == 2
        assert "agents_agent.id >" not in pages[0]
        assert "agents_agent.id >" in pages[1]

    def test_one_connector_answers_lookups_of_every_shape(
        self, postgres_url: str, sqlite_url: str
    ) -> None:
        """Lookups with more and fewer spellings, and with letters outside ASCII, one after
        another on one connector (each statement expanded once for its shape) find what a
        connector built for each finds: neither more nor another person's."""
        lookups = [
            usernames("asmith"),
            usernames("asmith", "CORP\\asmith", "basmith"),
            OTHER_ASMITH,
            usernames("jürgen.straßer"),
            Identity.verified("asmith@corp.test"),
            usernames("asmith"),
            usernames(),
        ]
        for url in (postgres_url, sqlite_url):
            rmm = connector(url)
            try:
                for identity in lookups:
                    found = serialized(list(rmm.collect(identity)))
                    assert found == serialized(collect(url, identity)), (url, identity)
            finally:
                rmm.close()
        assert keys(collect(postgres_url, lookups[0])) == ALICE_KEYS
        assert keys(collect(sqlite_url, lookups[3])) == ["agent:AgEnTjUeRgEn000000006"]

    def test_a_failing_lookup_does_not_show_what_it_looked_for(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.db"
        sqlite3.connect(path).close()
        rmm = connector(f"sqlite:///{path}")
        try:
            with pytest.raises(Exception, match="no such table") as failed:
                list(rmm.collect(usernames("zz-looked-for")))
        finally:
            rmm.close()
        assert "zz-looked-for" not in str(failed.value)
        assert "zz-looked-for" not in repr(failed.value)


class TestDroppedConnection:
    """A pooled connection the server closed: replaced before use after a pause, and in the
    short window of one collection's lookups, only the attempt that met it fails."""

    @staticmethod
    def backend(rmm: TacticalRmmConnector) -> int:
        with rmm.engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

    @staticmethod
    def terminate(url: str, pid: int) -> None:
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        engine.dispose()

    def test_an_idle_connection_is_checked_and_replaced(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(readonly, "PING_AFTER", 0.0)
        rmm = connector(postgres_url)
        try:
            before = serialized(list(rmm.collect(usernames("asmith"))))
            killed = self.backend(rmm)
            self.terminate(postgres_url, killed)
            assert serialized(list(rmm.collect(usernames("asmith")))) == before
            assert self.backend(rmm) != killed
        finally:
            rmm.close()

    def test_within_the_window_one_attempt_fails_and_the_next_reconnects(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(readonly, "PING_AFTER", 3600.0)  # however slow this machine is
        rmm = connector(postgres_url)
        try:
            before = serialized(list(rmm.collect(usernames("asmith"))))
            self.terminate(postgres_url, self.backend(rmm))
            with pytest.raises(OperationalError) as raised:
                list(rmm.collect(usernames("asmith")))
            assert raised.value.connection_invalidated
            assert serialized(list(rmm.collect(usernames("asmith")))) == before
        finally:
            rmm.close()

    def test_a_dropped_connection_discards_the_pools_others(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After a server restart every pooled connection is dead: the attempt that meets one
        discards them all, so the next attempt connects afresh instead of meeting the next
        dead one (the collect step tries three times), and none is returned to the pool to
        fail its rollback there."""
        monkeypatch.setattr(readonly, "PING_AFTER", 3600.0)
        rmm = connector(postgres_url)
        try:
            before = serialized(list(rmm.collect(usernames("asmith"))))
            with rmm.engine.connect() as one, rmm.engine.connect() as two:
                pids = [
                    int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                    for c in (one, two)
                ]
            pool = rmm.engine.pool
            assert len(set(pids)) == 2 and isinstance(pool, QueuePool) and pool.checkedin() == 2
            for pid in pids:
                self.terminate(postgres_url, pid)
            with pytest.raises(OperationalError) as raised:
                list(rmm.collect(usernames("asmith")))
            assert raised.value.connection_invalidated
            assert serialized(list(rmm.collect(usernames("asmith")))) == before
            assert self.backend(rmm) not in pids
            assert not [r for r in caplog.records if "Exception during reset" in r.getMessage()]
        finally:
            rmm.close()


# The column grants docs/connectors/tacticalrmm.md recommends for the connector's account.
READER_GRANTS = [
    "CREATE ROLE sarbot_reader LOGIN",
    "GRANT SELECT (id, agent_id, hostname, operating_system, public_ip, last_seen, boot_time,"
    " total_ram, disks, wmi_detail, site_id, logged_in_username, last_logged_in_user)"
    " ON agents_agent TO sarbot_reader",
    "GRANT SELECT (id, client_id, name) ON clients_site TO sarbot_reader",
    "GRANT SELECT (id, name) ON clients_client TO sarbot_reader",
    "GRANT SELECT (id, agent_id, software) ON software_installedsoftware TO sarbot_reader",
]


class TestCheck:
    def test_the_documented_column_grants_suffice(self, postgres_url: str) -> None:
        """An account that may read only the columns the connector uses checks and collects."""
        engine = create_engine(postgres_url)
        with engine.begin() as connection:
            for statement in READER_GRANTS:
                connection.exec_driver_sql(statement)
        engine.dispose()
        reader = postgres_url.replace("//postgres@", "//sarbot_reader@")
        rmm = connector(reader)
        rmm.check()
        with (
            rmm.engine.connect() as connection,
            pytest.raises(Exception, match="permission denied"),
        ):
            connection.exec_driver_sql("SELECT description FROM agents_agent")
        rmm.close()
        assert [dict(r.fields) for r in collect(reader, usernames("asmith"))] == [
            ALICE_DESKTOP,
            ALICE_LAPTOP,
            SHARED_PC,
        ]
        assert [dict(r.fields) for r in collect(reader, OTHER_ASMITH)] == [OTHER_CO]

    def test_check_passes_on_a_tactical_rmm_database(
        self, postgres_url: str, sqlite_url: str
    ) -> None:
        """``check()`` runs its harmless queries on both databases."""
        for url in (postgres_url, sqlite_url):
            rmm = connector(url)
            rmm.check()
            rmm.close()

    def test_check_fails_on_another_database(self, tmp_path: Path) -> None:
        """A database without the Tactical RMM tables fails the check."""
        path = tmp_path / "empty.db"
        sqlite3.connect(path).close()
        rmm = connector(f"sqlite:///{path}")
        with pytest.raises(Exception, match="no such table"):
            rmm.check()
        rmm.close()


class TestSettings:
    def test_url_is_required_and_unknown_keys_are_refused(self) -> None:
        """Settings errors name the key."""
        with pytest.raises(ConfigError, match="url: required key is missing"):
            validate({}, TacticalRmmSettings, source="test", base_dir=Path("."))
        with pytest.raises(ConfigError, match="include_sofware: unknown key"):
            validate(
                {"url": "sqlite://", "include_sofware": False},
                TacticalRmmSettings,
                source="test",
                base_dir=Path("."),
            )

    def test_url_may_be_a_secret_reference(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The URL, which holds a password in production, may come from the environment."""
        monkeypatch.setenv("TRMM_TEST_URL", "postgresql+psycopg://reader:pw@db.invalid/tacticalrmm")
        settings = validate(
            {"url": {"env": "TRMM_TEST_URL"}}, TacticalRmmSettings, source="t", base_dir=Path(".")
        )
        assert isinstance(settings, TacticalRmmSettings)
        assert settings.url.endswith("@db.invalid/tacticalrmm")
        assert settings.include_software is True and settings.clients == ()


class TestLikePattern:
    def test_wildcards_are_escaped_and_non_ascii_left_to_python(self) -> None:
        """``%``, ``_`` and the escape character are literal; a run of non-ASCII characters
        matches anything (databases lower them to more or fewer characters: İ is i and a dot)."""
        assert like_whole("A_b%c/d") == "a/_b/%c//d"
        assert like_whole("CORP\\Jürgen") == "corp\\j%rgen"
        assert like_whole("İsmaİl") == "i%smai%l"


# ----- the lookup an index serves -----------------------------------------------------------

INDEXES = (
    "CREATE INDEX sarbot_agents_agent_logged_in_username ON agents_agent "
    "(lower(logged_in_username))",
    "CREATE INDEX sarbot_agents_agent_last_logged_in_user ON agents_agent "
    "(lower(last_logged_in_user))",
)
SPELLING_AGENTS: Rows = [
    twin(21, "ACME-21", 1, "ACME.\\ASMITH", "None", "203.0.113.21"),
    twin(22, "ACME-22", 1, "None", "asmith@ACME.TEST", "203.0.113.22"),
    twin(23, "ACME-23", 1, "ACME\\asmith2", "xasmith", "203.0.113.23"),
    twin(24, "ACME-24", 1, "ACME\\a.smith", "asmith@acme.test.evil.test", "203.0.113.24"),
    twin(25, "ACME-25", 1, "OTHERLTD\\asmith", "None", "203.0.113.25"),
    twin(26, "OTHER-26", 2, "asmith", "None", "198.51.100.26"),
    twin(27, "OTHER-27", 2, "None", "OTHERLTD.\\ASMITH", "198.51.100.27"),
    twin(28, "OTHER-28", 2, "ACME\\asmith", "None", "198.51.100.28"),
    twin(29, "OTHER-29", 2, "Alice.Smith@Acme.Test.", "None", "198.51.100.29"),
]
for spelled in SPELLING_AGENTS:
    spelled["last_seen"] = "2026-03-01 12:00:00"
SPELLING_ALICE = asked(
    address("alice.smith@acme.test"),
    login(
        "asmith",
        "keepass:vault/Clients/Acme Ltd",
        "ad:ACME",
        "ad:acme.test",
        "tacticalrmm:rmm/Acme Ltd",
    ),
)


@pytest.fixture(scope="module")
def spellings_url(postgres_url: str) -> str:
    """A third database: each way a name may be written, two asmiths, 20,000 other agents, and
    the indexes the connector needs."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE spellings")
    engine.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/spellings"
    load(url, TWIN_CLIENTS, TWIN_SITES, SPELLING_AGENTS, [])
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO agents_agent (id, agent_id, hostname, site_id, logged_in_username, "
            "last_logged_in_user) SELECT g, 'filler' || g, 'PC-' || g, 1 + mod(g, 2), "
            "'ACME\\user' || g, 'user' || g FROM generate_series(100, 20099) g"
        )
        for statement in INDEXES:
            connection.exec_driver_sql(statement)
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return url


class TestIndexedLookup:
    def test_every_spelling_of_each_asmith_and_no_other(self, spellings_url: str) -> None:
        """Acme's asmith finds every way her login is written at Acme (any case, NetBIOS or DNS
        domain, a trailing dot) and her address at any client; Other Ltd's asmith finds his;
        longer names, other domains and the other client's agents are neither's."""
        alice = by_agent(collect(spellings_url, SPELLING_ALICE))
        other = by_agent(collect(spellings_url, TWIN_OTHER))
        assert sorted(alice) == [21, 22, 29]
        assert alice[29].found_by is SPELLING_ALICE.identifiers[0]
        assert alice[21].found_by is SPELLING_ALICE.identifiers[1]
        assert sorted(other) == [26, 27]
        assert "OTHER-2" not in serialized([alice[21], alice[22]])
        assert "ACME-2" not in serialized(list(other.values()))

    def test_the_lookup_uses_the_indexes(
        self, spellings_url: str, sent_statements: list[tuple[str, Any]]
    ) -> None:
        """PostgreSQL answers the connector's own query from the lower() indexes, not a scan."""
        rmm = connector(spellings_url)
        list(rmm.collect(SPELLING_ALICE))
        rmm.close()
        lookups = [(sql, p) for sql, p in sent_statements if "lower(agents_agent." in sql]
        assert len(lookups) == 1
        engine = create_engine(spellings_url)
        with engine.connect() as connection:
            plan = "\n".join(
                str(row[0])
                for row in connection.exec_driver_sql("EXPLAIN " + lookups[0][0], lookups[0][1])
            )
        engine.dispose()
        assert "sarbot_agents_agent_logged_in_username" in plan
        assert "sarbot_agents_agent_last_logged_in_user" in plan
        assert "Seq Scan on agents_agent" not in plan
        assert "agents_agent_pkey" not in plan  # not walked in id order to fill a page

    def test_check_warns_until_the_indexes_exist(
        self, postgres_url: str, spellings_url: str
    ) -> None:
        """Without the lower() indexes check() names each one with the statement creating it;
        with them it has nothing to say."""
        rmm = connector(postgres_url)
        warnings = list(rmm.check() or ())
        rmm.close()
        assert len(warnings) == 2
        for statement, warning in zip(INDEXES, warnings, strict=True):
            assert statement in warning
        rmm = connector(spellings_url)
        assert list(rmm.check() or ()) == []
        rmm.close()
