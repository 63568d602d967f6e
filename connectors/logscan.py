"""Reading logs for the ``access_log`` connector: large blocks of whole lines, searched as bytes.

A log is read in blocks of whole lines.  Each block is searched, as bytes, for the values
sought (in lower case, the way the connector compares); only the lines that may hold one
are cut out, numbered, decoded and handed on.  A line is handed on whenever the connector's
own test (``Matcher.may_concern``) could be true of it, so what is found is exactly what
reading every line would find; the byte search only decides which lines need not be looked
at:

- a line of ASCII bytes only holds a value in lower case exactly when its bytes, in lower
  case, hold the value's bytes;
- a line with other bytes is handed on when its block, decoded, holds a value (composing
  and lower-casing may turn other characters into the ones sought);
- in ``combined`` logs, a line with ``%`` is handed on when its block holds a
  percent-encoded character of a value (or any non-ASCII one, or ``+`` for a value with a
  space) and the block, URL-decoded, holds a value;
- in ``jsonl`` logs, every line with a backslash is handed on (a JSON escape may spell a
  value differently);
- a line of 64 KiB or more is never a log entry: it is handed on as ``None``, and passed
  over without being held whole.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from pathlib import Path
from urllib.parse import unquote_plus

from sarbot.connector import ConnectorError

MAX_LINE_BYTES = 64 * 1024
BLOCK_BYTES = 128 * 1024
_WINDOW = MAX_LINE_BYTES // 2  # a line of MAX_LINE_BYTES or more holds a whole aligned window
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_PERCENT_CODE = re.compile(rb"%[0-9a-f]{2}")
_HIGH_CODES = frozenset(b"%%%02x" % n for n in range(0x80, 0x100))

Line = tuple[int, str | None]


class Prefilter:
    """Which lines of a block may hold one of ``needles`` (values in lower case), as the
    connector's test ``holds(text)`` would find them in a line of a log of ``log_format``."""

    def __init__(self, needles: set[str], log_format: str, holds: Callable[[str], bool]) -> None:
        self.holds = holds
        self.plain = [n.encode() for n in needles if n.isascii() and n]
        self.jsonl = log_format == "jsonl"
        self.combined = log_format == "combined"
        self.space = any(" " in n for n in needles)
        self.encoded = set(_HIGH_CODES)
        for char in {c for n in needles if n.isascii() for c in n}:
            for variant in {char.lower(), char.upper()}:
                self.encoded.add(b"%%%02x" % ord(variant))

    def starts(self, block: bytes) -> list[int]:
        """The offsets of the lines of ``block`` that may hold a value, in order."""
        found: set[int] = set()
        lowered = block.lower()
        for needle in self.plain:
            _lines_at(lowered, needle, found)
        if not block.isascii() and self.holds(block.decode("utf-8", "replace")):
            _lines_matching(block, _NON_ASCII, found)
        if self.jsonl and b"\\" in block:
            _lines_at(block, b"\\", found)
        if self.combined and b"%" in block and self._decoded_may_hold(block, lowered):
            _lines_at(block, b"%", found)
        for offset in range(0, len(block) - _WINDOW + 1, _WINDOW):
            if block.find(b"\n", offset, offset + _WINDOW) < 0:  # inside a very long line
                found.add(block.rfind(b"\n", 0, offset) + 1)
        return sorted(found)

    def _decoded_may_hold(self, block: bytes, lowered: bytes) -> bool:
        codes = set(_PERCENT_CODE.findall(lowered))
        if not (codes & self.encoded or (self.space and b"+" in block)):
            return False  # URL-decoding makes none of the characters sought
        return self.holds(unquote_plus(block.decode("utf-8", "replace")))


def _lines_at(block: bytes, needle: bytes, found: set[int]) -> None:
    """Add the start of every line holding ``needle``."""
    at = block.find(needle)
    while at >= 0:
        found.add(block.rfind(b"\n", 0, at) + 1)
        end = block.find(b"\n", at)
        if end < 0:
            return
        at = block.find(needle, end)


def _lines_matching(block: bytes, pattern: re.Pattern[bytes], found: set[int]) -> None:
    match = pattern.search(block)
    while match:
        at = match.start()
        found.add(block.rfind(b"\n", 0, at) + 1)
        end = block.find(b"\n", at)
        if end < 0:
            return
        match = pattern.search(block, end)


def candidate_lines(stream: BufferedIOBase, path: Path, prefilter: Prefilter) -> Iterator[Line]:
    """The numbered lines the prefilter lets through, decoded with replacement; None for a
    line too long to be a log entry."""
    for first, block in read_blocks(stream, path):
        if block is None:
            yield first, None
            continue
        number, counted = first, 0
        for start in prefilter.starts(block):
            number += block.count(b"\n", counted, start)
            counted = start
            end = block.find(b"\n", start)
            end = len(block) if end < 0 else end
            if end - start >= MAX_LINE_BYTES:
                yield number, None
            else:
                yield number, block[start:end].decode("utf-8", "replace").rstrip("\r\n")


def read_blocks(stream: BufferedIOBase, path: Path) -> Iterator[tuple[int, bytes | None]]:
    """Blocks of whole lines, each with the number of its first line (the last block may end
    without a newline); ``None`` for a line of ``MAX_LINE_BYTES`` or more that did not fit a
    block, skipped to its end without being held."""
    number = 1
    carry = b""
    skipping = False
    try:
        while chunk := stream.read(BLOCK_BYTES):
            if skipping:
                end = chunk.find(b"\n")
                if end < 0:
                    continue
                skipping, chunk = False, chunk[end + 1 :]
            cut = chunk.rfind(b"\n") + 1
            if cut:
                block = carry + chunk[:cut] if carry else chunk[:cut]
                yield number, block
                number += block.count(b"\n")
                carry = chunk[cut:]
            else:
                carry += chunk
            if len(carry) >= MAX_LINE_BYTES:
                yield number, None
                number += 1
                carry, skipping = b"", True
        if carry:
            yield number, carry
    except (OSError, EOFError, zlib.error) as exc:
        raise ConnectorError(
            f"{path}: cannot be read past line {number - 1} (damaged or truncated data)"
        ) from exc
