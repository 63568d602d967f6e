"""The export zip: complete, escaped, checksummed and written safely."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import Identifier, Record
from sarbot.package import ExportContext, SourceData, build_zip, write_private_file

WHEN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def context(*sources: SourceData) -> ExportContext:
    return ExportContext(
        reference="SAR-2026-0007",
        email="alice@example.test",
        controller=ControllerSettings(name="Red Train IT Ltd", email="support@redtrain.test"),
        received_at=WHEN,
        confirmed_at=WHEN,
        generated_at=WHEN,
        sources=list(sources),
    )


def files(ctx: ExportContext) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(build_zip(ctx))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


HOSTILE = Record(
    category="Comment <b>bold</b>",
    fields={"content": "<script>alert('x')</script></td></table>", "n": 3, "none": None},
    found_by=Identifier("email", "alice@example.test", "the request <i>"),
    location="table <t>",
    notes=("Information about <other> people was withheld.",),
)
FACTS = SourceFacts(purposes="Spam <detection>", retention="One year")


class TestZip:
    def test_contents_and_manifest(self) -> None:
        """index.html, data.json and manifest.json; the manifest's hashes and sizes are right."""
        found = files(context(SourceData("web", "Website", FACTS, [HOSTILE])))
        assert sorted(found) == ["data.json", "index.html", "manifest.json"]
        manifest = json.loads(found["manifest.json"])
        assert manifest["reference"] == "SAR-2026-0007"
        assert {f["name"] for f in manifest["files"]} == {"data.json", "index.html"}
        for entry in manifest["files"]:
            assert entry["size"] == len(found[entry["name"]])
            assert entry["sha256"] == hashlib.sha256(found[entry["name"]]).hexdigest()

    def test_data_json_keeps_every_value(self) -> None:
        """data.json carries the records with source, category and provenance, values unchanged."""
        data = json.loads(
            files(context(SourceData("web", "Website", FACTS, [HOSTILE])))["data.json"]
        )
        assert data["format"] == "sarbot-export"
        assert data["version"] == 1
        [source] = data["sources"]
        assert source["name"] == "web" and source["record_count"] == 1
        assert source["records"][0] == {
            "category": HOSTILE.category,
            "fields": dict(HOSTILE.fields),
            "found_by": {
                "kind": "email",
                "value": "alice@example.test",
                "origin": "the request <i>",
            },
            "location": "table <t>",
            "notes": ["Information about <other> people was withheld."],
        }
        assert source["facts"]["purposes"] == "Spam <detection>"

    def test_html_escapes_everything(self) -> None:
        """Markup in data shows as text; the report has no scripts and no external resources."""
        html = files(context(SourceData("web", "Web <i>site</i>", FACTS, [HOSTILE])))[
            "index.html"
        ].decode()
        assert "<script" not in html
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;/td&gt;&lt;/table&gt;" in html
        assert "Web &lt;i&gt;site&lt;/i&gt;" in html
        assert "Comment &lt;b&gt;bold&lt;/b&gt;" in html
        assert "Spam &lt;detection&gt;" in html
        assert "the request &lt;i&gt;" in html and "table &lt;t&gt;" in html
        assert "about &lt;other&gt; people" in html
        for external in ("http://", "https://", "src=", "<link"):
            assert external not in html

    def test_no_data_is_said_plainly(self) -> None:
        """With no records the report says so."""
        html = files(context())["index.html"].decode()
        assert "We hold no personal data about you beyond this request" in html


class TestFiles:
    def test_written_atomically_with_private_permissions(self, tmp_path: Path) -> None:
        """The file is 0600, complete, and no partial file is left."""
        target = tmp_path / "exports" / "SAR-2026-0007.eml"
        write_private_file(target, b"x" * 1000)
        assert target.read_bytes() == b"x" * 1000
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
        assert [p.name for p in target.parent.iterdir()] == ["SAR-2026-0007.eml"]
