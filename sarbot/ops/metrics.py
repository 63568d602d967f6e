"""Numbers for operators: what sarbot has in hand, how fast it answers, what fails.

Each daemon owns one ``Metrics`` with a private ``CollectorRegistry``.  Events
(an acknowledgement sent, a connector call, a mailbox error) are recorded as
they happen; the requests in each state, the age of the oldest open request and
the nearest deadline are read from the state database at scrape time, so they
are never stale.  ``sarbot.ops.health`` serves the registry over HTTP with
``/healthz`` beside it.  No metric carries personal data: labels are states and
connector names only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.pool import NullPool

from sarbot.mail.logins import LOGINS, LoginTrouble
from sarbot.store.models import Clock, Request, utcnow
from sarbot.store.states import TERMINAL, RequestState

NOT_WAITING = TERMINAL | {RequestState.HISTORY}
"""Closed, or mail from before the start that waits for no one's answer by the daemon."""

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
ACKNOWLEDGE_BUCKETS = (
    10.0, 30.0, MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 4 * HOUR, 12 * HOUR,
    DAY, 2 * DAY, 4 * DAY, 7 * DAY, 14 * DAY,
)  # fmt: skip
DELIVER_BUCKETS = (
    5 * MINUTE, 15 * MINUTE, HOUR, 4 * HOUR, 12 * HOUR, DAY, 2 * DAY, 4 * DAY, 7 * DAY,
    14 * DAY, 21 * DAY, 28 * DAY, 31 * DAY, 45 * DAY, 60 * DAY, 92 * DAY,
)  # fmt: skip
CONNECTOR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DELIVERY_STARTS = ("received", "confirmed")

Deadline = Callable[[], date | datetime | None]
"""The nearest due date of an open request, or None when no open request has one."""


@dataclass(frozen=True)
class StateSnapshot:
    """What one GROUP BY over the requests says: how many per state, and the oldest open one."""

    counts: Mapping[RequestState, int]
    oldest_open: datetime | None


class StateQueries:
    """The scrape-time and health queries on the state database.

    On SQLite the daemon's engine starts every transaction with BEGIN IMMEDIATE,
    so a read through it would queue behind (and then block) the daemon's
    writers.  These queries use a separate read-only engine instead, whose plain
    SELECTs read the last committed state without taking a lock; it keeps no
    connection open between scrapes.  Other databases are read through the
    daemon's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = _sqlite_reader(engine) if engine.dialect.name == "sqlite" else engine

    def snapshot(self) -> StateSnapshot:
        query = select(Request.state, func.count(), func.min(Request.received_at)).group_by(
            Request.state
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        counts = {state: int(count) for state, count, _ in rows}
        open_since = [oldest for state, _, oldest in rows if state not in NOT_WAITING]
        return StateSnapshot(counts, min(open_since, default=None))

    def nearest_deadline(self) -> date | None:
        """The earliest date an open request is due (its extended date once extended)."""
        due = func.coalesce(Request.extended_due_on, Request.due_on)
        query = select(func.min(due)).where(Request.state.not_in(list(NOT_WAITING)))
        with self.engine.connect() as connection:
            found: date | None = connection.scalar(query)
        return found

    def ping(self) -> None:
        """Raise unless the database answers a query on the requests table."""
        with self.engine.connect() as connection:
            connection.execute(select(Request.id).limit(1)).all()


def _sqlite_reader(engine: Engine) -> Engine:
    reader = create_engine(engine.url, connect_args={"timeout": 5}, poolclass=NullPool)
    event.listen(reader, "connect", _query_only)
    return reader


def _query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


@dataclass(frozen=True)
class MailboxStatus:
    """The IMAP session as the daemon last saw it, and its last completed poll."""

    started_at: datetime
    connected: bool
    since: datetime
    last_poll: datetime | None
    reader: bool = True
    """Whether this instance reads the mailbox (with several instances, one does)."""


class Metrics:
    """The metrics of one daemon, in a registry of its own.

    ``snapshot`` and ``deadline`` are called at every scrape; leave them out and
    the gauges they feed are not exposed.  A due date without a time is due at the
    end of that day in ``timezone`` (``[deadlines] timezone``).  ``connectors`` names
    the configured connectors, so that their series exist (at zero) before the first call.
    """

    def __init__(
        self,
        *,
        clock: Clock = utcnow,
        snapshot: Callable[[], StateSnapshot] | None = None,
        deadline: Deadline | None = None,
        connectors: Iterable[str] = (),
        timezone: str = "UTC",
        logins: Callable[[], list[LoginTrouble]] = list,
    ) -> None:
        self.clock = clock
        self.logins = logins
        self.timezone = ZoneInfo(timezone)
        self.registry = CollectorRegistry()
        started = clock()
        self._lock = threading.Lock()
        self._mailbox = MailboxStatus(started, connected=False, since=started, last_poll=None)
        self._connected_before = False
        r = self.registry
        self._acknowledge = Histogram(
            "sarbot_time_to_acknowledge_seconds",
            "From a request mail's arrival to its first acknowledgement being sent.",
            buckets=ACKNOWLEDGE_BUCKETS,
            registry=r,
        )
        self._deliver = Histogram(
            "sarbot_time_to_deliver_seconds",
            "From a request's arrival (since=received) or confirmation (since=confirmed) "
            "to the last part of its export being sent.",
            ["since"],
            buckets=DELIVER_BUCKETS,
            registry=r,
        )
        self._connector_seconds = Histogram(
            "sarbot_connector_call_seconds",
            "How long one collection call to a connector took, retries included.",
            ["connector"],
            buckets=CONNECTOR_BUCKETS,
            registry=r,
        )
        self._connector_errors = Counter(
            "sarbot_connector_errors",
            "Collection calls to a connector that failed after their retries.",
            ["connector"],
            registry=r,
        )
        self._mailbox_errors = Counter(
            "sarbot_mailbox_errors", "IMAP errors; each one closes the session.", registry=r
        )
        self._reconnects = Counter(
            "sarbot_mailbox_reconnects",
            "IMAP sessions opened after the first one of this process.",
            registry=r,
        )
        for start in DELIVERY_STARTS:
            self._deliver.labels(start)
        for name in connectors:
            self._connector_seconds.labels(name)
            self._connector_errors.labels(name)
        r.register(_LiveCollector(self, snapshot, deadline))

    # -- events ------------------------------------------------------------------------

    def acknowledged(self, received_at: datetime, *, at: datetime) -> None:
        """A request's first acknowledgement was sent."""
        self._acknowledge.observe(_seconds(received_at, at))

    def delivered(
        self, received_at: datetime, confirmed_at: datetime | None, *, at: datetime
    ) -> None:
        """The last part of a request's export was sent."""
        self._deliver.labels("received").observe(_seconds(received_at, at))
        if confirmed_at is not None:
            self._deliver.labels("confirmed").observe(_seconds(confirmed_at, at))

    def connector_call(self, name: str, seconds: float, *, ok: bool) -> None:
        """One collection call to a connector ended, in success or failure."""
        self._connector_seconds.labels(name).observe(max(seconds, 0.0))
        if not ok:
            self._connector_errors.labels(name).inc()

    def mailbox_connected(self, at: datetime) -> None:
        """An IMAP session was opened; every one after the first counts as a reconnect."""
        with self._lock:
            if self._connected_before:
                self._reconnects.inc()
            self._connected_before = True
            if not self._mailbox.connected:
                self._mailbox = replace(self._mailbox, connected=True, since=at)

    def mailbox_error(self, at: datetime) -> None:
        """An IMAP error: the daemon closes the session on every one."""
        self._mailbox_errors.inc()
        with self._lock:
            if self._mailbox.connected:
                self._mailbox = replace(self._mailbox, connected=False, since=at)

    def mailbox_reader(self, reader: bool, at: datetime) -> None:
        """Whether this instance reads the mailbox now; a new reader's clock starts now."""
        with self._lock:
            if reader and not self._mailbox.reader:
                self._mailbox = MailboxStatus(at, connected=False, since=at, last_poll=None)
            elif not reader and self._mailbox.reader:
                self._mailbox = replace(self._mailbox, reader=False, connected=False, since=at)

    def poll_succeeded(self, at: datetime) -> None:
        """Intake read the watched folder to its end."""
        with self._lock:
            self._mailbox = replace(self._mailbox, last_poll=at)

    @property
    def mailbox(self) -> MailboxStatus:
        with self._lock:
            return self._mailbox


class _LiveCollector:
    """The gauges worked out at scrape time: from the database, the clock and the mailbox."""

    def __init__(
        self,
        metrics: Metrics,
        snapshot: Callable[[], StateSnapshot] | None,
        deadline: Deadline | None,
    ) -> None:
        self.metrics = metrics
        self.snapshot = snapshot
        self.deadline = deadline

    def describe(self) -> Iterator[Metric]:
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        now = self.metrics.clock()
        mailbox = self.metrics.mailbox
        requests, oldest, nearest, connected, polled, up, failing, reader = _families()
        reader.add_metric([], 1.0 if mailbox.reader else 0.0)
        yield reader
        connected.add_metric([], 1.0 if mailbox.connected else 0.0)
        polled.add_metric([], (mailbox.last_poll or mailbox.started_at).timestamp())
        troubles = {trouble.login for trouble in self.metrics.logins()}
        for login in LOGINS:
            failing.add_metric([login], 1.0 if login in troubles else 0.0)
        yield from (connected, polled, failing)
        if self.snapshot is None and self.deadline is None:
            return
        try:  # a failing database must not fail the scrape: its gauges go missing instead
            snapshot = self.snapshot() if self.snapshot is not None else None
            due = self.deadline() if self.deadline is not None else None
        except Exception:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        if snapshot is not None:
            for state in RequestState:
                requests.add_metric([state.value], float(snapshot.counts.get(state, 0)))
            age = 0.0 if snapshot.oldest_open is None else _seconds(snapshot.oldest_open, now)
            oldest.add_metric([], age)
            yield from (requests, oldest)
        if due is not None:
            nearest.add_metric([], days_until(due, now, self.metrics.timezone))
            yield nearest


def _families() -> tuple[GaugeMetricFamily, ...]:
    """Fresh, empty families of every gauge worked out at scrape time."""
    return (
        GaugeMetricFamily("sarbot_requests", "Requests in each state.", labels=["state"]),
        GaugeMetricFamily(
            "sarbot_oldest_open_request_age_seconds",
            "Age of the oldest request not yet closed (0 when there is none).",
        ),
        GaugeMetricFamily(
            "sarbot_nearest_deadline_days",
            "Days until the nearest due date of an open request; negative when overdue.",
        ),
        GaugeMetricFamily("sarbot_mailbox_connected", "1 while the IMAP session is open."),
        GaugeMetricFamily(
            "sarbot_last_successful_poll_timestamp_seconds",
            "When intake last read the mailbox to its end (the start time until then).",
        ),
        GaugeMetricFamily(
            "sarbot_database_up", "1 if the state database answered this scrape's queries."
        ),
        GaugeMetricFamily(
            "sarbot_login_failing",
            "1 while sarbot's login by OAuth 2.0 token to IMAP or SMTP fails.",
            labels=["login"],
        ),
        GaugeMetricFamily(
            "sarbot_reads_mailbox",
            "1 while this instance reads the mailbox (with several instances, one does).",
        ),
    )


def days_until(due: date | datetime, now: datetime, zone: ZoneInfo) -> float:
    """Days from now to a due moment; a bare date is due at the end of that day in ``zone``."""
    if isinstance(due, datetime):
        moment = due if due.tzinfo is not None else due.replace(tzinfo=UTC)
    else:
        moment = datetime.combine(due + timedelta(days=1), time(), tzinfo=zone)
    return (moment - now).total_seconds() / DAY


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)
