"""Packing an export into zip files, from files written to disk as they are made.

An export that fits the attachment limit is one zip.  A larger one is split
into numbered parts, each a zip of its own with a copy of the manifest, so
every part can be opened alone; a single file too large for one part is cut
into numbered pieces (``data.json.001``, ...) that are joined by putting them
end to end.  ``manifest.json`` lists every file with its size, SHA-256 and
part.

The export's files are written once, as they are generated, to temporary files
(``Archive.text``, ``Archive.binary``), and measured on the way: size, SHA-256,
and how small deflate makes them.  The zips are then written from those files a
block at a time, each to a temporary file of its own (a ``Part``), so neither a
file of the export nor one of its zips is ever held in memory whole.  Where the
temporary files live is the caller's choice (``new_file``): nameless files in
the temporary folder when packaging, memory for the small exports of the tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import IO

# Space kept free in each part for the manifest and the zip's own structures.
PART_OVERHEAD = 256 * 1024
FIRST_FILES = ("index.html", "README.txt")
BLOCK = 1 << 18
"""Bytes read or written at a time."""

NewFile = Callable[[], IO[bytes]]
"""Makes an empty, readable and writable, seekable file for the export's work."""


@dataclass(frozen=True)
class Part:
    """One attachment of the export, in a file of its own."""

    number: int
    count: int
    filename: str
    size: int
    sha256: str
    file: IO[bytes] = field(repr=False)

    @property
    def data(self) -> bytes:
        """The whole attachment (it may be as large as the attachment limit)."""
        self.file.seek(0)
        return self.file.read()

    def chunks(self, size: int = BLOCK) -> Iterator[bytes]:
        yield from _blocks(self.file, 0, self.size, size)

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.filename.endswith(".pgp") else "application/zip"


def stored_part(number: int, count: int, filename: str, file: IO[bytes]) -> Part:
    """A part of what ``file`` holds, measured."""
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while block := file.read(BLOCK):
        digest.update(block)
        size += len(block)
    return Part(number, count, filename, size, digest.hexdigest(), file)


def export_filename(reference: str, number: int = 1, count: int = 1) -> str:
    if count == 1:
        return f"personal-data-{reference}.zip"
    return f"personal-data-{reference}-part{number}of{count}.zip"


class Writer:
    """A file of the export as it is written: kept on disk, hashed, and deflated to size it."""

    def __init__(self, name: str, file: IO[bytes], limit: int) -> None:
        self.name = name
        self.file = file
        self.size = 0
        self.limit = limit
        self.packed: int | None = 0
        """How small deflate (zlib, level 6) makes it; None once more than the limit."""
        self._hash = hashlib.sha256()
        self._deflate: zlib._Compress | None = zlib.compressobj(6)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self._hash.update(data)
        self.size += len(data)
        if self._deflate is not None and self.packed is not None:
            self.packed += len(self._deflate.compress(data))
            if self.packed > self.limit:  # more than a zip may hold: its exact size is moot
                self._deflate, self.packed = None, None

    def finish(self) -> None:
        if self._deflate is not None and self.packed is not None:
            self.packed += len(self._deflate.flush())
            self._deflate = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class TextOut:
    """Text written to a ``Writer`` as UTF-8, gathered into blocks."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._pending: list[str] = []
        self._length = 0

    def write(self, text: str) -> int:
        self._pending.append(text)
        self._length += len(text)
        if self._length >= BLOCK // 4:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.writer.write("".join(self._pending).encode("utf-8"))
            self._pending.clear()
            self._length = 0


@dataclass(frozen=True)
class _Piece:
    """A file, or one cut of a file too large for a part, and where it goes."""

    name: str
    source: str
    offset: int
    length: int
    packed: int
    part: int = 0


class Archive:
    """The export's files, written one after another, then packed into zips."""

    def __init__(self, new_file: NewFile, *, limit: int) -> None:
        self.new_file = new_file
        self.limit = limit
        self.files: dict[str, Writer] = {}

    @contextmanager
    def binary(self, name: str) -> Iterator[Writer]:
        if name in self.files:
            raise ValueError(f"the export already has a file {name}")
        writer = Writer(name, self.new_file(), self.limit)
        yield writer
        writer.finish()
        self.files[name] = writer

    @contextmanager
    def text(self, name: str) -> Iterator[TextOut]:
        with self.binary(name) as writer:
            out = TextOut(writer)
            yield out
            out.flush()

    def add(self, name: str, data: bytes) -> None:
        with self.binary(name) as writer:
            writer.write(data)

    def close(self) -> None:
        """Close the files written (the parts are the caller's)."""
        for writer in self.files.values():
            writer.file.close()

    def read(self, name: str) -> bytes:
        """A whole file (for small exports)."""
        writer = self.files[name]
        return b"".join(_blocks(writer.file, 0, writer.size))

    def pack(self, *, reference: str, generated_at: datetime) -> list[Part]:
        """The export as one zip, or as numbered parts when it would exceed the limit."""
        files, limit = list(self.files.values()), self.limit
        packed = [f.packed for f in files]
        # A zip is larger than what it holds deflated: only a small enough export may fit one.
        if all(p is not None for p in packed) and sum(p or 0 for p in packed) <= limit:
            whole = [_Piece(f.name, f.name, 0, f.size, f.packed or 0, 1) for f in files]
            manifest = self._manifest(whole, reference, generated_at, 1)
            single = self._zip(whole, manifest, generated_at)
            if single.seek(0, io.SEEK_END) <= limit:
                return [stored_part(1, 1, export_filename(reference), single)]
            single.close()
        budget = limit - min(PART_OVERHEAD, limit // 8)
        pieces = _place(self._cut(budget), budget=budget)
        count = pieces[-1].part
        manifest = self._manifest(pieces, reference, generated_at, count)
        return [
            stored_part(
                n,
                count,
                export_filename(reference, n, count),
                self._zip([p for p in pieces if p.part == n], manifest, generated_at),
            )
            for n in range(1, count + 1)
        ]

    def _cut(self, budget: int) -> list[_Piece]:
        """Files in order, the first ones first; a file that cannot fit a part is cut."""
        order = [n for n in FIRST_FILES if n in self.files]
        order += [n for n in self.files if n not in FIRST_FILES]
        step = budget * 99 // 100  # deflate never grows data by more than a fraction of this
        pieces = []
        for name in order:
            spooled = self.files[name]
            if spooled.packed is not None and spooled.packed <= budget:
                pieces.append(_Piece(name, name, 0, spooled.size, spooled.packed))
                continue
            offsets = range(0, spooled.size, step)
            width = max(3, len(str(len(offsets))))
            for number, offset in enumerate(offsets, 1):
                length = min(step, spooled.size - offset)
                packed = _packed_size(spooled.file, offset, length)
                pieces.append(_Piece(f"{name}.{number:0{width}d}", name, offset, length, packed))
        return pieces

    def _manifest(
        self, pieces: list[_Piece], reference: str, generated_at: datetime, count: int
    ) -> bytes:
        entries = []
        for name, spooled in self.files.items():
            own = [p for p in pieces if p.source == name]
            entry: dict[str, object] = {
                "name": name,
                "size": spooled.size,
                "sha256": spooled.sha256,
                "part": own[0].part,
            }
            if len(own) > 1 or own[0].name != name:
                entry["pieces"] = [{"name": p.name, "part": p.part, "size": p.length} for p in own]
            entries.append(entry)
        document = {
            "reference": reference,
            "generated_at": generated_at.isoformat(),
            "parts": count,
            "files": entries,
        }
        return json.dumps(document, indent=2).encode("utf-8")

    def _zip(self, pieces: list[_Piece], manifest: bytes, when: datetime) -> IO[bytes]:
        out = self.new_file()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for piece in pieces:
                spooled = self.files[piece.source]
                with archive.open(_info(piece.name, when, piece.length), "w") as entry:
                    for block in _blocks(spooled.file, piece.offset, piece.length):
                        entry.write(block)
            archive.writestr(_info("manifest.json", when, len(manifest)), manifest)
        return out


def pack(
    files: dict[str, bytes], *, reference: str, generated_at: datetime, limit: int
) -> list[Part]:
    """Files held in memory, packed in memory: ``Archive.pack`` for a small export."""
    archive = Archive(io.BytesIO, limit=limit)
    for name, data in files.items():
        archive.add(name, data)
    return archive.pack(reference=reference, generated_at=generated_at)


def _place(pieces: list[_Piece], *, budget: int) -> list[_Piece]:
    """Fill parts in order: a piece that does not fit the current part starts the next one."""
    placed, part, used = [], 1, 0
    for piece in pieces:
        if used and used + piece.packed > budget:
            part, used = part + 1, 0
        placed.append(replace(piece, part=part))
        used += piece.packed
    return placed


def _packed_size(file: IO[bytes], offset: int, length: int) -> int:
    deflate = zlib.compressobj(6)
    size = sum(len(deflate.compress(block)) for block in _blocks(file, offset, length))
    return size + len(deflate.flush())


def _blocks(file: IO[bytes], offset: int, length: int, size: int = BLOCK) -> Iterator[bytes]:
    """``length`` bytes of ``file`` from ``offset``, a block at a time."""
    file.seek(offset)
    left = length
    while left > 0:
        block = file.read(min(size, left))
        if not block:
            raise OSError("an export file is shorter than was written")
        left -= len(block)
        yield block


def _info(name: str, when: datetime, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    info.file_size = size
    return info
