"""A large export streams: records go to disk as connectors yield them, files and zips are
written from disk, and every record arrives exactly once, in parts within the limit."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
import secrets
import tempfile
import tracemalloc
import weakref
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import IO

import structlog

from sarbot.config import CollectionSettings, ControllerSettings, SourceFacts
from sarbot.connector import Identity, Record
from sarbot.export.archive import Archive, Part
from sarbot.export.files import ExportContext, SourceData, build_files, write_files
from sarbot.export.spool import RecordSpool
from sarbot.mail.templates import Templates
from sarbot.registry import ConfiguredConnector
from sarbot.steps.collect import Collection, Collector
from sarbot.steps.package import with_attachment

WHEN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TOTAL = 20_000
LIMIT = 1_000_000


class Counting:
    """Yields ``total`` log lines, one at a time, and counts how many of them are alive."""

    name = "logs"

    def __init__(self, total: int, *, fail_after: int | None = None) -> None:
        self.total = total
        self.fail_after = fail_after
        self.alive = 0
        self.most_alive = 0
        self.calls = 0

    def collect(self, identity: Identity) -> Iterator[Record]:
        self.calls += 1
        for n in range(self.total):
            if self.fail_after is not None and self.calls == 1 and n == self.fail_after:
                raise ConnectionError("the store went away")
            record = Record(
                "Log line" if n % 10 else "Login",
                {"n": n, "line": f"{n:06d} GET /page/{n % 97} {secrets.token_hex(40)}"},
                identity.identifiers[0],
                f"access.log line {n}",
                key=f"line:{n}",
            )
            self.most_alive = max(self.most_alive, self.alive)
            self.alive += 1
            weakref.finalize(record, self._gone)
            yield record

    def _gone(self) -> None:
        self.alive -= 1

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def collect(connector: Counting, work_dir: Path | None = None, attempts: int = 3) -> Collection:
    configured = ConfiguredConnector("logs", "t", "Access logs", SourceFacts(), connector)
    collector = Collector(
        [configured],
        CollectionSettings(attempts=attempts),
        structlog.get_logger(),
        work_dir=work_dir,
    )
    return asyncio.run(collector.collect("alice@example.test"))


def context(collection: Collection) -> ExportContext:
    return ExportContext(
        reference="SAR-2026-0007",
        email="alice@example.test",
        controller=ControllerSettings(name="Red Train IT Ltd", email="support@redtrain.test"),
        received_at=WHEN,
        confirmed_at=WHEN,
        generated_at=WHEN,
        sources=collection.sources,
        links=collection.links,
    )


def unzip(part: Part) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def joined(contents: list[dict[str, bytes]], name: str) -> bytes:
    """A file of the export, put together from its pieces as the manifest says."""
    manifest = json.loads(contents[0]["manifest.json"])
    [entry] = [e for e in manifest["files"] if e["name"] == name]
    pieces = entry.get("pieces") or [{"name": name, "part": entry["part"]}]
    return b"".join(contents[p["part"] - 1][p["name"]] for p in pieces)


class TestLargeExport:
    def test_records_stream_from_the_connector_to_the_parts_once_each(self, tmp_path: Path) -> None:
        """20,000 records: never all alive at once while collected, packaging holds a
        fraction of the export's size, and the parts hold every record exactly once."""
        connector = Counting(TOTAL)
        collection = collect(connector, tmp_path)
        assert connector.most_alive < 10  # each record is on disk before the next comes
        assert collection.record_count == TOTAL
        assert list(tmp_path.iterdir()) == []  # the spool has no name on disk

        with tempfile.TemporaryDirectory() as work:
            opened: list[IO[bytes]] = []

            def new_file() -> IO[bytes]:
                opened.append(tempfile.TemporaryFile(dir=work))  # noqa: SIM115 (closed below)
                return opened[-1]

            archive = Archive(new_file, limit=LIMIT)
            tracemalloc.start()
            try:
                write_files(context(collection), Templates(), archive)
                parts = archive.pack(reference="SAR-2026-0007", generated_at=WHEN)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            written = sum(f.size for f in archive.files.values())
            contents = [unzip(part) for part in parts]
            for file in opened:
                file.close()

        assert peak < written / 5, (peak, written)
        assert len(parts) > 1 and all(p.size <= LIMIT for p in parts)
        assert [p.number for p in parts] == list(range(1, len(parts) + 1))
        data = json.loads(joined(contents, "data.json"))
        [source] = data["sources"]
        numbers = [r["fields"]["n"] for r in source["records"]]
        assert sorted(numbers) == list(range(TOTAL)) and source["record_count"] == TOTAL
        rows = 0
        for name in ("csv/logs-log-line.csv", "csv/logs-login.csv"):
            table = list(csv.reader(io.StringIO(joined(contents, name).decode("utf-8-sig"))))
            assert table[0][:2] == ["n", "line"]
            rows += len(table) - 1
        assert rows == TOTAL
        report = joined(contents, "index.html").decode()
        assert report.count('<div class="record">') == 1000 + 1000  # each category's first
        assert "The first 1000 are shown here; all 18000 are in" in report
        assert "The first 1000 are shown here; all 2000 are in" in report

    def test_a_failed_attempts_records_are_not_kept(self) -> None:
        """A lookup that fails half way and succeeds when tried again: each record once."""
        connector = Counting(3000, fail_after=2500)
        collection = collect(connector, attempts=2)
        assert connector.calls == 2 and collection.complete
        [source] = collection.sources
        assert len(source.records) == 3000
        assert [r.fields["n"] for r in source.records[:3]] == [0, 1, 2]
        assert source.records[-1].key == "line:2999"

    def test_a_temporary_folder_that_cannot_be_written_fails_the_collection(
        self, tmp_path: Path
    ) -> None:
        """No room for the spool: nothing is collected, and the collection says why."""
        collection = collect(Counting(10), tmp_path / "missing")
        assert not collection.complete and collection.sources == []
        assert collection.spool_error == "No such file or directory"


class TestSpool:
    def test_a_record_found_again_keeps_its_place_unless_it_changed(self) -> None:
        """Found again alike: the first copy and its provenance stay; changed: the later one
        takes the first one's place."""
        spool, email = RecordSpool(), Identity.verified("alice@example.test").identifiers[0]
        first = [Record("Item", {"v": n}, email, f"first {n}", key=f"k{n}") for n in range(3)]
        again = [
            Record("Item", {"v": 0}, email, "again 0", key="k0"),
            Record("Item", {"v": "changed"}, email, "again 1", key="k1"),
        ]
        for records in (first, again):
            stage = spool.stage()
            stage.write(records)
            spool.merge("s", stage, lambda found: None)
        kept = list(spool.records("s"))
        assert [(r.fields["v"], r.location) for r in kept] == [
            (0, "first 0"),
            ("changed", "again 1"),
            (2, "first 2"),
        ]
        spool.close()


class TestReport:
    def test_each_category_shows_its_first_records_within_the_source_limit(self) -> None:
        """Per category at most report_limit, per source at most report_source_limit; the
        report says where the rest are."""
        email = Identity.verified("alice@example.test").identifiers[0]
        records = [Record(c, {"n": n}, email) for c in ("A", "B", "C") for n in range(4)]
        ctx = ExportContext(
            reference="SAR-2026-0007",
            email="alice@example.test",
            controller=ControllerSettings(name="Red Train IT Ltd", email="support@redtrain.test"),
            received_at=WHEN,
            confirmed_at=WHEN,
            generated_at=WHEN,
            sources=[SourceData("web", "Website", SourceFacts(), records)],
            report_limit=3,
            report_source_limit=5,
        )
        [source] = ctx.sources
        groups = source.groups(ctx.report_limit, ctx.report_source_limit)
        assert [(g.category, g.count, g.shown) for g in groups] == [
            ("A", 4, 3),
            ("B", 4, 2),
            ("C", 4, 0),
        ]
        assert [r.fields["n"] for r in groups[1].records] == [0, 1]
        html = build_files(ctx, Templates())["index.html"].decode()
        assert html.count('<div class="record">') == 5
        assert "The first 3 are shown here; all 4 are in" in html
        assert "The first 2 are shown here; all 4 are in" in html
        assert "All 4 are in" in html
        data = json.loads(build_files(ctx, Templates())["data.json"])
        assert len(data["sources"][0]["records"]) == 12


class TestLetter:
    def test_a_streamed_letter_is_the_one_the_email_library_makes(self) -> None:
        """The attachment base64-encoded from its file as written gives the same bytes as
        the whole part attached in memory."""
        for size in (1, 57, 57 * 16384, 57 * 16384 + 1, 2_000_003):
            body = secrets.token_bytes(size)
            part = Part(1, 1, "personal-data-SAR-1.zip", size, "", io.BytesIO(body))

            def message() -> EmailMessage:
                letter = EmailMessage()
                letter["Subject"] = "A copy of your personal data"
                letter.set_content("Hello")
                return letter

            whole = message()
            whole.add_attachment(
                body, maintype="application", subtype="zip", filename=part.filename
            )
            streamed = b"".join(with_attachment(message(), part))
            assert same_but_boundary(streamed, whole.as_bytes(policy=SMTP))
            assert base64.b64encode(body[:57]) in streamed


def same_but_boundary(one: bytes, other: bytes) -> bool:
    """Equal but for the MIME boundary, which is drawn at random."""
    boundary = re.compile(rb"={15}\d+==")
    return boundary.sub(b"=", one) == boundary.sub(b"=", other)
