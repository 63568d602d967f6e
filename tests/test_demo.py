"""``make demo`` works: the demo script runs end to end on the real mail stack.

The demo runs once per module, with mailboxes of its own; the tests then read what alice
received, and play the demo's look-alikes of hers (``demo.py --requester``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sarbot.testing import Correspondent, MailServer, subject_contains
from tests.conftest import ROOT, unique

pytestmark = pytest.mark.mailstack

VAULT = "Our secure vault (client system access details and contracts)"
WEBSITE = "Our website: comments and your account"
MONITORING = "The monitoring agents on computers we support"
CONTACT_FORM = "Copies of messages you sent us through the contact form on our website"
LOGS = "Access logs of systems you connected to"

# Text that is only in the data of alice's look-alikes (another client's asmith, bob, the
# address that holds hers) and only in alice's: never in the other side's export.
LOOKALIKES_ONLY = [
    "HBR-WS-003",
    "harbour-fs1",
    "Harbour Ltd",
    "192.0.2.41",
    "Andrew Smith",
    "bjones",
    "Bob Jones",
    "bob@example.test",
    "Quote request",
    "New starter",
]
ALICE_ONLY = [
    "Alice Smith",
    "alice_s",
    "ACME-WS-014",
    "ACME-LT-007",
    "198.51.100.14",
    "07700 900123",
    "Backup for home users",
    "RemoteSupport.exe",
    "Acme Ltd",
]


@dataclass(frozen=True)
class Demo:
    env: dict[str, str]
    out: str
    alice: str
    andrew: str
    mallory: str
    folder: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )


@dataclass(frozen=True)
class Export:
    document: dict[str, Any]
    received: str  # the mail and every file of the zip, as text

    def source(self, description: str) -> dict[str, Any]:
        sources: list[dict[str, Any]] = self.document["sources"]
        [source] = [s for s in sources if s["description"] == description]
        return source

    def records(self, description: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.source(description)["records"]
        return records


def export_of(server: MailServer, address: str) -> Export:
    """What ``address`` received: the letter with the zip."""
    mail = Correspondent(server, address).wait_for(subject_contains("A copy of your personal data"))
    [part] = list(mail.iter_attachments())
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        document = json.loads(archive.read("data.json"))
        files = b"".join(archive.read(name) for name in archive.namelist())
    return Export(document, (mail.as_bytes() + files).decode("utf-8", "replace"))


def whole_address_in(address: str, text: str) -> bool:
    """The address, not as the end of a longer one (``malice@`` holds ``alice@``)."""
    return re.search(rf"(?<![\w.+-]){re.escape(address)}", text) is not None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, mailstack: MailServer) -> Demo:
    folder = tmp_path_factory.mktemp("demo") / "demo"
    alice = unique("alice", "example.test")
    andrew, mallory = unique("andrew", "example.test"), unique("mallory", "evil.test")
    env = {
        **os.environ,
        "SARBOT_DEMO_DIR": str(folder),
        "SARBOT_DEMO_SUPPORT": unique("support", "redtrain.test"),
        "SARBOT_DEMO_ALICE": alice,
        "SARBOT_DEMO_ANDREW": andrew,
        "SARBOT_DEMO_MALLORY": mallory,
    }
    demo = Demo(env, "", alice, andrew, mallory, folder)
    result = demo.run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Demo(env, result.stdout, alice, andrew, mallory, folder)


def test_demo_answers_alice_from_all_five_sources(demo: Demo) -> None:
    """Her letter and the demo's summary list the five sources with what each held."""
    out = demo.out
    for title, count in ((VAULT, 1), (WEBSITE, 4), (MONITORING, 2), (CONTACT_FORM, 1), (LOGS, 6)):
        records = f"{count} record{'' if count == 1 else 's'}"
        assert f"\n- {title}: {records}\n" in out  # the letter
        assert f"\n  - {title}: {records} (" in out.partition("==> Done.")[2]  # the summary
    summary = out.partition("==> Done.")[2]
    assert summary.count("      how long we keep it: ") == 5
    assert "how long we keep it: Up to ten years, for audit purposes" in summary
    # Her machines and her VPN lines are reached through the realm Acme Ltd.
    assert "login asmith at Acme Ltd [everywhere] from keepass 'vault': UserName of entry" in out
    assert "login alice_s [not_followed] from wordpress 'website'" in out
    assert "alice's vault password appears nowhere in what she received." in out
    assert "No data of the look-alikes is in it" in out
    assert "bjones" not in out and "Bob" not in out
    received = out.partition("==> What alice received")[2].partition("alice's vault password")[0]
    assert "Harbour" not in received and "Andrew" not in received and demo.mallory not in received
    assert (demo.folder / "config.toml").is_file()
    assert re.search(r"requests show SAR-\d{4}-\d{8}\n", out)  # the random reference of hers
    assert f"scripts/demo.py --requester {demo.andrew}" in out


def test_every_source_states_its_article_15_facts(demo: Demo, mailstack: MailServer) -> None:
    """Each source in her export carries the facts the privacy policy gives for it."""
    export = export_of(mailstack, demo.alice)
    titles = [source["description"] for source in export.document["sources"]]
    assert titles == [VAULT, WEBSITE, MONITORING, CONTACT_FORM, LOGS]
    for source in export.document["sources"]:
        facts = source["facts"]
        for fact in ("purposes", "lawful_basis", "categories", "recipients", "retention", "origin"):
            assert facts[fact], f"{source['name']}: {fact} is not stated"
    logs = export.source(LOGS)["facts"]
    assert logs["retention"].startswith("Up to ten years, for audit purposes")
    assert "the authorities, if required by law" in logs["recipients"]
    contact = export.source(CONTACT_FORM)["facts"]
    assert contact["retention"] == "As long as necessary to respond to your request."
    assert contact["origin"].startswith("You, when you used the contact form on our website")
    # The report states them too.
    assert "Up to ten years, for audit purposes" in export.received
    assert "As long as necessary to respond to your request." in export.received


def test_her_contact_form_mail_and_log_lines_are_in_her_export(
    demo: Demo, mailstack: MailServer
) -> None:
    """The copy kept in the mailbox's folder, her web server lines (the rotated file's too)
    and her VPN lines, which name ACME\\asmith or asmith, not her address."""
    export = export_of(mailstack, demo.alice)
    [mail] = export.records(CONTACT_FORM)
    assert mail["fields"]["Subject"] == "Contact form: Backup for home users"
    assert mail["fields"]["Reply-To"] == [f"Alice Smith <{demo.alice}>"]
    assert "Phone: 07700 900123" in mail["fields"]["Text"]
    assert mail["location"] == "folder 'Contact form', UID 1"

    lines = {
        (r["fields"]["Log"], r["fields"].get("User"), r["fields"]["Action"], r["location"])
        for r in export.records(LOGS)
    }
    logs = str(demo.folder / "logs")
    web, vpn = "Web server of www.redtrain.test", "Acme Ltd VPN gateway"
    assert lines == {
        (web, None, f"GET /contact/thanks/?from={demo.alice}", f"{logs}/www.access.log line 1"),
        (web, demo.alice, "GET /downloads/acme/RemoteSupport.exe", f"{logs}/www.access.log line 2"),
        (web, demo.alice, "GET /downloads/acme/", f"{logs}/www.access.log.1.gz line 1"),
        (vpn, "asmith", "VPN login", f"{logs}/acme-vpn.jsonl line 1"),
        (vpn, "ACME\\asmith", "VPN login", f"{logs}/acme-vpn.jsonl line 2"),
        (vpn, "ACME\\asmith", "RDP session to ACME-WS-014", f"{logs}/acme-vpn.jsonl line 3"),
    }
    for record in export.records(LOGS):
        found_by = record["found_by"]
        if record["fields"]["Log"] == vpn:
            assert (found_by["value"], found_by["realm"]) == ("asmith", "Acme Ltd")
        else:
            assert (found_by["kind"], found_by["value"]) == ("email", demo.alice)


def test_no_lookalike_data_is_in_alices_export(demo: Demo, mailstack: MailServer) -> None:
    """Another client's asmith, the website login asmith, bob and malice@ stay out."""
    export = export_of(mailstack, demo.alice)
    text = export.received
    for address in (demo.andrew, demo.mallory, "m" + demo.alice):
        assert not whole_address_in(address, text), address
    assert [s for s in LOOKALIKES_ONLY if s in text] == []
    graph = {(i["kind"], i["value"], i["realm"]) for i in export.document["identifiers"]}
    assert ("username", "asmith", "Acme Ltd") in graph
    assert all(realm != "Harbour Ltd" for _kind, _value, realm in graph)


@pytest.mark.parametrize("who", ["andrew", "mallory"])
def test_a_lookalikes_request_gets_none_of_alices_data(
    demo: Demo, mailstack: MailServer, who: str
) -> None:
    """andrew is asmith at Harbour Ltd; mallory chose the website login asmith. Each gets
    their own data, and nothing of alice's."""
    address = demo.andrew if who == "andrew" else demo.mallory
    result = demo.run("--requester", address)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"None of alice's data is in what {address} received." in result.stdout
    export = export_of(mailstack, address)
    assert not whole_address_in(demo.alice, export.received)
    assert [s for s in ALICE_ONLY if s in export.received] == []
    counts = {s["description"]: s["record_count"] for s in export.document["sources"]}
    graph = {(i["value"], i["realm"], i["scope"]) for i in export.document["identifiers"]}
    if who == "andrew":
        assert counts == {VAULT: 1, WEBSITE: 0, MONITORING: 1, CONTACT_FORM: 0, LOGS: 3}
        assert ("asmith", "Harbour Ltd", "everywhere") in graph
        [computer] = export.records(MONITORING)
        assert "HBR-WS-003" in json.dumps(computer)
        assert {r["fields"]["Log"] for r in export.records(LOGS)} == {"Harbour Ltd file server"}
    else:
        assert counts == {VAULT: 0, WEBSITE: 1, MONITORING: 0, CONTACT_FORM: 0, LOGS: 0}
        assert ("asmith", "", "not_followed") in graph
