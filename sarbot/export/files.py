"""What an export holds: the report, a plain-text summary, the data as JSON and as CSV.

``build_files`` turns an ``ExportContext`` into the export's files (the
manifest and the zip are ``sarbot.export.archive``'s job).  Everything here is
generated from the records the connectors returned, as the collector passed
them on.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import Identifier, JSONValue, Record
from sarbot.graph import Link, Scope
from sarbot.mail.templates import Templates

FORMAT_NAME = "sarbot-export"
FORMAT_VERSION = 2


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

    @property
    def record_count(self) -> int:
        return sum(len(source.records) for source in self.sources)

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
        }


def identifier_document(identifier: Identifier) -> dict[str, str]:
    return {
        "kind": identifier.kind,
        "value": identifier.value,
        "namespace": identifier.namespace,
        "realm": identifier.realm,
        "trust": identifier.trust.value,
        "origin": identifier.origin,
    }


def record_document(record: Record) -> dict[str, object]:
    return {
        "category": record.category,
        "fields": dict(record.fields),
        "found_by": identifier_document(record.found_by),
        "location": record.location,
        "notes": list(record.notes),
    }


def data_document(ctx: ExportContext) -> dict[str, object]:
    """``data.json``: every record with its source, category and provenance."""
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
        "sources": [
            {
                "name": source.name,
                "description": source.description,
                "facts": source.facts.model_dump(mode="json"),
                "record_count": len(source.records),
                "records": [record_document(r) for r in source.records],
            }
            for source in ctx.sources
        ],
    }


def build_files(ctx: ExportContext, templates: Templates) -> dict[str, bytes]:
    """The export's files, by their path in the zip (the manifest is added when packing)."""
    variables = ctx.template_vars()
    files = {
        "index.html": templates.render("report.html", **variables).encode("utf-8"),
        "README.txt": templates.render("README.txt", **variables).encode("utf-8"),
        "data.json": json.dumps(data_document(ctx), indent=2, ensure_ascii=False).encode("utf-8"),
    }
    files.update(csv_files(ctx.sources))
    return files


# -- csv/: one table per source and kind of record -----------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PROVENANCE = ["found by", "found by: where that came from", "location", "notes"]


def csv_files(sources: Iterable[SourceData]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for source in sources:
        by_category: dict[str, list[Record]] = {}
        for record in source.records:
            by_category.setdefault(record.category, []).append(record)
        for category, records in by_category.items():
            name = f"csv/{_slug(source.name)}-{_slug(category)}.csv"
            while name in files:  # two categories that slug alike
                name = name.removesuffix(".csv") + "-2.csv"
            files[name] = _table(records)
    return files


def _table(records: Sequence[Record]) -> bytes:
    columns = list(dict.fromkeys(key for record in records for key in record.fields))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_cell(c) for c in [*columns, *PROVENANCE]])
    for record in records:
        row = [_cell(record.fields.get(column)) for column in columns]
        row += [
            _cell(record.found_by.describe()),
            _cell(record.found_by.origin),
            _cell(record.location),
            _cell(" ".join(record.notes)),
        ]
        writer.writerow(row)
    return ("\ufeff" + out.getvalue()).encode("utf-8")  # the BOM makes Excel read UTF-8


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
