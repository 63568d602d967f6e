"""What an export holds: the report, a plain-text summary, the data as JSON and as CSV.

``write_files`` writes an ``ExportContext``'s files into an ``Archive``, one
after another and each as it is generated, so that a source of a million
records is streamed from the collection's spool to disk and never held in
memory (the manifest and the zips are ``sarbot.export.archive``'s job).
Everything here is generated from the records the connectors returned, as the
collector passed them on.

``index.html`` is for a person to read: it shows each category's first records
(``report_limit``, and at most ``report_source_limit`` in a source) and says
where the rest are.  ``data.json`` and ``csv/`` hold every record.  In
``data.json`` each record is one line of JSON.

``csv/`` has one file per source and record category, for spreadsheet users:
columns are the record's fields in the order they first appear, then how the
record was found; lists and objects are written as JSON; a value a spreadsheet
would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return) is prefixed with an apostrophe (no CSV injection).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Protocol

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import JSONValue, Record
from sarbot.export.archive import Archive, TextOut
from sarbot.export.spool import SpooledRecords, record_json
from sarbot.graph import Link, Scope
from sarbot.mail.templates import Templates

FORMAT_NAME = "sarbot-export"
FORMAT_VERSION = 2


class RecordView(Protocol):
    """What the export reads of a source's records."""

    def documents(self) -> Iterator[str]: ...

    def categories(self) -> list[tuple[str, int]]: ...

    def of_category(self, category: str, limit: int = -1) -> Iterator[Record]: ...

    def columns(self, category: str) -> list[str]: ...


class ListView:
    """Records held in a list (a small export, a test) read as the spool is read."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records

    def documents(self) -> Iterator[str]:
        return (record_json(record) for record in self.records)

    def categories(self) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.category] = counts.get(record.category, 0) + 1
        return list(counts.items())

    def of_category(self, category: str, limit: int = -1) -> Iterator[Record]:
        mine = (record for record in self.records if record.category == category)
        return islice(mine, None if limit < 0 else limit)

    def columns(self, category: str) -> list[str]:
        chosen = (r for r in self.records if r.category == category)
        return list(dict.fromkeys(key for record in chosen for key in record.fields))


def view(records: Sequence[Record]) -> RecordView:
    return records if isinstance(records, SpooledRecords) else ListView(records)


@dataclass(frozen=True)
class Group:
    """One category of a source's records in the report: how many, and the first ones."""

    category: str
    count: int
    shown: int
    source: RecordView

    @property
    def records(self) -> Iterator[Record]:
        """The records the report shows, read afresh each time."""
        return self.source.of_category(self.category, self.shown)


@dataclass(frozen=True)
class SourceData:
    """What one connector returned for a request."""

    name: str
    description: str
    facts: SourceFacts
    records: Sequence[Record]

    @property
    def title(self) -> str:
        return self.description or self.name

    @property
    def count(self) -> int:
        return len(self.records)

    def groups(self, per_category: int, per_source: int) -> list[Group]:
        """The categories by name, each showing its first records within both limits."""
        records, left, groups = view(self.records), per_source, []
        for category, count in sorted(records.categories()):
            shown = max(0, min(count, per_category, left))
            left -= shown
            groups.append(Group(category, count, shown, records))
        return groups


@dataclass(frozen=True)
class ExportContext:
    reference: str
    email: str
    controller: ControllerSettings
    received_at: datetime
    confirmed_at: datetime | None
    generated_at: datetime
    sources: Sequence[SourceData]
    links: Sequence[Link] = ()
    missing: Sequence[str] = ()
    partial_reason: str | None = None
    encryption_note: str = ""
    verification: str = ""
    report_limit: int = 1000
    """The records of one category the report shows; the rest are in data.json and csv/."""
    report_source_limit: int = 5000
    """The records of one source the report shows, over all its categories."""

    @property
    def record_count(self) -> int:
        return sum(source.count for source in self.sources)

    def template_vars(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "email": self.email,
            "controller": self.controller,
            "received_at": self.received_at,
            "confirmed_at": self.confirmed_at,
            "generated_at": self.generated_at,
            "sources": self.sources,
            "searched": [link for link in self.links if link.scope is not Scope.NOT_FOLLOWED][1:],
            "unfollowed": [link for link in self.links if link.scope is Scope.NOT_FOLLOWED],
            "missing": self.missing,
            "partial_reason": self.partial_reason,
            "encryption_note": self.encryption_note,
            "verification": self.verification,
            "record_count": self.record_count,
            "report_limit": self.report_limit,
            "report_source_limit": self.report_source_limit,
        }


def write_files(ctx: ExportContext, templates: Templates, archive: Archive) -> None:
    """The export's files, by their path in the zip (the manifest is added when packing)."""
    variables = ctx.template_vars()
    for name, template in (("index.html", "report.html"), ("README.txt", "README.txt")):
        with archive.text(name) as out:
            for chunk in templates.env.get_template(template).generate(**variables):
                out.write(chunk)
    with archive.text("data.json") as out:
        write_data(ctx, out)
    for source in ctx.sources:
        records = view(source.records)
        for category, _ in records.categories():
            name = f"csv/{_slug(source.name)}-{_slug(category)}.csv"
            while name in archive.files:  # two categories that slug alike
                name = name.removesuffix(".csv") + "-2.csv"
            with archive.text(name) as out:
                write_table(records, category, out)


def build_files(ctx: ExportContext, templates: Templates) -> dict[str, bytes]:
    """The export's files in memory, by their path in the zip: for small exports and tests."""
    archive = Archive(io.BytesIO, limit=2**62)
    write_files(ctx, templates, archive)
    return {name: archive.read(name) for name in archive.files}


# -- data.json: every record with its source, category and provenance -----------------


def data_head(ctx: ExportContext) -> dict[str, object]:
    """``data.json`` but its sources."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "reference": ctx.reference,
        "subject": {"email": ctx.email},
        "controller": {"name": ctx.controller.name, "email": ctx.controller.email},
        "timeline": {
            "received_at": ctx.received_at.isoformat(),
            "confirmed_at": ctx.confirmed_at.isoformat() if ctx.confirmed_at else None,
            "generated_at": ctx.generated_at.isoformat(),
            "verification": ctx.verification,
        },
        "identifiers": [link.document() for link in ctx.links],
        "complete": not ctx.missing,
        "missing_sources": list(ctx.missing),
        "partial_reason": ctx.partial_reason,
    }


def write_data(ctx: ExportContext, out: TextOut) -> None:
    """``data.json``, indented, with each record on a line of its own, streamed."""
    head = _dumps(data_head(ctx))  # ends "\n}"
    out.write(head[:-2] + ',\n  "sources": [')
    for number, source in enumerate(ctx.sources):
        about = {
            "name": source.name,
            "description": source.description,
            "facts": source.facts.model_dump(mode="json"),
            "record_count": source.count,
        }
        out.write(("," if number else "") + "\n" + _indent(_dumps(about)[:-2], 4))
        out.write(',\n      "records": [')
        separator = "\n        "
        for document in view(source.records).documents():
            out.write(separator + document)
            separator = ",\n        "
        out.write("]" if separator == "\n        " else "\n      ]")
        out.write("\n    }")
    out.write("\n  ]\n}" if ctx.sources else "]\n}")


def _dumps(document: dict[str, object]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.split("\n"))


# -- csv/: one table per source and kind of record -----------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PROVENANCE = ["found by", "found by: where that came from", "location", "notes"]


def write_table(records: RecordView, category: str, out: TextOut) -> None:
    columns = records.columns(category)
    out.write("\ufeff")  # the BOM makes Excel read UTF-8
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_cell(c) for c in [*columns, *PROVENANCE]])
    writer.writerows(_rows(records.of_category(category), columns))


def _rows(records: Iterable[Record], columns: list[str]) -> Iterator[list[str]]:
    for record in records:
        row = [_cell(record.fields.get(column)) for column in columns]
        row += [
            _cell(record.found_by.describe()),
            _cell(record.found_by.origin),
            _cell(record.location),
            _cell(" ".join(record.notes)),
        ]
        yield row


def _cell(value: JSONValue | object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return "'" + text if text.startswith(FORMULA_START) else text


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:60] or "records"
