"""The export: a zip with a readable report, the data as JSON and a manifest.

Files on disk are written to a temporary name, flushed and then renamed, so a
half-written export never exists under its final name.  They are 0600.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import Identifier, Record
from sarbot.render import render

FORMAT_NAME = "sarbot-export"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SourceData:
    """What one connector returned for a request."""

    name: str
    description: str
    facts: SourceFacts
    records: Sequence[Record]


@dataclass(frozen=True)
class ExportContext:
    reference: str
    email: str
    controller: ControllerSettings
    received_at: datetime
    confirmed_at: datetime | None
    generated_at: datetime
    sources: Sequence[SourceData]
    identifiers: Sequence[Identifier] = ()
    missing: Sequence[str] = ()
    partial_reason: str | None = None

    def template_vars(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "email": self.email,
            "controller": self.controller,
            "received_at": self.received_at,
            "confirmed_at": self.confirmed_at,
            "generated_at": self.generated_at,
            "sources": self.sources,
            "identifiers": self.identifiers,
            "missing": self.missing,
            "partial_reason": self.partial_reason,
        }


def export_filename(reference: str) -> str:
    return f"personal-data-{reference}.zip"


def _identifier(identifier: Identifier) -> dict[str, str]:
    return {"kind": identifier.kind, "value": identifier.value, "origin": identifier.origin}


def _record(record: Record) -> dict[str, object]:
    return {
        "category": record.category,
        "fields": dict(record.fields),
        "found_by": _identifier(record.found_by),
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
        },
        "identifiers": [_identifier(i) for i in ctx.identifiers],
        "complete": not ctx.missing,
        "missing_sources": list(ctx.missing),
        "partial_reason": ctx.partial_reason,
        "sources": [
            {
                "name": source.name,
                "description": source.description,
                "facts": source.facts.model_dump(mode="json"),
                "record_count": len(source.records),
                "records": [_record(r) for r in source.records],
            }
            for source in ctx.sources
        ],
    }


def build_files(ctx: ExportContext) -> dict[str, bytes]:
    """The export's files, manifest last."""
    files = {
        "index.html": render("report.html", **ctx.template_vars()).encode("utf-8"),
        "data.json": json.dumps(data_document(ctx), indent=2, ensure_ascii=False).encode("utf-8"),
    }
    manifest = {
        "reference": ctx.reference,
        "generated_at": ctx.generated_at.isoformat(),
        "files": [
            {"name": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            for name, body in files.items()
        ],
    }
    files["manifest.json"] = json.dumps(manifest, indent=2).encode("utf-8")
    return files


def build_zip(ctx: ExportContext) -> bytes:
    """The export zip, in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in build_files(ctx).items():
            info = zipfile.ZipInfo(name, date_time=ctx.generated_at.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            archive.writestr(info, body)
    return buffer.getvalue()


def write_private_file(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically: temporary name, fsync, rename, fsync the folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
