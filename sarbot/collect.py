"""Asking every configured connector what it holds on the requester."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from sarbot.connector import Identity, Record
from sarbot.package import SourceData
from sarbot.registry import ConfiguredConnector


@dataclass(frozen=True)
class Collection:
    """The data found, and the connectors that could not answer."""

    sources: list[SourceData]
    failed: list[str]

    @property
    def complete(self) -> bool:
        return not self.failed


async def collect(
    identity: Identity, connectors: Sequence[ConfiguredConnector], log: FilteringBoundLogger
) -> Collection:
    """Run every connector at once, each in a worker thread; one failing never stops the others."""
    results = await asyncio.gather(*(_one(identity, c, log) for c in connectors))
    sources = [r for r in results if isinstance(r, SourceData)]
    failed = [c.name for c, r in zip(connectors, results, strict=True) if r is None]
    return Collection(sources, failed)


async def _one(
    identity: Identity, configured: ConfiguredConnector, log: FilteringBoundLogger
) -> SourceData | None:
    started = time.monotonic()
    try:
        records: list[Record] = await asyncio.to_thread(
            lambda: list(configured.connector.collect(identity))
        )
    except (
        Exception
    ) as exc:  # a connector may fail in any way; its error text may hold data, so log the type
        log.warning(
            "connector.failed",
            connector=configured.name,
            error_type=type(exc).__name__,
            seconds=round(time.monotonic() - started, 3),
        )
        return None
    log.info(
        "connector.collected",
        connector=configured.name,
        records=len(records),
        seconds=round(time.monotonic() - started, 3),
    )
    return SourceData(configured.name, configured.description, records)
