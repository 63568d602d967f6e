"""What every benchmark shares: the work measured beside a baseline doing the same I/O in the
same run, as a ratio (these machines are noisy; absolute times are not comparable), and peak
memory.

A benchmark is a module of ``bench/`` with a function ``run(scale) -> list[Row]``: ``scale``
is ``"full"`` for ``make bench`` and ``"smoke"`` for the tests, which run every benchmark at
a tiny size so that it keeps working (``tests/test_bench.py``); figures of a smoke run mean
nothing and are never asserted on.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Scale = Literal["smoke", "full"]


@dataclass(frozen=True)
class Row:
    """One figure: sarbot's, its baseline's (same I/O, same run), and the goal for the ratio."""

    work: str
    measured: float
    baseline: float | None = None
    unit: str = "s"
    goal: str = ""
    """The goal for ``ratio`` (or for ``measured`` when there is no baseline), e.g. "<= 1.3x"."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline <= 0:
            return None
        return self.measured / self.baseline


def fastest(runs: int, work: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``work``, in seconds (the least disturbed one)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MiB: since it started (exec), or since
    ``reset_peak_rss``.  Linux's ``VmHWM``: ``getrusage``'s ``ru_maxrss`` would carry a forked
    child's parent's peak across exec, and could not be reset."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start this process's peak resident memory again from what it holds now (Linux)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` (0..1) of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


def machine() -> str:
    """One line naming the machine: CPU, cores, memory, Python."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count() or "?"
    memory = "?"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = meminfo.read_text().splitlines()[0].split()[1]
        memory = f"{int(total) / 1024 / 1024:.1f} GiB"
    return f"{cpu}, {cores} cores, {memory}, Python {platform.python_version()}"


def table(name: str, rows: list[Row]) -> str:
    """The benchmark's figures as a Markdown table, with when and where they were taken."""
    lines = [
        f"### {name}",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}",
        "",
        "| work | sarbot | baseline | ratio | goal | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = f"{row.baseline:.4g} {row.unit}" if row.baseline is not None else ""
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        lines.append(
            f"| {row.work} | {row.measured:.4g} {row.unit} | {baseline} | {ratio} "
            f"| {row.goal} | {row.note} |"
        )
    return "\n".join(lines) + "\n"
