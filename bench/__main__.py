"""``make bench``: every benchmark at full size, or the ones named.

    .venv/bin/python -m bench [NAME ...] [--scale smoke|full] [--update FILE]

Prints each benchmark's figures as a Markdown table; with ``--update`` (as
``make bench`` does, on docs/performance.md) also writes each table into the
file, between the markers ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``
(added at the end the first time).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import bench
from bench.common import Row, Scale, table

NOT_BENCHMARKS = {"common", "crash"}
"""Modules of bench/ that are not benchmarks (crash: the long crash run, ``-m bench.crash``)."""


def benchmarks() -> dict[str, Callable[[Scale], list[Row]]]:
    """Every module of bench/ with a ``run(scale)``, by name."""
    found: dict[str, Callable[[Scale], list[Row]]] = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in NOT_BENCHMARKS:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        run = getattr(module, "run", None)
        if callable(run):
            found[info.name] = cast(Callable[[Scale], list[Row]], run)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--scale", choices=["smoke", "full"], default="full")
    parser.add_argument("--update", type=Path, help="write each table into this Markdown file")
    options = parser.parse_args(argv)
    known = benchmarks()
    unknown = [name for name in options.names if name not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name in options.names or list(known):
        figures = table(name, known[name](options.scale))
        print(figures, flush=True)
        if options.update is not None:
            update(options.update, name, figures)
    return 0


def update(path: Path, name: str, figures: str) -> None:
    """Put a benchmark's table into a Markdown file, in place of the one before."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    command = f"Command: `make bench` (or `.venv/bin/python -m bench {name}`).\n"
    block = f"{start}\n{figures}\n{command}{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
