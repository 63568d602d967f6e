"""Searching plain log files with the system's GNU grep, several files at once.

The block search in Python (``connectors.logscan``) reads about a quarter as fast as grep:
lower-casing a block, one search per value and counting its lines are each a pass of their
own.  For a plain file, grep can make the byte search instead.  It is given, as fixed
strings matched without regard to the case of ASCII letters (``-F -i`` in the C locale),
exactly the strings the block search looks for (``Prefilter.fixed_strings``), so it hands
on the lines the block search would, each with its number; the connector's own test still
decides every line.  What grep cannot stand in for is left to the Python scan, file by file:

- a compressed file (inflated by ISA-L, already faster than ``zgrep``);
- a value that is not ASCII (the block search decodes whole blocks for it);
- a file with a line of 32 KiB or more: a line of 64 KiB or more is handed on as too long to
  be an entry whatever it holds, and grep reports only lines holding a string.  Each file
  is read once for a run of 32 KiB without a newline, beside grep and before any of its
  lines is handed on.  A log that grows meanwhile may gain lines grep reads and that
  check did not: one of those too long to be an entry is then counted only if it holds a
  string sought.

The values sought reach grep through a pipe, never its command line (which other users of
the machine can read) nor a file.  grep reads the file the connector opened (through
``/proc/self/fd``), not its path, so a rotation in between cannot give it another file.
The searches of the next files of a source run while the lines of one are handed on, so
that the machine's cores search at once; those still running when the search stops are
ended.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import suppress
from io import BufferedReader
from pathlib import Path

from connectors.logformats import compression
from connectors.logscan import MAX_LINE_BYTES, Line, Prefilter, candidate_lines
from sarbot.connector import ConnectorError

WINDOW = MAX_LINE_BYTES // 2
"""A line of ``MAX_LINE_BYTES`` or more holds a whole aligned window of this size."""
CHECK_BYTES = 32 * WINDOW
PATTERN_BYTES = 16 * 1024
"""At most this much is written to grep's pipe of patterns (a pipe holds 64 KiB unread)."""
AHEAD = max(1, min(3, (os.cpu_count() or 2) - 1))
"""How many files past the one being read are searched at the same time."""
_ENV = {"LC_ALL": "C"}  # bytes, and ASCII letters the only ones with a case


@functools.cache
def gnu_grep() -> str | None:
    """The path of GNU grep, or None when the machine has none (the scan is then Python's)."""
    found = shutil.which("grep")
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, "--version"], capture_output=True, env=_ENV, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found if done.returncode == 0 and done.stdout.startswith(b"grep (GNU grep) ") else None


class Search:
    """grep over one open plain file; as a context manager, the file (ended on exit)."""

    def __init__(self, path: Path, stream: BufferedReader, prefilter: Prefilter) -> None:
        self.path = path
        self.stream = stream
        self.prefilter = prefilter
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, grep: str, patterns: bytes) -> None:
        """Start grep on its own description of the file, the patterns through a pipe."""
        low_end, write_end = os.pipe()
        try:  # above 0-2: a descriptor there is replaced in the child by its stdin, stdout
            # or stderr (in a process started with one closed), and grep would read another
            read_end = fcntl.fcntl(low_end, fcntl.F_DUPFD_CLOEXEC, 3)
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(low_end)
        try:
            with open(f"/proc/self/fd/{self.stream.fileno()}", "rb") as own:
                self.process = subprocess.Popen(
                    [grep, "-a", "-F", "-i", "-n", "-f", f"/dev/fd/{read_end}"],
                    stdin=own,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(read_end,),
                    env=_ENV,
                )
        finally:
            os.close(read_end)
            try:
                with suppress(BrokenPipeError):  # grep ended unread: its status says why
                    written = 0
                    while written < len(patterns):
                        written += os.write(write_end, patterns[written:])
            finally:
                os.close(write_end)

    def lines(self) -> Iterator[Line]:
        """The numbered lines grep found (None for one too long to be an entry); those of
        the Python scan if the file has a long line, or grep could not be started or
        failed before it found a line (a file that cannot be read then fails there)."""
        process = self.process
        if process is None or process.stdout is None or _has_long_lines(self.stream, self.path):
            yield from self._scanned()
            return
        out, limit = process.stdout, MAX_LINE_BYTES + 24  # a line's number, then the line
        found = cut = False
        while chunk := out.readline(limit):
            found = True
            head, _, text = chunk.partition(b":")
            if not head.isdigit():
                self.end()
                raise ConnectorError(f"{self.path}: grep's output could not be read")
            if not chunk.endswith(b"\n"):
                if len(chunk) < limit:  # grep ended inside a line
                    cut = True
                    break
                while chunk and not chunk.endswith(b"\n"):  # the rest of a long line
                    chunk = out.readline(limit)
                yield int(head), None
                continue
            content = text[:-1] if text.endswith(b"\n") else text
            if len(content) >= MAX_LINE_BYTES:
                yield int(head), None
            else:
                yield int(head), content.decode("utf-8", "replace").rstrip("\r\n")
        status = process.wait()
        if status in (0, 1) and not cut:  # 1: no line found
            return
        if found:
            within = ", inside a line" if cut else ""
            raise ConnectorError(
                f"{self.path}: cannot be read (grep ended with status {status}{within})"
            )
        yield from self._scanned()

    def _scanned(self) -> Iterator[Line]:
        self.end()
        self.stream.seek(0)
        yield from candidate_lines(self.stream, self.path, self.prefilter)

    def end(self) -> None:
        """Stop grep if it still runs, and wait for it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process.wait()

    def close(self) -> None:
        """End grep and close the file."""
        try:
            self.end()
        finally:
            self.stream.close()

    def __enter__(self) -> BufferedReader:
        return self.stream

    def __exit__(self, *_: object) -> None:
        self.close()


class Ahead:
    """The searches of one source's files, each started a few files before it is read (none
    unless ``use``); those not taken are ended on exit."""

    def __init__(self, paths: Sequence[Path], prefilter: Prefilter, use: bool = True) -> None:
        strings = prefilter.fixed_strings() if use else None
        patterns = b"".join(s + b"\n" for s in strings or ())
        usable = strings and len(patterns) <= PATTERN_BYTES and not any(b"\n" in s for s in strings)
        self.grep = gnu_grep() if usable else None
        self.patterns = patterns
        self.paths = list(paths)
        self.prefilter = prefilter
        self.started: dict[int, Search | None] = {}

    def take(self, position: int) -> Search | None:
        """The search of the file at ``position`` (None: the scan opens and reads it), the
        files after it started."""
        if self.grep is None:
            return None
        for ahead in range(position, min(position + 1 + AHEAD, len(self.paths))):
            if ahead not in self.started:
                self.started[ahead] = self._started(self.paths[ahead])
        return self.started.pop(position, None)

    def _started(self, path: Path) -> Search | None:
        assert self.grep is not None
        try:
            stream = path.open("rb")
        except OSError:
            return None  # the scan opens it again and says why it cannot
        search = Search(path, stream, self.prefilter)
        try:
            if compression(stream.peek(16)[:16]) is not None:  # the scan reads it
                stream.close()
                return None
            search.start(self.grep, self.patterns)
        except OSError:
            pass  # grep could not be started: the Python scan reads the file
        except BaseException:
            search.close()
            raise
        return search

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *_: object) -> None:
        for search in self.started.values():
            if search is not None:
                search.close()
        self.started.clear()


def _has_long_lines(stream: BufferedReader, path: Path) -> bool:
    """Whether the file has ``WINDOW`` bytes or more without a newline, read at its own
    offsets (the stream's position is left as it is).  A run within a chunk that long
    holds a window aligned to the chunk's start; one across chunks is counted on."""
    fd, offset, run = stream.fileno(), 0, 0
    while chunk := _pread(fd, offset, path):
        offset += len(chunk)
        first = chunk.find(b"\n")
        if first < 0:
            run += len(chunk)
            if run >= WINDOW:
                return True
            continue
        if run + first >= WINDOW:
            return True
        for start in range(0, len(chunk) - WINDOW + 1, WINDOW):
            if chunk.find(b"\n", start, start + WINDOW) < 0:
                return True
        run = len(chunk) - 1 - chunk.rfind(b"\n")
    return False


def _pread(fd: int, offset: int, path: Path) -> bytes:
    try:
        return os.pread(fd, CHECK_BYTES, offset)
    except OSError as exc:
        raise ConnectorError(f"{path}: cannot be read: {exc.strerror or exc}") from None
