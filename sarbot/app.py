"""Wiring: from a config file to the objects the commands use."""

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
from sarbot.graph import check_realms
from sarbot.mail.mailbox import Mailbox, MailboxThread
from sarbot.mail.mailer import Mailer
from sarbot.ops.health import HealthCheck, StatusServer
from sarbot.ops.metrics import Metrics, StateQueries
from sarbot.pipeline import Pipeline
from sarbot.registry import ConfiguredConnector, TypeSource, build_connectors, discover_types
from sarbot.store.db import make_engine, require_current_schema, session_factory
from sarbot.store.models import Clock, utcnow


@dataclass
class App:
    config_path: Path
    settings: Settings
    connector_types: dict[str, TypeSource] = field(default_factory=discover_types)

    @classmethod
    def load(cls, config_path: Path) -> App:
        return cls(config_path, load_settings(config_path))

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.storage.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return session_factory(self.engine)

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
        require_current_schema(self.engine)
        return Pipeline(
            self.settings,
            self.sessions,
            self.build_connectors(),
            Mailer(self.settings.smtp),
            MailboxThread(Mailbox(self.settings.imap)),
            log=structlog.get_logger("sarbot"),
            clock=clock,
            metrics=metrics,
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
        )
        pipeline = self.pipeline(clock=clock, metrics=metrics)
        stale_after = wanted.threshold(self.settings.imap.poll_interval)
        health = HealthCheck(metrics, queries.ping, stale_after=stale_after)
        status = StatusServer(wanted.host, wanted.port, metrics, health, log=pipeline.log)
        return Daemon(pipeline, pipeline.mailbox, pipeline.log, status=status)
