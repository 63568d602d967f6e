"""The export's index.html as a person sees it: opened in headless Chromium from file://.

One launch renders the report (DOM, screenshot, NetLog); a second opens a probe
page that does load an image from a loopback server, to prove the NetLog check
sees a request when there is one.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest

from sarbot.config import ControllerSettings, SourceFacts
from sarbot.connector import Identifier, Record, Trust
from sarbot.export.files import ExportContext, SourceData, build_files
from sarbot.graph import Link, Scope
from sarbot.mail.templates import Templates
from tests.browser import (
    BrowserError,
    Dom,
    NetworkActivity,
    Png,
    network_activity,
    read_png,
    render,
)

EMAIL = Identifier(
    "email", "alice@example.test", "the address the request was verified from", "email",
    Trust.VERIFIED,
)  # fmt: skip
USERNAME = Identifier(
    "username",
    "asmith",
    "keepass 'vault': entry 'Clients/Acme Ltd/Alice Smith', UserName field",
    "keepass:vault/Clients/Acme Ltd",
    Trust.CONTROLLER,
    source="vault",
    realm="Acme Ltd",
)
WEBSITE_LOGIN = Identifier(
    "username",
    "alice_s",
    "wordpress 'website': wp_users.user_login of user ID 2",
    "wordpress:website",
    Trust.SELF_ASSERTED,
    source="website",
)
OFFICE_IP = Identifier("ip", "203.0.113.24", "wordpress 'website': a comment", "ip")
LINKS = (
    Link(EMAIL, Scope.START),
    Link(USERNAME, Scope.EVERYWHERE),
    Link(WEBSITE_LOGIN, Scope.NOT_FOLLOWED, "chosen by whoever typed it, so it proves nothing"),
    Link(OFFICE_IP, Scope.NOT_FOLLOWED, "it can belong to several people"),
)
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=http://evil.test/x>"
CLOSE = "</td></table>"

VAULT = SourceData(
    "vault",
    "Our secure vault (client system access details)",
    SourceFacts(
        purposes="To manage our clients' systems under contract.",
        lawful_basis="Contract",
        categories=("usernames", "system access details"),
        recipients=("Red Train IT Ltd staff",),
        retention="For as long as the contract runs.",
        origin="Your employer, our client.",
    ),
    [
        Record(
            "Vault entry",
            {
                "Title": "Alice Smith - workstation login",
                "User name": "asmith",
                "Email": EMAIL.value,
            },
            EMAIL,
            location="entry 'Clients/Acme Ltd/Alice Smith'",
            notes=("The entry's password and protected fields were withheld.",),
            yields=(USERNAME,),
        )
    ],
)
WEBSITE = SourceData(
    "website",
    "Our website: comments and your account",
    SourceFacts(
        purposes="To publish your comments and to detect spam.",
        lawful_basis="Legitimate interests",
        categories=("name", "email address", "IP address"),
        retention="For as long as the comments are published.",
    ),
    [
        Record(
            "Website comment",
            {"Posted": "2025-11-03T10:12:00", "IP address": "203.0.113.24", "Text": "Great post!"},
            EMAIL,
            location="table wp_comments, comment_ID 17",
        ),
        Record(
            "Website comment",
            {"Posted": "2025-12-01T16:40:00", "IP address": "203.0.113.24", "Text": "Thanks."},
            EMAIL,
            location="table wp_comments, comment_ID 23",
        ),
        Record(
            "Website account",
            {
                "Login": "alice",
                "Roles": ["subscriber"],
                "Profile": {"First name": "Alice", "Last name": "Smith"},
                "Newsletter": True,
            },
            EMAIL,
            location="table wp_users, ID 5",
        ),
    ],
)
MONITORING = SourceData(
    "monitoring",
    "The monitoring agents on computers we support",
    SourceFacts(purposes="To fulfil our contracts with our clients."),
    [
        Record(
            "Computer you logged on to",
            {"Host name": "ACME-WS-014", "Last logged on": "2026-02-27T08:55:00"},
            USERNAME,
            location="agent 14",
            notes=("Information about other people on this machine was withheld.",),
        )
    ],
)
HOSTILE = SourceData(
    "helpdesk",
    "Helpdesk tickets",
    SourceFacts(purposes=f"Support {SCRIPT}"),
    [
        Record(
            SCRIPT,
            {
                "Subject": IMG,
                "Body": CLOSE,
                "After": "still in the table",
                "Empty": None,
                "Tags": [IMG, SCRIPT],
                "Headers": {CLOSE: IMG},
            },
            EMAIL,
            location=f"ticket {IMG}",
            notes=(f"A note {CLOSE}{SCRIPT}",),
        )
    ],
)
SOURCES = (VAULT, WEBSITE, MONITORING, HOSTILE)
PARTIAL_REASON = "The backup server did not answer for 14 days."
CONTEXT = ExportContext(
    reference="SAR-2026-0042",
    email=EMAIL.value,
    controller=ControllerSettings(
        name="Red Train IT Ltd",
        email="support@redtrain.test",
        privacy_contact="privacy@redtrain.test",
    ),
    received_at=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
    confirmed_at=datetime(2026, 3, 2, 9, 41, tzinfo=UTC),
    generated_at=datetime(2026, 3, 2, 9, 45, tzinfo=UTC),
    sources=SOURCES,
    links=LINKS,
    missing=("Backups of the website",),
    partial_reason=PARTIAL_REASON,
)
# The elements the report's template is made of; the browser adds tbody to tables.
TEMPLATE = (resources.files("sarbot") / "templates" / "report.html").read_text(encoding="utf-8")
TEMPLATE_TAGS = {tag.lower() for tag in re.findall(r"<([A-Za-z]\w*)", TEMPLATE)} | {"tbody"}
# Tables with a mapping as a field value hold it as a table of its own.
MAPPINGS = sum(
    isinstance(value, dict)
    for source in SOURCES
    for record in source.records
    for value in record.fields.values()
)


class LoopbackServer(ThreadingHTTPServer):
    """Answers 404 to everything on 127.0.0.1 and remembers the paths asked for."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NotFound)
        self.paths: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _NotFound(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test looks at the recorded paths."""


@dataclass(frozen=True)
class Seen:
    html: str
    dom: Dom
    png: Png
    network: NetworkActivity


@dataclass(frozen=True)
class Views:
    report: Seen
    probe: Seen
    probe_url: str
    served: list[str]


def _seen(page: Path, out: Path) -> Seen:
    rendering = render(page, out)
    return Seen(
        page.read_text(encoding="utf-8"),
        Dom(rendering.dom),
        read_png(rendering.screenshot),
        network_activity(rendering.netlog),
    )


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Views:
    """The report and the probe page, each opened once in Chromium."""
    folder = tmp_path_factory.mktemp("report")
    report = folder / "index.html"
    report.write_bytes(build_files(CONTEXT, Templates())["index.html"])
    server = LoopbackServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe_url = f"http://127.0.0.1:{server.port}/x.png"
    probe = folder / "probe.html"
    probe.write_text(
        f'<!DOCTYPE html><html><body><img src="{probe_url}" width="1" height="1" alt="">'
        "</body></html>",
        encoding="utf-8",
    )
    try:
        return Views(_seen(report, folder), _seen(probe, folder), probe_url, server.paths)
    except BrowserError as exc:
        error = str(exc)
    finally:
        server.shutdown()
        server.server_close()
    pytest.fail(f"headless Chromium failed: {error}", pytrace=False)


class TestNetwork:
    def test_detector_sees_a_page_request(self, views: Views) -> None:
        """A page that loads an image from loopback shows that request in the NetLog."""
        assert set(views.served) == {"/x.png"}
        assert views.probe_url in views.probe.network.page_targets
        assert "127.0.0.1" in views.probe.network.hosts

    def test_report_makes_no_request(self, views: Views) -> None:
        """Opening the report makes no network request on its behalf."""
        network = views.report.network
        assert network.page_targets == set()
        # Whatever the browser fetched for itself, the report named none of it.
        named = {host for host in network.hosts if host in views.report.html}
        assert named == set(), f"the report names hosts the browser contacted: {named}"
        assert "evil.test" not in network.hosts

    def test_report_forbids_fetching(self, views: Views) -> None:
        """The report's CSP allows nothing but inline style, and its style fetches nothing."""
        html = views.report.html
        assert "content=\"default-src 'none'; style-src 'unsafe-inline'\"" in html
        assert "url(" not in html and "@import" not in html


class TestSections:
    def test_headings(self, views: Views) -> None:
        """The report's sections, one per source, and the categories are all shown."""
        headings = views.report.dom.headings
        for heading in (
            "Your personal data",
            "Timeline",
            "This copy is incomplete",
            "Summary",
            "How we searched",
            *(source.description for source in SOURCES),
            "Vault entry (1)",
            "Website comment (2)",
            "Website account (1)",
            "Computer you logged on to (1)",
            "Your rights",
        ):
            assert heading in headings

    def test_summary_and_identifiers(self, views: Views) -> None:
        """The summary counts each source's records; each identifier is shown with its realm,
        its origin and how far it was followed, and why."""
        rows = views.report.dom.rows
        for source in SOURCES:
            assert [source.description, str(len(source.records))] in rows
        assert ["login asmith at Acme Ltd", f"found in {USERNAME.origin}"] in rows
        assert ["login alice_s", "chosen by whoever typed it, so it proves nothing"] in rows
        assert ["IP address 203.0.113.24", "it can belong to several people"] in rows

    def test_facts_rows(self, views: Views) -> None:
        """Each source's facts are shown as rows, only those given, plus automated decisions."""
        rows = views.report.dom.rows
        assert ["Why we hold it", VAULT.facts.purposes] in rows
        assert ["Lawful basis", "Contract"] in rows
        assert ["Kinds of data", "usernames, system access details"] in rows
        assert ["Who receives it", "Red Train IT Ltd staff"] in rows
        assert ["How long we keep it", "For as long as the contract runs."] in rows
        assert ["Where it came from", "Your employer, our client."] in rows
        automated = ["Automated decisions", SourceFacts().automated_decisions]
        assert rows.count(automated) == len(SOURCES)
        assert not any(row[0] == "Transfers abroad" for row in rows)

    def test_records_notes_and_provenance(self, views: Views) -> None:
        """Field rows, notes and 'How we found this' with identifier, origin and location."""
        dom = views.report.dom
        assert ["User name", "asmith"] in dom.rows
        assert ["Host name", "ACME-WS-014"] in dom.rows
        assert ["Empty", ""] in dom.rows
        text = dom.text
        assert "The entry's password and protected fields were withheld." in text
        assert (
            f"How we found this: by your login asmith at Acme Ltd ({USERNAME.origin}), in agent 14."
            in text
        )
        assert "Backups of the website" in text and PARTIAL_REASON in text
        assert "privacy@redtrain.test" in text

    def test_nested_values(self, views: Views) -> None:
        """A list shows its items, a mapping its keys and values, a boolean as yes."""
        dom = views.report.dom
        assert ["Roles", "subscriber"] in dom.rows
        assert ["Profile", "First name Alice Last name Smith"] in dom.rows
        assert ["First name", "Alice"] in dom.rows
        assert ["Newsletter", "yes"] in dom.rows

    def test_every_table_is_whole(self, views: Views) -> None:
        """Summary, identifiers searched and not followed, each facts table and one table per
        record: none broken up."""
        records = sum(len(source.records) for source in SOURCES)
        assert views.report.dom.tags["table"] == 3 + len(SOURCES) + records + MAPPINGS


class TestHostileValues:
    def test_no_element_comes_from_data(self, views: Views) -> None:
        """The rendered DOM holds only the template's own elements: no script, img or other."""
        tags = views.report.dom.tags
        assert set(tags) <= TEMPLATE_TAGS, set(tags) - TEMPLATE_TAGS
        for element in ("script", "img", "iframe", "object", "embed", "link", "base", "form"):
            assert tags[element] == 0, element
        assert tags["style"] == 1

    def test_markup_is_shown_as_text(self, views: Views) -> None:
        """Category, field values, facts, location and notes show their markup literally."""
        dom = views.report.dom
        assert f"{SCRIPT} (1)" in dom.headings
        assert ["Subject", IMG] in dom.rows
        assert ["Body", CLOSE] in dom.rows
        assert ["After", "still in the table"] in dom.rows
        assert ["Tags", f"{IMG} {SCRIPT}"] in dom.rows
        assert [CLOSE, IMG] in dom.rows
        assert ["Why we hold it", f"Support {SCRIPT}"] in dom.rows
        assert f"A note {CLOSE}{SCRIPT}" in dom.text
        assert f"in ticket {IMG}." in dom.text


class TestScreenshot:
    def test_screenshot_shows_the_report(self, views: Views) -> None:
        """The screenshot is a 1200x2000 PNG full of text, unlike the near-blank probe page."""
        report, blank = views.report.png, views.probe.png
        assert (report.width, report.height) == (1200, 2000)
        assert (blank.width, blank.height) == (1200, 2000)
        assert blank.detailed_rows <= 5
        assert report.detailed_rows > 500
        assert 5 * blank.size < report.size < 5_000_000
