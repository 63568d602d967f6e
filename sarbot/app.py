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
from sarbot.db import make_engine, require_current_schema, session_factory
from sarbot.intake import Mailbox, MailboxThread
from sarbot.mailer import Mailer
from sarbot.models import Clock, utcnow
from sarbot.pipeline import Pipeline
from sarbot.registry import ConfiguredConnector, TypeSource, build_connectors, discover_types


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
        return build_connectors(
            self.settings.connectors,
            self.connector_types,
            base_dir=self.config_path.parent.resolve(),
            source=str(self.config_path),
        )

    def pipeline(self, *, clock: Clock = utcnow) -> Pipeline:
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
        )

    def daemon(self, *, clock: Clock = utcnow) -> Daemon:
        """A daemon ready to run: the schema is checked and every connector is built."""
        pipeline = self.pipeline(clock=clock)
        return Daemon(pipeline, pipeline.mailbox, pipeline.log)
