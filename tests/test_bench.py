"""Every benchmark of bench/ runs at a tiny size, so that ``make bench`` keeps working.

Its figures mean nothing at that size and are not asserted on (no timed assertions in the
tests); what is asserted is that each benchmark runs, measures its work beside a baseline
where it has one, and prints a table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import benchmarks, main, update
from bench.common import Row, peak_rss_mb, percentile, reset_peak_rss

BENCHMARKS = benchmarks()


def test_the_helpers() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert Row("x", 3.0, 2.0).ratio == 1.5 and Row("x", 1.0).ratio is None


def test_peak_memory_is_the_processs_own() -> None:
    """A child's peak is its own, not its parent's carried across exec (as ru_maxrss would
    be); and a peak can be started again from what the process holds now."""
    ballast = b"\x01" * (300 * 1024 * 1024)  # written: every page resident
    held = peak_rss_mb()
    assert held > 300
    child = subprocess.run(
        [sys.executable, "-c", "from bench.common import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(child.stdout) < held - 250
    del ballast
    reset_peak_rss()
    assert peak_rss_mb() < held - 250


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_runs_small(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = BENCHMARKS[name]("smoke")
    assert rows and all(row.measured >= 0 for row in rows)
    assert main([name, "--scale", "smoke"]) == 0
    assert f"### {name}" in capsys.readouterr().out


def test_update_puts_each_table_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nprose\n")
    update(doc, "x", "### x\n\nfirst\n")
    update(doc, "y", "### y\n\nother\n")
    update(doc, "x", "### x\n\nsecond\n")
    text = doc.read_text()
    assert text.startswith("# Performance\n\nprose\n")
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("### x") < text.index("### y")
