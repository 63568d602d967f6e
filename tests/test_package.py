"""The export: complete, escaped, checksummed, split when large, and written safely."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import stat
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import (
    OTHER_PEOPLE_NOTE,
    OTHER_PERSON,
    Identifier,
    Record,
    Trust,
    with_other_people_note,
)
from sarbot.export.archive import Part, pack
from sarbot.export.files import ExportContext, SourceData, build_files
from sarbot.faults import CrashPoints
from sarbot.mail.templates import Templates
from sarbot.store.exports import remove_left_over, write_private_file
from sarbot.testing.identity import login

WHEN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
EMAIL = Identifier("email", "alice@example.test", "the request <i>", "email", Trust.VERIFIED)
VAULT_LOGIN = login(
    "asmith",
    "keepass:vault/Clients/Acme Ltd",
    "ad:ACME",
    "tacticalrmm:rmm/Acme Ltd",
    label="Acme Ltd",
)
HOSTILE = Record(
    category="Comment <b>bold</b>",
    fields={
        "content": "<script>alert('x')</script></td></table>",
        "n": 3,
        "none": None,
        "tags": ["a", "<b>"],
        "nested": {"k": '=HYPERLINK("http://evil.test")'},
    },
    found_by=EMAIL,
    location="table <t>",
    notes=("Information about <other> people was withheld.",),
)
FACTS = SourceFacts(purposes="Spam <detection>", retention="One year")
CONTROLLER = ControllerSettings(
    name="Red Train IT Ltd",
    email="support@redtrain.test",
    processor_notice="Red Train Cloud data is our clients' to disclose.",
)


def context(*sources: SourceData, email: str = "alice@example.test") -> ExportContext:
    return ExportContext(
        reference="SAR-2026-0007",
        email=email,
        controller=CONTROLLER,
        received_at=WHEN,
        confirmed_at=WHEN,
        generated_at=WHEN,
        sources=list(sources),
    )


def unzip(part: Part) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def one_zip(ctx: ExportContext) -> dict[str, bytes]:
    [part] = pack(
        build_files(ctx, Templates()), reference=ctx.reference, generated_at=WHEN, limit=20_000_000
    )
    return unzip(part)


class TestZip:
    def test_contents_and_manifest(self) -> None:
        """Report, README, data, CSV and manifest; the manifest's hashes and sizes are right."""
        found = one_zip(context(SourceData("web", "Website", FACTS, [HOSTILE])))
        assert sorted(found) == [
            "README.txt",
            "csv/web-comment-b-bold-b.csv",
            "data.json",
            "index.html",
            "manifest.json",
        ]
        manifest = json.loads(found["manifest.json"])
        assert (manifest["reference"], manifest["parts"]) == ("SAR-2026-0007", 1)
        assert {f["name"] for f in manifest["files"]} == set(found) - {"manifest.json"}
        for entry in manifest["files"]:
            assert entry["size"] == len(found[entry["name"]])
            assert entry["sha256"] == hashlib.sha256(found[entry["name"]]).hexdigest()
            assert entry["part"] == 1

    def test_data_json_keeps_every_value(self) -> None:
        """data.json carries the records with source, category and provenance, values unchanged."""
        data = json.loads(
            one_zip(context(SourceData("web", "Website", FACTS, [HOSTILE])))["data.json"]
        )
        assert (data["format"], data["version"]) == ("sarbot-export", 2)
        [source] = data["sources"]
        assert source["name"] == "web" and source["record_count"] == 1
        assert source["records"][0] == {
            "category": HOSTILE.category,
            "fields": dict(HOSTILE.fields),
            "found_by": {
                "kind": "email",
                "value": "alice@example.test",
                "namespace": "email",
                "realm": "",
                "trust": "verified",
                "origin": "the request <i>",
            },
            "location": "table <t>",
            "notes": ["Information about <other> people was withheld."],
        }
        assert source["facts"]["purposes"] == "Spam <detection>"

    def test_provenance_names_the_namespace_realm_and_trust(self) -> None:
        """A login's provenance in data.json and the report: its directory, realm and trust."""
        record = Record("Vault entry", {"Title": "AD account"}, VAULT_LOGIN, "entry 'x'")
        found = one_zip(context(SourceData("vault", "Vault", FACTS, [record])))
        [source] = json.loads(found["data.json"])["sources"]
        assert source["records"][0]["found_by"] == {
            "kind": "username",
            "value": "asmith",
            "namespace": "keepass:vault/Clients/Acme Ltd",
            "realm": "Acme Ltd",
            "trust": "controller",
            "origin": "test",
        }
        html = found["index.html"].decode()
        assert "How we found this: by your login asmith at Acme Ltd (test), in entry" in html
        assert "How we found this: by your email address" not in html

    def test_html_escapes_everything(self) -> None:
        """Markup in data shows as text; the report has no scripts and no external resources."""
        html = one_zip(context(SourceData("web", "Web <i>site</i>", FACTS, [HOSTILE])))[
            "index.html"
        ]
        text = html.decode()
        assert "<script" not in text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;/td&gt;&lt;/table&gt;" in text
        for escaped in (
            "Web &lt;i&gt;site&lt;/i&gt;",
            "Comment &lt;b&gt;bold&lt;/b&gt;",
            "Spam &lt;detection&gt;",
            "the request &lt;i&gt;",
            "table &lt;t&gt;",
            "about &lt;other&gt; people",
            "<li>&lt;b&gt;</li>",
        ):
            assert escaped in text
        for loads_something in ("src=", "<link", "url(", "@import", "<iframe", "<object"):
            assert loads_something not in text

    def test_report_states_rights_authority_and_processor_data(self) -> None:
        """The report gives the rights, the supervisory authority and the processor paragraph."""
        text = one_zip(context())["index.html"].decode()
        for words in (
            "rectification",
            "erase",
            "restrict",
            "object",
            "Information Commissioner&#39;s Office",
            "0303 123 1113",
            "Red Train Cloud data is our clients&#39; to disclose.",
        ):
            assert words in text

    def test_no_data_is_said_plainly(self) -> None:
        """With no records the report and the README say so."""
        found = one_zip(context())
        for name in ("index.html", "README.txt"):
            assert "We hold no personal data about you beyond this request" in found[name].decode()

    def test_readme_summarises(self) -> None:
        """README.txt names the reference, each source's count and the rights."""
        readme = one_zip(context(SourceData("web", "Website", FACTS, [HOSTILE, HOSTILE])))[
            "README.txt"
        ]
        text = readme.decode()
        assert "SAR-2026-0007" in text and "- Website: 2 records" in text
        assert "Information Commissioner's Office" in text


class TestCsv:
    def rows(self, record: Record) -> list[list[str]]:
        files = one_zip(context(SourceData("web", "Website", FACTS, [record])))
        [name] = [n for n in files if n.startswith("csv/")]
        return list(csv.reader(io.StringIO(files[name].decode("utf-8-sig"))))

    def test_columns_values_and_provenance(self) -> None:
        """One column per field, then how the record was found; lists and objects as JSON."""
        header, row = self.rows(HOSTILE)
        assert header[:5] == ["content", "n", "none", "tags", "nested"]
        assert header[5:] == ["found by", "found by: where that came from", "location", "notes"]
        assert row[1:4] == ["3", "", '["a", "<b>"]']
        assert row[5:7] == ["email address alice@example.test", "the request <i>"]

    def test_a_login_is_described_with_its_realm(self) -> None:
        """A record found by a login says whose directory the login is in, not a bare string."""
        _, row = self.rows(Record("Vault entry", {"Title": "AD account"}, VAULT_LOGIN))
        assert row[1:3] == ["login asmith at Acme Ltd", "test"]

    def test_formulas_cannot_run_in_a_spreadsheet(self) -> None:
        """Values a spreadsheet would evaluate are prefixed with an apostrophe."""
        record = Record(
            "C", {"a": "=1+1", "b": "+SUM(A1)", "c": "-2", "d": "@cmd", "e": "fine"}, EMAIL
        )
        _, row = self.rows(record)
        assert row[:5] == ["'=1+1", "'+SUM(A1)", "'-2", "'@cmd", "fine"]


class TestOtherPeople:
    def test_a_withheld_value_brings_the_note(self) -> None:
        """A record holding the other-person marker anywhere says that others' data was withheld."""
        record = Record("Email", {"To": ["alice@example.test", OTHER_PERSON]}, EMAIL)
        assert with_other_people_note(record).notes == (OTHER_PEOPLE_NOTE,)
        assert with_other_people_note(HOSTILE) is HOSTILE


class TestParts:
    def big_context(self) -> ExportContext:
        records = [
            Record("Log line", {"line": f"{i:06d} " + secrets.token_hex(256)}, EMAIL)
            for i in range(6000)
        ]
        return context(SourceData("logs", "Access logs", FACTS, records))

    def test_a_large_export_is_split_into_parts_that_each_open(self) -> None:
        """Above the limit, each part is a zip within the limit, with the manifest of all files."""
        ctx = self.big_context()
        files = build_files(ctx, Templates())
        limit = 1_200_000
        parts = pack(files, reference=ctx.reference, generated_at=WHEN, limit=limit)
        assert len(parts) > 1
        assert [p.number for p in parts] == list(range(1, len(parts) + 1))
        assert all(p.count == len(parts) and p.size <= limit for p in parts)
        assert parts[0].filename == f"personal-data-SAR-2026-0007-part1of{len(parts)}.zip"
        contents = [unzip(p) for p in parts]
        manifests = {c["manifest.json"] for c in contents}
        assert len(manifests) == 1
        manifest = json.loads(manifests.pop())
        assert manifest["parts"] == len(parts)
        assert "index.html" in contents[0] and "README.txt" in contents[0]
        for entry in manifest["files"]:
            pieces = entry.get("pieces") or [{"name": entry["name"], "part": entry["part"]}]
            joined = b"".join(contents[p["part"] - 1][p["name"]] for p in pieces)
            assert hashlib.sha256(joined).hexdigest() == entry["sha256"]
            assert joined == files[entry["name"]]

    def test_a_file_larger_than_a_part_is_cut_into_pieces(self) -> None:
        """data.json bigger than one part is cut into numbered pieces, listed in the manifest."""
        ctx = self.big_context()
        files = build_files(ctx, Templates())
        parts = pack(files, reference=ctx.reference, generated_at=WHEN, limit=400_000)
        manifest = json.loads(unzip(parts[0])["manifest.json"])
        [data] = [f for f in manifest["files"] if f["name"] == "data.json"]
        assert [p["name"] for p in data["pieces"]][:2] == ["data.json.001", "data.json.002"]
        assert all(p.size <= 400_000 for p in parts)


class TestTemplates:
    def test_admins_override_a_template_by_name(self, tmp_path: Path) -> None:
        """A file in the template folder replaces the built-in template of that name."""
        (tmp_path / "README.txt").write_text("Our own README for {{ reference }}\n")
        files = build_files(context(), Templates(tmp_path))
        assert files["README.txt"] == b"Our own README for SAR-2026-0007\n"
        assert b"Your personal data" in files["index.html"]

    def test_overridden_html_is_still_escaped(self, tmp_path: Path) -> None:
        """Autoescaping does not depend on the admin remembering it."""
        (tmp_path / "report.html").write_text("<p>{{ email }}</p>")
        files = build_files(context(email="<b>x</b>"), Templates(tmp_path))
        assert files["index.html"] == b"<p>&lt;b&gt;x&lt;/b&gt;</p>"

    @pytest.mark.parametrize("name", ["report.html", "README.txt", "export.txt", "export.html"])
    def test_built_in_templates_exist(self, name: str) -> None:
        """Every template the export uses ships with sarbot."""
        assert Templates().env.get_template(name) is not None


class TestFiles:
    def test_written_atomically_with_private_permissions(self, tmp_path: Path) -> None:
        """The file is 0600, complete, and no partial file is left."""
        target = tmp_path / "exports" / "SAR-2026-0007.eml"
        write_private_file(target, b"x" * 1000, CrashPoints())
        assert target.read_bytes() == b"x" * 1000
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
        assert [p.name for p in target.parent.iterdir()] == ["SAR-2026-0007.eml"]

    def test_files_left_over_go_and_recorded_ones_stay(self, tmp_path: Path) -> None:
        """For one request's names: its temporary files and its letters nothing records go;
        a recorded letter stays, and so does every file of a request whose reference merely
        starts or ends alike."""
        folder = tmp_path / "exports"
        folder.mkdir()
        names = {
            "SAR-2026-1234.part1of2.eml": "recorded",
            "SAR-2026-1234.part2of2.eml": "left over",  # renamed, not committed
            ".SAR-2026-1234.part1of1.eml.x1y2.partial": "left over",  # not renamed
            "SAR-2026-123.part1of1.eml": "another's",
            ".SAR-2026-123.part1of1.eml.a1b2.partial": "another's",
            "SAR-2026-12345.part1of1.eml": "another's",
            "XSAR-2026-1234.part1of1.eml": "another's",
        }
        for name in names:
            (folder / name).write_bytes(b"x")
        (folder / "SAR-2026-1234.part9of9.eml").mkdir()  # not a file: left alone
        recorded = {"SAR-2026-1234.part1of2.eml"}
        assert remove_left_over(folder, "SAR-2026-1234.part", keep=recorded) == (2, [])
        left = {path.name for path in folder.iterdir()}
        kept = {name for name, what in names.items() if what != "left over"}
        assert left == kept | {"SAR-2026-1234.part9of9.eml"}

    def test_a_left_over_file_that_cannot_be_deleted_is_reported_not_raised(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Deleting is best effort (a file root cannot unlink is not something a test can
        make everywhere, so the refusal is made here): the others still go."""
        folder = tmp_path / "exports"
        folder.mkdir()
        stuck, gone = folder / "SAR-2026-1234.part1of2.eml", folder / "SAR-2026-1234.part2of2.eml"
        for path in (stuck, gone):
            path.write_bytes(b"x")
        unlink = Path.unlink

        def refusing(self: Path, missing_ok: bool = False) -> None:
            if self == stuck:
                raise PermissionError(1, "Operation not permitted", str(self))
            unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refusing)
        assert remove_left_over(folder, "SAR-2026-1234.part", keep=set()) == (1, [stuck])
        assert stuck.exists() and not gone.exists()
