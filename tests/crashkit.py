"""Killing sarbot at random moments, then checking what it promises.

sarbot promises that every request it has seen reaches an answer, and that a
message goes out twice only when a kill fell in its send window: between its
outbox row being written (``created_at``) and it being marked sent
(``sent_at``).  Here ``Site`` is an installation in a folder (config, state
database, export folder, and an SQLite store two ``sql`` connectors read),
``Daemon`` runs ``sarbot run`` as a real subprocess with one log file per
life, ``Traffic`` plays the requesters (each sends one request and replies to
the acknowledgement it gets), and ``run_with_kills`` adds a killer that sends
SIGKILL at moments drawn from ``random.Random(seed)``.  ``check`` then states
every broken invariant, from the state database, the export folder, the audit
trail and every requester's mailbox.
"""

from __future__ import annotations

import hashlib
import imaplib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from sarbot import faults
from sarbot.addresses import mask_address
from sarbot.mail.challenge import digest
from sarbot.store.db import make_engine, session_factory
from sarbot.store.models import OutgoingMail, Request, utcnow
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing.config import write_config
from tests.conftest import CA_FILE, unique

SARBOT = [sys.executable, "-m", "sarbot"]
ACK_SUBJECT = "Please confirm your data request"
EXPORT_SUBJECT = "A copy of your personal data"
REQUEST_BODY = "Please send me a copy of the personal data you hold about me.\n"
MAIL_ERRORS = (OSError, imaplib.IMAP4.error)
STARTUP_SECONDS = 1.5  # from spawning ``sarbot run`` to its first cycle, roughly
ATTEMPTS = 5
SEED_VARIABLE = "SARBOT_CRASH_SEED"
SLACK = timedelta(milliseconds=200)  # clock readings around a kill and a commit
SETTLE_SECONDS = 3.0  # for copies still on their way through the mail server
PROCESSED_FOLDER = "GDPR"
MAX_FAILURES = 20  # a run this broken stops killing early
T = TypeVar("T")


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
        tickets = rng.randint(15, 30) if big else rng.randint(1, 6)
        size = rng.randint(8_000, 12_000) if big else rng.randint(100, 2_000)
        people.append(Requester(unique(f"crash{n}", "example.test"), tickets, size))
    return people


SETTINGS = """
[requests]
acks_per_domain_per_day = 1000000
acks_per_hour = 1000000
[collection]
retry_after = 2
[export]
max_attachment_bytes = {limit}

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

[[connectors]]
name = "helpdesk"
type = "sql"
description = "Helpdesk"
url = "sqlite:///{store}"
[[connectors.queries]]
name = "tickets"
category = "Support ticket"
sql = "SELECT id, email, subject, body FROM tickets WHERE email = :email ORDER BY id"
key = "id"
verify = "email"
"""


class Site:
    """A sarbot installation in a folder, its schema created, its store filled."""

    def __init__(
        self,
        root: Path,
        requesters: list[Requester],
        seed: int,
        *,
        limit: int = 400_000,
        migrate: bool = True,
        database_url: str | None = None,
    ) -> None:
        self.root = root
        self.support = unique("support", "redtrain.test")
        self.config = root / "config.toml"
        self.state_db = root / "state.db"
        self.database_url = database_url or f"sqlite:///{self.state_db}"
        self.store_db = root / "store.db"
        self.export_dir = root / "exports"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        write_config(
            self.config,
            self.support,
            server=MailServer(ca_file=str(CA_FILE)),
            database_url=self.database_url,
            smtp={"timeout": 20, "retry_after": 2},
            extra=SETTINGS.format(store=self.store_db, limit=limit),
        )
        self._fill_store(requesters, random.Random(f"{seed}/store"))
        upgraded = self.cli("db", "upgrade") if migrate else None
        if upgraded is not None and upgraded.returncode != 0:
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
        if not self.database_url.startswith("sqlite"):
            assert not params, "parameters are for SQLite only"
            engine = create_engine(self.database_url, poolclass=NullPool)
            try:
                with engine.connect() as db:
                    return [tuple(row) for row in db.exec_driver_sql(sql)]
            finally:
                engine.dispose()
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

    def dead_ends(self) -> list[str]:
        """Open requests that nothing will move on: no retry due, no mail left to send."""
        found = [f"{ref} is {state} with no way forward" for ref, state in self.query(DEAD_ENDS)]
        queued = self.query(
            "SELECT r.reference, m.file_path FROM outgoing_mail m JOIN requests r"
            " ON r.id = m.request_id WHERE m.state = 'pending' AND m.file_path IS NOT NULL"
        )
        found += [
            f"{ref}: a queued export's file is gone"
            for ref, path in queued
            if not Path(str(path)).is_file()
        ]
        return found

    def delivered(self) -> int:
        [(count,)] = self.query("SELECT count(*) FROM requests WHERE state = 'delivered'")
        assert isinstance(count, int)
        return count


DEAD_ENDS = """
SELECT r.reference, r.state FROM requests r
WHERE (r.state = 'received' AND r.next_attempt_at IS NULL)
   OR (r.state = 'awaiting_confirmation' AND NOT EXISTS (
        SELECT 1 FROM outgoing_mail m WHERE m.request_id = r.id AND m.kind = 'acknowledgement'))
   OR (r.state = 'ready' AND NOT EXISTS (
        SELECT 1 FROM outgoing_mail m
        WHERE m.request_id = r.id AND m.kind = 'export' AND m.state = 'pending'))
   OR r.state IN ('needs_review', 'rejected', 'failed', 'expired')
   OR EXISTS (SELECT 1 FROM outgoing_mail m WHERE m.request_id = r.id AND m.state = 'failed')
"""


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


class Daemon:
    """``sarbot run`` as a subprocess; each life writes its own log file."""

    def __init__(self, site: Site, name: str = "life") -> None:
        self.site = site
        self.name = name
        self.lives: list[Life] = []
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def life(self) -> Life:
        return self.lives[-1]

    def start(self, crash_at: str | None = None) -> Life:
        life = Life(
            len(self.lives) + 1,
            self.site.logs / f"{self.name}-{len(self.lives) + 1:03d}.jsonl",
            utcnow(),
            crash_at,
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
            request = partial(sender.send, self.support, "GDPR DATA REQUEST", REQUEST_BODY)
            if self._patiently(request) is not None:
                with self._lock:
                    self.sent[person.address] = utcnow()

    def _confirm(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                waiting = [a for a in self.sent if a not in self.confirmed]
            for address in waiting:
                person = Correspondent(self.server, address)
                inbox = self._patiently(person.messages) or []
                ack = next((m for m in inbox if subject_contains(ACK_SUBJECT)(m)), None)
                if ack is not None and self._patiently(partial(person.reply, ack)) is not None:
                    with self._lock:
                        self.confirmed[address] = utcnow()
                if self._stop.is_set():
                    return
            self._stop.wait(0.3)

    def _patiently(self, action: Callable[[], T]) -> T | None:
        """Run one mail action, trying again on a network error; record it if it keeps failing."""
        for attempt in range(ATTEMPTS):
            try:
                return action()
            except MAIL_ERRORS as exc:
                if attempt == ATTEMPTS - 1:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    return None
                time.sleep(0.5 * (attempt + 1))
        return None


# -- a run ---------------------------------------------------------------------------------


@dataclass
class Findings:
    """What a run did, and every invariant it broke."""

    seed: int
    requests: int
    kills: int = 0
    seconds: float = 0.0
    answered_in: float = 0.0  # from the first request sent to the last answer delivered
    duplicate_acks: int = 0
    duplicate_exports: int = 0
    lost: set[str] = field(default_factory=set)  # requesters whose request got no full answer
    killed_after: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def figures(self) -> str:
        return (
            f"requests {self.requests}, kills {self.kills}, duplicates "
            f"{self.duplicate_acks} acks / {self.duplicate_exports} exports, "
            f"losses {self.losses}, time {self.seconds:.0f} s"
        )

    @property
    def losses(self) -> int:
        return len(self.lost)

    def report(self) -> str:
        """The seed first, so that the run can be repeated, then what went wrong."""
        return "\n".join(
            [
                f"seed {self.seed} (repeat with {SEED_VARIABLE}={self.seed})",
                self.figures(),
                *self.failures,
            ]
        )


@dataclass(frozen=True)
class Plan:
    requests: int
    kills: int
    seed: int
    max_gap: float = 3.0  # a kill comes up to this long after the daemon's first cycle
    big_share: float = 0.2
    answer_timeout: float = 240.0


def run_with_kills(
    root: Path, plan: Plan, server: MailServer, say: Callable[[str], None] = lambda _: None
) -> Findings:
    """Send ``plan.requests`` requests while killing the daemon ``plan.kills`` times."""
    began = time.monotonic()
    people = make_requesters(
        plan.requests, random.Random(f"{plan.seed}/people"), big_share=plan.big_share
    )
    site = Site(root, people, plan.seed)
    daemon = Daemon(site)
    traffic = Traffic(server, site.support, people, random.Random(f"{plan.seed}/traffic"))
    findings = Findings(plan.seed, plan.requests)
    killer = random.Random(f"{plan.seed}/kills")
    kills: list[datetime] = []
    daemon.start()
    traffic.start(spread=plan.kills * (STARTUP_SECONDS + plan.max_gap / 2))
    try:
        while len(kills) < plan.kills and len(findings.failures) < MAX_FAILURES:
            started = daemon.wait_for("daemon.started", 60)
            if started:
                time.sleep(killer.uniform(0.0, plan.max_gap))
            if not daemon.running():
                daemon.wait_exit(5)
                findings.failures.append(
                    f"life {daemon.life.number} exited by itself "
                    f"(status {daemon.life.returncode}){tail(daemon)}"
                )
            else:
                kills.append(daemon.kill())
                if not started:
                    findings.failures.append(f"life {daemon.life.number} hung in start-up")
                findings.failures.extend(f"after kill {len(kills)}: {p}" for p in site.dead_ends())
            say(f"kill {len(kills)}/{plan.kills}: {site.delivered()} of {plan.requests} delivered")
            daemon.start()
        _wait_answered(site, daemon, traffic, plan.requests, plan.answer_timeout, findings)
    finally:
        traffic.stop()
        _finish(daemon, findings)
    findings.kills = len(kills)
    check(site, people, traffic, daemon.lives, kills, server, findings)
    findings.seconds = time.monotonic() - began
    return findings


def run_armed(
    root: Path,
    server: MailServer,
    people: list[Requester],
    crash_at: str,
    *,
    on_crash: Callable[[Site], None] = lambda _: None,
) -> Findings:
    """Run the daemon armed at a crash point; once it died there, again unarmed; then check."""
    began = time.monotonic()
    site = Site(root, people, seed=0)
    daemon = Daemon(site)
    traffic = Traffic(server, site.support, people, random.Random(0))
    findings = Findings(0, len(people))
    kills: list[datetime] = []
    daemon.start(crash_at=crash_at)
    traffic.start(spread=0)
    try:
        code = daemon.wait_exit(90)
        if code == -signal.SIGKILL and daemon.life.ended is not None:
            kills.append(daemon.life.ended)
            findings.failures.extend(f"after the crash: {p}" for p in site.dead_ends())
            on_crash(site)
        else:
            findings.failures.append(f"armed at {crash_at}, the daemon did not crash{tail(daemon)}")
            if code is None:
                daemon.kill()
        daemon.start()
        _wait_answered(site, daemon, traffic, len(people), 120, findings)
    finally:
        traffic.stop()
        _finish(daemon, findings)
    findings.kills = len(kills)
    check(site, people, traffic, daemon.lives, kills, server, findings)
    findings.seconds = time.monotonic() - began
    return findings


def _wait_answered(
    site: Site,
    daemon: Daemon,
    traffic: Traffic,
    count: int,
    timeout: float,
    findings: Findings,
) -> None:
    """Wait until every request was sent, delivered, and nothing waits in the outbox."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if traffic.all_sent() and site.delivered() == count and site.unanswered() == 0:
            return
        if not daemon.running():
            findings.failures.append(f"the last life exited by itself{tail(daemon)}")
            return
        time.sleep(0.5)
    findings.failures.append(
        f"after {timeout:.0f} s without kills, {site.delivered()} of {count} requests delivered, "
        f"{len(traffic.sent)} sent, {len(traffic.confirmed)} confirmed"
    )


def _finish(daemon: Daemon, findings: Findings) -> None:
    """Stop the last life with SIGTERM, as an operator would; it must stop cleanly.

    A life started just before the work ran out may still be starting: SIGTERM before
    the daemon handles signals ends it as the signal's default does, which says nothing
    about a clean stop, so the signal waits until the life says it has started.
    """
    if daemon.running():
        if not daemon.wait_for("daemon.started", 60) and daemon.running():
            findings.failures.append(f"life {daemon.life.number} hung in start-up{tail(daemon)}")
        code = daemon.stop()
        if code != 0:
            findings.failures.append(f"the last life did not stop cleanly: status {code}")
    for life in daemon.lives:
        if life.killed:
            events = life.events()
            findings.killed_after[str(events[-1].get("event")) if events else "(start-up)"] += 1


def tail(daemon: Daemon, lines: int = 8) -> str:
    text = daemon.life.log.read_text(errors="replace").splitlines()[-lines:]
    return "".join(f"\n    {line}" for line in text)


# -- the invariants --------------------------------------------------------------------------


def check(
    site: Site,
    people: list[Requester],
    traffic: Traffic,
    lives: list[Life],
    kills: list[datetime],
    server: MailServer,
    findings: Findings,
) -> None:
    """Add every broken invariant to ``findings``: losses, duplicates, leftovers, bad exports."""
    fail = findings.failures.append
    fail_all = findings.failures.extend
    fail_all(f"a requester's mail failed: {error}" for error in traffic.errors)
    requests, mails = _state(site)
    opened: dict[str, list[Request]] = {}
    for request in requests:
        opened.setdefault(request.email, []).append(request)
    fail_all(
        f"a request nobody sent: {r.reference}" for r in requests if r.email not in traffic.sent
    )
    expected = {}  # how many messages each requester's INBOX holds at least, once all arrived
    for person in people:
        queued = [m for r in opened.get(person.address, []) for m in mails.get(r.id, [])]
        expected[person.address] = sum(m.state is MailState.SENT for m in queued)
    boxes = _mailboxes(server, expected)
    for person in people:
        mine = opened.get(person.address, [])
        if person.address not in traffic.sent:
            continue
        if not mine:
            findings.lost.add(person.address)
            fail(f"{mask_address(person.address)}: no request was opened for its mail")
            continue
        if len(mine) > 1:
            fail(f"{mask_address(person.address)}: {len(mine)} requests opened: {_refs(mine)}")
        request = mine[0]
        window = Attribution(request.reference, lives, kills)
        if request.state is not RequestState.DELIVERED:
            fail(_stuck(request, mails.get(request.id, [])) + window.excerpt())
        inbox = boxes[person.address]
        acknowledged = _check_acks(request, mails.get(request.id, []), inbox, window, findings)
        answered = _check_exports(request, mails.get(request.id, []), inbox, window, findings)
        if not (acknowledged and answered and request.state is RequestState.DELIVERED):
            findings.lost.add(person.address)
    leftovers = (
        sorted(p.name for p in site.export_dir.iterdir()) if site.export_dir.is_dir() else []
    )
    if leftovers:
        fail(f"export files left on disk: {leftovers}")
    audit = site.cli("audit", "verify")
    if audit.returncode != 0:
        fail(f"sarbot audit verify: {audit.stdout.strip()} {audit.stderr.strip()}")
    fail_all(_support_mailbox(server, site.support))


def _state(site: Site) -> tuple[list[Request], dict[int, list[OutgoingMail]]]:
    engine = make_engine(site.database_url)
    try:
        with session_factory(engine)() as session:
            requests = list(session.scalars(select(Request).order_by(Request.id)))
            mails: dict[int, list[OutgoingMail]] = {}
            for mail in session.scalars(select(OutgoingMail).order_by(OutgoingMail.id)):
                mails.setdefault(mail.request_id or 0, []).append(mail)
    finally:
        engine.dispose()
    return requests, mails


def _stuck(request: Request, mails: list[OutgoingMail]) -> str:
    pending = [m.kind.value for m in mails if m.state is not MailState.SENT]
    return (
        f"{request.reference} never delivered: {request.state.value}, next attempt "
        f"{request.next_attempt_at}, last error {request.last_error!r}, unsent mail {pending}"
    )


def _check_acks(
    request: Request,
    mails: list[OutgoingMail],
    inbox: list[EmailMessage],
    window: Attribution,
    findings: Findings,
) -> bool:
    """Check the acknowledgements a requester received; False if none did."""
    rows = {m.message_id: m for m in mails if m.kind is MailKind.ACKNOWLEDGEMENT}
    copies = Counter(_message_id(m) for m in inbox if subject_contains(ACK_SUBJECT)(m))
    if not copies:
        findings.failures.append(f"{request.reference}: no acknowledgement arrived")
    if len(rows) != 1 or len(copies) > 1:
        findings.failures.append(
            f"{request.reference}: {len(rows)} acknowledgements queued, "
            f"{len(copies)} different ones arrived"
        )
    for message_id, count in copies.items():
        row = rows.get("sha256:" + digest(message_id))
        findings.duplicate_acks += count - 1
        if row is None:
            findings.failures.append(f"{request.reference}: an acknowledgement the outbox lacks")
        elif count > 1 + window.kills(row):
            findings.failures.append(window.duplicate("acknowledgement", row, count))
    return bool(copies)


def _check_exports(
    request: Request,
    mails: list[OutgoingMail],
    inbox: list[EmailMessage],
    window: Attribution,
    findings: Findings,
) -> bool:
    """Check the export messages a requester received; False if any part never came."""
    rows = {m.message_id: m for m in mails if m.kind is MailKind.EXPORT}
    received: dict[str, list[EmailMessage]] = {}
    for message in inbox:
        if subject_contains(EXPORT_SUBJECT)(message):
            received.setdefault(_message_id(message), []).append(message)
    copies = Counter({message_id: len(group) for message_id, group in received.items()})
    missing = [message_id for message_id in rows if message_id not in copies]
    if missing and request.state is RequestState.DELIVERED:
        findings.failures.append(f"{request.reference}: {len(missing)} export message(s) lost")
    for message_id, count in copies.items():
        row = rows.get(message_id)
        findings.duplicate_exports += count - 1
        if row is None:
            findings.failures.append(
                f"{request.reference}: an export the outbox does not hold arrived "
                "(from an abandoned attempt)" + window.excerpt()
            )
        elif count > 1 + window.kills(row):
            findings.failures.append(window.duplicate("export", row, count))
    if any(_zips(m) != _zips(group[0]) for group in received.values() for m in group):
        findings.failures.append(f"{request.reference}: copies of one export message differ")
    attachments = [a for i, g in received.items() if i in rows for a in _zips(g[0])]
    findings.failures.extend(f"{request.reference}: {p}" for p in export_problems(attachments))
    return bool(rows) and not missing


def _zips(message: EmailMessage) -> list[bytes]:
    return [
        part.get_content()
        for part in message.iter_attachments()
        if part.get_content_type() == "application/zip"
    ]


def export_problems(parts: list[bytes]) -> list[str]:
    """What is wrong with an export's zips: unreadable, incomplete, or unlike their manifest."""
    if not parts:
        return ["no zip arrived"]
    contents: dict[str, bytes] = {}
    manifests = []
    for data in parts:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                broken = archive.testzip()
                if broken is not None:
                    return [f"a zip has a damaged member: {broken}"]
                for name in archive.namelist():
                    if name == "manifest.json":
                        manifests.append(json.loads(archive.read(name)))
                    else:
                        contents[name] = archive.read(name)
        except zipfile.BadZipFile as exc:
            return [f"a zip does not open: {exc}"]
    if not manifests or any(m != manifests[0] for m in manifests):
        return ["the parts do not carry one and the same manifest"]
    manifest = manifests[0]
    problems = [] if manifest["parts"] == len(parts) else [f"{len(parts)} of {manifest['parts']}"]
    for entry in manifest["files"]:
        names = [p["name"] for p in entry.get("pieces", [{"name": entry["name"]}])]
        if any(name not in contents for name in names):
            problems.append(f"{entry['name']} is missing from the zips")
            continue
        data = b"".join(contents[name] for name in names)
        if (len(data), hashlib.sha256(data).hexdigest()) != (entry["size"], entry["sha256"]):
            problems.append(f"{entry['name']} does not match its manifest entry")
    return problems


def _mailboxes(server: MailServer, expected: dict[str, int]) -> dict[str, list[EmailMessage]]:
    """Every requester's INBOX once the mail sent has arrived (and a little later, for copies)."""
    boxes: dict[str, list[EmailMessage]] = {}
    waiting = set(expected)
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for address in sorted(waiting):
            boxes[address] = Correspondent(server, address).messages()
            if len(boxes[address]) >= expected[address]:
                waiting.discard(address)
        time.sleep(0.5)
    time.sleep(SETTLE_SECONDS)
    return {address: Correspondent(server, address).messages() for address in expected}


def _support_mailbox(server: MailServer, support: str) -> list[str]:
    """Every request and reply was handled and moved, each exactly once."""
    box = Correspondent(server, support)
    left = box.messages()
    processed = Counter(_message_id(m) for m in box.messages(PROCESSED_FOLDER))
    problems = [f"{len(left)} message(s) left unhandled in the support INBOX"] if left else []
    twice = [message_id for message_id, count in processed.items() if count > 1]
    if twice:
        problems.append(f"{len(twice)} message(s) in the processed folder more than once")
    return problems


def _message_id(message: EmailMessage) -> str:
    return str(message.get("Message-ID", "")).strip()


def _refs(requests: list[Request]) -> str:
    return ", ".join(r.reference for r in requests)


class Attribution:
    """Which kills fell in a message's send window, and what the logs say about a request."""

    def __init__(self, reference: str, lives: list[Life], kills: list[datetime]) -> None:
        self.reference = reference
        self.lives = lives
        self.kill_times = kills

    def kills(self, mail: OutgoingMail) -> int:
        end = mail.sent_at or utcnow()
        return sum(mail.created_at - SLACK <= kill <= end + SLACK for kill in self.kill_times)

    def duplicate(self, what: str, mail: OutgoingMail, count: int) -> str:
        return (
            f"{self.reference}: {what} arrived {count} times with {self.kills(mail)} kill(s) in "
            f"its send window {mail.created_at:%H:%M:%S.%f} .. {mail.sent_at:%H:%M:%S.%f}"
            + self.excerpt()
        )

    def excerpt(self, limit: int = 30) -> str:
        """The log lines that name the request, and how each life around them ended."""
        lines = []
        for life in self.lives:
            for event in life.events():
                if event.get("reference") == self.reference:
                    lines.append(
                        f"life {life.number} {event.get('timestamp')} {event.get('event')} "
                        f"{event.get('kind', '')}"
                    )
            how = "killed" if life.killed else f"exit {life.returncode}"
            lines.append(f"life {life.number} ended {life.ended:%H:%M:%S.%f}: {how}")
        return "".join(f"\n    {line}" for line in lines[-limit:])


# -- more than one instance --------------------------------------------------------------------


def run_instances(
    root: Path,
    server: MailServer,
    people: list[Requester],
    database_url: str,
    *,
    instances: int = 2,
    kill_after: int | None = None,
    timeout: float = 240.0,
) -> tuple[Findings, list[Daemon]]:
    """Several ``sarbot run`` on one PostgreSQL state database and one mailbox, then check.

    With ``kill_after``, the instance reading the mailbox is killed with SIGKILL
    once that many requests were delivered, and the others finish the work.
    """
    began = time.monotonic()
    site = Site(root, people, seed=0, database_url=database_url)
    daemons = [Daemon(site, f"instance-{n + 1}") for n in range(instances)]
    traffic = Traffic(server, site.support, people, random.Random(0))
    findings = Findings(0, len(people))
    kills: list[datetime] = []
    for daemon in daemons:
        daemon.start()
    try:
        for daemon in daemons:
            if not daemon.wait_for("daemon.started", 60):
                findings.failures.append(f"{daemon.name} did not start{tail(daemon)}")
        traffic.start(spread=0)
        sending = time.monotonic()
        deadline = sending + timeout
        while kill_after is not None and not kills and time.monotonic() < deadline:
            if site.delivered() >= kill_after:
                reader = next((d for d in daemons if reads_mailbox(d)), None)
                if reader is None:
                    findings.failures.append("no instance reads the mailbox")
                    break
                kills.append(reader.kill())
            time.sleep(0.05)
        while time.monotonic() < deadline:
            if traffic.all_sent() and site.delivered() == len(people) and site.unanswered() == 0:
                findings.answered_in = time.monotonic() - sending
                break
            if not any(d.running() for d in daemons):
                findings.failures.append("every instance exited")
                break
            time.sleep(0.25)
        else:
            findings.failures.append(
                f"after {timeout:.0f} s, {site.delivered()} of {len(people)} requests delivered"
            )
    finally:
        traffic.stop()
        for daemon in daemons:
            _finish(daemon, findings)
    findings.kills = len(kills)
    lives = [life for daemon in daemons for life in daemon.lives]
    check(site, people, traffic, lives, kills, server, findings)
    findings.seconds = time.monotonic() - began
    return findings, daemons


def reads_mailbox(daemon: Daemon) -> bool:
    """Whether this running instance holds the mailbox (by the last such event it logged)."""
    held = False
    for event in daemon.life.events():
        if event.get("event") == "instance.mailbox_taken":
            held = True
        elif event.get("event") in {"instance.mailbox_lost", "instance.mailbox_released"}:
            held = False
    return held and daemon.running()
