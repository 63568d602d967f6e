"""The optional index of the ``access_log`` connector (docs/connectors/access_log.md).

One SQLite file per log source (folder 0700, files 0600): per log file its path, fingerprint
and line lengths; per token, the numbers of the lines holding it.  A token is a run between
``SEPARATORS`` of a line's text as the connector's line test sees it.  No line is stored.
Only a prefilter: a value without a separator is in a text exactly when it is within one of
its tokens; the lines read go through the connector's own test and parser, as in a scan.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sqlite3
import unicodedata
import zlib
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from io import BufferedIOBase
from itertools import accumulate
from json import dumps, loads
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus

from pydantic import BeforeValidator, ValidationInfo

from connectors.logread import (
    Plan,
    checked,
    fingerprint,
    fits,
    inflated,
    prefetched,
    read,
    reading,
)
from connectors.logscan import MAX_LINE_BYTES, Line, Prefilter, open_log
from sarbot.connector import ConnectorError, base_dir

VERSION = "3"
# Rarely, if ever, within an address or a login; a value that holds one is searched by scanning.
# Half a surrogate pair (only a JSON escape writes one; no database text can hold it) is one.
SEPARATORS = re.compile(r"[\s\x00-\x1f\x7f\"'()<>\[\]{},;:/\\?&=|\ud800-\udfff]+")
# Tokens of digits, dots, plus and minus signs only (numbers, IPv4 addresses, times) are not
# kept: no value sought is made of these alone, or else it is searched by scanning.
NUMERIC = re.compile(r"[0-9.+-]+")
ALWAYS = ""  # the token of lines too long to be an entry, or jsonl lines escaped but not JSON
Batch = tuple[list[int], dict[str, "array[int]"]]  # line lengths; line numbers by token
BATCH_LINES = 250_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, head BLOB NOT NULL,
    size INTEGER NOT NULL, lines INTEGER NOT NULL, stat TEXT NOT NULL DEFAULT '',
    end_ INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS tokens(id INTEGER PRIMARY KEY, token TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS postings(token INTEGER NOT NULL, file INTEGER NOT NULL,
    first INTEGER NOT NULL, numbers BLOB NOT NULL, PRIMARY KEY (token, file, first))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches(file INTEGER NOT NULL, first INTEGER NOT NULL,
    start INTEGER NOT NULL, lengths BLOB NOT NULL, PRIMARY KEY (file, first));
"""


def _folder(value: Any, info: ValidationInfo) -> Any:
    """A folder, relative to the config file's folder unless absolute."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("a folder must not be empty")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir(info) / path


IndexDir = Annotated[Path, BeforeValidator(_folder)]


def answerable(needles: Iterable[str]) -> bool:
    """Whether tokens can answer for every value: none holds a separator."""
    return all(
        needle and not SEPARATORS.search(needle) and not NUMERIC.fullmatch(needle)
        for needle in needles
    )


def normal(text: str) -> str:
    """A text as the connector's line test compares it: composed (NFC), then lower case."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.lower()


def tokens_of(line: str, log_format: str) -> set[str]:
    """The tokens of one line of a log of ``log_format``."""
    found = set(SEPARATORS.split(normal(line)))
    if log_format == "combined" and "%" in line:
        found.update(SEPARATORS.split(normal(unquote_plus(line))))
    if log_format == "jsonl" and "\\" in line:
        try:
            decoded = loads(line)
        except (ValueError, RecursionError):
            decoded = None
        if not isinstance(decoded, dict):
            return {ALWAYS}
        for text in _strings(decoded):
            found.update(SEPARATORS.split(normal(text)))
            found.update(SEPARATORS.split(text.lower()))
    found.discard("")
    return found


def _strings(value: Any) -> Iterator[str]:
    """Every key, string and integer in a decoded JSON value."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        yield str(value)
    elif isinstance(value, dict):
        yield from value
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class LogIndex:
    """The index of one log source, open for updates and lookups."""

    def __init__(
        self, folder: Path, label: str, log_format: str, pool: ThreadPoolExecutor | None = None
    ) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", label)[:40]
        digest = hashlib.sha256(label.encode()).hexdigest()[:12]
        self.path = folder / f"{stem}-{digest}.sqlite"
        self.format = log_format
        self._wanted: set[str] | None = None
        self._paths: list[Path] = []
        self._jobs: dict[Path, Future[list[Line] | None]] = {}
        self._pool = pool
        self._lock = os.open(folder / f"{stem}-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # one collection updates an index at a time
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA secure_delete = ON")  # entries deleted are overwritten
        self.db.executescript(SCHEMA)
        wanted = {"version": VERSION, "format": log_format}
        if dict(self.db.execute("SELECT key, value FROM meta").fetchall()) != wanted:
            for table in ("meta", "files", "tokens", "postings", "batches"):
                self.db.execute(f"DROP TABLE {table}")  # names above, not input
            self.db.executescript(SCHEMA)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", wanted.items())

    def close(self) -> None:
        for job in self._jobs.values():
            job.cancel()
        self.db.close()
        os.close(self._lock)

    def update(self, paths: list[Path]) -> None:
        """Index what each file gained, keep renamed or compressed files, drop gone ones."""
        self._paths = list(paths)
        rows = self.db.execute("SELECT id, path, head, size FROM files").fetchall()
        kept: dict[Path, int] = {}
        orphans: dict[int, tuple[bytes, int]] = {}
        for file_id, name, head, size in rows:
            path = Path(name)
            if path in paths and path not in kept and fits(path, head, size):
                kept[path] = file_id
            else:
                orphans[file_id] = (head, size)
        for path in paths:  # a rotated file (renamed, compressed) keeps its entries
            if path in kept:
                continue
            for file_id, (head, size) in orphans.items():
                if fits(path, head, size):
                    kept[path] = file_id
                    del orphans[file_id]
                    self.db.execute("UPDATE files SET path = ? WHERE id = ?", (str(path), file_id))
                    break
        for file_id in orphans:
            self._drop(file_id)
        if orphans:
            self.db.execute("DELETE FROM tokens WHERE id NOT IN (SELECT token FROM postings)")
        for path in paths:
            with reading(path):
                self._index(path, kept.get(path))

    def _drop(self, file_id: int) -> None:
        for table, key in (("postings", "file"), ("batches", "file"), ("files", "id")):
            self.db.execute(f"DELETE FROM {table} WHERE {key} = ?", (file_id,))  # noqa: S608

    def _index(self, path: Path, file_id: int | None) -> None:
        """Index what the file gained since (unless it is as it was: same size and time)."""
        stat = _stat(path)
        with open_log(path) as stream:
            size, number = 0, 0
            if file_id is not None:
                size, number, before = self.db.execute(
                    "SELECT size, lines, stat FROM files WHERE id = ?", (file_id,)
                ).fetchone()
                if before == stat:
                    return
                plain = not inflated(stream)
                if (plain and os.fstat(stream.fileno()).st_size < size) or stream.seek(size) < size:
                    self._drop(file_id)
                    file_id, size, number = None, 0, 0
                    stream.seek(0)
            if file_id is None:
                cursor = self.db.execute(
                    "INSERT INTO files(path, head, size, lines) VALUES (?, ?, 0, 0)",
                    (str(path), b""),
                )
                file_id = cursor.lastrowid
                assert file_id is not None
            for batch in _batches(stream, self.format):
                self._store(file_id, number, size, batch)
                size += sum(batch[0])
                number += len(batch[0])
            end = stream.tell()  # past a last line without its newline
            head = fingerprint(stream, size)
        self.db.execute(
            "UPDATE files SET head = ?, stat = ?, end_ = ? WHERE id = ?", (head, stat, end, file_id)
        )

    def _store(self, file_id: int, number: int, size: int, batch: Batch) -> None:
        """One batch of lines, in one transaction with the length indexed."""
        lengths, postings = batch
        for token in [t for t in postings if NUMERIC.fullmatch(t)]:
            del postings[token]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT OR IGNORE INTO tokens(token) VALUES (?)", ((t,) for t in postings)
        )
        ids = self._ids(list(postings))
        self.db.executemany(
            "INSERT INTO postings VALUES (?, ?, ?, ?)",
            ((ids[t], file_id, number, _pack(numbers)) for t, numbers in postings.items()),
        )
        self.db.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?)",
            (file_id, number + 1, size, zlib.compress(array("Q", lengths).tobytes(), 1)),
        )
        self.db.execute(
            "UPDATE files SET size = ?, lines = ? WHERE id = ?",
            (size + sum(lengths), number + len(lengths), file_id),
        )
        self.db.execute("COMMIT")

    def _ids(self, tokens: list[str]) -> dict[str, int]:
        query = "SELECT token, id FROM tokens WHERE token IN (SELECT value FROM json_each(?))"
        return dict(self.db.execute(query, (dumps(tokens),)).fetchall())

    def lines(
        self, stream: BufferedIOBase, path: Path, needles: set[str], prefilter: Prefilter
    ) -> Iterator[Line] | None:
        """The numbered lines of one file that a scan's prefilter could hand on for these
        values (and maybe others), or None when the index cannot answer for the file."""
        job = self._jobs.pop(path, None)
        if job is not None and not job.cancel():  # read ahead (or being read)
            found = job.result()
            return None if found is None else iter(found)
        plan = self._plan(path, needles) if answerable(needles) else None
        if plan is None or not checked(stream, path, plan):
            return None
        return read(stream, path, plan, prefilter)

    def start(self, needles: set[str], prefilter: Prefilter) -> None:
        """Have the compressed files with lines to read read ahead, the last first."""
        if self._pool is None or not answerable(needles):
            return
        query = "SELECT path FROM files WHERE length(head) = 32"  # a compressed file's: one hash
        packed = {Path(name) for (name,) in self.db.execute(query)}
        for path in reversed(self._paths):
            plan = self._plan(path, needles) if path in packed else None
            if plan and plan.numbers:
                self._jobs[path] = self._pool.submit(prefetched, path, plan, prefilter)

    def _plan(self, path: Path, needles: set[str]) -> Plan | None:
        row = self.db.execute(
            "SELECT id, head, size, lines, stat, end_ FROM files WHERE path = ?", (str(path),)
        ).fetchone()
        if row is None:
            return None
        file_id, head, size, count, stat, end = row
        # Unchanged since indexed, to its end: nothing to read past the lines indexed.
        count = -1 if end == size and stat == _stat(path) else count
        self._want(needles)
        numbers: set[int] = set()
        for before, packed in self.db.execute(
            "SELECT first, numbers FROM postings"
            " WHERE token IN (SELECT id FROM wanted) AND file = ?",
            (file_id,),
        ):
            numbers.update(_unpack(packed, before))
        batches = self.db.execute(
            "SELECT first, start, lengths FROM batches WHERE file = ? AND ? ORDER BY first",
            (file_id, bool(numbers)),
        ).fetchall()
        return Plan(head, size, count, batches, sorted(numbers))

    def _want(self, needles: set[str]) -> None:
        """Put the tokens holding a value, and ``ALWAYS``, in the table ``wanted``."""
        if self._wanted == needles:
            return
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(id INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM wanted")
        tests = " OR ".join(["token = ''"] + ["instr(token, ?) > 0"] * len(needles))
        query = f"INSERT INTO wanted SELECT id FROM tokens WHERE {tests}"  # noqa: S608
        self.db.execute(query, sorted(needles))
        self._wanted = set(needles)


def _batches(stream: BufferedIOBase, log_format: str) -> Iterator[Batch]:
    """The lengths and tokens of the whole lines from the stream's position, in batches
    (line numbers counted from the batch's first); a last line without its newline is left
    for later, as it may still be being written."""
    lengths: list[int] = []
    postings: dict[str, array[int]] = defaultdict(lambda: array("I"))
    while chunk := stream.readline(MAX_LINE_BYTES + 1):
        length = len(chunk)
        if not chunk.endswith(b"\n"):
            if length <= MAX_LINE_BYTES:
                break  # the last line, without its newline yet
            while chunk and not chunk.endswith(b"\n"):  # too long to be an entry
                chunk = stream.readline(1 << 20)
                length += len(chunk)
            if not chunk:
                break
            tokens = {ALWAYS}
        elif length > MAX_LINE_BYTES:
            tokens = {ALWAYS}
        else:
            tokens = tokens_of(chunk.decode("utf-8", "replace").rstrip("\r\n"), log_format)
        lengths.append(length)
        for token in tokens:
            postings[token].append(len(lengths))
        if len(lengths) >= BATCH_LINES:
            yield lengths, postings
            lengths, postings = [], defaultdict(lambda: array("I"))
    if lengths:
        yield lengths, postings


def _pack(numbers: array[int]) -> bytes:
    """Line numbers (counted from a batch's first) as their differences, compressed when
    that pays (the first byte says which)."""
    deltas = array("I", (b - a for a, b in zip([0, *numbers], numbers, strict=False)))
    raw = deltas.tobytes()
    return b"z" + zlib.compress(raw, 1) if len(raw) > 32 else b"r" + raw


def _unpack(packed: bytes, before: int) -> list[int]:
    raw = zlib.decompress(packed[1:]) if packed[:1] == b"z" else packed[1:]
    return list(accumulate(array("I", raw), initial=before))[1:]


def _stat(path: Path) -> str:
    status = path.stat()
    return f"{status.st_size}:{status.st_mtime_ns}"


Source = tuple[str, str, Path | None, list[Path]]  # label, format, index_dir, files


@contextmanager
def opened(name: str, sources: Sequence[Source]) -> Iterator[list[LogIndex | None]]:
    """The sources' indexes brought up to date (None for a source without one), sharing
    threads that read compressed files ahead; index errors name the source."""
    found: list[LogIndex | None] = []
    what = "an access log index"
    try:
        with ExitStack() as stack:
            workers = max(1, min(3, (os.cpu_count() or 2) - 1))
            pool = stack.enter_context(ThreadPoolExecutor(workers))
            stack.callback(pool.shutdown, cancel_futures=True)
            for label, log_format, folder, paths in sources:
                index = None
                if folder is not None:
                    what = f"access log source '{label}': its index in {folder}"
                    index = LogIndex(folder, f"{name}/{label}", log_format, pool)
                    stack.enter_context(closing(index))
                    index.update(paths)
                found.append(index)
            what = "an access log index"
            yield found
    except (OSError, sqlite3.Error) as exc:
        raise ConnectorError(f"{what} cannot be kept up to date or read: {exc}") from None
