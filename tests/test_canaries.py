"""No secret ever leaves: a whole request through every built-in connector, searched for canaries.

The stores (``tests/canary_stores.py``) hold unique canaries wherever a secret or
another person's data lives, next to alice's own data, which carries visible
markers.  Two stores first refuse sarbot (their secret files hold a wrong
password, itself a canary) and are mended before the retry, so the failure path
is searched too.  Then every byte sarbot let out or kept is searched: every
message in every folder of every mailbox involved (raw, decoded headers, each
MIME part decoded, each file of each zip), every log line (structlog at DEBUG,
standard-library records, warnings, stdout and stderr), the operator commands'
output, every row of every table of the state database, and every file sarbot
could have written (the raw SQLite files and their -wal, the export folder).
A canary is looked for by its random hex part, ignoring case, so that a changed
case or a lost prefix still counts.  Alice's markers must reach her and nobody
else; the acknowledgement's challenge (token and code) may be only in her
mailbox and in her reply.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from imapclient import IMAPClient
from sqlalchemy import MetaData, select

from sarbot.cli.main import cli
from sarbot.connector import ENTRY_POINT_GROUP
from sarbot.logging import configure_logging
from sarbot.store.states import MailKind, RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from tests.canary_stores import (
    ALICE_LOGIN,
    Canaries,
    Databases,
    People,
    Stores,
    build_stores,
)
from tests.conftest import Bot, BotFactory
from tests.servers import ServerError, mariadb_server, postgres_server

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]
EXPORT = subject_contains("A copy of your personal data")


@pytest.fixture
def databases() -> Iterator[Databases]:
    """MariaDB (WordPress and the CRM) and PostgreSQL (Tactical RMM), each a real server."""
    try:
        with mariadb_server() as mariadb, postgres_server() as postgres:
            yield Databases(mariadb, postgres)
    except ServerError as exc:
        pytest.fail(f"a database server could not start: {exc}", pytrace=False)


# ----- searching output ---------------------------------------------------------------------


@dataclass
class Surface:
    """Pieces of output, each labelled with where it was found; archives are opened too."""

    pieces: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, data: bytes | str) -> None:
        body = data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")
        self.pieces.append((where, body))
        if body.startswith(b"PK\x03\x04"):
            self._add_zip(where, body)
        elif body.startswith(b"\x1f\x8b"):
            self.add(f"{where} (gunzipped)", gzip.decompress(body))

    def _add_zip(self, where: str, body: bytes) -> None:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            self.add(f"{where}: zip names", "\n".join(archive.namelist()))
            self.add(f"{where}: zip comment", archive.comment)
            for info in archive.infolist():
                self.add(f"{where} -> {info.filename}", archive.read(info))

    def add_message(self, where: str, raw: bytes) -> None:
        """The raw message, its decoded headers, and every leaf part decoded."""
        self.add(f"{where} (raw)", raw)
        message = message_from_bytes(raw, policy=policy.default)
        self.add(f"{where} (headers)", "\n".join(f"{k}: {v}" for k, v in message.items()))
        for number, part in enumerate(message.walk()):
            payload = None if part.is_multipart() else part.get_payload(decode=True)
            if isinstance(payload, bytes):
                name = part.get_filename() or part.get_content_type()
                self.add(f"{where} part {number} ({name})", payload)

    def hits(self, needles: Mapping[str, str]) -> dict[str, list[str]]:
        """For each needle found (ignoring case), where it was found."""
        lowered = [(where, data.lower()) for where, data in self.pieces]
        found: dict[str, list[str]] = {}
        for name, needle in needles.items():
            wanted = needle.lower().encode()
            places = [where for where, data in lowered if wanted in data]
            if places:
                found[name] = places
        return found

    def files_named(self, name: str) -> list[bytes]:
        return [data for where, data in self.pieces if where.endswith(f" -> {name}")]


def cores(values: Mapping[str, str]) -> dict[str, str]:
    """The random hex part of each canary: found even if its case or prefix changed."""
    return {name: value.rpartition("-")[2] for name, value in values.items()}


def found_in(surfaces: Iterable[Surface], needles: Mapping[str, str]) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for surface in surfaces:
        for name, places in surface.hits(needles).items():
            merged.setdefault(name, []).extend(places)
    return merged


def report(title: str, found: Mapping[str, list[str]], values: Mapping[str, str]) -> str:
    lines = [title]
    for name, places in sorted(found.items()):
        lines += [f"  {values[name]} in {place}" for place in places]
    return "\n".join(lines)


# ----- where output goes --------------------------------------------------------------------


def mailbox(server: MailServer, address: str) -> list[tuple[str, bytes]]:
    """Every message in every folder of a mailbox, read with BODY.PEEK."""
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    client.starttls(server.tls())
    client.login(address, server.password)
    found: list[tuple[str, bytes]] = []
    with client:
        for _flags, _separator, folder in client.list_folders():
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            found += [(f"{address} {folder} UID {uid}", data[uid][b"BODY[]"]) for uid in data]
    return found


class _Keep(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Captured:
    """sarbot's structlog lines (JSON, DEBUG and up), standard-library records and warnings."""

    log_file: Path
    records: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def log_lines(self) -> list[str]:
        return self.log_file.read_text(encoding="utf-8").splitlines()


@contextmanager
def everything_logged(log_file: Path) -> Iterator[Captured]:
    """Log as the daemon does, at DEBUG, to a file; the previous configuration is restored."""
    captured = Captured(log_file)
    saved = structlog.get_config()
    handler = _Keep(captured.records)
    logging.getLogger().addHandler(handler)
    try:
        with (
            log_file.open("w", encoding="utf-8") as stream,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            configure_logging(level="debug", fmt="json", stream=stream)
            yield captured
            captured.warnings += [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        structlog.configure(**saved)
        logging.getLogger().removeHandler(handler)


@dataclass
class Run:
    """What answering one request logged and printed."""

    captured: Captured
    commands: dict[str, str] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""


def answer(bot: Bot, alice: Correspondent, stores: Stores, run: Run) -> None:
    """alice asks and confirms; two stores refuse sarbot until their secrets are mended."""
    alice.send(bot.address, "GDPR DATA REQUEST", "Please send me a copy of my data.")
    bot.support.wait_for(subject_contains("GDPR DATA REQUEST"))
    bot.run_once()
    alice.reply(alice.wait_for(subject_contains("Please confirm")))
    bot.support.wait_for(subject_contains("Re: [SAR-"))
    bot.run_once()
    assert bot.request().last_error == "connectors failed: mailbox, monitoring"
    failing = operator(bot, "connectors", "check", status=1)
    assert "FAILED  monitoring" in failing and "FAILED  mailbox" in failing
    run.commands["connectors check, while failing"] = failing
    stores.mend()
    bot.offset = timedelta(seconds=bot.app.settings.collection.retry_after + 1)
    bot.run_once()
    assert bot.request().state is RequestState.DELIVERED, bot.request().last_error
    parts = sum(1 for mail in bot.outgoing() if mail.kind is MailKind.EXPORT)
    deadline = time.monotonic() + 20
    while sum(1 for message in alice.messages() if EXPORT(message)) < parts:
        assert time.monotonic() < deadline, f"alice did not receive all {parts} export parts"
        time.sleep(0.2)
    reference = bot.request().reference
    for args in (
        ("requests", "show", reference),
        ("requests", "show", reference, "--json"),
        ("requests", "list", "--json"),
        ("connectors", "list"),
        ("connectors", "check"),
    ):
        run.commands[" ".join(args)] = operator(bot, *args)


def operator(bot: Bot, *args: str, status: int = 0) -> str:
    """What an operator command prints."""
    result = CliRunner().invoke(cli, args, obj={"app": bot.app, "config_path": bot.app.config_path})
    assert result.exit_code == status, result.output
    return result.output


def add_mailbox(surface: Surface, server: MailServer, address: str) -> None:
    for where, raw in mailbox(server, address):
        surface.add_message(where, raw)


def add_run(surface: Surface, run: Run) -> list[str]:
    """Every log line, record, warning and printed line; the events sarbot logged."""
    lines = run.captured.log_lines()
    events = [json.loads(line)["event"] for line in lines]
    for number, (line, event) in enumerate(zip(lines, events, strict=True), 1):
        surface.add(f"sarbot log line {number} ({event})", line)
    for number, record in enumerate(run.captured.records, 1):
        surface.add(f"standard-library log record {number}", record)
    for number, warning in enumerate(run.captured.warnings, 1):
        surface.add(f"warning {number}", warning)
    surface.add("stdout", run.stdout)
    surface.add("stderr", run.stderr)
    for command, output in run.commands.items():
        surface.add(f"output of 'sarbot {command}'", output)
    return events


def add_state(surface: Surface, bot: Bot) -> set[str]:
    """Every row of every table of the state database; the tables that have rows."""
    engine = bot.app.engine
    metadata = MetaData()
    metadata.reflect(engine)
    filled = set()
    with engine.connect() as connection:
        for name, table in metadata.tables.items():
            for number, row in enumerate(connection.execute(select(table)), 1):
                where = f"state database: table {name} row {number}"
                values = [v if isinstance(v, bytes) else str(v).encode() for v in row]
                surface.add(where, b"\x1f".join(values))
                for value in row:  # a stored message (the outbox keeps some) is read as one
                    if isinstance(value, bytes):
                        surface.add_message(f"{where}, as a message", value)
                filled.add(name)
    return filled


def add_files(surface: Surface, folder: Path, *skip: Path) -> list[Path]:
    """Every file sarbot could have written (the SQLite files, exports, ...); the files read."""
    found = [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(path.is_relative_to(s) for s in skip)
    ]
    for path in found:
        where = f"file {path.relative_to(folder)}"
        if path.suffix == ".eml":
            surface.add_message(where, path.read_bytes())
        else:
            surface.add(where, path.read_bytes())
    return found


def builtin_types() -> set[str]:
    found = entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name for ep in found if ep.value.startswith("connectors.")}


# ----- the test ----------------------------------------------------------------------------


class TestNoSecretLeaves:
    def test_a_whole_request_lets_no_canary_out_and_brings_alice_every_source(
        self,
        make_bot: BotFactory,
        person: Person,
        mailstack: MailServer,
        databases: Databases,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """No canary or challenge is in any mail, log, output, state or file; her data is."""
        alice, contact = person("alice", "example.test"), person("contact", "redtrain.test")
        others = [person(n, d) for n, d in (("bob", "example.test"), ("carol", "example.test"))]
        others.append(person("mallory", "evil.test"))
        people = People(alice.address, *(other.address for other in others))
        canaries = Canaries()
        store_dir = tmp_path / "stores"
        store_dir.mkdir()
        stores = build_stores(store_dir, people, canaries, databases, contact, monkeypatch.setenv)
        types = {table["type"] for table in stores.tables}
        assert types == builtin_types(), "a built-in connector is left out"
        bot = make_bot(connectors=stores.tables, realms=stores.realms)

        capfd.readouterr()
        with everything_logged(tmp_path / "sarbot.log") as captured:
            run = Run(captured)
            answer(bot, alice, stores, run)
        run.stdout, run.stderr = capfd.readouterr()

        to_alice, support, others_mail, kept = Surface(), Surface(), Surface(), Surface()
        add_mailbox(to_alice, mailstack, alice.address)
        add_mailbox(support, mailstack, bot.address)
        for other in others:
            add_mailbox(others_mail, mailstack, other.address)
        events = add_run(kept, run)
        filled = add_state(kept, bot)
        files = add_files(kept, tmp_path, store_dir, run.captured.log_file)
        # The search can fail: it finds canaries where they are, and it looked everywhere.
        control, contact_mail = Surface(), mailbox(mailstack, contact.address)
        for where, raw in contact_mail:
            control.add_message(where, raw)
        assert {"mail-others", "mail-lookalike"} <= set(control.hits(cores(canaries.secrets)))
        assert len(contact_mail) == 3, "sarbot wrote to the mailbox it only reads"
        assert {"connector.failed", "connector.collected", "mail.sent"} <= set(events)
        assert {"requests", "audit_events", "outgoing_mail"} <= filled
        assert any(path.name == "state.db" for path in files)

        everywhere = (to_alice, support, others_mail, kept)
        leaks = found_in(everywhere, cores(canaries.secrets))
        assert not leaks, report("canaries found outside the stores:", leaks, canaries.secrets)
        misplaced = found_in((support, others_mail, kept), cores(canaries.visible))
        assert not misplaced, report("alice's data found elsewhere:", misplaced, canaries.visible)
        local_part = alice.address.partition("@")[0]
        assert not any(local_part in line for line in run.captured.log_lines()), "address logged"
        exports = bot.app.settings.storage.export_dir
        assert [p for p in files if p.is_relative_to(exports)] == [], "exports left on disk"
        check_export(to_alice, canaries, {table["name"] for table in stores.tables})
        # sarbot's own secret: the challenge is in her mailbox and her reply, and nowhere else.
        challenge = challenge_of(alice)
        kept_challenge = found_in((others_mail, kept), challenge)
        assert not kept_challenge, report("the challenge is kept:", kept_challenge, challenge)


def challenge_of(alice: Correspondent) -> dict[str, str]:
    """The token (in its Message-ID) and the code of the acknowledgement alice received."""
    ack = next(m for m in alice.messages() if subject_contains("Please confirm")(m))
    token = str(ack["Message-ID"]).strip("<>").partition(".")[2].partition("@")[0]
    body = ack.get_body(preferencelist=("plain",))
    assert body is not None and token
    [code] = re.findall(r"\b[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}\b", body.get_content())
    return {"challenge token": token, "challenge code": code}


def check_export(to_alice: Surface, canaries: Canaries, names: set[str]) -> None:
    """Every connector found alice, her markers reached her, and identity expansion worked."""
    documents = to_alice.files_named("data.json")
    assert len(documents) == 1, f"expected one data.json in alice's mail, found {len(documents)}"
    data: dict[str, Any] = json.loads(documents[0])
    assert data["complete"] is True and data["missing_sources"] == []
    sources = {source["name"]: source for source in data["sources"]}
    assert set(sources) == names
    for name, source in sources.items():  # each connector's marker is named after it
        assert source["records"], f"connector '{name}' found nothing for alice"
        assert canaries.visible[name] in json.dumps(source["records"]), f"'{name}' lost her data"
    for name in ("monitoring", "logs"):  # reached only through the username the vault gave
        found_by = {
            (r["found_by"]["kind"], r["found_by"]["value"]) for r in sources[name]["records"]
        }
        assert ("username", ALICE_LOGIN) in found_by, f"'{name}' was not asked about her username"
    assert set(to_alice.hits(canaries.visible)) == set(canaries.visible)
