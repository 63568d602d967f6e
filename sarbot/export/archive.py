"""Packing an export into zip files.

An export that fits the attachment limit is one zip.  A larger one is split
into numbered parts, each a zip of its own with a copy of the manifest, so
every part can be opened alone; a single file too large for one part is cut
into numbered pieces (``data.json.001``, ...) that are joined by putting them
end to end.  ``manifest.json`` lists every file with its size, SHA-256 and
part.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime

# Space kept free in each part for the manifest and the zip's own structures.
PART_OVERHEAD = 256 * 1024
FIRST_FILES = ("index.html", "README.txt")


@dataclass(frozen=True)
class Part:
    """One attachment of the export."""

    number: int
    count: int
    filename: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.filename.endswith(".pgp") else "application/zip"


def export_filename(reference: str, number: int = 1, count: int = 1) -> str:
    if count == 1:
        return f"personal-data-{reference}.zip"
    return f"personal-data-{reference}-part{number}of{count}.zip"


@dataclass(frozen=True)
class _Piece:
    """A file, or one cut of a file too large for a part, and where it goes."""

    name: str
    source: str
    data: bytes
    part: int = 0


def pack(
    files: dict[str, bytes], *, reference: str, generated_at: datetime, limit: int
) -> list[Part]:
    """The export as one zip, or as numbered parts when it would exceed ``limit`` bytes."""
    whole = [_Piece(name, name, data, 1) for name, data in files.items()]
    single = _zip(whole, _manifest(files, whole, reference, generated_at, 1), generated_at)
    if len(single) <= limit:
        return [Part(1, 1, export_filename(reference), single)]
    budget = limit - min(PART_OVERHEAD, limit // 8)
    pieces = _place(_cut(files, budget=budget), budget=budget)
    count = pieces[-1].part
    manifest = _manifest(files, pieces, reference, generated_at, count)
    return [
        Part(
            n,
            count,
            export_filename(reference, n, count),
            _zip([p for p in pieces if p.part == n], manifest, generated_at),
        )
        for n in range(1, count + 1)
    ]


def _cut(files: dict[str, bytes], *, budget: int) -> list[_Piece]:
    """Files in order, the first ones first; a file that cannot fit a part is cut in pieces."""
    order = [n for n in FIRST_FILES if n in files] + [n for n in files if n not in FIRST_FILES]
    step = budget * 99 // 100  # deflate never grows data by more than a fraction of this
    pieces = []
    for name in order:
        data = files[name]
        if _packed_size(data) <= budget:
            pieces.append(_Piece(name, name, data))
            continue
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        width = max(3, len(str(len(chunks))))
        pieces += [_Piece(f"{name}.{i:0{width}d}", name, c) for i, c in enumerate(chunks, 1)]
    return pieces


def _place(pieces: list[_Piece], *, budget: int) -> list[_Piece]:
    """Fill parts in order: a piece that does not fit the current part starts the next one."""
    placed, part, used = [], 1, 0
    for piece in pieces:
        size = _packed_size(piece.data)
        if used and used + size > budget:
            part, used = part + 1, 0
        placed.append(_Piece(piece.name, piece.source, piece.data, part))
        used += size
    return placed


def _packed_size(data: bytes) -> int:
    return len(zlib.compress(data, 6))


def _manifest(
    files: dict[str, bytes],
    pieces: list[_Piece],
    reference: str,
    generated_at: datetime,
    count: int,
) -> bytes:
    entries = []
    for name, data in files.items():
        own = [p for p in pieces if p.source == name]
        entry: dict[str, object] = {
            "name": name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "part": own[0].part,
        }
        if len(own) > 1 or own[0].name != name:
            entry["pieces"] = [{"name": p.name, "part": p.part, "size": len(p.data)} for p in own]
        entries.append(entry)
    document = {
        "reference": reference,
        "generated_at": generated_at.isoformat(),
        "parts": count,
        "files": entries,
    }
    return json.dumps(document, indent=2).encode("utf-8")


def _zip(pieces: list[_Piece], manifest: bytes, when: datetime) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in [*((p.name, p.data) for p in pieces), ("manifest.json", manifest)]:
            info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            archive.writestr(info, body)
    return buffer.getvalue()
