"""``access_log``: the lines of system access logs that are about the person.

Reads sshd/sudo auth logs, nginx/Apache combined logs and JSON-lines logs,
plain or gzip-rotated, in blocks searched as bytes (``connectors.logscan``; plain
files by GNU grep where it is installed, ``connectors.loggrep``): only the lines
that may hold a value sought (``connectors.logmatch``) are decoded and parsed.
A line matches when the user it
names is one of the person's logins *in that log's namespace*
(``access_log:NAME/LABEL``, which the admin maps into a realm: ``asmith`` in one
log is not ``asmith`` in another), or is one of their email addresses; in web
logs an address in the query string matches as well.  Such a line was written by
whoever followed the link, so its visitor's IP address, time and account are
withheld.  Only the parsed fields leave the connector, never the raw line, and other
people's addresses are withheld from every field shown.
"""

from __future__ import annotations

import glob
import ipaddress
import os
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import replace
from datetime import datetime
from io import BufferedIOBase
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, model_validator

from connectors.logformats import (
    JsonFields,
    LineParser,
    LogEntry,
    Skip,
    SyslogClock,
    auth_parser,
    combined_parser,
    jsonl_parser,
)
from connectors.loggrep import Ahead, Search
from connectors.logindex import IndexDir, LogIndex, opened
from connectors.logmatch import Matcher
from connectors.logscan import candidate_lines, open_log, read_blocks
from sarbot.connector import (
    ConnectorError,
    Identifier,
    Identity,
    JSONValue,
    Record,
    Section,
    Trust,
    base_dir,
    namespace_part,
)

CATEGORY = "Access log entry"
JSONL_KEYS = frozenset({"time_field", "user_field", "ip_field", "action_field", "status_field"})
OWN = "log entries"
VISIT = "visits to web addresses carrying your email address"
VISITOR_WITHHELD = (
    "Your email address was in the web address requested, which anyone with the link can "
    "visit: who made the request, from where and when were withheld."
)
OTHER_ADDRESSES_WITHHELD = "Email addresses of other people in this entry were withheld."
STATUS_TEXTS_WITHHELD = (
    "The status of this entry is a structure whose texts may be about other people: only its "
    "numbers and truth values are shown."
)


def _pattern(value: Any, info: ValidationInfo) -> Any:
    """A path or glob, relative to the config file's folder unless absolute."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("a path must not be empty")
    expanded = str(Path(value).expanduser())
    if Path(expanded).is_absolute():
        return expanded
    return str(Path(glob.escape(str(base_dir(info)))) / expanded)


LogPattern = Annotated[str, BeforeValidator(_pattern)]


class LogSource(Section):
    paths: tuple[LogPattern, ...] = Field(min_length=1)
    format: Literal["auth", "combined", "jsonl"]
    label: str = Field(min_length=1)
    year: int | None = Field(default=None, ge=1970, le=9999)
    time_field: str = Field(default="time", min_length=1)
    user_field: str = Field(default="user", min_length=1)
    ip_field: str = Field(default="ip", min_length=1)
    action_field: str = Field(default="action", min_length=1)
    status_field: str = Field(default="status", min_length=1)
    index_dir: IndexDir | None = None

    @model_validator(mode="after")
    def _keys_fit_format(self) -> LogSource:
        misplaced = sorted(
            key
            for key in self.model_fields_set
            if (key in JSONL_KEYS and self.format != "jsonl")
            or (key == "year" and self.format != "auth")
        )
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} does not apply to format '{self.format}'")
        return self

    def files(self) -> list[Path]:
        """The files the patterns name now, in a stable order."""
        found = {Path(p) for pattern in self.paths for p in glob.glob(pattern, recursive=True)}
        return sorted(path for path in found if path.is_file())

    def parser(self, modified: datetime) -> LineParser:
        """The line parser for this format; syslog dates need the file's modification time."""
        if self.format == "auth":
            return auth_parser(SyslogClock(self.year, modified))
        if self.format == "combined":
            return combined_parser()
        return jsonl_parser(
            JsonFields(
                self.time_field,
                self.user_field,
                self.ip_field,
                self.action_field,
                self.status_field,
            )
        )


class AccessLogSettings(Section):
    sources: tuple[LogSource, ...] = Field(min_length=1)
    max_records: int = Field(default=10_000, ge=1)
    use_grep: bool = True


class AccessLogConnector:
    """Streams every configured log once per round, exporting the lines that match."""

    Settings: ClassVar[type[BaseModel]] = AccessLogSettings
    namespace_trust: ClassVar[Trust] = Trust.CONTROLLER

    def __init__(self, name: str, settings: AccessLogSettings) -> None:
        self.name = name
        self.settings = settings

    def check(self) -> None:
        """Every source names at least one file, and every file it names can be read."""
        for source in self.settings.sources:
            for path in _files_of(source):
                with open_log(path) as stream:
                    next(read_blocks(stream, path), None)

    def collect(self, identity: Identity) -> Iterator[Record]:
        matcher = Matcher(identity)
        if not matcher.needles:
            return
        notes: list[str] = []
        # One record is held back so that notes about the whole search can go on the last one.
        held: Record | None = None
        with closing(self._matches(matcher, notes)) as matches:
            for record in matches:
                if held is not None:
                    yield held
                held = record
        if held is not None:
            yield _with_notes(held, notes)

    def close(self) -> None:
        """Nothing is held open between collections."""

    def _matches(self, matcher: Matcher, notes: list[str]) -> Generator[Record, None, None]:
        """The matching lines of every source, at most ``max_records`` of each source's own
        lines and as many of its visits to links carrying the address: each source is read
        whatever the others hold, and visits anyone can make cannot crowd out the person's
        own entries."""
        limit, sources = self.settings.max_records, self.settings.sources
        files = [_files_of(source) for source in sources]
        where = [(s.label, s.format, s.index_dir, f) for s, f in zip(sources, files, strict=True)]
        with opened(self.name, where) as indexes:
            for source, index in reversed(list(zip(sources, indexes, strict=True))):
                if index is not None:  # compressed files read ahead, the last first
                    index.start(matcher.needles, matcher.prefilter(source.format))
            for source, paths, index in zip(sources, files, indexes, strict=True):
                shown = {OWN: 0, VISIT: 0}
                grep = index is None and self.settings.use_grep  # else each file read here
                with Ahead(paths, matcher.prefilter(source.format), grep) as ahead:
                    for position, path in enumerate(paths):
                        if min(shown.values()) > limit:
                            break
                        search = ahead.take(position)
                        unreadable = yield from self._scan(
                            matcher, source, path, shown, index, search
                        )
                        if unreadable:
                            notes.append(
                                f"{unreadable} line(s) of {path} that could concern you could "
                                f"not be read as {source.format} log lines and were not searched."
                            )
                for kind, count in shown.items():
                    if count > limit:
                        notes.append(
                            f"More {kind} in {source.label} match than the {limit} shown "
                            "here; the search of them stopped at that limit."
                        )

    def _scan(
        self,
        matcher: Matcher,
        source: LogSource,
        path: Path,
        shown: dict[str, int],
        index: LogIndex | None = None,
        search: Search | None = None,
    ) -> Generator[Record, None, int]:
        """The records of one file, each kind up to the limit (``shown`` counts one past it);
        returns how many lines that might match could not be read."""
        unreadable = 0
        limit = self.settings.max_records
        reading: AbstractContextManager[BufferedIOBase] = search or open_log(path)
        with reading as stream:
            parse = source.parser(datetime.fromtimestamp(os.fstat(stream.fileno()).st_mtime))
            found = index and index.lines(
                stream, path, matcher.needles, matcher.prefilter(source.format)
            )
            for number, line in found or self._lines(stream, path, matcher, source.format, search):
                # Most lines name nobody sought; they are passed over before being parsed.
                if line is not None and not matcher.may_concern(line, source.format):
                    continue
                entry = Skip.UNPARSABLE if line is None else parse(line)
                if entry is Skip.UNPARSABLE:
                    unreadable += 1
                elif isinstance(entry, LogEntry):
                    record = self._record(matcher, source, path, number, entry)
                    if record is None:
                        continue
                    kind = VISIT if VISITOR_WITHHELD in record.notes else OWN
                    if shown[kind] <= limit:
                        shown[kind] += 1
                    if shown[kind] <= limit:
                        yield record
                    elif min(shown.values()) > limit:
                        break
        return unreadable

    def _lines(
        self,
        stream: BufferedIOBase,
        path: Path,
        matcher: Matcher,
        log_format: str,
        search: Search | None = None,
    ) -> Iterator[tuple[int, str | None]]:
        """The numbered lines of one file that ``may_concern`` may be true of (None for one
        too long to be an entry), found by grep or searched in blocks of bytes."""
        if search is not None:
            return search.lines()
        return candidate_lines(stream, path, matcher.prefilter(log_format))

    def namespace(self, source: LogSource) -> str:
        """Where the user names of one log belong (a ``/`` in its label written ``%2F``)."""
        return f"access_log:{self.name}/{namespace_part(source.label)}"

    def _record(
        self, matcher: Matcher, source: LogSource, path: Path, number: int, entry: LogEntry
    ) -> Record | None:
        namespace = self.namespace(source)
        found = matcher.user(entry.user, namespace)
        user, ip, trusted, timestamp = entry.user, entry.ip, entry.trusted, entry.timestamp
        notes = list(entry.notes)
        action, status = entry.action, entry.status
        if found is None and entry.query:
            found, shown = matcher.query(entry.query)
            action, trusted = f"{action}?{shown}", False
            if found is not None:
                user, ip, timestamp = None, None, None
                notes.append(VISITOR_WITHHELD)
        if found is None:
            return None
        if isinstance(status, str) and (structured := matcher.shown_status(status)) is not None:
            # An object or array: its texts may name anyone, and no outcome can be read in it.
            status, trusted = structured, False
            if structured != entry.status:
                notes.append(STATUS_TEXTS_WITHHELD)
        fields: dict[str, JSONValue] = {
            "Log": source.label,
            "Time": timestamp,
            "Source IP": ip,
            "User": user,
            "Action": action,
            "Status": status,
        }
        as_logged = dict(fields)
        for key in ("Time", "Source IP", "User", "Action", "Status"):
            if isinstance(value := fields[key], str):  # every field shown but the log's label
                fields[key] = matcher.without_other_addresses(value, namespace)
        if fields != as_logged:
            notes.append(OTHER_ADDRESSES_WITHHELD)
        yields: tuple[Identifier, ...] = ()
        if trusted and ip is not None and _is_ip(ip):
            origin = f"access log '{self.name}' ({source.label}): {path} line {number}, source IP"
            yields = (Identifier("ip", ip, origin, "ip", Trust.CONTROLLER),)
        return Record(
            category=CATEGORY,
            fields={key: value for key, value in fields.items() if value is not None},
            found_by=found,
            location=f"{path} line {number}",
            yields=yields,
            notes=tuple(notes),
            key=f"{path}:{number}",
        )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _with_notes(record: Record, notes: list[str]) -> Record:
    return replace(record, notes=(*record.notes, *notes)) if notes else record


def _files_of(source: LogSource) -> list[Path]:
    files = source.files()
    if not files:
        raise ConnectorError(
            f"access log source '{source.label}': no file matches {', '.join(source.paths)}"
        )
    return files
