"""Killing sarbot at random moments, then checking what it promises.

sarbot promises that every request it has seen reaches an answer, and that a
message goes out twice only when a kill fell in its send window: between its
outbox row being written (``created_at``) and it being marked sent
(``sent_at``).  Here ``Site`` is an installation in a folder (config, state
database, export folder, and an SQLite store two ``sql`` connectors read),
``Daemon`` runs ``sarbot run`` as a real subprocess with one log file per
life, ``Traffic`` plays the requesters (each sends one request and replies to
the acknowledgement it gets), and ``run_with_kills`` adds a killer that sends
SIGKILL at moments drawn from ``random.Random(seed)``.  ``tests.crashcheck``
states every broken invariant afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sarbot import faults
from sarbot.models import utcnow
from sarbot.testing import Correspondent, MailServer, subject_contains
from tests.conftest import CA_FILE, unique

SARBOT = [sys.executable, "-m", "sarbot"]
ACK_SUBJECT = "Please confirm your data request"
EXPORT_SUBJECT = "A copy of your personal data"
REQUEST_BODY = "Please send me a copy of the personal data you hold about me.\n"
STARTUP_SECONDS = 2.5  # from spawning ``sarbot run`` to its first cycle, roughly
ATTEMPTS = 5


@dataclass(frozen=True)
class Requester:
    """One person: sends one request; the store holds ``tickets`` tickets about them."""

    address: str
    tickets: int
    ticket_bytes: int


def make_requesters(count: int, rng: random.Random, *, big_share: float = 0.2) -> list[Requester]:
    """``count`` people at fresh addresses; about ``big_share`` of them with a big export."""
    people = []
    for n in range(count):
        big = rng.random() < big_share
        tickets = rng.randint(25, 40) if big else rng.randint(1, 6)
        size = rng.randint(10_000, 16_000) if big else rng.randint(100, 2_000)
        people.append(Requester(unique(f"crash{n}", "example.test"), tickets, size))
    return people


CONFIG = """
[controller]
name = "Red Train IT Ltd"
email = "{support}"
[imap]
host = "127.0.0.1"
port = 10143
security = "starttls"
ca_file = "{ca}"
username = "{support}"
password = {{ file = "imap-password" }}
poll_interval = 1
timeout = 10
[smtp]
host = "127.0.0.1"
port = 10025
ca_file = "{ca}"
timeout = 20
retry_after = 2
[storage]
database_url = "sqlite:///{state}"
export_dir = "exports"
[requests]
acks_per_domain_per_day = 1000000
acks_per_hour = 1000000
[collection]
retry_after = 2
[export]
max_attachment_bytes = {limit}
[logging]
format = "json"

[[connectors]]
name = "crm"
type = "sql"
description = "Customer database"
url = "sqlite:///{store}"
[[connectors.queries]]
name = "customer"
category = "Customer record"
sql = "SELECT email, name, phone, since FROM customers WHERE email = :email"

[[connectors]]
name = "helpdesk"
type = "sql"
description = "Helpdesk"
url = "sqlite:///{store}"
[[connectors.queries]]
name = "tickets"
category = "Support ticket"
sql = "SELECT id, subject, body FROM tickets WHERE email = :email ORDER BY id"
key = "id"
"""


class Site:
    """A sarbot installation in a folder, its schema created, its store filled."""

    def __init__(
        self, root: Path, requesters: list[Requester], seed: int, *, limit: int = 400_000
    ) -> None:
        self.root = root
        self.support = unique("support", "redtrain.test")
        self.config = root / "config.toml"
        self.state_db = root / "state.db"
        self.store_db = root / "store.db"
        self.export_dir = root / "exports"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (root / "imap-password").write_text("test\n")
        self.config.write_text(
            CONFIG.format(
                support=self.support,
                ca=CA_FILE,
                state=self.state_db,
                store=self.store_db,
                limit=limit,
            )
        )
        self._fill_store(requesters, random.Random(f"{seed}/store"))
        upgraded = self.cli("db", "upgrade")
        if upgraded.returncode != 0:
            raise RuntimeError(f"sarbot db upgrade failed: {upgraded.stdout}{upgraded.stderr}")

    def _fill_store(self, requesters: list[Requester], rng: random.Random) -> None:
        with sqlite3.connect(self.store_db) as store:
            store.execute("CREATE TABLE customers (email TEXT, name TEXT, phone TEXT, since TEXT)")
            store.execute(
                "CREATE TABLE tickets (id INTEGER PRIMARY KEY, email TEXT, subject TEXT, body TEXT)"
            )
            for n, person in enumerate(requesters):
                store.execute(
                    "INSERT INTO customers VALUES (?, ?, ?, ?)",
                    (person.address, f"Customer {n}", f"+44 20 7946 {n:04d}", "2021-03-04"),
                )
                store.executemany(
                    "INSERT INTO tickets (email, subject, body) VALUES (?, ?, ?)",
                    [
                        (person.address, f"Ticket {t}", rng.randbytes(person.ticket_bytes).hex())
                        for t in range(person.tickets)
                    ],
                )
        store.close()

    def cli(self, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a ``sarbot`` command on this site (armed at a crash point if asked)."""
        return subprocess.run(
            [*SARBOT, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=sarbot_environment(crash_at),
            cwd=self.root,
            timeout=120,
        )

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Read the state database while the daemon may be writing it."""
        connection = sqlite3.connect(self.state_db, timeout=30, isolation_level=None)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def unanswered(self) -> int:
        """Requests not delivered yet, plus messages still waiting in the outbox."""
        [(open_requests, pending_mail)] = self.query(
            "SELECT (SELECT count(*) FROM requests WHERE state != 'delivered'),"
            " (SELECT count(*) FROM outgoing_mail WHERE state = 'pending')"
        )
        assert isinstance(open_requests, int) and isinstance(pending_mail, int)
        return open_requests + pending_mail

    def delivered(self) -> int:
        [(count,)] = self.query("SELECT count(*) FROM requests WHERE state = 'delivered'")
        assert isinstance(count, int)
        return count


def sarbot_environment(crash_at: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENVIRONMENT_VARIABLE}
    env["PYTHONUNBUFFERED"] = "1"
    if crash_at:
        env[faults.ENVIRONMENT_VARIABLE] = crash_at
    return env


@dataclass
class Life:
    """One run of the daemon process, from spawn to exit."""

    number: int
    log: Path
    started: datetime
    crash_at: str | None
    ended: datetime | None = None
    returncode: int | None = None
    killed: bool = False

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines of this life (a line cut short by a kill is skipped)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    @property
    def died_by_sigkill(self) -> bool:
        return self.returncode == -signal.SIGKILL


class Daemon:
    """``sarbot run`` as a subprocess; each life writes its own log file."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.lives: list[Life] = []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def life(self) -> Life:
        return self.lives[-1]

    def start(self, crash_at: str | None = None) -> Life:
        life = Life(
            len(self.lives) + 1, self.site.logs / f"life-{len(self.lives) + 1:03d}.jsonl", utcnow(), crash_at
        )
        with life.log.open("wb") as out:
            self._process = subprocess.Popen(
                [*SARBOT, "--config", str(self.site.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=sarbot_environment(crash_at),
                cwd=self.site.root,
            )
        self.lives.append(life)
        return life

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_for(self, event: str, timeout: float) -> bool:
        """Wait until this life logs ``event``; False if it exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.running()
            if any(e.get("event") == event for e in self.life.events()):
                return True
            if not alive:
                return False
            time.sleep(0.05)
        return False

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process ends by itself; None if it still runs."""
        assert self._process is not None
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._ended(code, killed=code == -signal.SIGKILL)
        return code

    def kill(self) -> datetime:
        """SIGKILL now; returns the moment the signal was sent."""
        assert self._process is not None
        at = utcnow()
        self._process.kill()
        self._ended(self._process.wait(), killed=True)
        return at

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and the exit status (SIGKILL if it does not stop in time)."""
        assert self._process is not None
        self._process.terminate()
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._ended(code, killed=False)
        return code

    def _ended(self, code: int, *, killed: bool) -> None:
        if self.life.ended is None:
            self.life.ended, self.life.returncode, self.life.killed = utcnow(), code, killed


@dataclass
class Traffic:
    """The requesters: each sends its request, then replies to the first acknowledgement."""

    server: MailServer
    support: str
    requesters: list[Requester]
    rng: random.Random
    sent: dict[str, datetime] = field(default_factory=dict)
    confirmed: dict[str, datetime] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, spread: float) -> None:
        """Send the requests over about ``spread`` seconds, and confirm as acks arrive."""
        for target, args in ((self._drive, (spread,)), (self._confirm, ())):
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)

    def all_sent(self) -> bool:
        with self._lock:
            return len(self.sent) == len(self.requesters)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _drive(self, spread: float) -> None:
        mean_gap = spread / max(len(self.requesters), 1)
        for person in self.requesters:
            if mean_gap and self._stop.wait(self.rng.expovariate(1 / mean_gap)):
                return
            sender = Correspondent(self.server, person.address)
            if self._patiently(lambda: sender.send(self.support, "GDPR DATA REQUEST", REQUEST_BODY)):
                with self._lock:
                    self.sent[person.address] = utcnow()

    def _confirm(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                waiting = [a for a in self.sent if a not in self.confirmed]
            for address in waiting:
                person = Correspondent(self.server, address)
                acks = self._patiently(lambda: person.messages()) or []
                ack = next((m for m in acks if subject_contains(ACK_SUBJECT)(m)), None)
                if ack is not None and self._patiently(lambda: person.reply(ack)):
                    with self._lock:
                        self.confirmed[address] = utcnow()
                if self._stop.is_set():
                    return
            self._stop.wait(0.3)

    def _patiently(self, action: Callable[[], object]) -> object:
        """Run one mail action, trying again on a network error; record it if it keeps failing."""
        for attempt in range(ATTEMPTS):
            try:
                return action() or True
            except OSError as exc:
                if attempt == ATTEMPTS - 1:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    return None
                time.sleep(0.5 * (attempt + 1))
        return None
