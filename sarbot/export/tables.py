"""``csv/``: one CSV file per source and record category, for spreadsheet users.

Columns are the record's fields in the order they first appear, then how the
record was found.  Lists and objects are written as JSON.  A value that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return) is prefixed with an apostrophe, so opening the
file can never execute anything (CSV injection).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence

from sarbot.connector import JSONValue, Record
from sarbot.steps.collect import SourceData

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
