"""Finding connector types and building the connectors an admin configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from sarbot.config import ConnectorEntry, SourceFacts, validate
from sarbot.connector import ENTRY_POINT_GROUP, Connector, ConnectorType, Trust
from sarbot.errors import ConfigError


@dataclass(frozen=True)
class ConfiguredConnector:
    """A connector instance with the admin's description of its source."""

    name: str
    type: str
    description: str
    facts: SourceFacts
    connector: Connector

    @property
    def trust(self) -> Trust:
        """Who records the account names this connector holds (docs/identity.md)."""
        trust = getattr(self.connector, "namespace_trust", Trust.SELF_ASSERTED)
        return trust if isinstance(trust, Trust) else Trust.SELF_ASSERTED


TypeSource = ConnectorType | EntryPoint
"""A connector type, or the entry point that loads it when a config first uses it."""


def discover_types() -> dict[str, TypeSource]:
    """Every connector type installed, by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def build_connectors(
    entries: tuple[ConnectorEntry, ...],
    types: Mapping[str, TypeSource],
    *,
    base_dir: Path,
    source: str,
) -> list[ConfiguredConnector]:
    """Validate each enabled ``[[connectors]]`` table and build its connector."""
    built = []
    for index, entry in enumerate(entries):
        if not entry.enabled:
            continue
        where = f"connectors[{index}]"
        kind = types.get(entry.type)
        if kind is None:
            known = ", ".join(sorted(types)) or "none installed"
            raise ConfigError(
                f"{source}: {where}.type: unknown connector type '{entry.type}' (known: {known})"
            )
        try:
            factory: ConnectorType = kind.load() if isinstance(kind, EntryPoint) else kind
        except Exception as exc:
            raise ConfigError(
                f"{source}: {where}: connector type '{entry.type}' failed to load: {exc}"
            ) from None
        settings = validate(
            entry.options, factory.Settings, source=source, base_dir=base_dir, prefix=where + "."
        )
        try:
            connector = factory(entry.name, settings)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{source}: {where}: cannot set up '{entry.name}': {type(exc).__name__}"
            ) from None
        built.append(
            ConfiguredConnector(entry.name, entry.type, entry.description, entry.facts, connector)
        )
    return built
