"""Reading logs for the ``access_log`` connector: large blocks of whole lines, searched as bytes.

A log is read in blocks of whole lines.  Each block is searched once, as bytes, for the
values sought in any case (the connector compares in lower case) and the other spellings
below, by a compiled multi-literal matcher; only the lines that may hold one are cut out,
numbered, decoded and handed on.  A line is handed on whenever the connector's own test
(``Matcher.may_concern``) could be true of it, so what is found is exactly what reading
every line would find; the byte search only decides which lines need not be looked at:

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

import enum
import gzip
import re
import threading
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BufferedIOBase
from pathlib import Path
from urllib.parse import unquote_plus

import hyperscan

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
_STANDS_IN = tuple(
    (unicodedata.normalize("NFC", c.decode()).lower(), encoded)
    for c, encoded in zip(_TO_ASCII, _TO_ASCII_ENCODED, strict=True)
)
"""What each of those characters becomes, and how a URL encodes it."""
URL_CHARS = 64
"""The longest ASCII value sought in one pattern of all its URL spellings; the pattern of a
longer one takes too long to compile (up to 0.2 s at 64 characters, seconds at 250)."""

Line = tuple[int, str | None]


class Prefilter:
    """Which lines of a block may hold one of ``needles`` (values in lower case), as the
    connector's test ``holds(text)`` would find them in a line of a log of ``log_format``.

    Everything sought is found in one pass over the block by a compiled matcher
    (Hyperscan), in either case.  When every value is ASCII (as addresses and logins
    nearly always are), a value in a ``combined`` log is sought in every way a URL may
    spell it, in one pattern (each character itself, percent-encoded, ``+`` for a space,
    or a ``_TO_ASCII`` character that becomes it, percent-encoded), and a line with one of
    those characters as it is is always handed on.  Otherwise, and for values longer than
    ``URL_CHARS``, each percent-encoded character of a value is sought by itself (when not
    every value is ASCII, only in a block that holds a value once URL-decoded).  Each
    thread that searches has scratch space of its own (the index reads compressed files
    ahead in threads)."""

    def __init__(self, needles: set[str], log_format: str, holds: Callable[[str], bool]) -> None:
        self.holds = holds
        self.ascii = all(n.isascii() for n in needles)
        self.jsonl = log_format == "jsonl"
        self.combined = log_format == "combined"
        # In combined logs a value may be percent-encoded.  An ASCII value is sought in one
        # pattern that allows every spelling; values that are not all ASCII, and ASCII ones
        # too long for such a pattern to compile quickly, by each encoded character.
        by_code = [
            n for n in sorted(needles) if self.combined and (not self.ascii or len(n) > URL_CHARS)
        ]
        self.space = any(" " in n for n in by_code)
        sought: list[tuple[bytes, Sought]] = [
            (
                _in_url(n) if self.combined and n not in by_code else _literal(n.encode()),
                Sought.VALUE,
            )
            for n in sorted(needles)
            if n.isascii() and n
        ]
        if self.ascii:  # only four characters become ASCII ones when composed or lowered
            sought += [(_literal(spelled), Sought.COMPOSED) for spelled in _TO_ASCII]
        if by_code:
            encoded = set() if self.ascii else set(_TO_ASCII_ENCODED) | set(_HIGH_CODES)
            # The ASCII characters of the values, and those a non-ASCII one is composed of
            # (u of ü); the matcher finds each code in either case, as lower-casing would.
            for char in {c for n in by_code for c in unicodedata.normalize("NFD", n)}:
                if char.isascii():
                    encoded.add(b"%%%02x" % ord(char.lower()))
                    encoded.add(b"%%%02x" % ord(char.upper()))
            sought += [(_literal(code), Sought.ENCODED) for code in sorted(encoded)]
        self.kinds = [kind for _, kind in sought]
        self.database: hyperscan.Database | None = None
        if sought:
            self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self.database.compile(
                expressions=[pattern for pattern, _ in sought],
                ids=list(range(len(sought))),
                elements=len(sought),
                # In either case: the four characters have no ASCII letter in their bytes,
                # and one matcher that ignores case throughout is the faster.
                flags=hyperscan.HS_FLAG_CASELESS,
            )
        self._scratch = threading.local()

    def starts(self, block: bytes) -> list[int]:
        """The offsets of the lines of ``block`` that may hold a value, in order."""
        found: set[int] = set()
        encoded: list[int] = []
        for kind, end in self._search(block):
            if kind is Sought.ENCODED:
                encoded.append(end)
            else:  # no pattern holds a newline: the last one before the end starts the line
                found.add(block.rfind(b"\n", 0, end) + 1)
        if not self.ascii and not block.isascii() and self.holds(block.decode("utf-8", "replace")):
            _lines_matching(block, _NON_ASCII, found)
        if self.jsonl and b"\\" in block:
            _lines_at(block, b"\\", found)
        if self.space and b"+" in block:
            encoded.append(-1)  # a ``+`` may be a space once decoded: its lines, below
        if encoded:
            self._encoded_lines(block, encoded, found)
        for offset in range(0, len(block) - _WINDOW + 1, _WINDOW):
            if block.find(b"\n", offset, offset + _WINDOW) < 0:  # inside a very long line
                found.add(block.rfind(b"\n", 0, offset) + 1)
        return sorted(found)

    def _search(self, block: bytes) -> list[tuple[Sought, int]]:
        """What the matcher found in ``block``: each kind with the offset its match ends at."""
        if self.database is None:
            return []
        scratch = getattr(self._scratch, "space", None)
        if scratch is None:
            scratch = self._scratch.space = hyperscan.Scratch(self.database)
        hits: list[tuple[Sought, int]] = []
        kinds = self.kinds

        def hit(which: int, _start: int, end: int, _flags: int, _context: object) -> None:
            hits.append((kinds[which], end))

        self.database.scan(block, match_event_handler=hit, scratch=scratch)
        return hits

    def _encoded_lines(self, block: bytes, encoded: list[int], found: set[int]) -> None:
        """Add the lines that may hold a value once URL-decoded and not before: those with a
        character of a value (or one composing or lower-casing makes one) percent-encoded,
        or with ``+`` when a value has a space (offset -1)."""
        if not self.ascii and not self.holds(unquote_plus(block.decode("utf-8", "replace"))):
            return  # every non-ASCII character is a trigger then: look closer first
        for end in encoded:
            if end >= 0:
                found.add(block.rfind(b"\n", 0, end) + 1)
            else:
                _lines_at(block, b"+", found)


def _in_url(value: str) -> bytes:
    """A pattern for an ASCII ``value`` however a URL may spell it, once decoded, composed
    and lower-cased: each character itself, percent-encoded (either case), ``+`` for a space,
    or the percent-encoded character among ``_TO_ASCII`` that becomes it."""
    last = len(value) - 1
    return b"".join(_one_of(_url_spellings(char, at == last)) for at, char in enumerate(value))


def _url_spellings(char: str, last: bool) -> set[bytes]:
    forms = {char.encode(), *(b"%%%02x" % ord(case) for case in {char.lower(), char.upper()})}
    if char == " ":
        forms.add(b"+")
    # U+0130 becomes i and a combining dot, so it can only be a value's last character.
    forms.update(
        encoded
        for becomes, encoded in _STANDS_IN
        if becomes[0] == char and (len(becomes) == 1 or last)
    )
    return forms


def _one_of(forms: set[bytes]) -> bytes:
    return b"(?:" + b"|".join(_literal(form) for form in sorted(forms)) + b")"


def _literal(text: bytes) -> bytes:
    """``text`` as a pattern that matches it and nothing else: letters and digits as they
    are, every other byte by its code."""
    return b"".join(
        bytes([byte]) if chr(byte).isascii() and chr(byte).isalnum() else b"\\x%02x" % byte
        for byte in text
    )


class Sought(enum.Enum):
    """What the matcher of a ``Prefilter`` looks for."""

    VALUE = "a value, in any case (in combined logs of ASCII values, however a URL spells it)"
    COMPOSED = "a character that composing or lower-casing turns into an ASCII one"
    ENCODED = "a percent-encoded character of a value (combined logs: not all ASCII, or long)"


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
    except (OSError, EOFError, zlib.error) as exc:
        raise ConnectorError(
            f"{path}: cannot be read past line {number - 1} (damaged or truncated data)"
        ) from exc


@contextmanager
def open_log(path: Path) -> Iterator[BufferedIOBase]:
    """A log file opened for reading in binary, through gzip when it starts with gzip's magic."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ConnectorError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with raw:
        if raw.peek(len(GZIP_MAGIC))[: len(GZIP_MAGIC)] == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped
        else:
            yield raw
