"""A collection's records on disk, so that an export of any size is never held in memory.

While a request is collected, each connector's lookup writes what it finds, record by
record, to a temporary file of its own (``Stage``: written in the connector's worker thread,
and thrown away if the lookup fails and is tried again).  Once the lookup is over, its records
are merged, in the order found, into the spool (``RecordSpool``), a SQLite database that
keeps one copy of each record per source: a record found again alike keeps its first place
and provenance; found again changed (a later round knows more of the person), the later
version takes its place.

Every file here is private and leaves nothing behind: the stages are anonymous temporary
files, and the spool's database is unlinked as soon as it is opened, so the data is gone
when the process ends, however it ends.  They live in the system's temporary folder
(``TMPDIR``), or the folder given.

A source's records are read back as ``SpooledRecords``: a ``Sequence[Record]`` that counts,
groups by category and streams its records from disk.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, overload

from sarbot.connector import Identifier, Record, Trust, with_other_people_note
from sarbot.errors import SarbotError

BATCH = 500
"""Rows read or written at a time."""

_SCHEMA = """
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,  -- the order found; a record found again keeps its place
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    category TEXT NOT NULL,
    content BLOB NOT NULL,    -- a digest of category, fields and notes: found again alike?
    shape TEXT NOT NULL,      -- the names of its fields, in order (the CSV's columns)
    body TEXT NOT NULL,       -- the record as data.json has it
    UNIQUE (source, key)
);
CREATE INDEX records_by_category ON records (source, category, seq);
"""
_MERGE = """
INSERT INTO records (source, key, category, content, shape, body) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (source, key) DO UPDATE SET
    category = excluded.category, content = excluded.content,
    shape = excluded.shape, body = excluded.body
WHERE records.content <> excluded.content
"""


class SpoolError(SarbotError):
    """The records could not be written to the temporary folder (full, unwritable)."""


def identifier_document(identifier: Identifier) -> dict[str, str]:
    """How data.json names an identifier that found a record."""
    return {
        "kind": identifier.kind,
        "value": identifier.value,
        "namespace": identifier.namespace,
        "realm": identifier.realm,
        "trust": identifier.trust.value,
        "origin": identifier.origin,
    }


def record_document(record: Record) -> dict[str, object]:
    """A record as data.json has it."""
    return {
        "category": record.category,
        "fields": dict(record.fields),
        "found_by": identifier_document(record.found_by),
        "location": record.location,
        "notes": list(record.notes),
    }


def record_json(record: Record) -> str:
    """``record_document`` as JSON on one line (control characters are escaped)."""
    return json.dumps(record_document(record), ensure_ascii=False, default=str)


def record_from_document(document: dict[str, Any], key: str = "") -> Record:
    """The record back from its document (what it yielded is not kept)."""
    found = document["found_by"]
    found_by = Identifier(
        found["kind"],
        found["value"],
        found["origin"],
        found["namespace"],
        Trust(found["trust"]),
        realm=found["realm"],
    )
    notes = tuple(document["notes"])
    return Record(
        document["category"], document["fields"], found_by, document["location"], (), notes, key
    )


def _yielded(identifier: Identifier) -> dict[str, object]:
    return {
        "kind": identifier.kind,
        "value": identifier.value,
        "origin": identifier.origin,
        "namespace": identifier.namespace,
        "trust": identifier.trust.value,
        "source": identifier.source,
        "realm": identifier.realm,
        "aliases": sorted(identifier.aliases),
    }


def _identifier(item: dict[str, Any]) -> Identifier:
    return Identifier(
        item["kind"],
        item["value"],
        item["origin"],
        item["namespace"],
        Trust(item["trust"]),
        item["source"],
        item["realm"],
        frozenset(item["aliases"]),
    )


class Stage:
    """One lookup's records, written as they come to an anonymous temporary file."""

    def __init__(self, folder: Path) -> None:
        self.count = 0
        try:
            # Closed by close(), or by the merge that reads it.
            self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115
        except OSError as exc:
            raise SpoolError(_why(exc)) from exc

    def write(self, records: Iterable[Record]) -> int:
        """Stage every record (a connector's error is raised as it is); how many there were."""
        lines: list[bytes] = []
        for found in records:
            lines.append(_line(with_other_people_note(found)))
            if len(lines) == BATCH:
                self._flush(lines)
        self._flush(lines)
        return self.count

    def _flush(self, lines: list[bytes]) -> None:
        try:
            self.file.write(b"".join(lines))
        except OSError as exc:
            raise SpoolError(_why(exc)) from exc
        self.count += len(lines)
        lines.clear()

    def rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Each record's head (key, category, digest, shape, yields) and body, in order."""
        self.file.seek(0)
        for line in self.file:
            head, _, body = line.rstrip(b"\n").partition(b"\t")
            yield head, body

    def close(self) -> None:
        self.file.close()


def _line(record: Record) -> bytes:
    fields = dict(record.fields)
    content = json.dumps(
        [record.category, fields, list(record.notes)],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    digest = hashlib.blake2b(content.encode(), digest_size=16).hexdigest()
    yields = [_yielded(i) for i in record.yields] or None
    head = [record.identity_key, record.category, digest, json.dumps(list(fields)), yields]
    # JSON escapes tabs and line breaks, so a tab and a newline delimit safely.
    return (
        json.dumps(head, ensure_ascii=False, default=str) + "\t" + record_json(record) + "\n"
    ).encode()


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class RecordSpool:
    """Every record of one collection, one copy per source and key, in the order found."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder or tempfile.gettempdir())
        try:
            private = Path(tempfile.mkdtemp(prefix="sarbot-spool-", dir=self.folder))
            path = private / "records.db"
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -8000"):
                    self.db.execute(f"PRAGMA {pragma}")
                self.db.executescript(_SCHEMA)
            finally:
                path.unlink(missing_ok=True)  # the open database lives on, nameless
                private.rmdir()
        except OSError as exc:
            raise SpoolError(_why(exc)) from exc
        except sqlite3.Error as exc:
            raise SpoolError(str(exc)) from exc
        self._finalizer = weakref.finalize(self, self.db.close)

    def stage(self) -> Stage:
        return Stage(self.folder)

    def merge(self, source: str, stage: Stage, found: Callable[[Identifier], None]) -> None:
        """Keep a stage's records under ``source``, telling ``found`` what each one yielded."""
        rows: list[tuple[str, str, str, bytes, str, str]] = []
        yielded: list[Identifier] = []

        def keep() -> None:
            try:
                self.db.executemany(_MERGE, rows)
            except sqlite3.Error as exc:
                raise SpoolError(str(exc)) from exc
            rows.clear()
            for identifier in yielded:
                found(identifier)
            yielded.clear()

        try:
            self.db.execute("BEGIN")
            for head, body in stage.rows():
                key, category, digest, shape, yields = json.loads(head)
                rows.append((source, key, category, bytes.fromhex(digest), shape, body.decode()))
                yielded.extend(_identifier(item) for item in yields or ())
                if len(rows) == BATCH:
                    keep()
            keep()
        except OSError as exc:
            raise SpoolError(_why(exc)) from exc
        finally:
            stage.close()
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    def records(self, source: str) -> SpooledRecords:
        return SpooledRecords(self, source)

    def close(self) -> None:
        self._finalizer()


class SpooledRecords(Sequence[Record]):
    """One source's records in a spool: counted, grouped and read from disk, never all held."""

    def __init__(self, spool: RecordSpool, source: str) -> None:
        self.spool = spool
        self.source = source
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            sql = "SELECT count(*) FROM records WHERE source = ?"
            self._count = int(self.spool.db.execute(sql, (self.source,)).fetchone()[0])
        return self._count

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            chosen = list(self._read("", (), max(stop - start, 0), start))
            return chosen[::step]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("record index out of range")
        [record] = self._read("", (), 1, index)
        return record

    def __iter__(self) -> Iterator[Record]:
        return self._read("", ())

    def documents(self) -> Iterator[str]:
        """Each record as data.json has it, as JSON on one line, in order."""
        sql = "SELECT body FROM records WHERE source = ? ORDER BY seq"
        for (body,) in self._rows(sql, (self.source,)):
            yield str(body)

    def categories(self) -> list[tuple[str, int]]:
        """Each category, in the order first found, with its number of records."""
        sql = (
            "SELECT category, count(*) FROM records WHERE source = ? "
            "GROUP BY category ORDER BY min(seq)"
        )
        rows = self.spool.db.execute(sql, (self.source,)).fetchall()
        return [(str(category), int(count)) for category, count in rows]

    def of_category(self, category: str, limit: int = -1) -> Iterator[Record]:
        return self._read("AND category = ?", (category,), limit)

    def columns(self, category: str) -> list[str]:
        """The category's field names in the order they first appear."""
        sql = (
            "SELECT shape FROM records WHERE source = ? AND category = ? "
            "GROUP BY shape ORDER BY min(seq)"
        )
        shapes = self.spool.db.execute(sql, (self.source, category)).fetchall()
        return list(dict.fromkeys(name for (shape,) in shapes for name in json.loads(shape)))

    def _read(
        self, where: str, arguments: tuple[str, ...], limit: int = -1, offset: int = 0
    ) -> Iterator[Record]:
        sql = (
            f"SELECT key, body FROM records WHERE source = ? {where} "  # noqa: S608 (fixed text)
            "ORDER BY seq LIMIT ? OFFSET ?"
        )
        for key, body in self._rows(sql, (self.source, *arguments, limit, offset)):
            yield record_from_document(json.loads(body), key)

    def _rows(self, sql: str, arguments: tuple[object, ...]) -> Iterator[tuple[Any, ...]]:
        cursor = self.spool.db.execute(sql, arguments)
        try:
            while rows := cursor.fetchmany(BATCH):
                yield from rows
        finally:
            cursor.close()
