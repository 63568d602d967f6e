"""The export folder: messages waiting to be sent, each a private file written atomically.

A file is written to a temporary name, flushed and then renamed, so a
half-written export never exists under its final name.  Files are 0600 in a
0700 folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from sarbot.faults import CrashPoints


def write_private_file(path: Path, data: bytes, crash_points: CrashPoints) -> None:
    """Write a 0600 file atomically: temporary name, fsync, rename, fsync the folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            crash_points.point("package.partial")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
