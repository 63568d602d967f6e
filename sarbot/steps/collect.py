"""Asking every configured connector what it holds on the requester.

Collection runs in rounds.  Round one asks every connector about the verified
address.  The records found may name further identifiers (a username in a
vault entry, say); the identity graph (``sarbot.graph``) decides which of them
are followed, and into which connectors, in the next round, until nothing new
turns up or the round limit is reached.

Records are never gathered in memory: each lookup streams what the connector
yields to disk, and the collection's records live in a spool on disk
(``sarbot.export.spool``) until the export is packaged from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger
from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from sarbot.config import CollectionSettings
from sarbot.connector import Identifier, Identity
from sarbot.errors import ConnectorError
from sarbot.export.files import SourceData
from sarbot.export.spool import RecordSpool, SpoolError, Stage
from sarbot.graph import Graph, Link, Realms, Scope, graph_digest, graph_document
from sarbot.registry import ConfiguredConnector
from sarbot.store.lifecycle import audit, transition
from sarbot.store.models import Request
from sarbot.store.states import RequestState

SPOOL_FAILED = "cannot keep the records found in the temporary folder"
"""How a request's last error starts when the collection could not be spooled to disk."""


@dataclass
class Collection:
    """The data found, the identity graph, and the connectors that could not answer.

    The sources' records are read from the spool on disk, which goes when the collection
    does (or is closed).  ``spool_error`` says why the records could not be kept (the
    temporary folder full, say): then nothing was collected and it must be tried again.
    """

    sources: list[SourceData]
    links: list[Link]
    failed: list[str] = field(default_factory=list)
    spool: RecordSpool | None = None
    spool_error: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed and self.spool_error is None

    @property
    def record_count(self) -> int:
        return sum(source.count for source in self.sources)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


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
        realms: Realms | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.connectors = connectors
        self.settings = settings
        self.log = log
        self.observers = observers
        self.realms = realms or Realms(())
        self.work_dir = work_dir
        """Where the records are spooled; None: the system's temporary folder (TMPDIR)."""

    async def collect(self, email: str) -> Collection:
        """Collect in rounds for the verified address; never raises for a connector's failure,
        nor for a full temporary folder (``Collection.spool_error``)."""
        graph = Graph(email, self.settings, self.realms)
        try:
            spool = RecordSpool(self.work_dir)
            return await self._rounds(email, graph, spool)
        except SpoolError as exc:
            self.log.error("collect.spool_failed", error=str(exc))
            return Collection([], graph.ordered(), spool_error=str(exc))

    async def _rounds(self, email: str, graph: Graph, spool: RecordSpool) -> Collection:
        asked = {c.name: Identity.verified(email) for c in self.connectors}
        failed: list[str] = []
        for round_number in range(1, self.settings.max_rounds + 1):
            due = [c for c in self.connectors if c.name in asked]
            results = await asyncio.gather(*(self._ask(c, asked[c.name], spool) for c in due))
            new: list[Identifier] = []
            for configured, stage in zip(due, results, strict=True):
                if stage is None:
                    failed.append(configured.name)
                    continue

                # A record found again keeps its place; a later round knows more of the person
                # (a login that makes a mentioned entry theirs, a name on a computer that is not
                # another's): what it found wins; found again alike, the first provenance stays.
                spool.merge(configured.name, stage, partial(_follow, graph, configured, new))
            self.log.info("collect.round", round=round_number, new_identifiers=len(new))
            if failed:
                graph.stop(new, "not looked up: a source could not be searched")
                break
            following = graph.next_round(new)
            if not following:
                break
            if round_number == self.settings.max_rounds:
                self.log.warning("collect.rounds_exhausted", unfollowed=len(following))
                graph.stop(following, "found in the last round of the search")
                break
            asked = {c.name: Identity(email, following, graph.known()) for c in self.connectors}
        sources = [
            SourceData(c.name, c.description, c.facts, spool.records(c.name))
            for c in self.connectors
            if c.name not in failed
        ]
        return Collection(sources, graph.ordered(), sorted(set(failed)), spool)

    async def _ask(
        self, configured: ConfiguredConnector, identity: Identity, spool: RecordSpool
    ) -> Stage | None:
        """The connector's records for the identity, staged on disk; None if it failed."""
        started = time.monotonic()
        try:
            stage = await asyncio.to_thread(self._with_retries, configured, identity, spool)
        except SpoolError:
            raise  # not the connector's failure: the collection cannot be kept
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
            "connector.collected", connector=configured.name, records=stage.count, seconds=seconds
        )
        self._tell(ConnectorOutcome(configured.name, stage.count, seconds))
        return stage

    def _tell(self, outcome: ConnectorOutcome) -> None:
        for observer in self.observers:
            observer(outcome)

    def _with_retries(
        self, configured: ConfiguredConnector, identity: Identity, spool: RecordSpool
    ) -> Stage:
        """Stage what the connector yields, as it yields it; a failed attempt's records go."""
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.attempts),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_not_exception_type(SpoolError),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                stage = spool.stage()
                try:
                    stage.write(configured.connector.collect(identity))
                except BaseException:
                    stage.close()
                    raise
                return stage
        raise AssertionError("unreachable: tenacity re-raises the last error")


def _follow(
    graph: Graph, source: ConfiguredConnector, new: list[Identifier], found: Identifier
) -> None:
    """An identifier a record yielded goes into the graph; new, to be looked up, into ``new``."""
    placed = graph.add(found, source)
    if placed is not None:
        new.append(placed)


def begin_collection(
    session: Session, request: Request, *, at: datetime, actor: str = "daemon"
) -> None:
    """A confirmed request starts collecting (one already collecting goes on)."""
    if request.state is RequestState.CONFIRMED:
        started = "collection started"
        transition(session, request, RequestState.COLLECTING, at=at, reason=started, actor=actor)


def record_collection(
    session: Session,
    request: Request,
    collection: Collection,
    *,
    now: datetime,
    retry_after: timedelta,
    log: FilteringBoundLogger,
) -> bool:
    """Keep what a collection found out; False if a source failed and it must be retried.

    The identity graph is kept with the request, and the audit trail gets its
    digest and counts (never an identifier).  An operator's reason to deliver
    without a failing source (``partial_reason``) lets an incomplete one through.
    """
    request.attempts += 1
    request.identity_graph = json.dumps(graph_document(collection.links), ensure_ascii=False)
    scopes = Counter(link.scope for link in collection.links)
    summary = (
        f"{len(collection.links)} identifier(s): {scopes[Scope.EVERYWHERE]} followed, "
        f"{scopes[Scope.NOT_FOLLOWED]} not followed; graph {graph_digest(collection.links)}"
    )
    audit(session, request, "collect.graph", at=now, reason=summary)
    if collection.spool_error is not None:  # nothing was kept: no partial answer either
        request.next_attempt_at = now + retry_after
        request.last_error = f"{SPOOL_FAILED}: {collection.spool_error}"
        audit(session, request, "collect.spool_failed", at=now, reason=request.last_error)
        return False
    if collection.complete or request.partial_reason is not None:
        return True
    request.next_attempt_at = now + retry_after
    request.last_error = "connectors failed: " + ", ".join(collection.failed)
    audit(session, request, "collect.incomplete", at=now, reason=request.last_error)
    log.warning(
        "request.collect_incomplete",
        failed=collection.failed,
        retry_in=retry_after.total_seconds(),
    )
    return False
