"""Shared fixtures: the real mail stack, a configured sarbot, and the people who write to it.

``pytest --at 2026-11-30T23:59:00Z`` starts every test at that wall-clock time (it ticks on from
there): every ``datetime.now()`` and ``time.time()`` in the test process says so, through
time-machine.  Tests marked ``clock`` (every test that builds a bot, and the tests of deadlines,
digests, reminders, retention and expiry) are the ones worth running at several times;
docs/reliability.md lists the times ``make test`` and ``make test-times`` use.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from connectors import statements
from sarbot.app import App
from sarbot.config import Settings, validate
from sarbot.registry import TypeSource
from sarbot.store import db
from sarbot.store.models import AuditEvent, OutgoingMail, Request, SeenMessage, utcnow
from sarbot.testing import Correspondent, MailServer, stack
from sarbot.testing.idp import IdpClient

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = stack.state_dir(ROOT)
"""The mail stack's folder: <repo>/.mailstack or $SARBOT_MAILSTACK_DIR (sarbot/testing/stack.py)."""
CA_FILE = STACK_DIR / "ca.pem"
CLOCK_FIXTURES = frozenset({"bot", "make_bot"})
"""A test that builds a bot depends on the time of day through it (digests, deadlines, expiry)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--at",
        metavar="INSTANT",
        type=_instant,
        default=None,
        help="run at this wall-clock time, ISO 8601 with a zone (2026-11-30T23:59:00Z); "
        "time ticks on from it",
    )


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("give the zone too, e.g. 2026-11-30T23:59:00Z")
    return moment


@pytest.fixture(autouse=True)
def pinned_wall_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``--at``, each test starts at that instant (before its other fixtures run)."""
    at: datetime | None = request.config.getoption("--at")
    if at is None:
        yield
        return
    with time_machine.travel(at, tick=True):
        yield


def pytest_report_header(config: pytest.Config) -> str:
    at: datetime | None = config.getoption("--at")
    return f"wall clock: {'each test starts at ' + at.isoformat() if at else 'real time'}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLOCK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.clock)


@pytest.fixture(scope="session")
def mailstack() -> MailServer:
    """The real Dovecot and Postfix of scripts/mailstack; a failure to start fails the test."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "mailstack"), "up"], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/mailstack up failed:\n{result.stdout}\n{result.stderr}", pytrace=False
        )
    return MailServer(ca_file=str(CA_FILE))


@pytest.fixture
def sent_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every ``Prepared`` statement a test's connectors send, as the driver gets it: its SQL
    and its bound values (``Prepared`` runs them on the driver's cursor, where SQLAlchemy's
    execution events do not see them)."""
    sent: list[tuple[str, Any]] = []
    bind = statements._Expanded.bind

    def recorded(self: statements._Expanded, params: dict[str, Any], positional: bool) -> Any:
        statement, bound = bind(self, params, positional)
        sent.append((statement, bound))
        return statement, bound

    monkeypatch.setattr(statements._Expanded, "bind", recorded)
    return sent


def unique(local: str, domain: str) -> str:
    return f"{local}-{uuid.uuid4().hex[:10]}@{domain}"


@pytest.fixture(scope="session")
def idp(mailstack: MailServer) -> IdpClient:
    """The stack's identity provider, over HTTPS (the stack's CA), as the libraries use it."""
    client = IdpClient(stack.idp_url(tls=True), ca_file=str(CA_FILE))
    assert client.get("/health") == {"status": "ok"}
    return client


def base_config(tmp_path: Path, support: str) -> dict[str, Any]:
    secret = tmp_path / "imap-password"
    secret.write_text("test\n")
    return {
        "controller": {
            "name": "Red Train IT Ltd",
            "email": support,
            "privacy_contact": "privacy@redtrain.test",
        },
        "imap": {
            "host": "127.0.0.1",
            "port": stack.port("imap"),
            "security": "starttls",
            "ca_file": str(CA_FILE),
            "username": support,
            "password": {"file": str(secret)},
            "poll_interval": 1,
            # Each test's mailbox is new: what the test put in it before the first run is
            # answered (tests of the first start on a mailbox with history set "now").
            "start": "2000-01-01",
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": stack.port("smtp"),
            "security": "starttls",
            "ca_file": str(CA_FILE),
        },
        "storage": {
            "database_url": f"sqlite:///{tmp_path / 'state.db'}",
            "export_dir": str(tmp_path / "exports"),
        },
        "logging": {"format": "json"},
    }


class Bot:
    """A sarbot on a private support mailbox, run in-process with a movable clock."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.offset = timedelta()
        db.upgrade(app.engine)

    @property
    def address(self) -> str:
        return self.app.settings.controller.email

    @property
    def support(self) -> Correspondent:
        """The support mailbox sarbot watches, as a person reading it would see it."""
        return Correspondent(MailServer(ca_file=str(CA_FILE)), self.address)

    def now(self) -> datetime:
        return utcnow() + self.offset

    def travel_to(self, moment: datetime) -> None:
        """Move the bot's clock so that it reads ``moment`` now (it keeps ticking)."""
        self.offset = moment - utcnow()

    def run_once(self) -> None:
        clean = asyncio.run(self.app.daemon(clock=self.now).run(once=True))
        assert clean, "sarbot run --once did not end cleanly"

    def requests(self) -> list[Request]:
        with self.app.sessions() as session:
            return list(session.scalars(select(Request).order_by(Request.id)))

    def request(self) -> Request:
        found = self.requests()
        assert len(found) == 1, f"expected one request, found {len(found)}"
        return found[0]

    def outgoing(self) -> list[OutgoingMail]:
        with self.app.sessions() as session:
            return list(session.scalars(select(OutgoingMail).order_by(OutgoingMail.id)))

    def seen(self) -> list[SeenMessage]:
        with self.app.sessions() as session:
            return list(session.scalars(select(SeenMessage).order_by(SeenMessage.id)))

    def audit(self) -> list[AuditEvent]:
        with self.app.sessions() as session:
            return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


BotFactory = Callable[..., Bot]


@pytest.fixture
def make_bot(tmp_path: Path, mailstack: MailServer) -> Iterator[BotFactory]:
    """Build a Bot; keyword arguments are merged into its config sections."""
    apps: list[App] = []

    def factory(
        *, connector_types: dict[str, TypeSource] | None = None, **sections: dict[str, Any]
    ) -> Bot:
        support = unique("support", "redtrain.test")
        data = base_config(tmp_path, support)
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
        settings = validate(data, Settings, source="test config", base_dir=tmp_path)
        app = App(tmp_path / "config.toml", settings)
        if connector_types is not None:
            app.connector_types = connector_types
        apps.append(app)
        return Bot(app)

    yield factory
    for app in apps:
        app.engine.dispose()


@pytest.fixture
def bot(make_bot: BotFactory) -> Bot:
    return make_bot()


@pytest.fixture
def person(mailstack: MailServer) -> Callable[[str, str], Correspondent]:
    """A correspondent with a fresh address: ``person("alice", "example.test")``."""
    return lambda local, domain: Correspondent(mailstack, unique(local, domain))
