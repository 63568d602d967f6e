"""The export folder: messages waiting to be sent, each a private file written atomically.

A file is written to a temporary name, flushed and then renamed, so a
half-written export never exists under its final name.  Files are 0600 in a
0700 folder.  A temporary file left by a writer that was killed is removed by
the next writer of the same names (``remove_left_over``), or by the sweep.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path

from sarbot.faults import CrashPoints

TEMPORARY = ".partial"
"""How the name of a file being written ends; it starts with a dot and the final name."""


def write_private_file(
    path: Path, data: bytes | Iterable[bytes], crash_points: CrashPoints
) -> None:
    """Write a 0600 file atomically: temporary name, fsync, rename, fsync the folder.

    ``data`` is the bytes, or blocks of them written as they come (a large file).

    The temporary file is new and unique (``mkstemp``: created exclusively, 0600), so a
    stale file or a symlink planted under a guessable name changes nothing, and two writers
    of one path do not share it.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in [data] if isinstance(data, bytes) else data:
                out.write(block)
            crash_points.point("package.partial")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def remove_left_over(folder: Path, prefix: str, *, keep: Collection[str]) -> tuple[int, list[Path]]:
    """Delete the files whose names start with ``prefix``, and their temporary files, but
    those whose names are in ``keep``; how many went, and those that could not.

    Files are left over only by a writer killed before its rename (a temporary file) or
    before what records the file was committed, so the caller must be the only one who may
    write files of those names now (for an export, it holds the request's claim) and keep
    every file recorded.  Names are compared, not paths: one folder may be named otherwise
    elsewhere (a link).  Best effort: what cannot be deleted is left (the sweep tries again).
    """
    escaped = glob.escape(prefix)
    removed, stuck = 0, []
    for path in [*folder.glob(f".{escaped}*{TEMPORARY}"), *folder.glob(f"{escaped}*")]:
        if path.name in keep or not path.is_file():
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            stuck.append(path)
        else:
            removed += 1
    return removed, stuck


def stored_file(recorded: str | None, folder: Path) -> Path | None:
    """Where a prepared message's file is: where it was written (``recorded``) or, when the
    export folder has been moved since (and ``export_dir`` with it), the file of that name
    in ``folder`` (names are unique: each holds its reference)."""
    if not recorded:
        return None
    written = Path(recorded)
    if written.is_file():
        return written
    moved = folder / written.name
    return moved if moved.is_file() else written


def read_file(path: Path | None) -> bytes | None:
    """The file's bytes, or None if there is no file."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
