"""The ``access_log`` connector on real auth.log, combined and JSON-lines files, plain and gzip."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import tracemalloc
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connectors.access_log import (
    OTHER_ADDRESSES_WITHHELD,
    VISITOR_WITHHELD,
    AccessLogConnector,
    AccessLogSettings,
)
from connectors.logformats import COMMAND_WITHHELD
from sarbot.config import validate
from sarbot.connector import ENTRY_POINT_GROUP, Identifier, Identity, Record, Trust
from sarbot.errors import ConfigError, ConnectorError
from sarbot.testing.identity import address, asked, login

CANARY = "CANARY-hunter2-7f3a"
EMAIL = Identity.verified("alice@example.test").identifiers[0]
# Alice's login, recorded in the vault; the admin's realm says the three logs name the same
# people as the vault's Staff group.
USERNAME = dataclasses.replace(
    login(
        "asmith",
        "keepass:vault/Staff",
        "access_log:logs/SSH logins on gw1",
        "access_log:logs/Portal",
        "access_log:logs/VPN",
    ),
    origin="keepass 'vault': entry 'Staff/alice', UserName field",
)
ALICE = asked(EMAIL, USERNAME)
BOB_IP = "198.51.100.20"

AUTH_LOG = [
    "Mar  1 09:00:01 gw1 sshd[1001]: Accepted publickey for asmith from 192.0.2.10 port 50001"
    " ssh2: ED25519 SHA256:q0mX0bXyVb1",
    "Mar  1 09:00:01 gw1 sshd[1001]: pam_unix(sshd:session): session opened for user"
    " asmith(uid=1001) by (uid=0)",
    "Mar  1 09:05:00 gw1 sudo:   asmith : TTY=pts/0 ; PWD=/home/asmith ; USER=root ;"
    f" COMMAND=/usr/bin/mysql -u root -p{CANARY}",
    "Mar  1 09:05:00 gw1 sudo: pam_unix(sudo:session): session opened for user root(uid=0)"
    " by asmith(uid=1001)",
    f"Mar  1 09:10:00 gw1 sshd[1002]: Failed password for basmith from {BOB_IP} port 40000 ssh2",
    f"Mar  1 09:10:05 gw1 sshd[1002]: Accepted password for basmith from {BOB_IP} port 40000 ssh2",
    "Mar  1 09:10:06 gw1 sudo:  basmith : TTY=pts/1 ; PWD=/home/basmith ; USER=root ;"
    " COMMAND=/bin/cat /etc/shadow",
    "Mar  1 09:11:00 gw1 sshd[1003]: Invalid user admin from 203.0.113.5 port 41000",
    "Mar  1 09:11:02 gw1 sshd[1003]: Failed password for invalid user admin from 203.0.113.5"
    " port 41000 ssh2",
    "Mar  1 09:12:00 gw1 sshd[1004]: Failed password for asmith from 203.0.113.99 port 42000 ssh2",
    "Mar  1 09:12:30 gw1 sudo:   asmith : 3 incorrect password attempts ; TTY=pts/0 ;"
    f" PWD=/home/asmith ; USER=root ; COMMAND=/usr/bin/passwd {CANARY}",
    "Mar  1 09:13:00 gw1 CRON[2000]: pam_unix(cron:session): session opened for user"
    " root(uid=0) by (uid=0)",
    "Mar  1 09:14:00 gw1 su[2001]: pam_unix(su:session): session opened for user"
    " postgres(uid=113) by asmith(uid=1001)",
    "Mar  1 17:30:00 gw1 sshd[1001]: Disconnected from user asmith 192.0.2.10 port 50001",
    "Mar  1 17:30:00 gw1 sshd[1001]: pam_unix(sshd:session): session closed for user asmith",
    "2026-03-01T18:00:00.123456+01:00 gw1 sshd[1005]: Accepted password for ASMITH from"
    " 192.0.2.12 port 52000 ssh2",
]
GARBAGE = b"\x00\xff\xfe\x16\x03\x01 asmith \x80\x81 alice@example.test\n"
OVERLONG = b"Mar  1 09:00:00 gw1 sshd[1]: " + b"A" * 200_000 + b" asmith\n"
ROTATED = [
    "Dec 30 22:00:00 gw1 sshd[900]: Accepted password for asmith from 192.0.2.11 port 51000 ssh2",
    f"Jan  2 07:59:00 gw1 sshd[901]: Accepted publickey for basmith from {BOB_IP} port 4 ssh2",
]
ACCESS_LOG = [
    '192.0.2.10 - asmith [01/Mar/2026:10:00:00 +0100] "GET /admin/reports?month=2026-02&token=s3'
    'cr3t HTTP/1.1" 200 512 "-" "Mozilla/5.0"',
    f'{BOB_IP} - basmith [01/Mar/2026:10:01:00 +0100] "GET /admin/ HTTP/1.1" 200 100 "-" "curl/8"',
    '203.0.113.7 - - [01/Mar/2026:10:02:00 +0100] "GET /api/lookup?email=alice%40example.test'
    '&ref=bob%40example.test HTTP/1.1" 200 42 "-" "x"',
    f'{BOB_IP} - basmith [01/Mar/2026:10:03:00 +0100] "GET /api/lookup?email=Alice%40Example.test'
    ' HTTP/1.1" 200 42 "-" "x"',
    '203.0.113.8 - - [01/Mar/2026:10:04:00 +0100] "GET /api/lookup?email=malice%40example.test'
    ' HTTP/1.1" 404 0 "-" "x"',
    '192.0.2.10 - alice@example.test [01/Mar/2026:10:05:00 +0100] "POST /login HTTP/1.1" 401 0'
    ' "-" "x"',
    '203.0.113.9 - - [01/Mar/2026:10:06:00 +0100] "\\x16\\x03\\x01\\x02\\x00" 400 157 "-" "-"',
    "\x16\x03\x01 not a log line asmith",
    '192.0.2.10 - asmith [01/Mar/2026:10:07:00 +0100] "GET /admin/users/bob%40example.test/edit'
    ' HTTP/1.1" 200 10 "-" "x"',
    '192.0.2.10 - asmith [01/Mar/2026:10:08:00 +0100] "GET /admin/users/alice@example.test'
    ' HTTP/2.0" 200 10 "-" "x"',
]
JSON_LOG: list[Any] = [
    {"time": "2026-03-01T11:00:00Z", "user": {"name": "asmith"}, "client": {"ip": "192.0.2.10"},
     "event": "vpn.connect", "result": "success"},
    {"time": 1772362800, "user": {"name": "basmith"}, "client": {"ip": BOB_IP},
     "event": "vpn.connect", "result": "success"},
    {"time": 1772362800000, "user": {"name": "Alice@Example.Test"},
     "client": {"ip": "192.0.2.10"}, "event": "vpn.connect", "result": "denied"},
    ["asmith"],
]  # fmt: skip


def encoded(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def write_lines(path: Path, lines: list[str] | bytes, when: str = "") -> Path:
    """Write a log, gzip-compressed for a .gz name, with the given modification time."""
    data = lines if isinstance(lines, bytes) else encoded(lines)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    if when:
        stamp = datetime.fromisoformat(when).timestamp()
        os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A folder of real-format logs: auth.log and its rotation, nginx and JSON-lines logs."""
    folder = tmp_path / "logs"
    folder.mkdir()
    auth = encoded(AUTH_LOG[:13]) + GARBAGE + OVERLONG + encoded(AUTH_LOG[13:])  # lines 14, 15
    write_lines(folder / "auth.log", auth, when="2026-03-02T00:00:00")
    write_lines(folder / "auth.log.1.gz", ROTATED, when="2026-01-02T08:00:00")
    write_lines(folder / "access.log", ACCESS_LOG)
    deep = "[" * 30_000 + '"asmith"' + "]" * 30_000
    unreadable = [deep, '{"user": {"name": "asmith"', '{"user": "nobody"']
    escaped = '{"user": {"name": "alice\\u0040example.test"}, "event": "login"}'
    lines = [json.dumps(o) for o in JSON_LOG] + unreadable + [escaped]
    write_lines(folder / "app.jsonl", lines)
    return tmp_path


def connector(base: Path, sources: list[dict[str, Any]], **extra: Any) -> AccessLogConnector:
    settings = validate(
        {"sources": sources, **extra}, AccessLogSettings, source="test", base_dir=base
    )
    assert isinstance(settings, AccessLogSettings)
    return AccessLogConnector("logs", settings)


AUTH_SOURCE = {"paths": ["logs/auth.log*"], "format": "auth", "label": "SSH logins on gw1"}
WEB_SOURCE = {"paths": ["logs/access.log"], "format": "combined", "label": "Portal"}
JSON_SOURCE = {
    "paths": ["logs/*.jsonl"],
    "format": "jsonl",
    "label": "VPN",
    "user_field": "user.name",
    "ip_field": "client.ip",
    "action_field": "event",
    "status_field": "result",
}


def collect(
    base: Path, sources: list[dict[str, Any]], identity: Identity = ALICE, **extra: Any
) -> list[Record]:
    found = connector(base, sources, **extra)
    try:
        return list(found.collect(identity))
    finally:
        found.close()


def ip(value: str, label: str, path: Path, line: int) -> Identifier:
    """A source IP address the log's own system recorded: the controller's record."""
    origin = f"access log 'logs' ({label}): {path} line {line}, source IP"
    return Identifier("ip", value, origin, "ip", Trust.CONTROLLER)


def as_tuple(record: Record) -> tuple[Any, ...]:
    return (record.fields, record.found_by, record.location, record.yields, record.notes)


class TestAuthLog:
    def test_exact_records_for_the_username(self, logs: Path) -> None:
        """Every sshd, pam and sudo line of asmith, rotated ones too, and only those fields."""
        records = collect(logs, [AUTH_SOURCE])
        auth, rotated = logs / "logs" / "auth.log", logs / "logs" / "auth.log.1.gz"

        def entry(
            time: str, action: str, status: str, address: str = "", user: str = "asmith"
        ) -> dict[str, Any]:
            fields = {"Log": "SSH logins on gw1", "Time": time, "Source IP": address}
            fields |= {"User": user, "Action": action, "Status": status}
            return {k: v for k, v in fields.items() if v}

        expected = [
            (
                entry("2026-03-01T09:00:01", "SSH login accepted (publickey)", "accepted",
                      "192.0.2.10"),
                USERNAME, f"{auth} line 1",
                (ip("192.0.2.10", "SSH logins on gw1", auth, 1),), (),
            ),
            (entry("2026-03-01T09:00:01", "Session opened (sshd)", "opened"),
             USERNAME, f"{auth} line 2", (), ()),
            (entry("2026-03-01T09:05:00", "sudo as root", "allowed"),
             USERNAME, f"{auth} line 3", (), (COMMAND_WITHHELD,)),
            (entry("2026-03-01T09:05:00", "Session opened (sudo) as root", "opened"),
             USERNAME, f"{auth} line 4", (), ()),
            (entry("2026-03-01T09:12:00", "SSH login failed (password)", "failed",
                   "203.0.113.99"), USERNAME, f"{auth} line 10", (), ()),
            (entry("2026-03-01T09:12:30", "sudo as root", "3 incorrect password attempts"),
             USERNAME, f"{auth} line 11", (), (COMMAND_WITHHELD,)),
            (entry("2026-03-01T09:14:00", "Session opened (su) as postgres", "opened"),
             USERNAME, f"{auth} line 13", (), ()),
            (entry("2026-03-01T17:30:00", "SSH connection closed", "disconnected",
                   "192.0.2.10"), USERNAME, f"{auth} line 16",
             (ip("192.0.2.10", "SSH logins on gw1", auth, 16),), ()),
            (entry("2026-03-01T17:30:00", "Session closed (sshd)", "closed"),
             USERNAME, f"{auth} line 17", (), ()),
            (entry("2026-03-01T18:00:00.123456+01:00", "SSH login accepted (password)",
                   "accepted", "192.0.2.12", user="ASMITH"), USERNAME, f"{auth} line 18",
             (ip("192.0.2.12", "SSH logins on gw1", auth, 18),), ()),
            (entry("2025-12-30T22:00:00", "SSH login accepted (password)", "accepted",
                   "192.0.2.11"), USERNAME, f"{rotated} line 1",
             (ip("192.0.2.11", "SSH logins on gw1", rotated, 1),),
             (f"2 line(s) of {auth} that could concern you could not be read as auth log lines "
              "and were not searched.",)),
        ]  # fmt: skip
        assert [as_tuple(r) for r in records] == expected
        assert all(r.found_by is USERNAME for r in records)
        assert [r.key for r in records][:2] == [f"{auth}:1", f"{auth}:2"]
        assert {r.category for r in records} == {"Access log entry"}

    def test_other_people_and_commands_never_appear(self, logs: Path) -> None:
        """Bob's lines, the invalid user's attempts and sudo commands stay out of the export."""
        records = collect(logs, [AUTH_SOURCE, WEB_SOURCE, JSON_SOURCE])
        dumped = json.dumps([[r.fields, r.location, r.notes, [y.value for y in r.yields]]
                             for r in records])  # fmt: skip
        assert records
        for absent in (CANARY, "basmith", BOB_IP, "unknown on", "203.0.113.5", "shadow", "s3cr3t"):
            assert absent not in dumped
        assert "bob@example.test" not in dumped
        assert "mysql" not in dumped and "passwd" not in dumped

    def test_year_from_a_fixed_hint(self, logs: Path) -> None:
        """A configured year dates every traditional syslog line, rotated ones too."""
        records = collect(logs, [{**AUTH_SOURCE, "year": 2019}])
        assert records[0].fields["Time"] == "2019-03-01T09:00:01"
        assert records[-1].fields["Time"] == "2019-12-30T22:00:00"

    def test_identity_without_usernames_or_addresses_reads_nothing(self, tmp_path: Path) -> None:
        """A round with only weak identifiers opens no file, so even a missing log is no error."""
        found = connector(tmp_path, [{**AUTH_SOURCE, "paths": ["nowhere/*.log"]}])
        weak = Identity("alice@example.test", (Identifier("ip", "192.0.2.10", "somewhere"),))
        assert list(found.collect(weak)) == []
        with pytest.raises(ConnectorError, match="no file matches"):
            list(found.collect(ALICE))


class TestCombinedLog:
    def test_exact_records_for_user_and_query(self, logs: Path) -> None:
        """remote_user and ?email= match; queries and other people's addresses are withheld, and
        so are the visitor's IP address, time and account on a line found only by ?email=."""
        records = collect(logs, [WEB_SOURCE])
        web = logs / "logs" / "access.log"
        common = {"Log": "Portal"}
        assert [as_tuple(r) for r in records] == [
            (
                common | {"Time": "2026-03-01T10:00:00+01:00", "Source IP": "192.0.2.10",
                          "User": "asmith", "Action": "GET /admin/reports", "Status": 200},
                USERNAME, f"{web} line 1", (ip("192.0.2.10", "Portal", web, 1),), (),
            ),
            (
                common | {"Action": "GET /api/lookup?email=alice@example.test", "Status": 200},
                EMAIL, f"{web} line 3", (), (VISITOR_WITHHELD,),
            ),
            (
                common | {"Action": "GET /api/lookup?email=Alice@Example.test", "Status": 200},
                EMAIL, f"{web} line 4", (), (VISITOR_WITHHELD,),
            ),
            (
                common | {"Time": "2026-03-01T10:05:00+01:00", "Source IP": "192.0.2.10",
                          "User": "alice@example.test", "Action": "POST /login", "Status": 401},
                EMAIL, f"{web} line 6", (), (),
            ),
            (
                common | {"Time": "2026-03-01T10:07:00+01:00", "Source IP": "192.0.2.10",
                          "User": "asmith", "Action": "GET /admin/users/(address withheld)/edit",
                          "Status": 200},
                USERNAME, f"{web} line 9", (ip("192.0.2.10", "Portal", web, 9),),
                (OTHER_ADDRESSES_WITHHELD,),
            ),
            (
                common | {"Time": "2026-03-01T10:08:00+01:00", "Source IP": "192.0.2.10",
                          "User": "asmith", "Action": "GET /admin/users/alice@example.test",
                          "Status": 200},
                USERNAME, f"{web} line 10", (ip("192.0.2.10", "Portal", web, 10),),
                (f"1 line(s) of {web} that could concern you could not be read as combined log "
                 "lines and were not searched.",),
            ),
        ]  # fmt: skip

    def test_address_inside_a_longer_address_does_not_match(self, tmp_path: Path) -> None:
        """Only the whole address matches, however it is URL-encoded; lookalikes do not."""
        lines = [
            f'203.0.113.8 - - [01/Mar/2026:10:04:00 +0100] "GET /x?{query} HTTP/1.1" 200 1 "-" "-"'
            for query in (
                "email=malice%40example.test",
                "to=alice%40example.test.org",
                "a=bob%2Balice%40example.test",
                "q=see+alice%40example.test+now",
                "email=ALICE%40example%2Etest",
            )
        ]
        write_lines(tmp_path / "access.log", lines)
        source = {**WEB_SOURCE, "paths": ["access.log"]}
        records = collect(tmp_path, [source])
        assert [(r.location.rsplit(" ", 1)[1], r.fields["Action"]) for r in records] == [
            ("4", "GET /x?q=(a value containing alice@example.test)"),
            ("5", "GET /x?email=ALICE@example.test"),
        ]


def dumped(records: list[Record]) -> str:
    return json.dumps(
        [[r.fields, r.location, r.notes, [(y.kind, y.value) for y in r.yields]] for r in records]
    )


def line_numbers(records: list[Record], path: Path) -> list[int]:
    """The lines of one file the records come from; a record of any other file fails."""
    assert all(r.location.startswith(f"{path} line ") for r in records), [
        r.location for r in records
    ]
    return [int(r.location.rsplit(" ", 1)[1]) for r in records]


class TestTwoPeopleOneName:
    GW1: ClassVar[list[str]] = [
        "Mar  1 09:00:01 gw1 sshd[1]: Accepted publickey for asmith from 192.0.2.10 port 1 ssh2",
        "Mar  1 09:00:02 gw1 sshd[2]: Accepted password for asmith@ACME from 192.0.2.13 port 2"
        " ssh2",
        "Mar  1 09:00:03 gw1 sshd[3]: Accepted password for asmith@otherltd from 198.51.100.50"
        " port 3 ssh2",
        "Mar  1 09:00:04 gw1 sshd[4]: Failed password for ASMITH from 192.0.2.14 port 4 ssh2",
    ]
    JUMP: ClassVar[list[str]] = [
        "Mar  1 10:00:01 jump sshd[7]: Accepted publickey for asmith from 198.51.100.60 port 5"
        " ssh2",
        "Mar  1 10:00:01 jump sshd[7]: pam_unix(sshd:session): session opened for user"
        " asmith(uid=1001) by (uid=0)",
        "Mar  1 10:00:09 jump sshd[8]: Accepted password for OTHERLTD\\asmith from 198.51.100.61"
        " port 6 ssh2",
    ]
    SOURCES: ClassVar[list[dict[str, Any]]] = [
        {"paths": ["gw1.log"], "format": "auth", "label": "SSH logins on gw1"},
        {"paths": ["jump.log"], "format": "auth", "label": "Other Ltd jump host"},
    ]
    # Two people called asmith: Acme's (the vault's Acme group, Windows domain ACME, gw1's log)
    # and Other Ltd's (its own vault group, domain OTHERLTD and its jump host's log).
    ACME = asked(
        login(
            "asmith",
            "keepass:vault/Clients/Acme Ltd",
            "ad:ACME",
            "access_log:logs/SSH logins on gw1",
        )
    )
    OTHER = asked(
        login(
            "asmith",
            "keepass:vault/Clients/Other Ltd",
            "ad:OTHERLTD",
            "access_log:logs/Other Ltd jump host",
        )
    )

    def test_the_same_name_in_two_logs_is_two_people(self, tmp_path: Path) -> None:
        """Each asmith gets every line of their own log, in any case and with their own domain,
        and no line of the other's, nor a line naming a domain outside their realm."""
        gw1 = write_lines(tmp_path / "gw1.log", self.GW1, when="2026-03-02T00:00:00")
        jump = write_lines(tmp_path / "jump.log", self.JUMP, when="2026-03-02T00:00:00")
        acme = collect(tmp_path, self.SOURCES, self.ACME)
        other = collect(tmp_path, self.SOURCES, self.OTHER)
        assert line_numbers(acme, gw1) == [1, 2, 4]
        assert [r.fields["User"] for r in acme] == ["asmith", "asmith@ACME", "ASMITH"]
        assert all(r.found_by is self.ACME.identifiers[0] for r in acme)
        assert line_numbers(other, jump) == [1, 2, 3]
        assert all(r.found_by is self.OTHER.identifiers[0] for r in other)
        text = dumped(acme)
        assert "198.51.100" not in text and "otherltd" not in text.casefold()
        assert "192.0.2" not in dumped(other)

    def test_a_login_outside_every_realm_of_the_log_finds_nothing(self, tmp_path: Path) -> None:
        """A website login ``asmith`` (its own namespace only) is nobody in the system logs."""
        write_lines(tmp_path / "gw1.log", self.GW1, when="2026-03-02T00:00:00")
        write_lines(tmp_path / "jump.log", self.JUMP, when="2026-03-02T00:00:00")
        website = asked(login("asmith", "wordpress:blog", trust=Trust.SELF_ASSERTED))
        assert collect(tmp_path, self.SOURCES, website) == []


class TestVisitors:
    PORTAL: ClassVar[list[str]] = [
        f'{BOB_IP} - basmith [01/Mar/2026:10:00:00 +0100] "GET /api/lookup?email=alice%40example.'
        'test HTTP/1.1" 200 42 "-" "x"',
        '192.0.2.10 - asmith [01/Mar/2026:10:01:00 +0100] "GET /profile?email=alice%40example.test'
        ' HTTP/1.1" 200 42 "-" "x"',
        '203.0.113.30 - - [01/Mar/2026:10:02:00 +0100] "GET /unsubscribe?email=alice%40example.org'
        ' HTTP/1.1" 200 42 "-" "x"',
        '203.0.113.31 - - [01/Mar/2026:10:03:00 +0100] "GET /unsubscribe?email=alice%40example.test'
        '&list=news HTTP/1.1" 200 42 "-" "x"',
    ]
    SOURCE: ClassVar[dict[str, Any]] = {
        "paths": ["access.log"],
        "format": "combined",
        "label": "Portal",
    }
    BOB = asked(
        address("bob@example.test"),
        login("basmith", "keepass:vault/Staff", "access_log:logs/Portal"),
    )
    ALICE_ORG = asked(address("alice@example.org"))

    def test_a_match_only_in_the_query_withholds_who_visited(self, tmp_path: Path) -> None:
        """A link with alice's address may be followed by anyone: she gets the request without
        the visitor's IP address, time or account; bob, who made one, gets his own request
        without her address; alice@example.org gets only the line with hers."""
        web = write_lines(tmp_path / "access.log", self.PORTAL)
        alice = collect(tmp_path, [self.SOURCE], ALICE)
        assert line_numbers(alice, web) == [1, 2, 4]
        withheld = {"Log": "Portal", "Status": 200}
        assert [as_tuple(r) for r in alice] == [
            (
                withheld | {"Action": "GET /api/lookup?email=alice@example.test"},
                EMAIL, f"{web} line 1", (), (VISITOR_WITHHELD,),
            ),
            (
                {"Log": "Portal", "Time": "2026-03-01T10:01:00+01:00", "Source IP": "192.0.2.10",
                 "User": "asmith", "Action": "GET /profile", "Status": 200},
                USERNAME, f"{web} line 2", (ip("192.0.2.10", "Portal", web, 2),), (),
            ),
            (
                withheld | {"Action": "GET /unsubscribe?email=alice@example.test"},
                EMAIL, f"{web} line 4", (), (VISITOR_WITHHELD,),
            ),
        ]  # fmt: skip
        text = dumped(alice)
        for other in ("basmith", BOB_IP, "203.0.113.3", "10:00:00", "10:03:00", "example.org"):
            assert other not in text

        bob = collect(tmp_path, [self.SOURCE], self.BOB)
        assert [as_tuple(r) for r in bob] == [
            (
                {"Log": "Portal", "Time": "2026-03-01T10:00:00+01:00", "Source IP": BOB_IP,
                 "User": "basmith", "Action": "GET /api/lookup", "Status": 200},
                self.BOB.identifiers[1], f"{web} line 1", (ip(BOB_IP, "Portal", web, 1),), (),
            ),
        ]  # fmt: skip

        lookalike = collect(tmp_path, [self.SOURCE], self.ALICE_ORG)
        assert [as_tuple(r) for r in lookalike] == [
            (
                withheld | {"Action": "GET /unsubscribe?email=alice@example.org"},
                self.ALICE_ORG.identifiers[0], f"{web} line 3", (), (VISITOR_WITHHELD,),
            ),
        ]  # fmt: skip


class TestJsonLines:
    def test_configured_fields_and_times(self, logs: Path) -> None:
        """Dotted paths, ISO and epoch times, JSON escapes; a failed result yields no IP."""
        records = collect(logs, [JSON_SOURCE])
        app = logs / "logs" / "app.jsonl"
        assert [as_tuple(r) for r in records] == [
            (
                {"Log": "VPN", "Time": "2026-03-01T11:00:00+00:00", "Source IP": "192.0.2.10",
                 "User": "asmith", "Action": "vpn.connect", "Status": "success"},
                USERNAME, f"{app} line 1", (ip("192.0.2.10", "VPN", app, 1),), (),
            ),
            (
                {"Log": "VPN", "Time": "2026-03-01T11:00:00+00:00", "Source IP": "192.0.2.10",
                 "User": "Alice@Example.Test", "Action": "vpn.connect", "Status": "denied"},
                EMAIL, f"{app} line 3", (), (),
            ),
            (
                {"Log": "VPN", "User": "alice@example.test", "Action": "login"},
                EMAIL, f"{app} line 8", (),
                (f"3 line(s) of {app} that could concern you could not be read as jsonl log "
                 "lines and were not searched.",),
            ),
        ]  # fmt: skip


def with_a_broken_block(data: bytes) -> bytes:
    """gzip data whose first deflate block is overwritten: ISA-L's own error, not zlib's."""
    return data[:10] + b"\0" * 50 + data[60:]


class TestLimits:
    def test_max_records_stops_with_a_note(self, logs: Path) -> None:
        """A source shows at most max_records of the person's entries and says that more
        match; the rest of it is still read for what may concern them."""
        records = collect(logs, [AUTH_SOURCE], max_records=3)
        assert [r.location.rsplit(" ", 1)[1] for r in records] == ["1", "2", "3"]
        assert records[-1].notes[0] == COMMAND_WITHHELD
        assert records[-1].notes[-1] == (
            "More log entries in SSH logins on gw1 match than the 3 shown here; the search of "
            "them stopped at that limit."
        )

    def test_visits_anyone_can_make_crowd_out_no_source(self, tmp_path: Path) -> None:
        """mallory opens a link carrying alice's address ten times: those visits are capped
        on their own, and alice's own entries, in that log and in the next, are all found."""
        web = '{ip} - {user} [01/Mar/2026:10:00:{n:02d} +0000] "GET {path} HTTP/1.1" 200 1 "-" "x"'
        visits = [
            web.format(ip="203.0.113.66", user="-", n=n, path=f"/?x={EMAIL.value}")
            for n in range(10)
        ]
        own = [web.format(ip="192.0.2.10", user="asmith", n=50 + n, path="/wiki") for n in range(2)]
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "access.log").write_text("\n".join(visits + own) + "\n")
        vpn = [{"time": f"2026-03-01T11:0{n}:00Z", "user": "asmith", "ip": "192.0.2.10",
                "action": "vpn.connect", "status": "ok"} for n in range(3)]  # fmt: skip
        (tmp_path / "logs" / "vpn.jsonl").write_text("".join(json.dumps(v) + "\n" for v in vpn))
        vpn_source = {"paths": ["logs/vpn.jsonl"], "format": "jsonl", "label": "VPN"}
        records = collect(tmp_path, [WEB_SOURCE, vpn_source], max_records=3)
        by_log: dict[str, list[Record]] = {}
        for record in records:
            by_log.setdefault(str(record.fields["Log"]), []).append(record)
        portal = by_log["Portal"]
        assert [r.fields.get("User") for r in portal] == [None, None, None, "asmith", "asmith"]
        assert len(by_log["VPN"]) == 3
        assert any("More visits to web addresses carrying your email address in Portal" in n
                   for n in records[-1].notes)  # fmt: skip

    def test_large_gzip_log_is_streamed(self, tmp_path: Path) -> None:
        """A 200,000-line gzip log is read to its end in far less memory than its size, and
        in no more than half of it takes: memory does not grow with the log."""

        def line(n: int) -> str:
            user = "asmith" if n % 20_000 == 19_999 else "basmith" if n % 10 == 0 else f"u{n % 977}"
            stamp = f"Mar  1 09:{n // 3600 % 60:02d}:{n % 60:02d}"
            return f"{stamp} gw1 sshd[{n}]: Accepted publickey for {user} from 198.51.100.{n % 250}"

        def lookup(lines: int) -> tuple[int, int, list[Record]]:
            """The log's size, the lookup's traced peak, and its records."""
            path = tmp_path / f"big-{lines}.log.gz"
            size = 0
            with gzip.open(path, "wb", compresslevel=1) as out:
                for start in range(0, lines, 10_000):
                    numbers = range(start, start + 10_000)
                    chunk = "".join(f"{line(n)} port {n} ssh2\n" for n in numbers)
                    size += len(chunk)
                    out.write(chunk.encode())
            found = connector(tmp_path, [{**AUTH_SOURCE, "paths": [path.name]}])
            tracemalloc.start()
            try:
                records = list(found.collect(ALICE))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return size, peak, records

        half_size, half_peak, half = lookup(100_000)
        size, peak, records = lookup(200_000)
        assert size > 15_000_000
        assert len(half) == 5
        assert [r.key.rsplit(":", 1)[1] for r in records][-1] == "200000"
        assert len(records) == 10
        assert peak < size / 10, f"peak {peak} bytes for a {size}-byte log"
        # Twice the log, the same buffers: what grows is at most a few records' worth.
        assert peak < half_peak + 256 * 1024, (peak, size, half_peak, half_size)

    @pytest.mark.parametrize("damage", ["truncated", "broken block", "wrong checksum"])
    def test_damaged_gzip_fails_the_collection(self, tmp_path: Path, damage: str) -> None:
        """A truncated or damaged rotated log is an error naming the file, not a silently
        short answer, whichever way inflating it fails."""
        data = gzip.compress(encoded(AUTH_LOG * 500))
        damaged = {
            "truncated": data[: len(data) // 2],
            "broken block": with_a_broken_block(data),
            "wrong checksum": data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:],
        }[damage]
        (tmp_path / "auth.log.2.gz").write_bytes(damaged)
        with pytest.raises(ConnectorError, match=r"auth\.log\.2\.gz: cannot be read past line"):
            collect(tmp_path, [{**AUTH_SOURCE, "paths": ["auth.log.*.gz"]}])


class TestCheck:
    def test_readable_files_pass(self, logs: Path) -> None:
        """check() succeeds when every source names readable files."""
        connector(logs, [AUTH_SOURCE, WEB_SOURCE, JSON_SOURCE]).check()

    def test_no_matching_file_fails(self, logs: Path) -> None:
        """check() names the source whose globs match nothing."""
        found = connector(logs, [AUTH_SOURCE, {**WEB_SOURCE, "paths": ["logs/nginx/*.log"]}])
        with pytest.raises(ConnectorError, match=r"'Portal': no file matches .*nginx/\*\.log"):
            found.check()

    def test_unreadable_file_fails(self, tmp_path: Path) -> None:
        """check() fails on a file that claims to be gzip but is not."""
        (tmp_path / "auth.log.1.gz").write_bytes(b"\x1f\x8bnot really gzip")
        found = connector(tmp_path, [{**AUTH_SOURCE, "paths": ["auth.log.1.gz"]}])
        with pytest.raises(ConnectorError, match=r"auth\.log\.1\.gz: cannot be read"):
            found.check()


class TestSettings:
    def test_relative_paths_resolve_against_the_config_folder(self, tmp_path: Path) -> None:
        """A relative glob is taken from the config file's folder, an absolute one as it is."""
        found = connector(tmp_path / "[etc]", [{**AUTH_SOURCE, "paths": ["a/*.log", "/var/x"]}])
        source = found.settings.sources[0]
        assert source.paths == (f"{tmp_path}/[[]etc]/a/*.log", "/var/x")
        (tmp_path / "[etc]" / "a").mkdir(parents=True)
        (tmp_path / "[etc]" / "a" / "one.log").write_text("")
        assert source.files() == [tmp_path / "[etc]" / "a" / "one.log"]

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ({**AUTH_SOURCE, "user_field": "who"}, "user_field does not apply to format 'auth'"),
            ({**WEB_SOURCE, "year": 2024}, "year does not apply to format 'combined'"),
            ({**AUTH_SOURCE, "format": "syslog"}, r"sources\[0\]\.format: Input should be"),
            ({**AUTH_SOURCE, "paths": []}, r"sources\[0\]\.paths: Tuple should have at least 1"),
            ({**AUTH_SOURCE, "paths": [" "]}, "a path must not be empty"),
            ({**AUTH_SOURCE, "colour": "red"}, "unknown key"),
        ],
    )
    def test_invalid_settings_are_refused(self, source: dict[str, Any], message: str) -> None:
        """Wrong or misplaced settings fail with the key's path."""
        with pytest.raises(ConfigError, match=message):
            connector(Path("."), [source])

    def test_defaults(self) -> None:
        """max_records defaults to 10000 and JSON field names to time, user, ip, action, status."""
        found = connector(Path("."), [{**JSON_SOURCE, "paths": ["x.jsonl"]}])
        assert found.settings.max_records == 10_000
        source = found.settings.sources[0]
        assert (source.time_field, source.user_field, source.action_field) == (
            "time",
            "user.name",
            "event",
        )
        bare = connector(Path("."), [{"paths": ["x"], "format": "jsonl", "label": "L"}])
        fields = bare.settings.sources[0]
        names = (fields.time_field, fields.user_field, fields.ip_field, fields.action_field)
        assert (*names, fields.status_field) == ("time", "user", "ip", "action", "status")

    def test_registered_as_an_entry_point(self) -> None:
        """sarbot finds the connector type under the name access_log."""
        (point,) = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "access_log"]
        assert point.load() is AccessLogConnector
