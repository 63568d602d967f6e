"""Metrics and health: scraped over real HTTP, with request counts from a real state database."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import Engine

from sarbot.config import MetricsSettings, validate
from sarbot.errors import ConfigError
from sarbot.ops.health import HealthCheck, StatusServer
from sarbot.ops.metrics import (
    Metrics,
    StateQueries,
    StateSnapshot,
)
from sarbot.store import db, outbox
from sarbot.store.models import Request
from sarbot.store.outbox import is_first_acknowledgement
from sarbot.store.states import MailKind, RequestState
from tests.servers import free_port, postgres_server

pytestmark = pytest.mark.clock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class MovableClock:
    """A time source the test sets by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def queries(engine: Engine) -> StateQueries:
    return StateQueries(engine)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def broken_queries(tmp_path: Path) -> Iterator[StateQueries]:
    """Queries on a database that was never migrated: every query fails."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    yield StateQueries(engine)
    engine.dispose()


def new_request(
    reference: str,
    state: RequestState,
    received_at: datetime,
    due_on: date | None = None,
    extended_due_on: date | None = None,
) -> Request:
    return Request(
        reference=reference,
        email=f"{reference.lower()}@example.test",
        state=state,
        attempts=0,
        token_hash="0" * 64,
        code_hash="1" * 64,
        confirmation_failures=0,
        thread="",
        received_at=received_at,
        expires_at=received_at + timedelta(days=14),
        due_on=due_on,
        extended_due_on=extended_due_on,
    )


def add_requests(engine: Engine, *rows: tuple[Any, ...]) -> None:
    with db.session_factory(engine).begin() as session:
        session.add_all(new_request(*row) for row in rows)


@contextmanager
def serving(metrics: Metrics, health: HealthCheck | None = None) -> Iterator[StatusServer]:
    check = health or HealthCheck(metrics, lambda: None, stale_after=300)
    server = StatusServer("127.0.0.1", free_port(), metrics, check)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fetch(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def scrape(server: StatusServer) -> list[Sample]:
    status, content_type, body = fetch(server.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample with this name and exactly these labels, or None."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else None


def bucket(samples: list[Sample], name: str, le: float, **labels: str) -> float:
    """A histogram's cumulative count at the bucket with upper bound ``le``."""
    [found] = [
        s.value
        for s in samples
        if s.name == f"{name}_bucket"
        and float(s.labels["le"]) == le
        and {k: v for k, v in s.labels.items() if k != "le"} == labels
    ]
    return found


def health(server: StatusServer) -> tuple[int, dict[str, Any]]:
    status, content_type, body = fetch(server.port, "/healthz")
    assert content_type == "application/json"
    return status, json.loads(body)


class TestSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        """The endpoint is off by default and would listen on localhost:9464."""
        settings = validate({}, MetricsSettings, source="test", base_dir=tmp_path)
        assert (settings.enabled, settings.host, settings.port) == (False, "127.0.0.1", 9464)
        assert settings.stale_after == 300.0

    def test_unknown_key_is_refused(self, tmp_path: Path) -> None:
        """A misspelt key fails with a hint, like every other section."""
        with pytest.raises(ConfigError, match="did you mean 'port'"):
            validate({"prot": 9000}, MetricsSettings, source="test", base_dir=tmp_path)

    def test_threshold_covers_three_poll_intervals(self) -> None:
        """The staleness threshold is stale_after, but never less than three poll intervals."""
        settings = MetricsSettings(stale_after=300)
        assert settings.threshold(poll_interval=60) == 300
        assert settings.threshold(poll_interval=600) == 1800


class TestRequestsByState:
    def test_counts_come_from_the_database(self, engine: Engine, queries: StateQueries) -> None:
        """Every state is exposed, with the number of requests the database holds in it."""
        add_requests(
            engine,
            ("SAR-1", RequestState.AWAITING_CONFIRMATION, T0),
            ("SAR-2", RequestState.AWAITING_CONFIRMATION, T0),
            ("SAR-3", RequestState.DELIVERED, T0),
        )
        with serving(Metrics(clock=MovableClock(), snapshot=queries.snapshot)) as server:
            samples = scrape(server)
        expected = dict.fromkeys(RequestState, 0.0)
        expected |= {RequestState.AWAITING_CONFIRMATION: 2.0, RequestState.DELIVERED: 1.0}
        for state, count in expected.items():
            assert value(samples, "sarbot_requests", state=state.value) == count
        assert value(samples, "sarbot_database_up") == 1.0

    def test_each_scrape_reads_afresh(self, engine: Engine, queries: StateQueries) -> None:
        """A request added between two scrapes shows in the second, with no refresh call."""
        with serving(Metrics(clock=MovableClock(), snapshot=queries.snapshot)) as server:
            before = value(scrape(server), "sarbot_requests", state="needs_review")
            add_requests(engine, ("SAR-1", RequestState.NEEDS_REVIEW, T0))
            after = value(scrape(server), "sarbot_requests", state="needs_review")
        assert (before, after) == (0.0, 1.0)

    def test_oldest_open_request_age(self, engine: Engine, queries: StateQueries) -> None:
        """The age counts open requests only: an older closed request is ignored."""
        add_requests(
            engine,
            ("SAR-1", RequestState.DELIVERED, T0 - timedelta(days=40)),
            ("SAR-2", RequestState.COLLECTING, T0 - timedelta(days=3)),
            ("SAR-3", RequestState.RECEIVED, T0 - timedelta(hours=1)),
        )
        with serving(Metrics(clock=MovableClock(), snapshot=queries.snapshot)) as server:
            samples = scrape(server)
        assert value(samples, "sarbot_oldest_open_request_age_seconds") == 3 * 86400

    def test_no_open_request_means_age_zero(self, engine: Engine, queries: StateQueries) -> None:
        """With every request closed, the oldest open request's age is 0."""
        add_requests(engine, ("SAR-1", RequestState.EXPIRED, T0 - timedelta(days=9)))
        with serving(Metrics(clock=MovableClock(), snapshot=queries.snapshot)) as server:
            assert value(scrape(server), "sarbot_oldest_open_request_age_seconds") == 0.0

    def test_reading_does_not_wait_for_a_writer(
        self, engine: Engine, queries: StateQueries
    ) -> None:
        """A scrape answers while the daemon holds the write lock, and sees committed rows only."""
        add_requests(engine, ("SAR-1", RequestState.CONFIRMED, T0))
        with db.session_factory(engine).begin() as session:
            session.add(new_request("SAR-2", RequestState.CONFIRMED, T0))
            session.flush()  # BEGIN IMMEDIATE: the write lock is held from here to the commit
            snapshot = queries.snapshot()
        assert snapshot.counts == {RequestState.CONFIRMED: 1}

    def test_a_failing_database_does_not_fail_the_scrape(
        self, broken_queries: StateQueries
    ) -> None:
        """When the query fails, the scrape still answers: database_up is 0, counts are absent."""
        metrics = Metrics(clock=MovableClock(), snapshot=broken_queries.snapshot)
        with serving(metrics) as server:
            samples = scrape(server)
        assert value(samples, "sarbot_database_up") == 0.0
        assert value(samples, "sarbot_requests", state="received") is None
        assert value(samples, "sarbot_mailbox_connected") == 0.0

    def test_without_a_database_no_request_gauges(self) -> None:
        """A Metrics given no snapshot exposes neither request counts nor database_up."""
        with serving(Metrics(clock=MovableClock())) as server:
            samples = scrape(server)
        assert not [s for s in samples if s.name.startswith(("sarbot_requests", "sarbot_data"))]


class TestPostgres:
    def test_snapshot_and_ping_on_postgresql(self, postgres_url: str) -> None:
        """The queries give the same counts, oldest request and deadline on PostgreSQL."""
        engine = db.make_engine(postgres_url)
        db.upgrade(engine)
        add_requests(
            engine,
            ("SAR-1", RequestState.FAILED, T0 - timedelta(days=50), date(2026, 1, 1)),
            ("SAR-2", RequestState.READY, T0 - timedelta(days=2), date(2026, 3, 30)),
            ("SAR-3", RequestState.READY, T0, date(2026, 4, 2)),
        )
        queries = StateQueries(engine)
        try:
            queries.ping()
            snapshot, deadline = queries.snapshot(), queries.nearest_deadline()
        finally:
            engine.dispose()
        expected = {RequestState.FAILED: 1, RequestState.READY: 2}
        assert snapshot == StateSnapshot(expected, T0 - timedelta(days=2))
        assert deadline == date(2026, 3, 30)


class TestDeadline:
    def test_days_to_a_due_date(self) -> None:
        """A due date counts to the end of that day in the deadline timezone, in fractional days."""
        summer = MovableClock(datetime(2026, 7, 1, 9, 0, tzinfo=UTC))
        found = []
        for zone in ("UTC", "Europe/London"):
            metrics = Metrics(clock=summer, deadline=lambda: date(2026, 7, 3), timezone=zone)
            with serving(metrics) as server:
                found.append(value(scrape(server), "sarbot_nearest_deadline_days"))
        assert found == [63 / 24, 62 / 24]  # midnight in London is 23:00 UTC in summer

    def test_nearest_deadline_of_open_requests(self, engine: Engine, queries: StateQueries) -> None:
        """The nearest deadline is an open request's, its extended date once extended."""
        add_requests(
            engine,
            ("SAR-1", RequestState.DELIVERED, T0, date(2026, 3, 3)),
            ("SAR-2", RequestState.COLLECTING, T0, date(2026, 3, 5), date(2026, 5, 5)),
            ("SAR-3", RequestState.NEEDS_REVIEW, T0, date(2026, 3, 20)),
            ("SAR-4", RequestState.AWAITING_CONFIRMATION, T0),
        )
        assert queries.nearest_deadline() == date(2026, 3, 20)
        metrics = Metrics(clock=MovableClock(), deadline=queries.nearest_deadline)
        with serving(metrics) as server:
            assert value(scrape(server), "sarbot_nearest_deadline_days") == 18 + 15 / 24

    def test_no_open_request_has_a_deadline(self, queries: StateQueries) -> None:
        """With no open request, the nearest deadline is None."""
        assert queries.nearest_deadline() is None

    def test_overdue_is_negative(self) -> None:
        """A due moment in the past gives a negative number of days."""
        metrics = Metrics(clock=MovableClock(), deadline=lambda: T0 - timedelta(days=1.5))
        with serving(metrics) as server:
            assert value(scrape(server), "sarbot_nearest_deadline_days") == -1.5

    def test_no_due_date_no_gauge(self) -> None:
        """Without a deadline callable, or when it finds none, the gauge is absent."""
        for metrics in (Metrics(clock=MovableClock()), Metrics(deadline=lambda: None)):
            with serving(metrics) as server:
                assert value(scrape(server), "sarbot_nearest_deadline_days") is None


class TestEvents:
    def test_time_to_acknowledge(self) -> None:
        """An acknowledgement 45 s after the request lands in the 60 s bucket, not the 30 s one."""
        metrics = Metrics(clock=MovableClock())
        metrics.acknowledged(T0, at=T0 + timedelta(seconds=45))
        with serving(metrics) as server:
            samples = scrape(server)
        name = "sarbot_time_to_acknowledge_seconds"
        assert value(samples, f"{name}_count") == 1.0
        assert value(samples, f"{name}_sum") == 45.0
        assert bucket(samples, name, 30.0) == 0.0
        assert bucket(samples, name, 60.0) == 1.0

    def test_time_to_deliver_from_receipt_and_confirmation(self) -> None:
        """Delivery is timed from receipt and, when there was one, from confirmation."""
        metrics = Metrics(clock=MovableClock())
        metrics.delivered(T0, T0 + timedelta(days=1), at=T0 + timedelta(days=3))
        metrics.delivered(T0, None, at=T0 + timedelta(hours=2))
        with serving(metrics) as server:
            samples = scrape(server)
        name = "sarbot_time_to_deliver_seconds"
        assert value(samples, f"{name}_count", since="received") == 2.0
        assert value(samples, f"{name}_sum", since="received") == 3 * 86400 + 7200
        assert value(samples, f"{name}_count", since="confirmed") == 1.0
        assert bucket(samples, name, 2 * 86400, since="confirmed") == 1.0
        assert bucket(samples, name, 86400, since="confirmed") == 0.0

    def test_connector_latency_and_errors(self) -> None:
        """Each call is timed per connector; only failed calls count as errors."""
        metrics = Metrics(clock=MovableClock(), connectors=["vault", "crm"])
        metrics.connector_call("vault", 0.2, ok=True)
        metrics.connector_call("vault", 3.0, ok=False)
        with serving(metrics) as server:
            samples = scrape(server)
        assert value(samples, "sarbot_connector_call_seconds_count", connector="vault") == 2.0
        assert value(samples, "sarbot_connector_call_seconds_sum", connector="vault") == 3.2
        assert value(samples, "sarbot_connector_errors_total", connector="vault") == 1.0
        assert value(samples, "sarbot_connector_errors_total", connector="crm") == 0.0

    def test_mailbox_errors_and_reconnects(self) -> None:
        """The first session is not a reconnect; each one after it is."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        metrics.mailbox_connected(clock())
        metrics.mailbox_error(clock())
        metrics.mailbox_error(clock())  # the retry failed as well
        metrics.mailbox_connected(clock())
        with serving(metrics) as server:
            samples = scrape(server)
        assert value(samples, "sarbot_mailbox_errors_total") == 2.0
        assert value(samples, "sarbot_mailbox_reconnects_total") == 1.0
        assert value(samples, "sarbot_mailbox_connected") == 1.0

    def test_last_poll_timestamp(self) -> None:
        """The last-poll gauge shows the start time, then the time of each completed poll."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        with serving(metrics) as server:
            before = value(scrape(server), "sarbot_last_successful_poll_timestamp_seconds")
            metrics.poll_succeeded(T0 + timedelta(minutes=5))
            after = value(scrape(server), "sarbot_last_successful_poll_timestamp_seconds")
        assert (before, after) == (T0.timestamp(), T0.timestamp() + 300)

    def test_each_daemon_has_its_own_registry(self) -> None:
        """Two Metrics in one process neither clash nor share their values."""
        first, second = Metrics(clock=MovableClock()), Metrics(clock=MovableClock())
        first.mailbox_error(T0)
        with serving(first) as one, serving(second) as two:
            assert value(scrape(one), "sarbot_mailbox_errors_total") == 1.0
            assert value(scrape(two), "sarbot_mailbox_errors_total") == 0.0


class TestFirstAcknowledgement:
    def test_only_the_first_sent_acknowledgement_counts(self, engine: Engine) -> None:
        """The first acknowledgement sent is the first; a later resend is not; nor an export."""
        with db.session_factory(engine).begin() as session:
            request = new_request("SAR-1", RequestState.AWAITING_CONFIRMATION, T0)
            session.add(request)
            first, second, export = (
                outbox.queue(session, request, kind, message_id=f"<{n}@x.test>", raw=b"x", now=T0)
                for n, kind in enumerate(
                    [MailKind.ACKNOWLEDGEMENT, MailKind.ACKNOWLEDGEMENT, MailKind.EXPORT]
                )
            )
            session.flush()
            outbox.mark_sent(first, T0)
            assert is_first_acknowledgement(session, first)
            outbox.mark_sent(second, T0)
            assert not is_first_acknowledgement(session, second)
            assert not is_first_acknowledgement(session, export)


class TestHealth:
    def test_healthy(self, queries: StateQueries) -> None:
        """Database answering, IMAP connected and a recent poll: 200 and the details in JSON."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        metrics.mailbox_connected(T0)
        metrics.poll_succeeded(T0 + timedelta(seconds=30))
        clock.advance(120)
        with serving(metrics, HealthCheck(metrics, queries.ping, stale_after=300)) as server:
            status, body = health(server)
        assert status == 200
        assert body == {
            "status": "ok",
            "checked_at": "2026-03-02T09:02:00+00:00",
            "database": {"ok": True, "error": None},
            "imap": {"connected": True, "since": "2026-03-02T09:00:00+00:00"},
            "last_poll": "2026-03-02T09:00:30+00:00",
            "logins_failing": {},
            "reads_mailbox": True,
            "stale_after_seconds": 300,
            "problems": [],
        }

    def test_database_failure(self, broken_queries: StateQueries) -> None:
        """A failing database check gives 503, naming the error's type only."""
        metrics = Metrics(clock=MovableClock())
        metrics.mailbox_connected(T0)
        metrics.poll_succeeded(T0)
        with serving(metrics, HealthCheck(metrics, broken_queries.ping, stale_after=300)) as s:
            status, body = health(s)
        assert status == 503
        assert body["database"] == {"ok": False, "error": "OperationalError"}
        assert body["problems"] == ["database check failed: OperationalError"]

    def test_stale_poll(self) -> None:
        """No completed poll for longer than the threshold gives 503; up to it, 200."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        metrics.mailbox_connected(T0)
        metrics.poll_succeeded(T0)
        with serving(metrics, HealthCheck(metrics, lambda: None, stale_after=300)) as server:
            clock.advance(300)
            fresh, _ = health(server)
            clock.advance(1)
            stale, body = health(server)
        assert (fresh, stale) == (200, 503)
        assert body["problems"] == ["no completed mailbox poll for 301 s"]

    def test_start_up_grace(self) -> None:
        """Before the first poll the threshold counts from the start."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        with serving(metrics, HealthCheck(metrics, lambda: None, stale_after=300)) as server:
            clock.advance(200)
            starting, body = health(server)
            clock.advance(200)
            stuck, _ = health(server)
        assert (starting, stuck) == (200, 503)
        assert body["last_poll"] is None and body["imap"]["connected"] is False

    def test_imap_down_too_long(self) -> None:
        """An IMAP session down for longer than the threshold gives 503, even after a poll."""
        clock = MovableClock()
        metrics = Metrics(clock=clock)
        metrics.mailbox_connected(T0)
        metrics.mailbox_error(T0 + timedelta(seconds=10))
        with serving(metrics, HealthCheck(metrics, lambda: None, stale_after=300)) as server:
            clock.advance(300)
            metrics.poll_succeeded(clock())
            briefly, _ = health(server)
            clock.advance(20)
            metrics.poll_succeeded(clock())
            long, body = health(server)
        assert (briefly, long) == (200, 503)
        assert body["problems"] == ["IMAP session down for 310 s"]
        assert body["imap"] == {"connected": False, "since": "2026-03-02T09:00:10+00:00"}


class TestServer:
    def test_unknown_path(self) -> None:
        """Any path but /metrics and /healthz is 404."""
        with serving(Metrics(clock=MovableClock())) as server:
            assert fetch(server.port, "/")[0] == 404
            assert fetch(server.port, "/metrics/../admin")[0] == 404

    def test_query_string_is_ignored(self) -> None:
        """/healthz?verbose=1 is /healthz."""
        with serving(Metrics(clock=MovableClock())) as server:
            assert fetch(server.port, "/healthz?verbose=1")[0] == 200

    def test_stop_frees_the_port(self) -> None:
        """After stop() nothing answers on the port, and it can be bound again."""
        metrics = Metrics(clock=MovableClock())
        with serving(metrics) as server:
            port = server.port
            assert fetch(port, "/healthz")[0] == 200
        with pytest.raises(ConnectionRefusedError):
            fetch(port, "/healthz")
        again = StatusServer(
            "127.0.0.1", port, metrics, HealthCheck(metrics, lambda: None, stale_after=300)
        )
        again.start()
        try:
            assert fetch(port, "/healthz")[0] == 200
        finally:
            again.stop()

    def test_port_in_use(self) -> None:
        """start() fails with a clear error when the port is taken, rather than serving nothing."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            metrics = Metrics(clock=MovableClock())
            server = StatusServer(
                "127.0.0.1", port, metrics, HealthCheck(metrics, lambda: None, stale_after=300)
            )
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
                server.start()
