"""Reading the lines the ``access_log`` index points at (``connectors.logindex``).

A lookup's ``Plan`` for one file (computed from the index) names the lines to read and
where each starts; they are read, with what the file gained since it was indexed, exactly
as a scan hands lines on.  Lines in a compressed file can only be reached by inflating the
file up to them, so the files after the one being read may be read ahead in other threads
(``prefetched``): inflating releases the interpreter's lock.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from io import BufferedIOBase, BufferedReader
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

from connectors.logscan import DAMAGED, MAX_LINE_BYTES, Line, Prefilter, candidate_lines, open_log
from sarbot.connector import ConnectorError

HEAD_BYTES = 4096


class Plan(NamedTuple):
    """What to read of one file: the lines numbered, by the index's batches of line lengths
    (first line, its offset, the lengths packed), and past the lines indexed unless
    ``indexed`` (the lines indexed) is -1 (the file is as indexed, to its end)."""

    head: bytes
    size: int
    indexed: int
    batches: list[Any]
    numbers: list[int]


def checked(stream: BufferedIOBase, path: Path, plan: Plan) -> bool:
    """Whether the file is still the one indexed (its fingerprint); leaves it at its start."""
    with reading(path):
        found = fingerprint(stream, plan.size)
        stream.seek(0)
    return bool(found) and found == plan.head[: len(found)]


def read(stream: BufferedIOBase, path: Path, plan: Plan, prefilter: Prefilter) -> Iterator[Line]:
    """The lines numbered, read where they start; then what the file gained since."""
    at, numbers = 0, plan.numbers
    with reading(path):
        for first, start, packed in plan.batches:
            lengths = array("Q", zlib.decompress(packed))
            end = first + len(lengths)
            if at >= len(numbers) or numbers[at] >= end:
                continue
            offsets = list(accumulate(lengths, initial=start))
            while at < len(numbers) and numbers[at] < end:
                _seek(stream, offsets[numbers[at] - first])
                yield numbers[at], _line(stream.readline(MAX_LINE_BYTES + 1))
                at += 1
        if plan.indexed >= 0:
            stream.seek(plan.size)
            for number, line in candidate_lines(stream, path, prefilter):
                yield number + plan.indexed, line


def prefetched(path: Path, plan: Plan, prefilter: Prefilter) -> list[Line] | None:
    """The lines ``read`` hands on, read at once in a file of its own; None if the file is
    not the one indexed (it is then scanned)."""
    with open_log(path) as stream:
        return list(read(stream, path, plan, prefilter)) if checked(stream, path, plan) else None


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Damaged compressed data named as a scan names it: every read of a log the index
    points into (its fingerprint too) is made within this."""
    try:
        yield
    except DAMAGED as exc:
        raise ConnectorError(f"{path}: cannot be read (damaged or truncated data)") from exc


def inflated(stream: BufferedIOBase) -> bool:
    """Whether the stream ``open_log`` gave is a compressed file's text, not a plain file."""
    return not isinstance(stream, BufferedReader)


def _seek(stream: BufferedIOBase, offset: int) -> None:
    """Go to ``offset``: in a compressed file forward, inflating in large reads (faster than
    its ``seek``, which reads 8 KiB at a time)."""
    if inflated(stream):
        while (ahead := offset - stream.tell()) > 0 and stream.read(min(ahead, 1 << 20)):
            pass
    stream.seek(offset)


def _line(chunk: bytes) -> str | None:
    """One line read back, as a scan hands it on."""
    content = chunk[:-1] if chunk.endswith(b"\n") else chunk
    if len(content) >= MAX_LINE_BYTES:
        return None
    return content.decode("utf-8", "replace").rstrip("\r\n")


def fingerprint(stream: BufferedIOBase, size: int) -> bytes:
    """A hash of the text's first 4 KiB (or ``size`` bytes), and for a plain file of the
    4 KiB before ``size`` too; empty if the file is shorter than ``size``."""
    stream.seek(0)
    cut = min(size, HEAD_BYTES)
    head = stream.read(cut)
    if len(head) < cut:
        return b""
    if inflated(stream):  # read only as far as needed: rotated, never rewritten
        return hashlib.sha256(head).digest()
    stream.seek(size - cut)
    tail = stream.read(cut)
    if len(tail) < cut:
        return b""
    return hashlib.sha256(head).digest() + hashlib.sha256(tail).digest()


def fits(path: Path, head: bytes, size: int) -> bool:
    """Whether the file may be the one indexed up to ``size`` with the fingerprint ``head``."""
    with open_log(path) as stream, reading(path):
        found = fingerprint(stream, size)
    return bool(found) and found == head[: len(found)]
