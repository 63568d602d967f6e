"""Servers going away mid-run: nothing lost, nothing sent twice.

Each test stops or breaks a real server (Dovecot, Postfix, PostgreSQL, the
SQLite file) while sarbot works, and restores it in a ``finally``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from imapclient import IMAPClient
from sqlalchemy import create_engine, text, update
from structlog.testing import capture_logs

from sarbot.app import App
from sarbot.cli.main import cli
from sarbot.daemon import MAX_BACKOFF
from sarbot.mail.mailbox import HeaderInfo, Mailbox, MailboxStalled, MailboxThread
from sarbot.store import db
from sarbot.store.models import OutgoingMail
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing import config as testconfig
from tests.conftest import CA_FILE, ROOT, Bot, BotFactory, unique
from tests.servers import PostgresServer, ServerError

pytestmark = pytest.mark.mailstack
Person = Callable[[str, str], Correspondent]

MAILSTACK = ROOT / "scripts" / "mailstack"
SARBOT = [sys.executable, "-m", "sarbot"]
ACK = subject_contains("Please confirm")
EXPORT = subject_contains("A copy of your personal data")
REVIEW = subject_contains("A request waits for a person")
CUSTOMER_QUERY = "SELECT email, plan FROM customers WHERE email = :email"
DOVECOT_OUTAGE = 60.0  # seconds


# -- the mail stack's servers ------------------------------------------------------------


def mailstack_command(*args: str) -> str:
    """Run scripts/mailstack; its output.  A failure fails the test."""
    result = subprocess.run(
        [str(MAILSTACK), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"mailstack {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@contextmanager
def outage(server: str) -> Iterator[None]:
    """One server of the mail stack is stopped; it is started again however the block ends."""
    try:
        mailstack_command("stop", server)
        yield
    finally:
        mailstack_command("up")


@contextmanager
def refusing(address: str, answer: str) -> Iterator[None]:
    """Postfix answers RCPT TO:<address> with ``answer`` until the block ends."""
    try:
        mailstack_command("refuse", address, answer)
        yield
    finally:
        mailstack_command("refuse", address, "--off")


def imap_session_of(address: str, timeout: float = 10.0) -> int:
    """The pid of the one Dovecot process serving ``address`` over IMAP."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(pid) for pid in mailstack_command("sessions", address).split()]
        if len(pids) == 1:
            return pids[0]
        if time.monotonic() > deadline:
            pytest.fail(f"expected one IMAP session for the support mailbox, found {pids}")
        time.sleep(0.2)


@contextmanager
def imap_as(address: str) -> Iterator[IMAPClient]:
    server = MailServer(ca_file=str(CA_FILE))
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    client.starttls(server.tls())
    client.login(address, server.password)
    try:
        yield client
    finally:
        client.logout()


# -- sarbot as a long-running process -------------------------------------------------------


def write_config(
    tmp_path: Path,
    support: str,
    *,
    database_url: str | None = None,
    poll_interval: float = 2.0,
    timeout: float = 3.0,
) -> Path:
    """A config for ``sarbot run``; the state database is migrated."""
    database_url = database_url or f"sqlite:///{tmp_path / 'state.db'}"
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    engine.dispose()
    return testconfig.write_config(
        tmp_path / "config.toml",
        support,
        server=MailServer(ca_file=str(CA_FILE)),
        database_url=database_url,
        imap={"poll_interval": poll_interval, "timeout": timeout},
        smtp={"attempts": 1},
    )


class RunningDaemon:
    """``sarbot run`` as a subprocess; its log events are collected as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self.process = subprocess.Popen(
            [*SARBOT, "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "(not json)", "line": line}
            with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    def wait_for(self, name: str, *, after: int = 0, timeout: float = 30.0, **fields: Any) -> int:
        """The index of the first event ``name`` (with ``fields``) from index ``after`` on."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for index in range(after, len(self.events)):
                    event = self.events[index]
                    if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    pytest.fail(f"no {name} {fields} after event {after}: {self.names(after)}")
                self._arrived.wait(left)

    def ready(self) -> int:
        """Wait for the end of the first cycle (the daily retention closes it); its index."""
        return self.wait_for("retention.mail_deleted", after=self.wait_for("mailbox.connected"))

    def names(self, after: int = 0) -> list[str]:
        with self._arrived:
            return [str(event["event"]) for event in self.events[after:]]

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


StartDaemon = Callable[..., tuple[RunningDaemon, str]]


@pytest.fixture
def start_daemon(tmp_path: Path, mailstack: MailServer) -> Iterator[StartDaemon]:
    """Start ``sarbot run`` on a fresh support mailbox; returns it and that address."""
    started: list[RunningDaemon] = []

    def start(**config: Any) -> tuple[RunningDaemon, str]:
        support = unique("support", "redtrain.test")
        daemon = RunningDaemon(write_config(tmp_path, support, **config))
        started.append(daemon)
        return daemon, support

    yield start
    for daemon in started:
        daemon.kill()


def stop_cleanly(daemon: RunningDaemon) -> None:
    """The daemon still runs, stops on SIGTERM with status 0, never crashed, sent one mail."""
    assert daemon.process.poll() is None, "the daemon exited during the outage"
    assert daemon.stop() == 0
    assert "daemon.error" not in daemon.names()
    assert not [e for e in daemon.events if "Traceback" in e.get("line", "")]
    assert [e["kind"] for e in daemon.events if e["event"] == "mail.sent"] == ["acknowledgement"]


def state_of_requests(config: Path) -> list[RequestState]:
    app = App.load(config)
    try:
        return [request.state for request in Bot(app).requests()]
    finally:
        app.engine.dispose()


def count(correspondent: Correspondent, match: Callable[[Any], bool]) -> int:
    return sum(1 for message in correspondent.messages() if match(message))


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    try:
        with PostgresServer() as server:
            yield server
    except ServerError as exc:
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)


# -- requests driven in-process ----------------------------------------------------------------


def confirmed(bot: Bot, person: Person) -> Correspondent:
    """A request from alice, acknowledged and confirmed (not yet collected)."""
    alice, support = person("alice", "example.test"), bot.support
    alice.send(bot.address, "GDPR DATA REQUEST")
    support.wait_for(subject_contains("GDPR"))
    bot.run_once()
    alice.reply(alice.wait_for(ACK))
    support.wait_for(subject_contains("Re: [SAR-"))
    return alice


def events_named(
    events: Sequence[MutableMapping[str, Any]], name: str
) -> list[MutableMapping[str, Any]]:
    return [event for event in events if event["event"] == name]


def raw_request(sender: str, support: str, message_id: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {support}\r\nSubject: GDPR DATA REQUEST\r\n"
        f"Message-ID: {message_id}\r\n\r\nPlease send me my data.\r\n"
    ).encode()


class TestImap:
    def test_dovecot_stopped_mid_idle_loses_no_mail(
        self, start_daemon: StartDaemon, person: Person
    ) -> None:
        """Dovecot stops a minute: the daemon backs off, reconnects, answers what came meanwhile."""
        daemon, support = start_daemon(poll_interval=2)
        ready = daemon.ready()
        alice = person("alice", "example.test")
        with outage("dovecot"):
            stopped = time.monotonic()
            daemon.wait_for("mailbox.error", after=ready)
            alice.send(support, "GDPR DATA REQUEST")  # Postfix keeps it: LMTP is deferred
            failed = daemon.wait_for("mailbox.error", after=ready, failures=2, timeout=20)
            time.sleep(max(0.0, DOVECOT_OUTAGE - (time.monotonic() - stopped)))
            failed = max(i for i, name in enumerate(daemon.names()) if name == "mailbox.error")
        waits = [e["seconds"] for e in daemon.events[ready:] if e["event"] == "daemon.backoff"]
        assert len(waits) >= 3 and waits == sorted(waits) and waits[-1] > waits[0], waits
        back = daemon.wait_for("mailbox.connected", after=failed, timeout=MAX_BACKOFF + 15)
        daemon.wait_for("mail.accepted", after=back, timeout=30)
        alice.wait_for(ACK, timeout=30)
        stop_cleanly(daemon)
        assert daemon.names().count("mail.accepted") == 1
        assert count(alice, ACK) == 1
        assert state_of_requests(daemon.config) == [RequestState.AWAITING_CONFIRMATION]

    def test_connection_killed_under_idle_is_noticed_at_once(
        self, start_daemon: StartDaemon, person: Person
    ) -> None:
        """The IMAP process dies under IDLE: the EOF is seen at once, not at the next poll."""
        daemon, support = start_daemon(poll_interval=20)
        ready = daemon.ready()
        session = imap_session_of(support)
        time.sleep(0.5)  # in IDLE, for 19 s more
        killed = time.monotonic()
        os.kill(session, signal.SIGKILL)
        lost = daemon.wait_for("mailbox.error", after=ready, during="wait", timeout=15)
        assert time.monotonic() - killed < 5
        daemon.wait_for("mailbox.connected", after=lost, timeout=15)
        alice = person("alice", "example.test")
        alice.send(support, "GDPR DATA REQUEST")
        alice.wait_for(ACK, timeout=30)
        stop_cleanly(daemon)

    def test_silent_connection_times_out_and_reconnects(
        self, start_daemon: StartDaemon, person: Person
    ) -> None:
        """A frozen session (no FIN) fails DONE after [imap] timeout; its mail is answered."""
        daemon, support = start_daemon(poll_interval=2, timeout=3)
        ready = daemon.ready()
        session = imap_session_of(support)
        alice = person("alice", "example.test")
        os.kill(session, signal.SIGSTOP)
        try:
            frozen = time.monotonic()
            alice.send(support, "GDPR DATA REQUEST")  # LMTP delivers; the frozen session sleeps
            lost = daemon.wait_for("mailbox.error", after=ready, timeout=20)
            assert daemon.events[lost]["error_type"] == "TimeoutError"
            assert time.monotonic() - frozen < 2 + 3 + 4  # poll interval + timeout + slack
            daemon.wait_for("mailbox.connected", after=lost, timeout=20)
            alice.wait_for(ACK, timeout=30)
        finally:
            os.kill(session, signal.SIGCONT)
        stop_cleanly(daemon)
        assert count(alice, ACK) == 1


def read_without_timeout(box: Mailbox) -> bytes:
    """Wait for the server's next byte with no read timeout: a hang no timeout ends."""
    client = box.client
    assert client is not None
    sock = client.socket()
    sock.settimeout(None)
    received: bytes = sock.recv(1)
    return received


class TestWatchdog:
    def test_a_call_blocked_on_its_socket_is_freed(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        """A read that would wait forever is ended by the watchdog; the mailbox works again."""
        support = Correspondent(mailstack, unique("support", "redtrain.test"))
        support.send(support.address, "already here")
        config = write_config(tmp_path, support.address)
        box = Mailbox(App.load(config).settings.imap)
        worker = MailboxThread(box)

        async def scenario() -> list[HeaderInfo]:
            await worker.call(box.connect)
            began = time.monotonic()
            with pytest.raises(MailboxStalled):
                await worker.call(read_without_timeout, box, watchdog=1.0)
            assert 1.0 <= time.monotonic() - began < 3.0  # freed at once, not after the grace
            await worker.call(box.close)
            await worker.call(box.connect)
            return await worker.call(box.new_headers, 0)

        try:
            assert len(asyncio.run(scenario())) == 1
        finally:
            worker.shutdown()

    def test_a_call_blocked_elsewhere_is_left_behind(self, tmp_path: Path) -> None:
        """A call stuck on something else: MailboxStalled, and later calls get a new thread."""
        box = Mailbox(App.load(write_config(tmp_path, "support@redtrain.test")).settings.imap)
        worker = MailboxThread(box)
        release = threading.Event()
        stuck_in: list[threading.Thread] = []

        def stuck() -> None:
            stuck_in.append(threading.current_thread())
            release.wait()

        async def scenario() -> threading.Thread:
            with pytest.raises(MailboxStalled, match=r"stuck outlived 0\.5 s"):
                await worker.call(stuck, watchdog=0.5)
            return await worker.call(threading.current_thread)

        try:
            assert asyncio.run(scenario()) is not stuck_in[0]
            assert not box.connected
        finally:
            release.set()
            worker.shutdown()


class TestSmtp:
    def test_postfix_stopped_export_waits_and_goes_out_once(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """Postfix down: the export stays pending, the request undelivered; later it goes once."""
        bot = make_bot(smtp={"attempts": 1})
        alice = confirmed(bot, person)
        retry = timedelta(seconds=bot.app.settings.smtp.retry_after)
        with outage("postfix"), capture_logs() as events:
            bot.run_once()
            export = bot.outgoing()[-1]
            assert (export.kind, export.state, export.attempts, export.sent_at) == (
                MailKind.EXPORT,
                MailState.PENDING,
                1,
                None,
            )
            assert export.next_attempt_at is not None and export.next_attempt_at > bot.now()
            request = bot.request()
            assert (request.state, request.delivered_at) == (RequestState.READY, None)
            bot.offset = retry + timedelta(minutes=1)
            bot.run_once()  # due again; Postfix is still down
            export = bot.outgoing()[-1]
            assert (export.state, export.attempts) == (MailState.PENDING, 2)
        assert len(events_named(events, "mail.deferred")) == 2
        assert not events_named(events, "mail.sent")
        bot.run_once()  # Postfix is back, but the next attempt is not due yet
        assert bot.outgoing()[-1].attempts == 2
        bot.offset += retry + timedelta(minutes=1)
        bot.run_once()
        alice.wait_for(EXPORT)
        assert bot.outgoing()[-1].state is MailState.SENT
        assert bot.request().state is RequestState.DELIVERED
        assert count(alice, EXPORT) == 1

    def test_an_export_waiting_when_its_folder_is_moved_goes_from_the_new_one(
        self, make_bot: BotFactory, person: Person, tmp_path: Path
    ) -> None:
        """The export folder is moved, and export_dir with it, while an export waits for the
        mail server: it goes from the new folder, once, and its file goes with it."""
        bot = make_bot(smtp={"attempts": 1})
        alice = confirmed(bot, person)
        with refusing(alice.address, "450 4.7.1 try later"):
            bot.run_once()
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.state is MailState.PENDING and export.file_path is not None
        (tmp_path / "exports").rename(tmp_path / "moved")
        moved = make_bot(smtp={"attempts": 1}, storage={"export_dir": str(tmp_path / "moved")})
        moved.offset = timedelta(seconds=bot.app.settings.smtp.retry_after, minutes=1)
        moved.run_once()
        alice.wait_for(EXPORT)
        assert count(alice, EXPORT) == 1
        assert moved.request().state is RequestState.DELIVERED
        assert list((tmp_path / "moved").iterdir()) == []

    def test_4xx_is_retried_and_5xx_goes_to_review_and_the_operator(
        self, make_bot: BotFactory, person: Person, mailstack: MailServer
    ) -> None:
        """450: the acknowledgement waits, goes later; 550 for the export: review, operator told."""
        operator = Correspondent(mailstack, unique("operator", "redtrain.test"))
        bot = make_bot(smtp={"attempts": 1}, notifications={"operators": [operator.address]})
        alice, support = person("alice", "example.test"), bot.support
        retry = timedelta(seconds=bot.app.settings.smtp.retry_after)
        alice.send(bot.address, "GDPR DATA REQUEST")
        support.wait_for(subject_contains("GDPR"))
        with refusing(alice.address, "450 4.7.1 try later"), capture_logs() as events:
            bot.run_once()
            # Only the acknowledgement: after the digest hour the operators' digest is queued too.
            [ack] = [m for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT]
            assert (ack.state, ack.attempts) == (MailState.PENDING, 1)
            assert ack.last_error is not None and ack.last_error.startswith("450")
            assert bot.request().state is RequestState.AWAITING_CONFIRMATION
        assert [e["smtp_code"] for e in events_named(events, "mail.deferred")] == [450]
        bot.offset = retry + timedelta(minutes=1)
        bot.run_once()
        alice.reply(alice.wait_for(ACK))
        support.wait_for(subject_contains("Re: [SAR-"))
        with refusing(alice.address, "550 5.7.1 no mail for this mailbox"):
            bot.run_once()
        request = bot.request()
        assert request.state is RequestState.NEEDS_REVIEW
        export = next(m for m in bot.outgoing() if m.kind is MailKind.EXPORT)
        assert export.state is MailState.FAILED and export.raw is None
        notice = operator.wait_for(REVIEW)
        assert request.reference in str(notice["Subject"])
        assert count(alice, ACK) == 1 and count(alice, EXPORT) == 0

    def test_a_refused_export_retried_by_an_operator_goes_once(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """The export is refused (550): review.  Once the mailbox takes mail again, an
        operator's `requests retry` sends it, once, and the request is delivered; it is not
        sent again at the next cycles."""
        bot, alice = export_refused(make_bot, person)
        assert bot.request().state is RequestState.NEEDS_REVIEW
        reference = bot.request().reference
        bot.offset += timedelta(hours=2)
        bot.run_once()  # the sweep keeps the refused export while its request is open
        approved = CliRunner().invoke(cli, ["requests", "approve", reference], obj={"app": bot.app})
        assert approved.exit_code != 0 and f"requests retry {reference}" in approved.output
        result = CliRunner().invoke(
            cli, ["requests", "retry", reference], obj={"app": bot.app}, catch_exceptions=False
        )
        assert result.exit_code == 0 and "failed export mail" in result.output, result.output
        assert bot.request().state is RequestState.READY  # its export is waiting to go again
        bot.run_once()
        alice.wait_for(EXPORT)
        for _ in range(2):
            bot.offset += timedelta(hours=1)
            bot.run_once()
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.state is MailState.SENT
        assert bot.request().state is RequestState.DELIVERED
        assert count(alice, EXPORT) == 1

    def test_a_refused_export_goes_from_the_disk_once_its_request_is_closed(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        bot, _alice = export_refused(make_bot, person)
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.file_path is not None and Path(export.file_path).is_file()
        reference = bot.request().reference
        args = ["requests", "reject", reference, "--reason", "Asked by someone else."]
        assert CliRunner().invoke(cli, args, obj={"app": bot.app}).exit_code == 0
        assert Path(export.file_path).is_file()  # left to the sweep
        bot.offset += timedelta(hours=2)
        bot.run_once()
        assert not Path(export.file_path).exists()

    def test_an_export_sent_while_its_request_is_in_review_is_recorded_once(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """A refused export set to go again without its request (as `retry` did before): once
        the mail server takes it, it is recorded as sent, never sent again, and the request
        is left for an operator, who is told in the log."""
        bot, alice = export_refused(make_bot, person)
        with bot.app.sessions.begin() as session:
            session.execute(
                update(OutgoingMail)
                .where(OutgoingMail.kind == MailKind.EXPORT)
                .values(state=MailState.PENDING, next_attempt_at=None)
            )
        with capture_logs() as events:
            bot.run_once()
            alice.wait_for(EXPORT)
            bot.offset += timedelta(hours=1)
            bot.run_once()
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.state is MailState.SENT
        assert bot.request().state is RequestState.NEEDS_REVIEW
        assert [e["state"] for e in events_named(events, "request.delivered_out_of_state")] == [
            "needs_review"
        ]
        assert count(alice, EXPORT) == 1


def export_refused(make_bot: BotFactory, person: Person) -> tuple[Bot, Correspondent]:
    """Alice's request, confirmed; its export refused by her mail server (550), once."""
    bot = make_bot(smtp={"attempts": 1})
    alice = confirmed(bot, person)
    with refusing(alice.address, "550 5.7.1 no mail for this mailbox"):
        bot.run_once()
    return bot, alice


class TestStateDatabase:
    def test_sqlite_lock_is_waited_out(
        self, start_daemon: StartDaemon, person: Person, tmp_path: Path
    ) -> None:
        """Another connection holds the SQLite write lock 4 s: the daemon waits, then answers."""
        daemon, support = start_daemon(poll_interval=2)
        ready = daemon.ready()
        alice = person("alice", "example.test")
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            alice.send(support, "GDPR DATA REQUEST")  # the daemon wakes up and must wait
            time.sleep(4)
            assert daemon.names(ready + 1) == []  # no progress, no error: waiting
            released = len(daemon.events)
        finally:
            holder.execute("COMMIT")
            holder.close()
        daemon.wait_for("mail.accepted", after=released)
        alice.wait_for(ACK, timeout=30)
        stop_cleanly(daemon)
        assert "db.unavailable" not in daemon.names()
        assert count(alice, ACK) == 1

    def test_postgres_stopped_during_a_run(
        self, start_daemon: StartDaemon, person: Person, postgres: PostgresServer
    ) -> None:
        """The PostgreSQL state database stops: db.unavailable, backoff, then the request goes."""
        daemon, support = start_daemon(poll_interval=30, database_url=postgres.url)
        ready = daemon.ready()
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        with postgres.stopped():
            bob.send(support, "Lunch on Friday?")  # wakes the daemon up to a dead database
            down = daemon.wait_for("db.unavailable", after=ready, timeout=20)
            alice.send(support, "GDPR DATA REQUEST")  # arrives while the daemon backs off
            Correspondent(alice.server, support).wait_for(subject_contains("GDPR"))
            down = daemon.wait_for("db.unavailable", after=down + 1, failures=2, timeout=20)
        resumed = time.monotonic()
        daemon.wait_for("mail.accepted", after=down, timeout=60)
        assert time.monotonic() - resumed < 10  # at the next attempt, not after the 30 s poll
        alice.wait_for(ACK, timeout=30)
        stop_cleanly(daemon)
        assert daemon.names().count("mail.accepted") == 1
        assert count(alice, ACK) == 1
        assert state_of_requests(daemon.config) == [RequestState.AWAITING_CONFIRMATION]


class TestConnectorDatabase:
    def test_connector_database_down_then_back(
        self, make_bot: BotFactory, person: Person, postgres: PostgresServer
    ) -> None:
        """The CRM database stops: the request waits in collecting, others go on, then completes."""
        alice, bob = person("alice", "example.test"), person("bob", "example.test")
        crm = create_engine(postgres.url)
        with crm.begin() as connection:
            connection.execute(text("CREATE TABLE customers (email text, plan text)"))
            connection.execute(
                text("INSERT INTO customers VALUES (:email, 'PLAN-MARKER')"),
                {"email": alice.address},
            )
        crm.dispose()
        query = {
            "name": "customers",
            "category": "Customer",
            "sql": CUSTOMER_QUERY,
            "verify": "email",
        }
        bot = make_bot(
            connectors=[{"name": "crm", "type": "sql", "url": postgres.url, "queries": [query]}]
        )
        alice.send(bot.address, "GDPR DATA REQUEST")
        bot.support.wait_for(subject_contains("GDPR"))
        bot.run_once()
        alice.reply(alice.wait_for(ACK))
        bot.support.wait_for(subject_contains("Re: [SAR-"))
        with postgres.stopped():
            bob.send(bot.address, "GDPR DATA REQUEST")
            bot.support.wait_for(lambda m: m["From"] == bob.address)
            bot.run_once()
        waiting, other = bot.requests()
        assert waiting.state is RequestState.COLLECTING
        assert waiting.last_error == "connectors failed: crm"
        assert waiting.next_attempt_at is not None and waiting.next_attempt_at > bot.now()
        assert "collect.incomplete" in [e.event for e in bot.audit() if e.request_id == waiting.id]
        assert other.state is RequestState.AWAITING_CONFIRMATION
        bob.wait_for(ACK)
        bot.run_once()  # the database is back, but the retry is not due yet
        assert bot.requests()[0].attempts == 1
        bot.offset = timedelta(seconds=bot.app.settings.collection.retry_after + 60)
        bot.run_once()
        export = alice.wait_for(EXPORT)
        assert bot.requests()[0].state is RequestState.DELIVERED
        [part] = list(export.iter_attachments())
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        archive = zipfile.ZipFile(io.BytesIO(data))
        assert any(b"PLAN-MARKER" in archive.read(name) for name in archive.namelist())
        assert count(alice, EXPORT) == 1


class TestUidvalidity:
    def test_recreated_folder_answers_nothing_twice(
        self, make_bot: BotFactory, person: Person
    ) -> None:
        """The watched folder is recreated with old and new mail: only the new is answered."""
        bot = make_bot(imap={"folder": "Requests"})
        alice, carol, dave, bob = (
            person(name, "example.test") for name in ("alice", "carol", "dave", "bob")
        )
        first = {p.address: f"<first-{p.address}>" for p in (alice, carol, dave)}
        with imap_as(bot.address) as client:
            client.create_folder("Requests")
            for sender, message_id in first.items():
                client.append("Requests", raw_request(sender, bot.address, message_id))
        bot.run_once()
        assert len(bot.requests()) == 3
        old = {seen.uidvalidity for seen in bot.seen()}
        with imap_as(bot.address) as client:
            client.delete_folder("Requests")
            client.create_folder("Requests")
            # The new request takes UID 1, below the old position (3): only a reset finds it.
            new = raw_request(bob.address, bot.address, f"<new-{bob.address}>")
            client.append("Requests", new)
            for sender in (alice.address, carol.address):
                client.append("Requests", raw_request(sender, bot.address, first[sender]))
        with capture_logs() as events:
            bot.run_once()
        [changed] = events_named(events, "mailbox.uidvalidity_changed")
        assert {changed["old"]} == old and changed["new"] not in old
        assert len(events_named(events, "mail.duplicate")) == 2
        acks = [m.recipient for m in bot.outgoing() if m.kind is MailKind.ACKNOWLEDGEMENT]
        assert sorted(acks) == sorted([alice.address, carol.address, dave.address, bob.address])
        bob.wait_for(ACK)
        assert count(alice, ACK) == 1 and count(carol, ACK) == 1
