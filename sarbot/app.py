"""Wiring: from a config file to the objects the commands use, each built once.

Everything derived from the config alone (templates, letters, the working-day
calendar, the realms, the classifier and recogniser, the acknowledger and verifier, the
notifier and the operators' decisions) is built at its first use and shared by
the daemon and the commands alike.  What lives only as long as a run (the
connectors, the mailbox, the mailer) is built by ``pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sarbot.config import Settings, load_settings
from sarbot.daemon import Daemon
from sarbot.errors import ConfigError
from sarbot.faults import CrashPoints
from sarbot.graph import Realms, check_realms
from sarbot.mail.letters import Letters
from sarbot.mail.logins import LoginWatch
from sarbot.mail.mailbox import Mailbox, MailboxThread
from sarbot.mail.mailer import Mailer
from sarbot.mail.templates import Templates
from sarbot.ops.decisions import Operations
from sarbot.ops.health import HealthCheck, StatusServer
from sarbot.ops.metrics import Metrics, StateQueries
from sarbot.ops.notify import Notifier
from sarbot.pipeline import Pipeline, Steps
from sarbot.registry import ConfiguredConnector, TypeSource, build_connectors, discover_types
from sarbot.steps.acknowledge import Acknowledger
from sarbot.steps.classify import Classifier
from sarbot.steps.deliver import Deliverer
from sarbot.steps.intake import Intake
from sarbot.steps.package import Packager
from sarbot.steps.recognise import PhraseError, Recogniser, load_phrases
from sarbot.steps.verify import Verifier
from sarbot.store.db import head_revision, make_engine, require_current_schema, session_factory
from sarbot.store.deadlines import Calendar
from sarbot.store.instances import Instances, instances_for
from sarbot.store.models import Clock, utcnow


@dataclass
class App:
    config_path: Path
    settings: Settings
    connector_types: dict[str, TypeSource] = field(default_factory=discover_types)
    crash_points: CrashPoints = field(default_factory=CrashPoints.from_environment)

    @classmethod
    def load(cls, config_path: Path) -> App:
        return cls(config_path, load_settings(config_path))

    # -- the state store -------------------------------------------------------------------

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.storage.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return session_factory(self.engine)

    @cached_property
    def instances(self) -> Instances:
        """This instance among the others on the state database (one, on SQLite)."""
        return instances_for(self.engine, structlog.get_logger("sarbot"))

    # -- built once from the config ------------------------------------------------------

    @cached_property
    def templates(self) -> Templates:
        return Templates(self.settings.export.template_dir)

    @cached_property
    def calendar(self) -> Calendar:
        return self.settings.deadlines.calendar()

    @cached_property
    def realms(self) -> Realms:
        return Realms(self.settings.realms)

    @cached_property
    def letters(self) -> Letters:
        return Letters(
            self.settings.controller,
            self.settings.requests.subject_phrase,
            self.templates,
            crash_points=self.crash_points,
        )

    @cached_property
    def classifier(self) -> Classifier:
        settings = self.settings
        return Classifier(
            own_address=settings.controller.email,
            message_id_domain=settings.message_id_domain,
            phrase=settings.requests.subject_phrase,
            prefix=settings.requests.reference_prefix,
        )

    @cached_property
    def recogniser(self) -> Recogniser:
        """Finds requests in other words; a phrases file that cannot be read stops the start."""
        wanted = self.settings.recognition
        try:
            phrases = load_phrases(wanted.phrases_file)
        except (OSError, UnicodeDecodeError, PhraseError) as exc:
            raise ConfigError(f"{self.config_path}: [recognition] phrases_file: {exc}") from None
        return Recogniser(
            phrases,
            own_address=self.settings.controller.email,
            subject_phrase=self.settings.requests.subject_phrase,
            enabled=wanted.enabled,
        )

    @cached_property
    def acknowledger(self) -> Acknowledger:
        return Acknowledger(self.settings, self.letters, self.calendar)

    @cached_property
    def verifier(self) -> Verifier:
        return Verifier(self.settings, self.letters, self.calendar)

    @cached_property
    def notifier(self) -> Notifier:
        return Notifier(self.settings, self.letters, self.calendar)

    @cached_property
    def logins(self) -> LoginWatch:
        """sarbot's own logins by token that fail now: one record for the process."""
        return LoginWatch(structlog.get_logger("sarbot"))

    @cached_property
    def operations(self) -> Operations:
        """The operators' decisions on requests."""
        return Operations(
            self.settings, self.letters, self.acknowledger, self.calendar, self.instances
        )

    # -- built for a run -------------------------------------------------------------------

    def build_connectors(self) -> list[ConfiguredConnector]:
        """Every enabled connector, built; the realms are checked against them."""
        built = build_connectors(
            self.settings.connectors,
            self.connector_types,
            base_dir=self.config_path.parent.resolve(),
            source=str(self.config_path),
        )
        try:
            check_realms(self.settings.realms, built)
        except ConfigError as exc:
            for configured in built:
                configured.connector.close()
            raise ConfigError(f"{self.config_path}: {exc}") from None
        return built

    def pipeline(self, *, clock: Clock = utcnow, metrics: Metrics | None = None) -> Pipeline:
        """The pipeline, with every connector built (nothing connects until used)."""
        newer = require_current_schema(self.engine)
        metrics = metrics or Metrics(clock=clock)
        log = structlog.get_logger("sarbot")
        if newer is not None:  # another instance was upgraded first: this one should follow
            log.warning("db.schema_newer", revision=newer, code=head_revision())
        settings, connectors = self.settings, self.build_connectors()
        mailbox = MailboxThread(Mailbox(settings.imap))
        steps = Steps(
            intake=Intake(
                settings.imap,
                self.sessions,
                mailbox,
                clock=clock,
                log=log,
                crash_points=self.crash_points,
                start_at=self.settings.imap.start_at(self.settings.deadlines.timezone),
            ),
            classifier=self.classifier,
            recogniser=self.recogniser,
            acknowledger=self.acknowledger,
            verifier=self.verifier,
            connectors=connectors,
            realms=self.realms,
            packager=Packager(settings, connectors, self.letters, self.templates),
            deliverer=Deliverer(
                settings,
                self.sessions,
                Mailer(settings.smtp),
                metrics,
                self.logins,
                log=log,
                clock=clock,
                crash_points=self.crash_points,
                instances=self.instances,
            ),
            notifier=self.notifier,
        )
        return Pipeline(
            settings,
            self.sessions,
            steps,
            mailbox,
            metrics=metrics,
            logins=self.logins,
            log=log,
            clock=clock,
            instances=self.instances,
        )

    def daemon(self, *, clock: Clock = utcnow) -> Daemon:
        """A daemon ready to run: the schema is checked and every connector is built."""
        wanted = self.settings.metrics
        if not wanted.enabled:
            pipeline = self.pipeline(clock=clock)
            return Daemon(pipeline, pipeline.mailbox, pipeline.log)
        queries = StateQueries(self.engine)
        metrics = Metrics(
            clock=clock,
            snapshot=queries.snapshot,
            deadline=queries.nearest_deadline,
            connectors=[entry.name for entry in self.settings.connectors if entry.enabled],
            timezone=self.settings.deadlines.timezone,
            logins=self.logins.troubles,
        )
        pipeline = self.pipeline(clock=clock, metrics=metrics)
        stale_after = wanted.threshold(self.settings.imap.poll_interval)
        health = HealthCheck(metrics, queries.ping, stale_after=stale_after)
        status = StatusServer(wanted.host, wanted.port, metrics, health, log=pipeline.log)
        return Daemon(pipeline, pipeline.mailbox, pipeline.log, status=status)
