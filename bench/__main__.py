"""``make bench``: every benchmark at full size, or the ones named.

    .venv/bin/python -m bench [NAME ...] [--scale smoke|full]

Prints each benchmark's figures as a Markdown table (for docs/performance.md).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
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
    options = parser.parse_args(argv)
    known = benchmarks()
    unknown = [name for name in options.names if name not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name in options.names or list(known):
        print(table(name, known[name](options.scale)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
