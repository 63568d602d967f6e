"""Reading logs for the ``access_log`` connector: large blocks of whole lines, searched as bytes.

A log is read in blocks of whole lines.  Each block is searched, as bytes, for the values
sought (in lower case, the way the connector compares); only the lines that may hold one
are cut out, numbered, decoded and handed on.  A line is handed on whenever the connector's
own test (``Matcher.may_concern``) could be true of it, so what is found is exactly what
reading every line would find; the byte search only decides which lines need not be looked
at:

- a line of ASCII bytes only holds a value in lower case exactly when its bytes, in lower
  case, hold the value's bytes;
- a line with other bytes is handed on when it holds one of the four characters that
  composing and lower-casing turn into ASCII ones (``_TO_ASCII``), or, when a value is not
  ASCII itself, when its block, decoded, holds a value;
- in ``combined`` logs, a line is handed on when it holds a percent-encoded character of
  a value (in either case, or one a composed character of a value is made of), one of those
  four characters percent-encoded, ``+`` for a value with a space, or, when a value is not
  ASCII, any percent-encoded non-ASCII character and its block, URL-decoded, holds a value;
- in ``jsonl`` logs, every line with a backslash is handed on (a JSON escape may spell a
  value differently);
- a line of 64 KiB or more is never a log entry: it is handed on as ``None``, and passed
  over without being held whole.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BufferedIOBase
from pathlib import Path
from typing import cast
from urllib.parse import unquote_plus

from isal import igzip, isal_zlib

from connectors.logformats import compression
from sarbot.connector import ConnectorError

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 64 * 1024
BLOCK_BYTES = 128 * 1024
_WINDOW = MAX_LINE_BYTES // 2  # a line of MAX_LINE_BYTES or more holds a whole aligned window
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_HIGH_CODES = frozenset(b"%%%02x" % n for n in range(0x80, 0x100))
_TO_ASCII = tuple(c.encode() for c in "\u0130\u037e\u1fef\u212a")
"""The only characters that are not ASCII but put ASCII ones in a text once composed (NFC)
and lower-cased: U+0130 (i and a combining dot), U+037E (;), U+1FEF (`) and the Kelvin
sign U+212A (k); ``tests/test_access_log_prefilter.py`` checks it."""
_TO_ASCII_ENCODED = tuple("".join(f"%{b:02x}" for b in c).encode() for c in _TO_ASCII)
DAMAGED: tuple[type[Exception], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    cast(type[Exception], isal_zlib.error),  # its stub types it as an instance
)
"""What reading a damaged or truncated log raises: gzip's header and CRC checks raise an
``OSError`` (``BadGzipFile``), a cut stream ``EOFError``, a broken deflate block ISA-L's error."""

Line = tuple[int, str | None]


class Prefilter:
    """Which lines of a block may hold one of ``needles`` (values in lower case), as the
    connector's test ``holds(text)`` would find them in a line of a log of ``log_format``."""

    def __init__(self, needles: set[str], log_format: str, holds: Callable[[str], bool]) -> None:
        self.holds = holds
        self.plain = [n.encode() for n in needles if n.isascii() and n]
        self.ascii = all(n.isascii() for n in needles)
        self.jsonl = log_format == "jsonl"
        self.combined = log_format == "combined"
        self.space = any(" " in n for n in needles)
        encoded = set(_TO_ASCII_ENCODED) | (set() if self.ascii else set(_HIGH_CODES))
        # The ASCII characters of the values, and those a non-ASCII one is composed of (u of ü).
        for char in {c for n in needles for c in unicodedata.normalize("NFD", n) if c.isascii()}:
            for variant in {char.lower(), char.upper()}:
                encoded.add(b"%%%02x" % ord(variant))
        # Sought in a block in lower case, longest first (a character before its first byte).
        spellings = sorted(encoded, key=len, reverse=True)
        self.encoded = spellings
        self.triggers = re.compile(b"|".join(re.escape(code) for code in spellings))

    def starts(self, block: bytes) -> list[int]:
        """The offsets of the lines of ``block`` that may hold a value, in order."""
        found: set[int] = set()
        lowered = block.lower()
        for needle in self.plain:
            _lines_at(lowered, needle, found)
        if not block.isascii():
            if self.ascii:  # only four characters become ASCII ones when composed or lowered
                for spelled in _TO_ASCII:
                    _lines_at(block, spelled, found)
            elif self.holds(block.decode("utf-8", "replace")):
                _lines_matching(block, _NON_ASCII, found)
        if self.jsonl and b"\\" in block:
            _lines_at(block, b"\\", found)
        if self.combined and b"%" in block:
            self._encoded_lines(block, lowered, found)
        for offset in range(0, len(block) - _WINDOW + 1, _WINDOW):
            if block.find(b"\n", offset, offset + _WINDOW) < 0:  # inside a very long line
                found.add(block.rfind(b"\n", 0, offset) + 1)
        return sorted(found)

    def fixed_strings(self) -> list[bytes] | None:
        """The strings whose presence in a line, ASCII letters in either case, makes
        ``starts`` hand the line on, or None when it needs more than that (a value that is
        not ASCII: whole blocks are decoded for it).  A line of ``MAX_LINE_BYTES`` or more
        is handed on whatever it holds, which no string can say."""
        if not self.ascii:
            return None
        strings = [*self.plain, *_TO_ASCII]
        if self.jsonl:
            strings.append(b"\\")
        if self.combined:
            strings += self.encoded
            if self.space:
                strings.append(b"+")
        return strings

    def _encoded_lines(self, block: bytes, lowered: bytes, found: set[int]) -> None:
        """Add the lines that may hold a value once URL-decoded and not before: those with a
        character of a value (or one composing or lower-casing makes one) percent-encoded,
        or with ``+`` when a value has a space."""
        triggers = set(self.triggers.findall(lowered)) if self.triggers.search(lowered) else set()
        if self.space and b"+" in block:
            triggers.add(b"+")
        if not triggers:
            return
        if not self.ascii and not self.holds(unquote_plus(block.decode("utf-8", "replace"))):
            return  # every non-ASCII character is a trigger then: look closer first
        for trigger in triggers:
            _lines_at(lowered, trigger, found)


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
            number += newlines(block[counted:start])
            counted = start
            end = block.find(b"\n", start)
            end = len(block) if end < 0 else end
            if end - start >= MAX_LINE_BYTES:
                yield number, None
            else:
                yield number, block[start:end].decode("utf-8", "replace").rstrip("\r\n")


def newlines(data: bytes) -> int:
    """How many newlines ``data`` holds: its length less that of its text without them,
    which CPython finds about three times as fast as ``bytes.count`` finds one byte."""
    return len(data) - len(data.replace(b"\n", b""))


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
                number += newlines(block)
                carry = chunk[cut:]
            else:
                carry += chunk
            if len(carry) >= MAX_LINE_BYTES:
                yield number, None
                number += 1
                carry, skipping = b"", True
        if carry:
            yield number, carry
    except DAMAGED as exc:
        raise ConnectorError(
            f"{path}: cannot be read past line {number - 1} (damaged or truncated data)"
        ) from exc


@contextmanager
def open_log(path: Path) -> Iterator[BufferedIOBase]:
    """A log file opened for reading in binary, inflated when its first bytes are those of
    gzip (by ISA-L, about three times as fast as zlib; a ``gzip.GzipFile`` all the same), xz
    or bzip2.  Compressed otherwise (zstd), it is refused, naming it: read as plain bytes it
    would match nothing, and nothing would say so."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ConnectorError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with raw:
        kind = compression(raw.peek(16)[:16])
        if kind == "gzip":
            with _inflating(fileobj=raw, mode="rb") as unzipped:
                yield unzipped
        elif kind == "xz":
            with lzma.LZMAFile(raw) as unpacked:
                yield cast(BufferedIOBase, unpacked)
        elif kind == "bzip2":
            with bz2.BZ2File(raw) as unpacked:
                yield cast(BufferedIOBase, unpacked)
        elif kind is not None:
            raise ConnectorError(
                f"{path}: compressed with {kind}, which is not read: decompress it or "
                "compress it with gzip, or leave it out of the source's paths"
            )
        else:
            yield raw


_inflating = cast(Callable[..., gzip.GzipFile], igzip.GzipFile)  # its __init__ is unannotated
