"""The end-to-end demo: alice asks for her data and gets it, through real mail servers.

Run by ``make demo`` after the mail stack is up.  It writes ``.demo/``: the
three stores the privacy policy names (see ``demo_data.py``), the config and
the state database.  Then it plays alice, and checks that her vault password
is nowhere in what she receives.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from secrets import token_urlsafe

import demo_data

from sarbot.testing import Correspondent, MailServer, stack, subject_contains

ROOT = Path(__file__).resolve().parent.parent
# The tests run the demo in a folder and mailboxes of their own.
DEMO = Path(os.environ.get("SARBOT_DEMO_DIR", ROOT / ".demo"))
SUPPORT = os.environ.get("SARBOT_DEMO_SUPPORT", "support@redtrain.test")
ALICE = os.environ.get("SARBOT_DEMO_ALICE", "alice@example.test")
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

# One client's directory under its three names: the vault group our staff keep for it, its
# computers in the monitoring, and its Windows domain. A login found in one is looked up in
# the others; nothing else is joined (docs/identity.md).
[[realms]]
label = "Acme Ltd"
same_as = ["keepass:vault/Clients/Acme Ltd", "tacticalrmm:monitoring/Acme Ltd", "ad:ACME"]
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
    demo_data.build_vault(DEMO / "vault.kdbx", vault_password, ALICE)
    demo_data.build_wordpress(f"sqlite:///{DEMO / 'wordpress.db'}", ALICE)
    demo_data.build_rmm(f"sqlite:///{DEMO / 'monitoring.db'}")
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


def main() -> int:
    server = MailServer(ca_file=str(stack.ca_file(ROOT)))
    alice, support = Correspondent(server, ALICE), Correspondent(server, SUPPORT)

    step(f"Writing {DEMO.name}/: a KeePass vault, a WordPress database, a Tactical RMM database")
    write_demo_files()
    for person in (alice, support):
        person.send(person.address, "mailbox warm-up")  # creates the mailbox on first delivery
        person.wait_for(subject_contains("mailbox warm-up"))
        person.clear()
    sarbot("db", "upgrade")

    step(f"alice sends 'GDPR DATA REQUEST' to {SUPPORT}")
    alice.send(SUPPORT, "GDPR DATA REQUEST", "Please send me a copy of the data you hold about me.")
    support.wait_for(subject_contains("GDPR DATA REQUEST"))
    sarbot("run", "--once")

    step("alice reads the acknowledgement and replies to it")
    ack = alice.wait_for(subject_contains("Please confirm"))
    print(f"Subject: {ack['Subject']}")
    reference = str(ack["Subject"]).partition("[")[2].partition("]")[0]
    alice.reply(ack)
    support.wait_for(subject_contains("Re: [SAR-"))

    step("sarbot collects, packages and delivers")
    sarbot("run", "--once")

    step("What alice received")
    export = alice.wait_for(subject_contains("A copy of your personal data"))
    for message in alice.messages():
        print(f"  From: {message['From']}  Subject: {message['Subject']}")
    body = export.get_body(preferencelist=("plain",))
    assert body is not None
    print("\n" + body.get_content())
    for part in export.iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        print(f"Attachment {part.get_filename()} ({len(data)} bytes):")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                print(f"  {info.filename:<15} {info.file_size:>7} bytes")
            document = json.loads(archive.read("data.json"))
            everything = b"".join(archive.read(name) for name in archive.namelist())
        print("\nThe identity graph:")
        for link in document["identifiers"]:
            why = f": {link['reason']}" if link["reason"] else ""
            print(f"  {link['described']} [{link['scope']}] from {link['origin']}{why}")
        if demo_data.VAULT_PASSWORD_OF_ALICE.encode() in everything + export.as_bytes():
            print("ERROR: alice's vault password is in her export")
            return 1
        print("\nalice's vault password appears nowhere in what she received.")

    step("Done. The mail stack is still running; try:")
    config = DEMO / "config.toml"
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    print(f"  .venv/bin/sarbot --config {shown} requests list")
    print(f"  .venv/bin/sarbot --config {shown} requests show {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
