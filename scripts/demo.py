"""The end-to-end demo: alice asks for her data and gets it, through real mail servers.

Run by ``make demo`` after the mail stack is up.  It writes ``.demo/``: the
five places the privacy policy names (see ``demo_data.py``; the contact-form
copies go into a folder of the support mailbox), the config and the state
database.  sarbot starts once on the support mailbox, then the demo plays
alice, checks that her vault password and the look-alikes' data are nowhere in
what she receives, and sums up what each source gave her.

``demo.py --requester ADDRESS`` plays one more request, from ADDRESS, on the
demo already set up: a look-alike of alice's (``andrew@example.test``, the
asmith at another client; ``mallory@evil.test``, who chose the website login
asmith) gets their own data and none of hers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from secrets import token_urlsafe

import demo_data

from sarbot.testing import Correspondent, MailServer, stack, subject_contains

ROOT = Path(__file__).resolve().parent.parent
# The tests run the demo in a folder and mailboxes of their own.
DEMO = Path(os.environ.get("SARBOT_DEMO_DIR", ROOT / ".demo"))
SUPPORT = os.environ.get("SARBOT_DEMO_SUPPORT", "support@redtrain.test")
ALICE = os.environ.get("SARBOT_DEMO_ALICE", "alice@example.test")
# Look-alikes of alice's: another client's asmith, and whoever chose the website login asmith.
ANDREW = os.environ.get("SARBOT_DEMO_ANDREW", "andrew@example.test")
MALLORY = os.environ.get("SARBOT_DEMO_MALLORY", "mallory@evil.test")
SARBOT = [str(ROOT / ".venv" / "bin" / "sarbot"), "--config", str(DEMO / "config.toml")]

CONFIG = """\
# Written by `make demo`. See config.example.toml for every setting.
[controller]
name = "Red Train IT Ltd"
email = "{support}"
website = "https://www.redtrain.test"
privacy_contact = "privacy@redtrain.test"
processor_notice = \"\"\"Where we offer managed services, such as the Red Train Cloud, our clients \
store data on our servers. That data is our clients' responsibility: we have no control over it \
and do not disclose it unless the law requires us to. To see data an organisation stores in the \
Red Train Cloud, please ask that organisation.\"\"\"

[imap]
host = "127.0.0.1"
port = {imap_port}
security = "starttls"
ca_file = "{ca}"
username = "{support}"
password = {{ file = "secrets/imap-password" }}
poll_interval = 5

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "starttls"
ca_file = "{ca}"

[storage]
database_url = "sqlite:///{demo}/sarbot.db"
export_dir = "{demo}/exports"

[logging]
format = "console"

[[connectors]]
name = "vault"
type = "keepass"
description = "Our secure vault (client system access details and contracts)"
path = "vault.kdbx"
password = {{ file = "secrets/vault-password" }}
owner_fields = ["Email"]    # an entry is a person's when this field holds their address

[connectors.facts]
purposes = "To manage our clients' systems and fulfil the services we are contracted to provide."
lawful_basis = "Contract"
categories = ["usernames", "system access details", "names and addresses in contract documents"]
recipients = ["Red Train IT Ltd staff"]
retention = "For as long as necessary to fulfil our contractual obligations."
origin = "Your employer, our client, when it asked us to manage its systems."

[[connectors]]
name = "website"
type = "wordpress"
description = "Our website: comments and your account"
url = "sqlite:///{demo}/wordpress.db"
site_url = "https://www.redtrain.test"

[connectors.facts]
purposes = "To publish your comments and to detect spam."
lawful_basis = "Legitimate interests"
categories = ["name", "email address", "website", "IP address", "browser user agent", "comments"]
recipients = ["Red Train IT Ltd staff"]
retention = "Comments for as long as they are published; login cookies up to two weeks."
origin = "You, when you left a comment or logged in to our website."

[[connectors]]
name = "monitoring"
type = "tacticalrmm"
description = "The monitoring agents on computers we support"
url = "sqlite:///{demo}/monitoring.db"

[connectors.facts]
purposes = "Only to fulfil our contractual obligations to our clients."
lawful_basis = "Legitimate interests"
categories = ["who is logged on", "installed software", "IP addresses",
              "disk space, processor and other machine health statistics"]
recipients = ["Red Train IT Ltd technicians"]
retention = "For as long as necessary to fulfil our services under our contracts."
origin = "Collected by the monitoring agent installed on the computer."

# Copies of contact-form mail that staff keep, to answer them, in a folder of the support
# mailbox. The folder is only read (EXAMINE, BODY.PEEK); sarbot's own mail is never exported.
[[connectors]]
name = "contact-form"
type = "imap_mailbox"
description = "Copies of messages you sent us through the contact form on our website"
host = "127.0.0.1"
port = {imap_port}
security = "starttls"
ca_file = "{ca}"
username = "{support}"
password = {{ file = "secrets/imap-password" }}
folders = ["Contact form"]
exclude_from = ["{support}"]
own_domains = ["redtrain.test"]

[connectors.facts]
purposes = "To respond to your contact request, where its nature requires us to keep a copy."
lawful_basis = "Legitimate interests"
categories = ["name", "email address", "phone number", "what you wrote in the form"]
recipients = ["Red Train IT Ltd staff"]
retention = "As long as necessary to respond to your request."
origin = "You, when you used the contact form on our website, which emailed it to our team."

# Access logs of systems people connect to: our web server, the VPN gateway we run for Acme
# Ltd, and the SSH logins of a file server we manage for Harbour Ltd.
[[connectors]]
name = "logs"
type = "access_log"
description = "Access logs of systems you connected to"

[connectors.facts]
purposes = "To provide the services we are contracted to provide, to audit access to these \
systems, and where required for legal reasons."
lawful_basis = "Legitimate interests"
categories = ["dates and times", "source IP addresses", "usernames", "what was accessed"]
recipients = ["Red Train IT Ltd staff", "the authorities, if required by law"]
retention = "Up to ten years, for audit purposes, in case they need to be presented to the \
authorities."
origin = "Recorded automatically by the systems you connected to."

[[connectors.sources]]
label = "Web server of www.redtrain.test"
format = "combined"
paths = ["logs/www.access.log*"]    # rotated, gzipped files too

[[connectors.sources]]
label = "Acme Ltd VPN gateway"
format = "jsonl"
paths = ["logs/acme-vpn.jsonl"]

[[connectors.sources]]
label = "Harbour Ltd file server"
format = "auth"
paths = ["logs/harbour-fs1.auth.log"]

# A client's directory under its names: the vault group our staff keep for it, its computers
# in the monitoring, its Windows domain and the log of a system only its staff log in to. A
# login found in one is looked up in the others; nothing else is joined (docs/identity.md).
# The two clients both have an "asmith": two people. The web server's log is in no realm:
# an address there is matched whole, and a user name in it is followed nowhere.
[[realms]]
label = "Acme Ltd"
same_as = ["keepass:vault/Clients/Acme Ltd", "tacticalrmm:monitoring/Acme Ltd", "ad:ACME",
           "access_log:logs/Acme Ltd VPN gateway"]

[[realms]]
label = "Harbour Ltd"
same_as = ["keepass:vault/Clients/Harbour Ltd", "tacticalrmm:monitoring/Harbour Ltd",
           "ad:HARBOUR", "access_log:logs/Harbour Ltd file server"]
"""


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def write_demo_files() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    secrets_dir = DEMO / "secrets"
    secrets_dir.mkdir(parents=True, mode=0o700)
    vault_password = token_urlsafe(18)
    for name, value in (("imap-password", "test"), ("vault-password", vault_password)):
        (secrets_dir / name).write_text(value + "\n")
        (secrets_dir / name).chmod(0o600)
    demo_data.build_vault(DEMO / "vault.kdbx", vault_password, ALICE, ANDREW)
    demo_data.build_wordpress(f"sqlite:///{DEMO / 'wordpress.db'}", ALICE, MALLORY)
    demo_data.build_rmm(f"sqlite:///{DEMO / 'monitoring.db'}")
    demo_data.build_logs(DEMO / "logs", ALICE)
    (DEMO / "config.toml").write_text(
        CONFIG.format(
            support=SUPPORT,
            ca=stack.ca_file(ROOT),
            demo=DEMO,
            imap_port=stack.port("imap"),
            smtp_port=stack.port("smtp"),
        )
    )


def sarbot(*args: str) -> None:
    print(f"$ sarbot {' '.join(args)}", flush=True)
    subprocess.run([*SARBOT, *args], check=True)


def message_id_is(message_id: str) -> Callable[[EmailMessage], bool]:
    return lambda message: str(message.get("Message-ID", "")) == message_id


def fresh_mailbox(person: Correspondent) -> None:
    """The mailbox exists (made on first delivery) and is empty."""
    person.send(person.address, "mailbox warm-up")
    person.wait_for(subject_contains("mailbox warm-up"))
    person.clear()


def fill_contact_form_folder(support: Correspondent) -> None:
    """Contact-form mail staff kept from the past: alice's among others (IMAP APPEND)."""
    support.create_folder(demo_data.CONTACT_FOLDER)
    for raw, arrived in demo_data.contact_form_mails(SUPPORT, ALICE):
        support.append(raw, demo_data.CONTACT_FOLDER, arrived=arrived)


def ask_for_a_copy(person: Correspondent, support: Correspondent, name: str) -> EmailMessage:
    """``person`` asks, confirms and receives: the mail with the export."""
    step(f"{name} sends 'GDPR DATA REQUEST' to {SUPPORT}")
    sent = person.send(
        SUPPORT, "GDPR DATA REQUEST", "Please send me a copy of the data you hold about me."
    )
    support.wait_for(message_id_is(sent))
    sarbot("run", "--once")

    step(f"{name} reads the acknowledgement and replies to it")
    ack = person.wait_for(subject_contains("Please confirm"))
    print(f"Subject: {ack['Subject']}")
    support.wait_for(message_id_is(person.reply(ack)))

    step("sarbot collects, packages and delivers")
    sarbot("run", "--once")

    step(f"What {name} received")
    export = person.wait_for(subject_contains("A copy of your personal data"))
    for message in person.messages():
        print(f"  From: {message['From']}  Subject: {message['Subject']}")
    body = export.get_body(preferencelist=("plain",))
    assert body is not None
    print("\n" + body.get_content())
    return export


def read_export(export: EmailMessage) -> tuple[dict[str, object], bytes]:
    """data.json of the attached zip, and every byte the person received."""
    [part] = list(export.iter_attachments())
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    print(f"Attachment {part.get_filename()} ({len(data)} bytes):")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            print(f"  {info.filename:<15} {info.file_size:>7} bytes")
        document: dict[str, object] = json.loads(archive.read("data.json"))
        everything = b"".join(archive.read(name) for name in archive.namelist())
    identifiers = document["identifiers"]
    assert isinstance(identifiers, list)
    print("\nThe identity graph:")
    for link in identifiers:
        why = f": {link['reason']}" if link["reason"] else ""
        print(f"  {link['described']} [{link['scope']}] from {link['origin']}{why}")
    # The letter as read: headers and decoded text parts. The attachment counts through the
    # files of the zip above; its base64 form would match short names by chance.
    letter = [f"{name}: {value}" for name, value in export.items()]
    letter += [p.get_content() for p in export.walk() if p.get_content_maintype() == "text"]
    return document, everything + "\n".join(letter).encode()


def found_in(received: bytes, texts: list[str]) -> list[str]:
    """The texts that occur in what was received; an address only as a whole address."""
    text = received.decode("utf-8", "replace")
    return [
        t
        for t in texts
        if re.search(rf"(?<![\w.+-]){re.escape(t)}" if "@" in t else re.escape(t), text)
    ]


def summary(document: dict[str, object]) -> None:
    """Each source: how many records of each kind were found, and two of its Article 15 facts
    (the letter and the report state them all)."""
    sources = document["sources"]
    assert isinstance(sources, list)
    for source in sources:
        count = source["record_count"]
        kinds = Counter(record["category"] for record in source["records"])
        found = f"{count} record{'' if count == 1 else 's'}" if count else "nothing found"
        if kinds:
            found += " (" + ", ".join(f"{kind}: {n}" for kind, n in kinds.items()) + ")"
        facts = source["facts"]
        print(f"  - {source['description'] or source['name']}: {found}")
        print(f"      who receives it: {'; '.join(facts['recipients']) or '(not stated)'}")
        print(f"      how long we keep it: {facts['retention'] or '(not stated)'}")


def play_alice(server: MailServer) -> int:
    alice, support = Correspondent(server, ALICE), Correspondent(server, SUPPORT)

    step(
        f"Writing {DEMO.name}/: a KeePass vault, a WordPress database, a Tactical RMM database "
        "and access logs"
    )
    write_demo_files()
    for person in (alice, support):
        fresh_mailbox(person)
    step(f"Filing past contact-form mail in the folder '{demo_data.CONTACT_FOLDER}' of {SUPPORT}")
    fill_contact_form_folder(support)
    sarbot("db", "upgrade")

    # On its first start sarbot records where the watched folder stands and answers only mail
    # that arrives later ([imap] start = "now", docs/recognition.md): a mailbox's history is
    # listed for the operators, never answered by itself.  So sarbot starts before alice writes.
    step(f"sarbot starts watching {SUPPORT}: mail already there is never answered")
    sarbot("run", "--once")

    export = ask_for_a_copy(alice, support, "alice")
    reference = str(export["Subject"]).partition("[")[2].partition("]")[0]
    document, received = read_export(export)
    if demo_data.VAULT_PASSWORD_OF_ALICE.encode() in received:
        print("ERROR: alice's vault password is in her export")
        return 1
    print("\nalice's vault password appears nowhere in what she received.")
    lookalikes = [ANDREW, MALLORY, demo_data.lookalike_address(ALICE)]
    if leaked := found_in(received, [*lookalikes, *demo_data.LOOKALIKES_ONLY]):
        print(f"ERROR: other people's data is in alice's export: {', '.join(leaked)}")
        return 1
    print(
        "No data of the look-alikes is in it: asmith at Harbour Ltd, the website login asmith, "
        f"{demo_data.lookalike_address(ALICE)}, bob."
    )

    step("Done. What alice's copy holds, source by source (its report gives each one's facts):")
    summary(document)
    config = DEMO / "config.toml"
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    print("\nThe mail stack is still running; try:")
    print(f"  .venv/bin/sarbot --config {shown} requests list")
    print(f"  .venv/bin/sarbot --config {shown} requests show {reference}")
    print(f"  .venv/bin/python scripts/demo.py --requester {ANDREW}   # asmith at Harbour Ltd")
    print(f"  .venv/bin/python scripts/demo.py --requester {MALLORY}     # website login asmith")
    return 0


def play_requester(server: MailServer, address: str) -> int:
    """Another person asks, on the demo alice's run set up; nothing of hers may reach them."""
    if not (DEMO / "sarbot.db").is_file():
        print(f"Run the demo first: {DEMO / 'sarbot.db'} does not exist.")
        return 2
    person, support = Correspondent(server, address), Correspondent(server, SUPPORT)
    fresh_mailbox(person)
    export = ask_for_a_copy(person, support, address)
    document, received = read_export(export)
    if address.lower() != ALICE.lower():
        if leaked := found_in(received, [ALICE, *demo_data.ALICE_ONLY]):
            print(f"ERROR: alice's data is in the export of {address}: {', '.join(leaked)}")
            return 1
        print(f"\nNone of alice's data is in what {address} received.")
    step(f"Done. What the copy of {address} holds, source by source:")
    summary(document)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--requester",
        metavar="ADDRESS",
        help="ask for a copy as ADDRESS, on the demo an earlier run set up",
    )
    args = parser.parse_args(argv)
    server = MailServer(ca_file=str(stack.ca_file(ROOT)))
    if args.requester:
        return play_requester(server, args.requester)
    return play_alice(server)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
