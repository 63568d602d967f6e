"""A huge export: one person with a million records, collected and packaged as the daemon does.

    .venv/bin/python -m bench export [--scale smoke|full]

A SQLite store holds N comments, all by alice (1,000,000 at full scale), read through the
built-in ``sql`` connector.  A child process builds the app from a config file, as
``sarbot run`` does, and runs the export step of one confirmed request
(``Pipeline.collect_one``: collect, record the graph, package, write each mail to the export
folder); its peak resident memory is read with ``getrusage`` in that child, so it is the
export's alone.  The baseline, in another child, reads the same rows with ``sqlite3`` and
writes each as a line of JSON into a zip with ``zipfile``: the least any export of the same
records must do.  The figures: peak RSS (goal: at most 200 MiB), time against the baseline,
and the number of mails the export is split into (each within ``max_attachment_bytes``).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import io
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import Row, Scale, peak_rss_mb

ALICE = "alice@example.test"
SIZES = {"smoke": 1000, "full": 1_000_000}
SENTENCE = (
    "thanks for the post I think the update broke my printer again could you look at "
    "the invoice from March please call me back tomorrow the new version works fine"
)
WORDS = SENTENCE.split()
QUERY = "SELECT id, email, posted, ip, comment FROM comments WHERE email = :email"


def run(scale: Scale) -> list[Row]:
    records = SIZES[scale]
    folder = Path(tempfile.mkdtemp(prefix="sarbot-bench-export-"))
    try:
        make_store(folder / "store.db", records)
        write_config(folder)
        sarbot = _child("sarbot", folder)
        baseline = _child("baseline", folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if sarbot["records"] != records:
        raise RuntimeError(f"the export holds {sarbot['records']} records, not {records}")
    parts, limit = int(sarbot["parts"]), int(sarbot["limit"])
    return [
        Row(
            f"export of {records:,} records: peak RSS",
            sarbot["peak_mb"],
            baseline["peak_mb"],
            "MiB",
            "<= 200 MiB",
            f"before the export {sarbot['start_mb']:.0f} MiB (interpreter, sarbot, config)",
        ),
        Row(
            f"export of {records:,} records: time",
            sarbot["seconds"],
            baseline["seconds"],
            "s",
            "",
            "baseline: the same rows as JSON lines into a zip with zipfile",
        ),
        Row(
            "mails the export is split into",
            parts,
            unit="mails",
            note=f"largest {sarbot['largest_mail'] / 1e6:.1f} MB; "
            f"max_attachment_bytes {limit / 1e6:.0f} MB",
        ),
    ]


def make_store(path: Path, records: int) -> None:
    """N comments by alice, with dates, addresses and some words each."""
    pick = random.Random(17)
    start = datetime(2016, 1, 1, tzinfo=UTC)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE comments (id INTEGER PRIMARY KEY, email TEXT, posted TEXT, "
            "ip TEXT, comment TEXT)"
        )
        db.execute("CREATE INDEX comments_email ON comments (email)")
        db.executemany(
            "INSERT INTO comments VALUES (?, ?, ?, ?, ?)",
            (
                (
                    n,
                    ALICE,
                    (start + timedelta(minutes=5 * n)).isoformat(),
                    f"198.51.100.{n % 250}",
                    " ".join(pick.choices(WORDS, k=14)),
                )
                for n in range(1, records + 1)
            ),
        )
    # A store is read by path; nothing else opens it.


def write_config(folder: Path) -> None:
    """The config of a sarbot whose one source is the store (the mail servers are never used)."""
    (folder / "imap-password").write_text("unused\n")
    (folder / "config.toml").write_text(
        f"""
[controller]
name = "Red Train IT Ltd"
email = "support@redtrain.test"

[imap]
host = "127.0.0.1"
username = "support@redtrain.test"
password = {{ file = "imap-password" }}

[smtp]
host = "127.0.0.1"

[storage]
database_url = "sqlite:///{folder / "state.db"}"
export_dir = "{folder / "exports"}"

[logging]
level = "warning"
format = "json"

[[connectors]]
name = "website"
type = "sql"
description = "Comments on our website"
url = "sqlite:///{folder / "store.db"}"

[[connectors.queries]]
name = "comments"
category = "Website comment"
key = "id"
verify = "email"
sql = "{QUERY}"
"""
    )


def _child(role: str, folder: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.export", role, str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {role} child failed:\n{done.stderr[-4000:]}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def export_with_sarbot(folder: Path) -> dict[str, float]:
    """The export step of one confirmed request, as the daemon runs it."""
    from sarbot.app import App
    from sarbot.store.db import upgrade
    from sarbot.store.models import OutgoingMail, Request
    from sarbot.store.states import MailKind, RequestState

    app = App.load(folder / "config.toml")
    upgrade(app.engine)
    now = datetime.now(UTC)
    with app.sessions.begin() as session:
        request = Request(
            reference="SAR-2026-00000001",
            email=ALICE,
            state=RequestState.COLLECTING,
            attempts=0,
            token_hash="0" * 64,
            code_hash="1" * 64,
            confirmation_failures=0,
            thread="",
            received_at=now,
            expires_at=now + timedelta(days=14),
            confirmed_at=now,
        )
        session.add(request)
    pipeline = app.pipeline()
    start_mb = peak_rss_mb()
    started = time.perf_counter()
    if not asyncio.run(pipeline.collect_one(request)):
        raise RuntimeError("the export was not packaged")
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    with app.sessions.begin() as session:
        files = [
            Path(mail.file_path)
            for mail in session.query(OutgoingMail).filter_by(kind=MailKind.EXPORT)
            if mail.file_path
        ]
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "start_mb": start_mb,
        "parts": len(files),
        "largest_mail": max(path.stat().st_size for path in files),
        "limit": app.settings.export.max_attachment_bytes,
        "records": _count_records(files),
    }


def _count_records(files: list[Path]) -> int:
    """The records in data.json, joined from its pieces across the mails (one record a line)."""
    pieces: dict[str, bytes] = {}
    for path in files:
        with path.open("rb") as raw:
            message = email.message_from_binary_file(raw)
        for attachment in message.walk():
            payload = attachment.get_payload(decode=True) if attachment.get_filename() else None
            if isinstance(payload, bytes):
                with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                    for name in archive.namelist():
                        if name.startswith("data.json"):
                            pieces[name] = archive.read(name)
    data = b"".join(pieces[name] for name in sorted(pieces))
    return sum(
        line.lstrip().startswith((b'{"category"', b'"category"')) for line in data.splitlines()
    )


def export_baseline(folder: Path) -> dict[str, float]:
    """The same rows, each as a line of JSON, into a zip: the least an export can do."""
    start_mb = peak_rss_mb()
    started = time.perf_counter()
    with (
        sqlite3.connect(folder / "store.db") as db,
        zipfile.ZipFile(folder / "baseline.zip", "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("data.json", "w", force_zip64=True) as out,
    ):
        db.row_factory = sqlite3.Row
        for row in db.execute(QUERY, {"email": ALICE}):
            out.write(json.dumps(dict(row), ensure_ascii=False).encode() + b"\n")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "start_mb": start_mb}


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export")
    parser.add_argument("role", choices=["sarbot", "baseline"])
    parser.add_argument("folder", type=Path)
    options = parser.parse_args()
    work = export_with_sarbot if options.role == "sarbot" else export_baseline
    print(json.dumps(work(options.folder)))


if __name__ == "__main__":
    _main()
