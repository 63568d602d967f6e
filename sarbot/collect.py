"""Asking every configured connector what it holds on the requester.

Collection runs in rounds.  Round one asks about the verified address.  The
records found may name further identifiers of the same person (a username in
a vault entry, say); identifiers of a strong kind are followed in the next
round, asking each connector about the new ones only, until nothing new turns
up or the round limit is reached.  Weak kinds (IP addresses, names, host
names) and generic account names are never followed: they would pull in other
people's data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger
from tenacity import Retrying, stop_after_attempt, wait_exponential

from sarbot.config import CollectionSettings
from sarbot.connector import Identifier, Identity, Record, with_other_people_note
from sarbot.errors import ConnectorError
from sarbot.export import SourceData
from sarbot.registry import ConfiguredConnector


@dataclass
class Collection:
    """The data found, the identifiers followed, and the connectors that could not answer."""

    sources: list[SourceData]
    identifiers: list[Identifier]
    failed: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def record_count(self) -> int:
        return sum(len(source.records) for source in self.sources)


@dataclass(frozen=True)
class ConnectorOutcome:
    """How one connector's lookup went: for progress on a terminal, and for metrics."""

    name: str
    records: int | None
    seconds: float
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


Observer = Callable[[ConnectorOutcome], None]


class Collector:
    def __init__(
        self,
        connectors: Sequence[ConfiguredConnector],
        settings: CollectionSettings,
        log: FilteringBoundLogger,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.connectors = connectors
        self.settings = settings
        self.log = log
        self.observers = observers
        self._never = {value.casefold() for value in settings.never_follow}

    def _generic(self, identifier: Identifier) -> bool:
        """A shared account or mailbox name, also as ``DOMAIN\\admin`` or ``admin@host``."""
        account = identifier.value.rpartition("\\")[2].partition("@")[0]
        return identifier.value.casefold() in self._never or account.casefold() in self._never

    async def collect(self, email: str) -> Collection:
        """Collect in rounds for the verified address; never raises for a connector's failure."""
        identity = Identity.verified(email)
        known = {i.key: i for i in identity.identifiers}
        found: dict[str, dict[str, Record]] = {c.name: {} for c in self.connectors}
        failed: list[str] = []
        for round_number in range(1, self.settings.max_rounds + 1):
            results = await asyncio.gather(*(self._ask(c, identity) for c in self.connectors))
            new: list[Identifier] = []
            for configured, records in zip(self.connectors, results, strict=True):
                if records is None:
                    failed.append(configured.name)
                    continue
                for record in map(with_other_people_note, records):
                    found[configured.name].setdefault(record.identity_key, record)
                    new.extend(self._followable(record, known))
            self.log.info("collect.round", round=round_number, new_identifiers=len(new))
            if failed or not new:
                break
            if round_number == self.settings.max_rounds:
                self.log.warning("collect.rounds_exhausted", unfollowed=len(new))
                break
            identity = Identity(email, tuple(new), tuple(known.values()))
        sources = [
            SourceData(c.name, c.description, c.facts, list(found[c.name].values()))
            for c in self.connectors
            if c.name not in failed
        ]
        return Collection(sources, list(known.values()), sorted(set(failed)))

    def _followable(
        self, record: Record, known: dict[tuple[str, str], Identifier]
    ) -> list[Identifier]:
        """The identifiers a record yields that are strong, not generic, and new."""
        new = []
        for identifier in record.yields:
            if identifier.kind not in self.settings.strong_identifiers:
                continue
            if identifier.key in known or self._generic(identifier):
                continue
            known[identifier.key] = identifier
            new.append(identifier)
        return new

    async def _ask(
        self, configured: ConfiguredConnector, identity: Identity
    ) -> list[Record] | None:
        started = time.monotonic()
        try:
            records = await asyncio.to_thread(self._with_retries, configured, identity)
        except Exception as exc:  # a connector may fail in any way; its message may hold data
            seconds = round(time.monotonic() - started, 3)
            self.log.warning(
                "connector.failed",
                connector=configured.name,
                error_type=type(exc).__name__,
                # Only ConnectorError promises a message free of personal data.
                error=str(exc) if isinstance(exc, ConnectorError) else None,
                seconds=seconds,
            )
            self._tell(ConnectorOutcome(configured.name, None, seconds, type(exc).__name__))
            return None
        seconds = round(time.monotonic() - started, 3)
        self.log.info(
            "connector.collected", connector=configured.name, records=len(records), seconds=seconds
        )
        self._tell(ConnectorOutcome(configured.name, len(records), seconds))
        return records

    def _tell(self, outcome: ConnectorOutcome) -> None:
        for observer in self.observers:
            observer(outcome)

    def _with_retries(self, configured: ConfiguredConnector, identity: Identity) -> list[Record]:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return list(configured.connector.collect(identity))
        raise AssertionError("unreachable: tenacity re-raises the last error")
