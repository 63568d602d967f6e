"""More than one ``sarbot run``: one on SQLite, two or more on PostgreSQL.

On SQLite a second instance refuses to start.  On PostgreSQL (a real server
started here) one instance at a time reads the mailbox, every request is
worked on by one instance at a time, and when the reader is killed with
SIGKILL another takes over: every request answered, no message sent twice
beyond the crash rule (tests/crashkit.py checks it from the requesters'
mailboxes, the state database and the logs).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, make_url, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sarbot.app import App
from sarbot.cli.main import cli
from sarbot.errors import ConfigError
from sarbot.mail.mailer import Mailer
from sarbot.ops.health import HealthCheck
from sarbot.ops.metrics import Metrics
from sarbot.store import announcements
from sarbot.store.alone import Alone
from sarbot.store.instances import Claim, Shared, instances_for
from sarbot.store.models import AuditEvent
from sarbot.store.states import MailKind, MailState, RequestState
from sarbot.testing import MailServer, subject_contains
from tests.conftest import BotFactory
from tests.crashkit import (
    Daemon,
    Site,
    Traffic,
    make_requesters,
    reads_mailbox,
    run_instances,
)
from tests.servers import postgres_server
from tests.test_operations import Person, rejected_while_sending, requested

LOG = structlog.get_logger("test")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A fresh database on the module's PostgreSQL server."""
    name = f"sarbot_{random.SystemRandom().randrange(10**9)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as db:
        db.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


class TestOneInstanceOnSqlite:
    def test_the_second_instance_is_refused_and_named(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'state.db'}"
        first, second = instances_for(engine(url), LOG), instances_for(engine(url), LOG)
        assert isinstance(first, Alone) and not first.shared
        first.start()
        try:
            with pytest.raises(ConfigError) as refused:
                second.start()
            message = str(refused.value)
            assert first.name in message and "state.db" in message
            assert "PostgreSQL" in message and "docs/deployment.md" in message
        finally:
            first.stop()
        second.start()  # once the first has stopped, the next one may run
        second.stop()

    def test_an_operators_command_sees_whether_a_daemon_runs(self, tmp_path: Path) -> None:
        """An operator's decision asks whether a daemon may be sending (``held_elsewhere``):
        on SQLite, whether one runs at all; asking does not stop one from starting."""
        url = f"sqlite:///{tmp_path / 'state.db'}"
        daemon, command = instances_for(engine(url), LOG), instances_for(engine(url), LOG)
        with Session(engine(url)) as session:
            assert not command.held_elsewhere(session, Claim.REQUEST, 7)  # no daemon yet
            daemon.start()
            try:
                assert command.held_elsewhere(session, Claim.REQUEST, 7)
                assert daemon.held_elsewhere(session, Claim.REQUEST, 7)  # it is the daemon
            finally:
                daemon.stop()
            assert not command.held_elsewhere(session, Claim.REQUEST, 7)
        daemon.start()  # the command's test left no lock behind
        daemon.stop()

    @pytest.mark.mailstack
    def test_sarbot_run_refuses_while_another_runs(
        self, tmp_path: Path, mailstack: MailServer
    ) -> None:
        site = Site(tmp_path, [], seed=0)
        running = Daemon(site)
        running.start()
        try:
            assert running.wait_for("daemon.started", 60)
            second = site.cli("run", "--once")
            assert second.returncode != 0
            assert "another 'sarbot run'" in second.stderr
            assert "an SQLite state database serves one instance" in second.stderr
        finally:
            assert running.stop() == 0
        assert site.cli("run", "--once").returncode == 0


class TestCoordinationOnPostgres:
    def test_one_instance_reads_the_mailbox_and_another_takes_over(self, database: str) -> None:
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        first.start()
        second.start()
        try:
            assert first.reads_mailbox()
            assert not second.reads_mailbox()
            assert first.reads_mailbox()  # it keeps it
            _terminate_sessions_of(database, first)  # as if its host vanished
            deadline = time.monotonic() + 10
            while not second.reads_mailbox():
                assert time.monotonic() < deadline, "the lock was never taken over"
                time.sleep(0.05)
            assert not first.reads_mailbox()  # the one that lost it does not read on
        finally:
            first.stop()
            second.stop()

    def test_an_operators_command_waits_for_a_claim_and_holds_a_free_one(
        self, database: str
    ) -> None:
        """While an instance holds a request's claim, an operator's transaction sees it held;
        once it is free, the transaction takes it until it ends, and no instance can start
        work on that request meanwhile."""
        daemon = Shared(engine(database), LOG)
        operator = engine(database)
        try:
            with daemon.claim(Claim.REQUEST, 7) as mine, Session(operator) as session:
                assert mine
                assert daemon.held_elsewhere(session, Claim.REQUEST, 7)
                assert not daemon.held_elsewhere(session, Claim.REQUEST, 8)
                session.commit()
            with Session(operator) as session, session.begin():
                assert not daemon.held_elsewhere(session, Claim.REQUEST, 7)
                with daemon.claim(Claim.REQUEST, 7) as mine:
                    assert not mine  # the operator's transaction holds it
            with daemon.claim(Claim.REQUEST, 7) as mine:
                assert mine  # free again once the decision committed
        finally:
            daemon.stop()
            operator.dispose()

    def test_a_stopped_reader_hands_over_at_once(self, database: str) -> None:
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        assert first.reads_mailbox() and not second.reads_mailbox()
        first.stop()
        assert second.reads_mailbox()
        second.stop()

    def test_a_request_is_claimed_by_one_instance_at_a_time(self, database: str) -> None:
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            with first.claim(Claim.REQUEST, 7) as mine:
                assert mine
                with second.claim(Claim.REQUEST, 7) as theirs:
                    assert not theirs
                with second.claim(Claim.REQUEST, 8) as other:
                    assert other  # another request is free
                with second.claim(Claim.MESSAGE, 7) as message:
                    assert message  # a message's claim is not its request's
                assert first.still_holds(Claim.REQUEST, 7)
                assert not first.still_holds(Claim.REQUEST, 8)  # never claimed by the first
            with second.claim(Claim.REQUEST, 7) as theirs:
                assert theirs  # released at the end of the first's work
        finally:
            first.stop()
            second.stop()

    def test_a_killed_holders_claim_is_free_at_once(self, database: str) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_A_CLAIM, database],
            stdout=subprocess.PIPE,
            text=True,
        )
        other = Shared(engine(database), LOG)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with other.claim(Claim.REQUEST, 42) as mine:
                assert not mine
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            deadline = time.monotonic() + 10
            while True:
                with other.claim(Claim.REQUEST, 42) as mine:
                    if mine:
                        break
                assert time.monotonic() < deadline, "the dead holder's claim was never freed"
                time.sleep(0.05)
        finally:
            holder.kill()
            other.stop()

    def test_a_lost_session_is_seen_before_sending(self, database: str) -> None:
        instance = Shared(engine(database), LOG)
        with instance.claim(Claim.REQUEST, 1) as mine:
            assert mine and instance.still_holds(Claim.REQUEST, 1)
            _terminate_sessions_of(database, instance)
            assert not instance.still_holds(Claim.REQUEST, 1)
        instance.stop()

    def test_a_reader_whose_session_broke_does_not_read_on_a_new_one(self, database: str) -> None:
        """A reader's session breaks and another instance takes the mailbox: the first, once
        connected again (a claim opens a new session), does not think it still reads."""
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            assert first.reads_mailbox()
            _terminate_sessions_of(database, first)
            with first.claim(Claim.REQUEST, 1) as mine:
                assert not mine  # the broken session is seen here, and dropped
            with first.claim(Claim.REQUEST, 1) as mine:
                assert mine  # a new session: this instance works on
            assert second.reads_mailbox()
            assert not first.reads_mailbox()
            assert second.reads_mailbox()
        finally:
            first.stop()
            second.stop()

    def test_claims_from_a_broken_session_are_not_held_on_a_new_one(self, database: str) -> None:
        """A claim taken on a session that broke is gone even after the instance reconnects;
        another instance may take it, and the first one's work sees that before it keeps
        anything."""
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            with first.claim(Claim.REQUEST, 3) as mine:
                assert mine
                _terminate_sessions_of(database, first)
                with first.claim(Claim.REQUEST, 4):
                    pass  # sees the broken session
                with first.claim(Claim.REQUEST, 4) as other:
                    assert other  # connected again, on a new session
                    assert not first.still_holds(Claim.REQUEST, 3)  # ... which does not hold 3
                    # ... but holds what it claimed on it: work under that claim goes on
                    # (a claim from the broken session must not stop every other one)
                    assert first.still_holds(Claim.REQUEST, 4)
                with second.claim(Claim.REQUEST, 3) as theirs:
                    assert theirs
                with first.claim(Claim.REQUEST, 3) as again:
                    assert not again  # its own work on 3 is still winding up
            with first.claim(Claim.REQUEST, 3) as mine:
                assert mine and first.still_holds(Claim.REQUEST, 3)
        finally:
            first.stop()
            second.stop()

    def test_claims_nest_within_one_instance(self, database: str) -> None:
        """Delivery beside collection may claim a request this instance already holds: the
        lock is given up when the outermost claim ends, not before."""
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            with first.claim(Claim.REQUEST, 5) as outer:
                assert outer
                with first.claim(Claim.REQUEST, 5) as inner:
                    assert inner
                with second.claim(Claim.REQUEST, 5) as theirs:
                    assert not theirs  # still held by the outer claim
            with second.claim(Claim.REQUEST, 5) as theirs:
                assert theirs
        finally:
            first.stop()
            second.stop()

    def test_a_reader_that_cannot_reach_the_mailbox_gives_it_up(self, database: str) -> None:
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            assert first.reads_mailbox() and not second.reads_mailbox()
            first.give_up_mailbox("mailbox failed 3 times")
            assert second.reads_mailbox()
            assert not first.reads_mailbox()
        finally:
            first.stop()
            second.stop()

    def test_a_stopped_instance_leaves_no_lock_in_a_pool(self, database: str) -> None:
        """stop() ends the session even on a pooled engine (a pooled connection would keep it)."""
        pooled = create_engine(database)
        first, second = Shared(pooled, LOG), Shared(engine(database), LOG)
        try:
            assert first.reads_mailbox()
            with first.claim(Claim.REQUEST, 9) as mine:
                assert mine
                first.stop()
            assert second.reads_mailbox()
            with second.claim(Claim.REQUEST, 9) as theirs:
                assert theirs
        finally:
            second.stop()
            pooled.dispose()

    def test_ids_beyond_the_old_key_range_are_claimed(self, database: str) -> None:
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            big = 2**31 - 1
            with first.claim(Claim.REQUEST, big) as mine, second.claim(Claim.MESSAGE, big) as m:
                assert mine and m  # a request and a message with one id are two claims
                with second.claim(Claim.REQUEST, big) as theirs:
                    assert not theirs
            with pytest.raises(ValueError, match="out of range"):
                first.claim(Claim.REQUEST, 2**31).__enter__()
        finally:
            first.stop()
            second.stop()

    def test_the_app_coordinates_on_postgres(self, tmp_path: Path, database: str) -> None:
        site = Site(tmp_path, [], seed=0, database_url=database)
        assert isinstance(App.load(site.config).instances, Shared)


class TestAnnouncedWork:
    """An instance with nothing to do waits for the reader to announce work (NOTIFY), with
    ``FOLLOW_INTERVAL`` as the longest wait; a lost announcement only costs that long."""

    def test_the_reader_announces_and_the_waiting_follower_wakes(self, database: str) -> None:
        reader, follower = Shared(engine(database), LOG), Shared(engine(database), LOG)
        stop = threading.Event()
        try:
            reader.start()
            follower.start()
            assert reader.reads_mailbox() and not follower.reads_mailbox()
            assert not _waited(follower, 0.3)  # nothing announced: it runs out
            waiting = Waiting(follower, stop)
            reader.announce()
            assert waiting.outcome() is True
        finally:
            stop.set()
            reader.stop()
            follower.stop()

    def test_an_announcement_while_the_follower_was_busy_ends_its_next_wait(
        self, database: str
    ) -> None:
        """Listening starts with the instance, so work announced between the follower's
        look for work and its wait is not missed."""
        reader, follower = Shared(engine(database), LOG), Shared(engine(database), LOG)
        stop = threading.Event()
        try:
            follower.start()  # it listens from here, before its first look for work
            reader.start()
            assert reader.reads_mailbox()
            reader.announce()  # while the follower is busy looking
            assert not follower.reads_mailbox()
            assert Waiting(follower, stop).outcome() is True
        finally:
            stop.set()
            reader.stop()
            follower.stop()

    def test_only_instances_that_do_not_read_the_mailbox_listen(self, database: str) -> None:
        """The reader never waits for announcements: unread, they would pile up."""
        first, second = Shared(engine(database), LOG), Shared(engine(database), LOG)
        try:
            first.start()
            assert _listening(database) == 1
            assert first.reads_mailbox()
            assert _listening(database) == 0
            second.start()
            assert not second.reads_mailbox()
            assert _listening(database) == 1
            first.stop()
            assert second.reads_mailbox()  # it takes over, and no longer listens
            assert _listening(database) == 0
        finally:
            first.stop()
            second.stop()

    def test_a_stop_ends_the_wait(self, database: str) -> None:
        follower = Shared(engine(database), LOG)
        stop = threading.Event()
        try:
            follower.start()
            waiting = Waiting(follower, stop)
            stop.set()
            assert waiting.outcome() is False
        finally:
            follower.stop()

    def test_a_broken_listening_connection_is_opened_again(self, database: str) -> None:
        reader, follower = Shared(engine(database), LOG), Shared(engine(database), LOG)
        stop = threading.Event()
        try:
            reader.start()
            assert reader.reads_mailbox()
            with structlog.testing.capture_logs() as logs:
                follower = Shared(engine(database), LOG)
                follower.start()
                listening = follower._listener.open()
                assert listening is not None
                pid = listening.scalar(text("SELECT pg_backend_pid()"))
                with engine(database).connect() as db:
                    db.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    db.commit()
                assert follower.wait_for_work(0.5, stop) is False
            assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
                "instance.listening_failed"
            ]
            assert _listening(database) == 0
            with structlog.testing.capture_logs() as logs:
                waiting = Waiting(follower, stop)
                _until(lambda: _listening(database) == 1)  # it listens again ...
                reader.announce()  # ... and hears the next announcement
                assert waiting.outcome() is True
            assert [e["event"] for e in logs] == ["instance.listening_again"]
        finally:
            stop.set()
            reader.stop()
            follower.stop()

    def test_without_a_database_it_waits_out_the_interval(self, database: str) -> None:
        gone = database.rsplit("/", 1)[0] + "/no_such_database"
        with structlog.testing.capture_logs() as logs:
            follower = Shared(engine(gone), LOG)
            assert _waited(follower, 0.2) is False
        assert [e["event"] for e in logs] == ["instance.listening_failed"]

    def test_a_refused_listening_connection_is_logged_once_and_waited_out(
        self, database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A connection limit that leaves room for the coordination session only: each wait
        runs its course, the refusal is logged once (not every 2 s), and listening starts
        when there is room again."""
        monkeypatch.setattr(announcements, "LISTEN_RETRY", 0.0)  # try at every wait
        user = f"limited_{random.SystemRandom().randrange(10**6)}"
        with engine(database).connect() as db:
            db.execute(text(f"CREATE ROLE {user} LOGIN CONNECTION LIMIT 1"))
            db.execute(text(f"GRANT ALL ON DATABASE {database.rsplit('/', 1)[1]} TO {user}"))
            db.commit()
        url = make_url(database).set(username=user, password=None)
        stop = threading.Event()
        with structlog.testing.capture_logs() as logs:
            follower = Shared(engine(url.render_as_string(hide_password=False)), LOG)
            try:
                follower.start()  # the coordination session opens; the listening one cannot
                assert [_waited(follower, 0.2) for _ in range(3)] == [False] * 3
                assert _listening(database) == 0
                with engine(database).connect() as db:
                    db.execute(text(f"ALTER ROLE {user} CONNECTION LIMIT -1"))
                    db.commit()
                waiting = Waiting(follower, stop)
                _until(lambda: _listening(database) == 1)
                announcer = Shared(engine(database), LOG)
                announcer.announce()
                assert waiting.outcome() is True
            finally:
                stop.set()
                follower.stop()
        assert [e["event"] for e in logs if e["event"].startswith("instance.listening")] == [
            "instance.listening_failed",
            "instance.listening_again",
        ]

    def test_the_reader_never_listens_even_when_it_waits(self, database: str) -> None:
        """A reader whose mailbox is not connected waits here too: without listening, since
        nothing would read its own announcements after it."""
        reader = Shared(engine(database), LOG)
        try:
            reader.start()
            assert reader.reads_mailbox()
            assert _waited(reader, 0.2) is False
            reader.announce()
            assert _waited(reader, 0.2) is False
            assert _listening(database) == 0
        finally:
            reader.stop()

    @pytest.mark.mailstack
    def test_the_reader_announces_the_requests_it_takes_in(
        self, make_bot: BotFactory, person: Person, database: str
    ) -> None:
        follower = Shared(engine(database), LOG)
        stop = threading.Event()
        try:
            follower.start()
            bot = make_bot(storage={"database_url": database})
            assert not _waited(follower, 0.2)
            requested(bot, person)  # the bot's daemon reads the mailbox and takes it in
            assert Waiting(follower, stop).outcome() is True
        finally:
            stop.set()
            follower.stop()

    def test_the_instances_own_connections_see_a_vanished_server_within_seconds(
        self, database: str
    ) -> None:
        """The coordination session and the listening connection (which only ever waits)
        carry TCP keepalives and a bound on unacknowledged data on this side too."""
        follower = Shared(engine(database), LOG)
        try:
            follower.start()
            listening = follower._listener.open()
            assert follower._connection is not None and listening is not None
            for connection in (follower._connection, listening):
                driver = connection.connection.driver_connection
                assert driver is not None
                with socket.socket(fileno=os.dup(driver.fileno())) as sock:
                    assert sock.family is socket.AF_INET  # the server is reached over TCP
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 11000
        finally:
            follower.stop()

    def test_alone_there_is_nobody_to_tell(self, tmp_path: Path) -> None:
        alone = instances_for(engine(f"sqlite:///{tmp_path / 'state.db'}"), LOG)
        alone.announce()
        stop = threading.Event()
        stop.set()
        assert alone.wait_for_work(600, stop) is False


class Waiting:
    """An instance waiting for work (600 s at most) in a thread of its own."""

    def __init__(self, instance: Shared, stop: threading.Event) -> None:
        self._outcome: list[bool] = []
        self._thread = threading.Thread(
            target=lambda: self._outcome.append(instance.wait_for_work(600, stop)), daemon=True
        )
        self._thread.start()

    def outcome(self) -> bool:
        """What the wait returned; it must have ended within a minute."""
        self._thread.join(60)
        assert not self._thread.is_alive(), "still waiting after a minute"
        return self._outcome[0]


def _waited(instance: Shared, timeout: float) -> bool:
    """What a wait for work returned, asserting it ran its course (as one that is not
    announced must: a wait that returned at once would have the daemon spin)."""
    began = time.monotonic()
    announced = instance.wait_for_work(timeout, threading.Event())
    assert announced or time.monotonic() - began >= timeout
    return announced


def _until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not so after {seconds} s")
        time.sleep(0.05)


def _listening(database: str) -> int:
    """How many sessions of the database listen for announcements of work."""
    with engine(database).connect() as db:
        return int(
            db.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query = :listen AND pid <> pg_backend_pid()"
                ),
                {"listen": "LISTEN sarbot_work"},
            )
        )


HOLD_A_CLAIM = textwrap.dedent(
    """
    import sys, time
    import structlog
    from sqlalchemy import create_engine
    from sarbot.store.instances import Claim, Shared
    instance = Shared(create_engine(sys.argv[1]), structlog.get_logger())
    with instance.claim(Claim.REQUEST, 42) as mine:
        print("held" if mine else "refused", flush=True)
        time.sleep(600)
    """
)


def _terminate_sessions_of(database: str, instance: Shared) -> None:
    """End the instance's coordination session from the server side."""
    assert instance._connection is not None
    pid = instance._connection.scalar(text("SELECT pg_backend_pid()"))
    with engine(database).connect() as db:
        db.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        db.commit()


@pytest.mark.mailstack
class TestTwoDaemons:
    def test_a_burst_with_the_reader_killed_midway(
        self, tmp_path: Path, mailstack: MailServer, database: str
    ) -> None:
        people = make_requesters(12, random.Random(17), big_share=0.25)
        findings, daemons = run_instances(
            tmp_path, mailstack, people, database, instances=2, kill_after=3
        )
        assert findings.failures == [], findings.report()
        assert findings.kills == 1
        killed = [d for d in daemons if d.life.killed]
        [survivor] = [d for d in daemons if not d.life.killed]
        assert len(killed) == 1 and not reads_mailbox(survivor)  # stopped cleanly by now
        taken = [
            datetime.fromisoformat(str(e["timestamp"]))
            for e in survivor.life.events()
            if e.get("event") == "instance.mailbox_taken"
        ]
        assert taken, "the survivor never took over the mailbox"
        assert killed[0].life.ended is not None and max(taken) >= killed[0].life.ended


class TestHealthOfAnInstanceThatDoesNotRead:
    def test_it_is_healthy_without_polls_and_says_so(self) -> None:
        now = [datetime(2026, 11, 18, 9, 0, tzinfo=UTC)]
        metrics = Metrics(clock=lambda: now[0])
        health = HealthCheck(metrics, lambda: None, stale_after=60)
        metrics.mailbox_reader(False, now[0])
        now[0] += timedelta(minutes=10)
        report = health()
        assert report.healthy and report.body["reads_mailbox"] is False
        metrics.mailbox_reader(True, now[0])  # it takes the mailbox over: its clock starts now
        assert health().healthy
        now[0] += timedelta(minutes=2)
        report = health()
        assert not report.healthy
        assert any("no completed mailbox poll" in p for p in report.body["problems"])
        scraped = {m.name: m.samples[0].value for m in metrics.registry.collect() if m.samples}
        assert scraped["sarbot_reads_mailbox"] == 1.0


@pytest.mark.mailstack
class TestDecisionsBesideSending:
    @pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
    def test_a_rejection_after_a_kill_mid_send_withdraws_and_warns(
        self, tmp_path: Path, mailstack: MailServer, backend: str, request: pytest.FixtureRequest
    ) -> None:
        """The daemon is killed just after the mail server accepted an export: its mark is
        left.  With no daemon at work on it, an operator's rejection withdraws the export and
        warns that it may have gone; a daemon started afterwards does not send it again."""
        url = request.getfixturevalue("database") if backend == "postgresql" else None
        people = make_requesters(1, random.Random(3), big_share=0)
        site = Site(tmp_path, people, seed=0, database_url=url)
        daemon = Daemon(site)
        traffic = Traffic(mailstack, site.support, people, random.Random(0))
        daemon.start(crash_at="deliver.accepted:2")  # the acknowledgement, then the export
        traffic.start(spread=0)
        try:
            assert daemon.wait_exit(90) == -signal.SIGKILL
        finally:
            traffic.stop()
        [(stored,)] = site.query("SELECT reference FROM requests")
        reference = str(stored)
        [(marked,)] = site.query("SELECT sending_since FROM outgoing_mail WHERE kind = 'export'")
        assert marked is not None
        rejected = site.cli("requests", "reject", reference, "--reason", "not who they say")
        assert rejected.returncode == 0, rejected.stderr
        assert f"WARNING {reference}: a daemon stopped while handing its export" in rejected.stderr
        assert "may have gone" in rejected.stderr
        again = site.cli("run", "--once")
        assert again.returncode == 0, again.stderr
        exports = site.query("SELECT state, file_path FROM outgoing_mail WHERE kind = 'export'")
        assert exports == [("failed", None)]
        [(state,)] = site.query("SELECT state FROM requests")
        assert state == "rejected"

    def test_an_export_that_goes_as_it_is_withdrawn_is_recorded_as_sent(
        self, make_bot: BotFactory, person: Person, database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On PostgreSQL the sending instance's coordination session breaks just as it hands
        the export over, so its claim is free and its mark looks left behind: an operator's
        rejection withdraws the export (and warns it may have gone).  It went: the outbox
        says sent, and the audit trail says it went as it was being withdrawn."""
        bot = make_bot(storage={"database_url": database})
        alice = requested(bot, person, confirm=True)
        reference = bot.request().reference
        real_send = Mailer.send
        outputs: list[str] = []

        async def send(self: Mailer, raw: bytes, *, sender: str, recipient: str) -> None:
            if b"A copy of your personal data" in raw and not outputs:
                instances = bot.app.instances
                assert isinstance(instances, Shared)
                _terminate_sessions_of(database, instances)
                operator = App(bot.app.config_path, bot.app.settings)
                args = ["requests", "reject", reference, "--reason", "not who they say"]
                result = await asyncio.to_thread(
                    CliRunner().invoke, cli, args, obj={"app": operator}
                )
                operator.engine.dispose()
                outputs.append(result.output)
            await real_send(self, raw, sender=sender, recipient=recipient)

        monkeypatch.setattr(Mailer, "send", send)
        bot.run_once()
        assert outputs and "may have gone" in outputs[0] and "rejected" in outputs[0]
        alice.wait_for(subject_contains("A copy of your personal data"))
        [export] = [m for m in bot.outgoing() if m.kind is MailKind.EXPORT]
        assert export.state is MailState.SENT and export.sending_since is None
        assert "sent as it was being withdrawn" in str(export.last_error)
        with bot.app.sessions() as session:
            events = list(session.scalars(select(AuditEvent.event)))
        assert "mail.withdrawn" in events and "mail.sent_after_withdrawal" in events
        assert bot.request().state is RequestState.REJECTED

    def test_a_rejection_while_the_export_is_being_sent_waits_on_postgres(
        self, make_bot: BotFactory, person: Person, database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On PostgreSQL, an operator (another App, as the command would be) rejects while an
        instance holds the claim and hands the export over: the decision waits, then reads the
        request again and finds it delivered; the request is not rejected over it."""
        rejected_while_sending(make_bot(storage={"database_url": database}), person, monkeypatch)
