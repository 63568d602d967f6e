"""The ``keepass`` connector against real KDBX 3.1 and KDBX 4 vaults written by pykeepass."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
from construct import Container
from pykeepass import PyKeePass
from pykeepass.kdbx_parsing import KDBX
from pykeepass.pykeepass import BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD

from connectors.keepass import (
    CATEGORY,
    MENTION_CATEGORY,
    MENTION_ONLY_NOTE,
    OTP_HELD,
    PASSWORD_HELD,
    SECRET_HELD,
    KeepassConnector,
    KeepassSettings,
)
from sarbot.config import ConnectorEntry, validate
from sarbot.connector import ENTRY_POINT_GROUP, Identifier, Identity, Record, Trust
from sarbot.errors import ConfigError, ConnectorError
from sarbot.testing.identity import asked, login

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice@example.test"
CONTRACT = b"%PDF-1.4 contract between Acme and Alice\n" * 40
SIGNATURE = b"\x89PNG\r\n\x1a\n signature"


# ----- writing real vaults ---------------------------------------------------------------


def _blank() -> Any:
    return PyKeePass(BLANK_DATABASE_LOCATION, BLANK_DATABASE_PASSWORD)


def new_kdbx4(path: Path, password: str, keyfile: Path | None = None) -> Any:
    """An empty KDBX 4 vault (Argon2 made cheap so the tests stay fast)."""
    vault = _blank()
    params = vault.kdbx.header.value.dynamic_header.kdf_parameters.data.dict
    params["M"].value = 1 << 20
    params["I"].value = 2
    vault.filename, vault.password, vault.keyfile = str(path), password, keyfile
    vault.save()
    return PyKeePass(str(path), password, keyfile)


def new_kdbx3(path: Path, password: str, keyfile: Path | None = None) -> Any:
    """An empty KDBX 3.1 vault: pykeepass can edit one but not create one, so build its header."""
    blank = _blank()
    tree = blank.tree
    for element in tree.iter():
        if element.text and element.tag.endswith(("Time", "Changed")):
            when = blank._decode_time(element.text).astimezone(UTC)
            element.text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = tree.find("Meta")
    meta.append(meta.makeelement("Binaries", {}))

    def item(name: str, data: object) -> Container:
        return Container(id=name, data=data)

    header = Container(
        cipher_id=item("cipher_id", "aes256"),
        compression_flags=item("compression_flags", Container(compression=True)),
        master_seed=item("master_seed", os.urandom(32)),
        transform_seed=item("transform_seed", os.urandom(32)),
        transform_rounds=item("transform_rounds", 1000),
        encryption_iv=item("encryption_iv", os.urandom(16)),
        protected_stream_key=item("protected_stream_key", os.urandom(32)),
        stream_start_bytes=item("stream_start_bytes", os.urandom(32)),
        protected_stream_id=item("protected_stream_id", "salsa20"),
        end=item("end", b"\r\n\r\n"),
    )
    kdbx = Container(
        header=Container(
            value=Container(
                sig1=b"\x03\xd9\xa2\x9a",
                sig2=b"\x67\xfb\x4b\xb5",
                sig_check=None,
                minor_version=1,
                major_version=3,
                dynamic_header=header,
            )
        ),
        body=Container(payload=Container(xml=tree)),
    )
    KDBX.build_file(
        kdbx, str(path), password=password, keyfile=keyfile, transformed_key=None, decrypt=True
    )
    return PyKeePass(str(path), password, keyfile)


def new_vault(version: int, path: Path, password: str, keyfile: Path | None = None) -> Any:
    """A new, empty vault, its master password in a file beside it for the connector to read."""
    master_file(path).write_text(password + "\n", encoding="utf-8")
    vault = (new_kdbx3 if version == 3 else new_kdbx4)(path, password, keyfile)
    assert vault.version == ((3, 1) if version == 3 else (4, 0))
    return vault


def canary() -> str:
    return "CANARY-" + secrets.token_hex(12)


@dataclass
class Vault:
    path: Path
    master: str
    canaries: list[str]


def fill(vault: Any) -> list[str]:
    """Alice's, Bob's, deleted and historic entries; every secret is a fresh canary."""
    made: list[str] = []

    def secret() -> str:
        made.append(canary())
        return made[-1]

    clients = vault.add_group(vault.root_group, "Clients")
    acme = vault.add_group(clients, "Acme")

    mail = vault.add_entry(
        acme, "Alice mail", ALICE, secret(), url="https://mail.acme.test", otp=secret()
    )
    mail.tags = ["mail", "acme"]
    mail.notes = "Mailbox of the sales team lead."
    mail.set_custom_property("Department", "Sales")
    mail.set_custom_property("Badge number", secret(), protect=True)
    mail.set_custom_property("Alarm PIN", secret())
    mail.set_custom_property("Recovery phrase words", secret())
    mail.set_custom_property("Door code", secret())  # named in custom_fields_secret
    mail.set_custom_property("TOTP Seed", secret())
    mail.set_custom_property("TimeOtp-Secret-Base32", secret())
    mail.set_custom_property("HmacOtp-Secret", secret())
    mail.set_custom_property("Empty protected", "", protect=True)
    mail.expires = True
    mail.expiry_time = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    mail.add_attachment(vault.add_binary(CONTRACT), "contract.pdf")
    mail.add_attachment(vault.add_binary(SIGNATURE), "signature.png")

    portal = vault.add_entry(
        acme,
        "Portal",
        "Alice.Work@Example.TEST",
        secret(),
        url=f"https://portal.acme.test/login?user={ALICE.upper()}",
    )
    portal.set_custom_property("Contact", ALICE)
    vpn = vault.add_entry(clients, "VPN", "alice.vpn", secret(), notes=f"Issued to {ALICE} in May.")
    vpn.set_custom_property("Holder", ALICE)
    router = vault.add_entry(vault.root_group, "Router", "", secret())
    router.set_custom_property("Owner", "Alice@Example.test")
    vault.add_entry(acme, "AD account", "CORP\\asmith", secret())

    bob = vault.add_entry(acme, "Bob mail", "bob@example.test", secret(), notes="basmithy")
    bob.set_custom_property("Assistant", "malice@example.test; a.smith; asmith-old")
    vault.add_entry(acme, "Odd", "dave", ALICE)  # her address only in a password
    trashed = vault.add_entry(acme, "Old Alice mail", ALICE, secret())
    vault.trash_entry(trashed)
    shared = vault.add_entry(acme, "Shared mailbox", ALICE, secret())
    shared.save_history()
    shared.username = "carol@example.test"
    vault.save()
    return made


@pytest.fixture(scope="module", params=[3, 4], ids=["kdbx3", "kdbx4"])
def vault(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Vault:
    path = tmp_path_factory.mktemp("vault") / "vault.kdbx"
    master = canary()
    made = fill(new_vault(request.param, path, master))
    return Vault(path, master, [master, *made])


@pytest.fixture
def editor(tmp_path: Path) -> Any:
    """A new KDBX 4 vault for one test, open for writing."""
    return new_vault(4, tmp_path / "v.kdbx", "master")


def master_file(vault_path: Path) -> Path:
    return vault_path.with_suffix(".master")


def connector(path: Path, **extra: Any) -> KeepassConnector:
    """The connector built the way sarbot builds it from the config."""
    data = {"path": path.name, "password": {"file": master_file(path).name}, **extra}
    settings = validate(data, KeepassSettings, source="test", base_dir=path.parent)
    return KeepassConnector("vault", settings)


def by_title(records: list[Record]) -> dict[str, Record]:
    """The entries that are the person's own, by title (mentions have no title)."""
    return {str(r.fields["Title"]): r for r in records if r.category == CATEGORY}


def yield_origin(record: Record, group: str) -> str:
    """Where a yielded user name was found: the entry by group and UUID, never by its title
    (the identity graph is shown to operators; a title is the entry's content)."""
    origin = f"keepass 'vault': UserName of entry {record.key.removeprefix('entry:')} in group "
    assert str(record.fields["Title"]) not in origin
    return origin + f"'{group}'"


def times(record: Record) -> dict[str, Any]:
    """An entry's times, which every record of it carries."""
    found = {key: record.fields[key] for key in ("Created", "Modified", "Expires", "Expiry time")}
    assert datetime.fromisoformat(str(found["Modified"])).tzinfo is not None
    return found


def mentions(records: list[Record]) -> list[Record]:
    """The records of entries that only mention the person, checked for what they must be."""
    found = [r for r in records if r.category != CATEGORY]
    for record in found:
        assert record.category == MENTION_CATEGORY
        assert record.notes == (MENTION_ONLY_NOTE,) and record.yields == ()
        group = record.fields["Group"] or "(top level)"
        assert record.location == f"an entry in group '{group}'"
    return found


# Fields that, in these vaults, say whose the entry is.
OWNERS = {"owner_fields": ["Holder", "owner"]}
# Alice's Windows login, as the vault's Acme group records it; the admin's realm maps the
# group to the CORP domain (written CORP or corp.test).
ALICE_LOGIN = login("asmith", "keepass:vault/Clients/Acme", "ad:CORP", "ad:corp.test")
ROUND_TWO = asked(ALICE_LOGIN)


# ----- the tests -------------------------------------------------------------------------

EVERYONE = asked(*Identity.verified(ALICE).identifiers, ALICE_LOGIN)


class TestMatching:
    def test_entries_found_by_email_in_the_fields_that_name_the_owner(self, vault: Vault) -> None:
        """The address as the user name, or in an owner field (in any case), makes the entry
        hers; found anywhere else (URL, notes, other custom fields) it is only a mention."""
        identity = Identity.verified(ALICE)
        records = connector(vault.path, **OWNERS).collect(identity)
        owned = by_title(records)
        assert sorted(owned) == ["Alice mail", "Router", "VPN"]
        assert all(r.found_by is identity.identifiers[0] for r in records)
        mail = owned["Alice mail"]
        assert mail.location == "entry 'Clients/Acme/Alice mail'"
        assert mail.key.startswith("entry:") and len(mail.key) == len("entry:") + 36
        assert owned["Router"].location == "entry 'Router'"
        assert owned["Router"].fields["Group"] == ""
        [portal] = mentions(records)
        assert portal.location == "an entry in group 'Clients/Acme'"
        assert portal.key.startswith("entry:") and portal.key not in {r.key for r in owned.values()}

    def test_without_owner_fields_only_the_user_name_makes_an_entry_hers(
        self, vault: Vault
    ) -> None:
        """The same vault without owner_fields: the VPN, router and portal entries only
        mention her; each mention carries just the lines with her address, under their field."""
        records = connector(vault.path).collect(Identity.verified(ALICE))
        assert sorted(by_title(records)) == ["Alice mail"]
        found = {str(r.fields["Group"]): r for r in mentions(records)}
        assert sorted(found) == ["", "Clients", "Clients/Acme"] and len(records) == 4
        assert {k: v for k, v in found["Clients"].fields.items() if k != "Group"} == {
            "Notes": f"Issued to {ALICE} in May.",
            "Holder": ALICE,
            **times(found["Clients"]),
        }
        assert {k: v for k, v in found[""].fields.items() if k != "Group"} == {
            "Owner": "Alice@Example.test",
            **times(found[""]),
        }
        assert {k: v for k, v in found["Clients/Acme"].fields.items() if k != "Group"} == {
            "URL": f"https://portal.acme.test/login?user={ALICE.upper()}",
            "Contact": ALICE,
            **times(found["Clients/Acme"]),
        }
        text = repr(records)
        for other in ("alice.vpn", "Alice.Work", "VPN", "Portal", "Router"):
            assert other not in text

    def test_entries_found_by_username(self, vault: Vault) -> None:
        """A login finds the entry whose user name it is, with a domain of its realm
        (CORP\\asmith)."""
        records = connector(vault.path).collect(ROUND_TWO)
        assert [r.fields["Title"] for r in records] == ["AD account"]
        assert records[0].found_by is ROUND_TWO.identifiers[0]

    def test_other_people_deleted_and_historic_entries_never_appear(self, vault: Vault) -> None:
        """Bob's entry, a trashed entry, an old version and a password match are not found."""
        found = connector(vault.path, **OWNERS).collect(EVERYONE)
        assert set(by_title(found)) == {"Alice mail", "Router", "VPN", "AD account"}
        assert len(mentions(found)) == 1
        assert not connector(vault.path).collect(Identity.verified("lice@example.test"))
        (carol,) = connector(vault.path).collect(Identity.verified("carol@example.test"))
        assert carol.fields["Title"] == "Shared mailbox"
        assert ALICE not in json.dumps(carol.fields)  # her old version is history


class TestMatchingRules:
    EMAIL_TEXTS: ClassVar[dict[str, bool]] = {
        "mailto:Alice@Example.test": True,
        f"Contact {ALICE}.": True,
        f"<{ALICE}>, '{ALICE}'": True,
        "https://portal.test/login?user=ALICE@example.test&next=/": True,
        "malice@example.test": False,
        "bob.alice@example.test, bob+alice@example.test, bob_alice@example.test": False,
        "alice@example.test.evil.test, alice@example.testing": False,
    }
    USERNAME_TEXTS: ClassVar[dict[str, bool]] = {
        "asmith": True,
        "Login: CORP\\ASmith": True,
        "asmith@corp.test": True,
        "Account asmith.": True,
        "basmithy, asmith-old, asmith.old, x.asmith, asmith_2, a.smith": False,
    }

    def test_addresses_match_only_whole(self, editor: Any, tmp_path: Path) -> None:
        """An address inside a longer address is not a match; amid punctuation it is."""
        for text in self.EMAIL_TEXTS:
            editor.add_entry(editor.root_group, text, "", "", notes=text)
        editor.save()
        records = mentions(connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE)))
        assert {r.fields["Notes"] for r in records} == {
            t for t, hit in self.EMAIL_TEXTS.items() if hit
        }

    def test_usernames_match_only_as_whole_tokens(self, editor: Any, tmp_path: Path) -> None:
        """'asmith' finds CORP\\asmith and asmith@corp.test, not basmithy or asmith.old, in the
        groups where the login is valid (its own and those below it); elsewhere it is another
        person's name and finds nothing."""
        clients = editor.add_group(editor.root_group, "Clients")
        groups = {
            "Clients/Acme": editor.add_group(clients, "Acme"),
            "Clients/Acme/Laptops": None,
            "Clients/Other": editor.add_group(clients, "Other"),
            "": editor.root_group,
        }
        groups["Clients/Acme/Laptops"] = editor.add_group(groups["Clients/Acme"], "Laptops")
        for group in groups.values():
            for text in self.USERNAME_TEXTS:
                editor.add_entry(group, text, "", "", url=text)
        editor.save()
        records = mentions(connector(tmp_path / "v.kdbx").collect(ROUND_TWO))
        hits = {t for t, hit in self.USERNAME_TEXTS.items() if hit}
        for group in ("Clients/Acme", "Clients/Acme/Laptops"):
            assert {r.fields["URL"] for r in records if r.fields["Group"] == group} == hits
        assert {r.fields["Group"] for r in records} == {"Clients/Acme", "Clients/Acme/Laptops"}
        assert all(r.found_by is ALICE_LOGIN for r in records)

    def test_weak_identifier_kinds_are_not_searched(self, vault: Vault) -> None:
        """A name or an IP address is not looked for: only e-mail addresses and usernames."""
        identity = Identity(ALICE, (Identifier("name", "Alice", "the request"),))
        assert connector(vault.path).collect(identity) == []

    def test_a_changed_file_is_picked_up(self, editor: Any, tmp_path: Path) -> None:
        """An entry added to the vault after a lookup is found by the next lookup."""
        keepass = connector(tmp_path / "v.kdbx")
        assert keepass.collect(Identity.verified(ALICE)) == []
        editor.add_entry(editor.root_group, "New", ALICE, "x")
        editor.save()
        assert [r.fields["Title"] for r in keepass.collect(Identity.verified(ALICE))] == ["New"]


class TestExport:
    def test_entry_fields_are_exported(self, vault: Vault) -> None:
        """Group, title, user name, URL, tags, notes, custom fields and times are exported."""
        mail = by_title(connector(vault.path).collect(Identity.verified(ALICE)))["Alice mail"]
        assert mail.category == "Vault entry"
        fields = mail.fields
        assert fields["Group"] == "Clients/Acme"
        assert fields["User name"] == ALICE
        assert fields["URL"] == "https://mail.acme.test"
        assert fields["Tags"] == ["mail", "acme"]
        assert fields["Notes"] == "Mailbox of the sales team lead."
        custom = fields["Custom fields"]
        assert isinstance(custom, dict) and custom["Department"] == "Sales"
        assert fields["Expires"] is True
        assert fields["Expiry time"] == "2030-06-01T12:00:00+00:00"
        for name in ("Created", "Modified"):
            assert datetime.fromisoformat(str(fields[name])).tzinfo is not None

    def test_an_entry_that_does_not_expire_says_so(self, vault: Vault) -> None:
        """Expires is false and no expiry time is given when the entry never expires."""
        vpn = by_title(connector(vault.path, **OWNERS).collect(Identity.verified(ALICE)))["VPN"]
        assert vpn.fields["Expires"] is False and vpn.fields["Expiry time"] is None

    def test_attachment_names_and_sizes_without_content(self, vault: Vault) -> None:
        """By default attachments are listed by name and size only."""
        mail = by_title(connector(vault.path).collect(Identity.verified(ALICE)))["Alice mail"]
        assert mail.fields["Attachments"] == [
            {"name": "contract.pdf", "size": len(CONTRACT)},
            {"name": "signature.png", "size": len(SIGNATURE)},
        ]

    def test_attachment_content_when_asked_for(self, vault: Vault) -> None:
        """With include_attachments the content of each attachment comes as base64."""
        keepass = connector(vault.path, include_attachments=True, **OWNERS)
        records = by_title(keepass.collect(Identity.verified(ALICE)))
        attachments = records["Alice mail"].fields["Attachments"]
        assert isinstance(attachments, list)
        contents = [
            (a["name"], base64.b64decode(str(a["content_base64"])))
            for a in attachments
            if isinstance(a, dict)
        ]
        assert contents == [("contract.pdf", CONTRACT), ("signature.png", SIGNATURE)]
        assert records["VPN"].fields["Attachments"] == []


class TestWithheld:
    def test_no_secret_reaches_any_record(self, vault: Vault) -> None:
        """No canary (master, passwords, OTP, protected or named fields) is in any record."""
        keepass = connector(
            vault.path, include_attachments=True, custom_fields_secret=["door CODE"], **OWNERS
        )
        records = keepass.collect(EVERYONE)
        assert len(records) == 5 and len(mentions(records)) == 1
        dumped = "\n".join(
            json.dumps([r.fields, r.notes, r.location, r.key, [repr(y) for y in r.yields]])
            + repr(r)
            for r in records
        )
        assert [c for c in vault.canaries if c in dumped] == []
        assert len(vault.canaries) == 17
        assert PASSWORD_HELD in dumped and OTP_HELD in dumped and SECRET_HELD in dumped

    def test_withheld_values_are_stated(self, vault: Vault) -> None:
        """Each secret that is held is replaced by a statement; empty ones are not claimed."""
        keepass = connector(vault.path, custom_fields_secret=["Door Code"], **OWNERS)
        records = by_title(keepass.collect(Identity.verified(ALICE)))
        mail = records["Alice mail"]
        assert mail.fields["Password"] == PASSWORD_HELD
        assert mail.fields["One-time password"] == OTP_HELD
        assert mail.fields["Custom fields"] == {
            "Department": "Sales",
            "Badge number": SECRET_HELD,
            "Alarm PIN": SECRET_HELD,
            "Recovery phrase words": SECRET_HELD,
            "Door code": SECRET_HELD,
            "TOTP Seed": OTP_HELD,
            "TimeOtp-Secret-Base32": OTP_HELD,
            "HmacOtp-Secret": OTP_HELD,
            "Empty protected": "",
        }
        assert mail.notes and "not disclosed" in mail.notes[0]
        assert "One-time password" not in records["Router"].fields

    def test_an_entry_without_secrets_claims_none(self, tmp_path: Path) -> None:
        """With no password and no secrets, no statement of a held secret is made."""
        editor = new_vault(3, tmp_path / "v3.kdbx", "master")
        editor.add_entry(editor.root_group, "Plain", ALICE, "")
        editor.save()
        (record,) = connector(tmp_path / "v3.kdbx").collect(Identity.verified(ALICE))
        assert "Password" not in record.fields and record.notes == ()

    def test_a_protected_username_is_withheld_and_not_yielded(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """A user name the vault protects is stated as held, never exported or followed."""
        entry = editor.add_entry(editor.root_group, "Hidden", "x", "")
        entry.set_custom_property("Email", ALICE)
        hidden = canary()
        entry._set_string_field("UserName", hidden, protected=True)
        editor.save()
        keepass = connector(tmp_path / "v.kdbx", owner_fields=["Email"])
        (record,) = keepass.collect(Identity.verified(ALICE))
        assert record.category == CATEGORY
        assert record.fields["User name"] == SECRET_HELD
        assert record.yields == () and hidden not in repr(record)


class TestYields:
    def test_username_is_yielded_with_its_origin(self, vault: Vault) -> None:
        """The user name of an entry that is hers is a further identifier, saying where it was:
        a login of the entry's group, recorded by the controller's staff."""
        records = by_title(connector(vault.path, **OWNERS).collect(Identity.verified(ALICE)))
        vpn = records["VPN"]
        assert vpn.yields == (
            Identifier(
                "username",
                "alice.vpn",
                yield_origin(vpn, "Clients"),
                "keepass:vault/Clients",
                Trust.CONTROLLER,
            ),
        )

    def test_an_address_in_the_username_is_yielded_as_email(self, vault: Vault) -> None:
        """A user name that is an address is yielded, normalised, as an e-mail identifier,
        with the group it was recorded in (the graph keeps one at a private domain there)."""
        keepass = connector(vault.path, owner_fields=["Contact"])
        portal = by_title(keepass.collect(Identity.verified(ALICE)))["Portal"]
        origin = yield_origin(portal, "Clients/Acme")
        assert portal.yields == (
            Identifier(
                "email",
                "alice.work@example.test",
                origin,
                "keepass:vault/Clients/Acme",
                Trust.CONTROLLER,
            ),
        )

    def test_the_identifier_that_found_the_entry_is_not_yielded_again(self, vault: Vault) -> None:
        """An entry found by its own user name yields nothing new; nor does an empty one."""
        records = by_title(connector(vault.path, **OWNERS).collect(Identity.verified(ALICE)))
        assert records["Alice mail"].yields == ()
        assert records["Router"].yields == ()
        (account,) = connector(vault.path).collect(ROUND_TWO)
        assert [(y.kind, y.value, y.namespace) for y in account.yields] == [
            ("username", "CORP\\asmith", "keepass:vault/Clients/Acme")
        ]
        again = asked(login("CORP\\asmith", "keepass:vault/Clients/Acme", "ad:CORP"))
        (same,) = connector(vault.path).collect(again)
        assert same.key == account.key and same.yields == ()

    def test_a_mention_in_free_text_exports_only_the_mention(self, tmp_path: Path) -> None:
        """An entry naming the person only in notes or URL may be someone else's: only the
        lines that mention her are exported (no title, no user name), nothing is followed."""
        editor = new_vault(4, tmp_path / "v.kdbx", "master", None)
        router = editor.add_entry(editor.root_group, "Router", "bjones", "x", notes=f"Ask {ALICE}")
        router.set_custom_property("Serial", "BOB-CANARY-SERIAL")
        editor.add_entry(
            editor.root_group, "Wiki", "wikibot", "x", url=f"https://w.test/?u={ALICE}"
        )
        editor.save()
        records = connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE))
        assert by_title(records) == {}
        found = sorted(mentions(records), key=lambda r: "URL" in r.fields)
        assert [{k: v for k, v in r.fields.items() if k != "Group"} for r in found] == [
            {"Notes": f"Ask {ALICE}", **times(found[0])},
            {"URL": f"https://w.test/?u={ALICE}", **times(found[1])},
        ]
        assert [r.fields["Group"] for r in found] == ["", ""]
        dumped = repr(records)
        for other in ("bjones", "wikibot", "BOB-CANARY-SERIAL", "Router", "Wiki"):
            assert other not in dumped

    def test_passwords_in_web_addresses_are_withheld(self, tmp_path: Path) -> None:
        """A password in a URL's user part or query never leaves; the rest of the URL does."""
        editor = new_vault(4, tmp_path / "v.kdbx", "master", None)
        entry = editor.add_entry(
            editor.root_group, "NAS", ALICE, "x", url="smb://alice:SECRET-ONE@nas.test/share"
        )
        entry.notes = "Portal: https://p.test/login?user=alice&pin=SECRET-TWO&lang=en"
        entry.set_custom_property("Kennwort", "SECRET-THREE")
        entry.set_custom_property("Security answer", "SECRET-FOUR")
        editor.save()
        (record,) = connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE))
        assert record.fields["URL"] == "smb://alice:[withheld]@nas.test/share"
        portal = "Portal: https://p.test/login?user=alice&pin=[withheld]&lang=en"
        assert record.fields["Notes"] == portal
        assert "SECRET-" not in repr(record)


ALICE_ORG = "alice@example.org"  # another person, whose address looks like alice's


def fields_without_group(record: Record) -> dict[str, Any]:
    return {key: value for key, value in record.fields.items() if key != "Group"}


class TestTwoPeople:
    def test_owner_fields_give_each_person_their_own_entry(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """An owner field holding exactly one person's address makes the entry theirs, whole;
        the look-alike gets only their own; without the setting it is a mention only."""
        staff = editor.add_group(editor.root_group, "Staff")
        first = editor.add_entry(staff, "Laptop 1", "la-admin", canary(), notes="Charger: drawer")
        first.set_custom_property("Assigned to", ALICE)
        second = editor.add_entry(staff, "Laptop 2", "lb-admin", canary(), notes="Dock at home")
        second.set_custom_property("Assigned to", ALICE_ORG)
        editor.save()
        keepass = connector(tmp_path / "v.kdbx", owner_fields=["assigned TO"])
        alice = keepass.collect(Identity.verified(ALICE))
        other = keepass.collect(Identity.verified(ALICE_ORG))
        assert list(by_title(alice)) == ["Laptop 1"] and mentions(alice) == []
        assert list(by_title(other)) == ["Laptop 2"] and mentions(other) == []
        mine = alice[0]
        assert mine.fields["Notes"] == "Charger: drawer"
        assert mine.fields["Custom fields"] == {"Assigned to": ALICE}
        assert mine.yields == (
            Identifier(
                "username",
                "la-admin",
                yield_origin(mine, "Staff"),
                "keepass:vault/Staff",
                Trust.CONTROLLER,
            ),
        )
        assert other[0].fields["Custom fields"] == {"Assigned to": ALICE_ORG}
        assert "lb-admin" not in repr(alice) and "la-admin" not in repr(other)
        assert ALICE_ORG not in repr(alice) and ALICE not in repr(other)

        plain = connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE))
        [mention] = mentions(plain)
        assert fields_without_group(mention) == {"Assigned to": ALICE, **times(mention)}
        assert "la-admin" not in repr(plain) and "drawer" not in repr(plain)

    def test_another_persons_entry_that_mentions_alice_shows_only_those_lines(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """Bob's entry, approved by alice, gives her the lines with her address and nothing
        else: no title, no user name, no other line, nothing to follow.  Bob gets his entry
        without her address; the look-alike alice@example.org gets nothing."""
        clients = editor.add_group(editor.root_group, "Clients")
        acme = editor.add_group(clients, "Acme Ltd")
        bob = editor.add_entry(
            acme,
            "Bob Jones HR portal",
            "bob@example.test",
            canary(),
            url="https://hr.acme.test",
            notes=f"HR portal of Bob Jones.\nApproved by {ALICE} on 3 March.\nReset every 90 days.",
        )
        bob.set_custom_property("Approval", f"Approved by: {ALICE}")
        bob.set_custom_property("Cost centre", "CANARY-BOB-CC")
        editor.add_entry(acme, "Alice mail", ALICE, canary(), notes="Her own mailbox.")
        editor.save()
        keepass = connector(tmp_path / "v.kdbx")

        verified = Identity.verified(ALICE)
        alice = keepass.collect(verified)
        assert list(by_title(alice)) == ["Alice mail"]
        [mention] = mentions(alice)
        assert mention.found_by is verified.identifiers[0]
        assert mention.fields["Group"] == "Clients/Acme Ltd"
        assert fields_without_group(mention) == {
            "Notes": f"Approved by {ALICE} on 3 March.",
            "Approval": f"Approved by: {ALICE}",
            **times(mention),
        }
        text = repr(alice)
        for other in ("Bob", "bob@", "HR portal", "hr.acme", "CANARY-BOB-CC", "Reset every"):
            assert other not in text

        [bobs] = keepass.collect(Identity.verified("bob@example.test"))
        assert bobs.category == CATEGORY and bobs.fields["Title"] == "Bob Jones HR portal"
        assert bobs.fields["User name"] == "bob@example.test"
        assert "CANARY-BOB-CC" in repr(bobs.fields) and "Her own mailbox" not in repr(bobs)
        assert ALICE not in repr(bobs.fields)

        assert keepass.collect(Identity.verified(ALICE_ORG)) == []

    def test_a_login_is_theirs_only_in_their_own_realm(self, editor: Any, tmp_path: Path) -> None:
        """Acme's asmith and Other Ltd's asmith: each gets the entries of their own group (and
        its subgroups) with a bare name or their own domain, and the mentions there; neither
        gets the other's, and a website login asmith gets nothing."""
        clients = editor.add_group(editor.root_group, "Clients")
        acme = editor.add_group(clients, "Acme Ltd")
        laptops = editor.add_group(acme, "Laptops")
        other_ltd = editor.add_group(clients, "Other Ltd")
        editor.add_entry(acme, "Acme PC", "ACME\\asmith", canary())
        editor.add_entry(laptops, "Acme laptop", "asmith", canary())
        editor.add_entry(acme, "Acme wiki", "wiki-bot", canary(), notes="Backups: ask asmith.")
        editor.add_entry(other_ltd, "Other PC", "OTHERLTD\\asmith", canary())
        editor.add_entry(other_ltd, "Other VPN", "asmith", canary())
        editor.add_entry(other_ltd, "Other wiki", "wiki", canary(), notes="asmith: on call.")
        editor.save()
        keepass = connector(tmp_path / "v.kdbx")
        alice_login = login(
            "asmith", "keepass:vault/Clients/Acme Ltd", "ad:ACME", "tacticalrmm:rmm/Acme Ltd"
        )
        other_login = login(
            "asmith", "keepass:vault/Clients/Other Ltd", "ad:OTHERLTD", "tacticalrmm:rmm/Other Ltd"
        )
        alice = keepass.collect(asked(alice_login))
        other = keepass.collect(asked(other_login))
        assert sorted(by_title(alice)) == ["Acme PC", "Acme laptop"]
        assert [fields_without_group(r)["Notes"] for r in mentions(alice)] == [
            "Backups: ask asmith."
        ]
        assert sorted(by_title(other)) == ["Other PC", "Other VPN"]
        assert [fields_without_group(r)["Notes"] for r in mentions(other)] == ["asmith: on call."]
        assert all(r.found_by is alice_login for r in alice)
        assert all(r.found_by is other_login for r in other)
        assert "Other" not in repr([r.fields for r in alice]) and "OTHERLTD" not in repr(alice)
        assert "Acme" not in repr([r.fields for r in other]) and "ACME" not in repr(other)
        owned = by_title(alice)
        assert [(y.value, y.namespace) for y in owned["Acme PC"].yields] == [
            ("ACME\\asmith", "keepass:vault/Clients/Acme Ltd")
        ]
        assert owned["Acme laptop"].yields == ()
        website = asked(login("asmith", "wordpress:blog", trust=Trust.SELF_ASSERTED))
        assert keepass.collect(website) == []

    def test_a_login_with_another_domain_in_her_group_does_not_mention_her(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """OTHERLTD\\asmith, a consultant's account kept in Acme's group, is not Acme's asmith."""
        clients = editor.add_group(editor.root_group, "Clients")
        acme = editor.add_group(clients, "Acme Ltd")
        editor.add_entry(
            acme, "Consultant", "OTHERLTD\\asmith", canary(), notes="Contractor: OTHERLTD\\asmith"
        )
        editor.save()
        alice_login = login("asmith", "keepass:vault/Clients/Acme Ltd", "ad:ACME")
        assert connector(tmp_path / "v.kdbx").collect(asked(alice_login)) == []

    def test_a_mention_line_withholds_other_peoples_addresses(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """The line that mentions alice may name bob too: his address does not go to her."""
        editor.add_entry(
            editor.root_group,
            "HR portal",
            "bjones",
            canary(),
            notes=f"Approved by {ALICE} for bob.jones@example.test",
        )
        editor.save()
        [mention] = mentions(connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE)))
        notes = str(mention.fields["Notes"])
        assert ALICE in notes and "bob.jones@example.test" not in notes

    def test_a_lookalike_letter_is_not_a_mention(self, editor: Any, tmp_path: Path) -> None:
        """Text is compared as addresses are: lower case, not Unicode case folding."""
        editor.add_entry(
            editor.root_group, "Other", "x", "", notes="Contact al\u0131ce@example.test"
        )
        editor.save()
        assert connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE)) == []


class TestLaterRounds:
    def test_an_entry_found_in_an_earlier_round_stays_whole(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """Alice's entry is hers by her address (round one); its notes name her login, which
        round two asks about.  Round two does not give it again as a mere mention, which
        would replace the whole entry in her export with two lines.  Another person's
        entry that names her login is still a mention in round two."""
        acme = editor.add_group(editor.add_group(editor.root_group, "Clients"), "Acme")
        editor.add_entry(
            acme, "Alice mailbox", ALICE, canary(), notes="Quota 50 GB\nWindows login: asmith"
        )
        editor.add_entry(acme, "Bob laptop", "bjones", canary(), notes="Set up with asmith")
        editor.save()
        keepass = connector(tmp_path / "v.kdbx")
        first = Identity.verified(ALICE)
        assert list(by_title(keepass.collect(first))) == ["Alice mailbox"]
        second = asked(ALICE_LOGIN, known=first.identifiers)
        again = keepass.collect(second)
        assert by_title(again) == {}
        [mention] = mentions(again)
        assert "Set up with asmith" in repr(mention.fields)
        assert "Quota" not in repr(again) and "Alice mailbox" not in repr(again)


class TestGroupNamesWithASlash:
    def test_a_group_named_like_a_path_is_not_inside_another(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """Groups ``Clients/Acme`` and ``Clients/Acme/Beta JV`` (one group, a ``/`` in its
        name) each record an asmith: the realm of ``Clients/Acme`` does not reach the
        other group's, and a login of that group (written ``Acme%2FBeta JV``) only it."""
        clients = editor.add_group(editor.root_group, "Clients")
        editor.add_entry(editor.add_group(clients, "Acme"), "Alice AD", "asmith", canary())
        jv = editor.add_group(clients, "Acme/Beta JV")
        editor.add_entry(jv, "JV AD", "asmith", canary(), notes="Beta JV's asmith")
        editor.save()
        keepass = connector(tmp_path / "v.kdbx")
        alice = keepass.collect(asked(login("asmith", "keepass:vault/Clients/Acme", "ad:ACME")))
        other = keepass.collect(asked(login("asmith", "keepass:vault/Clients/Acme%2FBeta JV")))
        assert list(by_title(alice)) == ["Alice AD"] and mentions(alice) == []
        assert list(by_title(other)) == ["JV AD"] and mentions(other) == []


class TestFieldReferences:
    def test_a_user_name_that_refers_to_another_entry_reads_as_keepass_shows_it(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """Alice's VPN entry takes its user name from her mail entry (``{REF:U@I:...}``): it is
        hers.  Bob's takes his from his own; neither is the other's.  A reference to a
        password is never read: the entry that has one for its user name is nobody's, and
        the password appears nowhere."""
        staff = editor.add_group(editor.root_group, "Staff")
        secret = canary()
        alice = editor.add_entry(staff, "Alice mail", ALICE, secret)
        bob = editor.add_entry(staff, "Bob mail", "bob@example.test", canary())
        ref = "{REF:%s@I:%s}"
        alice_uuid, bob_uuid = alice.uuid.hex.upper(), bob.uuid.hex.lower()
        editor.add_entry(staff, "Alice VPN", ref % ("U", alice_uuid), canary(), notes="VPN-A")
        editor.add_entry(staff, "Bob VPN", ref % ("u", bob_uuid), canary(), notes="VPN-B")
        editor.add_entry(staff, "Odd", ref % ("P", alice_uuid), canary(), notes="ODD-ENTRY")
        editor.save()
        keepass = connector(tmp_path / "v.kdbx")
        mine = keepass.collect(Identity.verified(ALICE))
        his = keepass.collect(Identity.verified("bob@example.test"))
        assert sorted(by_title(mine)) == ["Alice VPN", "Alice mail"]
        assert sorted(by_title(his)) == ["Bob VPN", "Bob mail"]
        assert by_title(mine)["Alice VPN"].fields["User name"] == ALICE
        assert "VPN-B" not in repr(mine) and "VPN-A" not in repr(his)
        assert "ODD-ENTRY" not in repr(mine) + repr(his)
        assert secret not in repr(mine) + repr(his)
        assert all("{REF:" not in repr(record.yields) for record in mine + his)


class TestApostrophes:
    """An apostrophe inside a local part (o'neil@acme.test) belongs to the address; one
    before it, after a space, is a quotation mark ('neil@acme.test')."""

    NEIL, ONEIL = "neil@acme.test", "o'neil@acme.test"

    def vault(self, editor: Any, tmp_path: Path) -> KeepassConnector:
        staff = editor.add_group(editor.root_group, "Staff")
        editor.add_entry(staff, "O'Neil VPN", self.ONEIL, canary(), notes="Token ONEIL-99812")
        editor.add_entry(
            staff, "Neil mail", self.NEIL, canary(), notes=f"Shared with {self.ONEIL} and Bob"
        )
        editor.add_entry(
            staff, "Bob laptop", "bob@acme.test", canary(), notes=f"Ask '{self.NEIL}' first"
        )
        editor.save()
        return connector(tmp_path / "v.kdbx")

    def test_neither_sees_the_others_entry_or_address(self, editor: Any, tmp_path: Path) -> None:
        keepass = self.vault(editor, tmp_path)
        neil = keepass.collect(Identity.verified(self.NEIL))
        oneil = keepass.collect(Identity.verified(self.ONEIL))
        assert list(by_title(neil)) == ["Neil mail"]
        assert list(by_title(oneil)) == ["O'Neil VPN"]
        assert "ONEIL-99812" not in repr(neil) and self.ONEIL not in repr(neil)
        assert by_title(neil)["Neil mail"].fields["Notes"] == (
            "Shared with [withheld: about another person] and Bob"
        )
        # Neil is quoted in Bob's entry: a mention of him, and of him only.
        [quoted] = mentions(neil)
        assert f"'{self.NEIL}'" in repr(quoted.fields)
        # O'Neil is named in Neil's entry: that line, and nothing else of it.
        [named] = mentions(oneil)
        assert "Shared with" in repr(named.fields) and "Ask" not in repr(oneil)


class TestOpening:
    def test_registered_as_the_keepass_type(self) -> None:
        """sarbot finds this connector under the type name "keepass"."""
        (point,) = entry_points(group=ENTRY_POINT_GROUP, name="keepass")
        assert point.load() is KeepassConnector

    def test_key_file_is_needed_with_the_password(self, tmp_path: Path) -> None:
        """A vault locked by password and key file opens with both and fails without the file."""
        key = tmp_path / "vault.key"
        key.write_bytes(os.urandom(128))
        editor = new_vault(4, tmp_path / "v.kdbx", "master", key)
        editor.add_entry(editor.root_group, "Keyed", ALICE, "x")
        editor.save()
        with_key = connector(tmp_path / "v.kdbx", keyfile="vault.key")
        with_key.check()
        assert len(with_key.collect(Identity.verified(ALICE))) == 1
        without = connector(tmp_path / "v.kdbx")
        with pytest.raises(ConnectorError, match="password or key file is wrong"):
            without.check()
        with pytest.raises(ConnectorError, match="password or key file is wrong"):
            without.collect(Identity.verified(ALICE))
        with pytest.raises(ConnectorError, match="No such file"):
            connector(tmp_path / "v.kdbx", keyfile="other.key").check()

    @pytest.mark.parametrize("version", [3, 4])
    def test_wrong_password_raises_without_naming_it(self, version: int, tmp_path: Path) -> None:
        """A wrong master password fails the lookup; the message holds no password."""
        right, wrong = canary(), canary()
        new_vault(version, tmp_path / "v.kdbx", right)
        master_file(tmp_path / "v.kdbx").write_text(wrong, encoding="utf-8")
        with pytest.raises(ConnectorError) as caught:
            connector(tmp_path / "v.kdbx").collect(Identity.verified(ALICE))
        message = str(caught.value)
        assert "password or key file is wrong" in message
        assert right not in message and wrong not in message
        assert caught.value.__cause__ is None and caught.value.__context__ is None

    def test_missing_file_raises(self, tmp_path: Path) -> None:
        """A vault that is not there fails the lookup and the check."""
        master_file(tmp_path / "absent.kdbx").write_text("master", encoding="utf-8")
        keepass = connector(tmp_path / "absent.kdbx")
        with pytest.raises(ConnectorError, match="No such file"):
            keepass.collect(Identity.verified(ALICE))
        with pytest.raises(ConnectorError, match="No such file"):
            keepass.check()

    def test_a_file_that_is_not_a_vault_raises(self, tmp_path: Path) -> None:
        """Any other file fails the lookup with a plain reason."""
        (tmp_path / "notes.kdbx").write_text("just some text\n")
        master_file(tmp_path / "notes.kdbx").write_text("master", encoding="utf-8")
        with pytest.raises(ConnectorError, match="not a KeePass database"):
            connector(tmp_path / "notes.kdbx").check()

    def test_password_must_be_a_reference(self, tmp_path: Path) -> None:
        """The master password cannot be written into the config."""
        with pytest.raises(ConfigError, match="password"):
            validate(
                {"path": "v.kdbx", "password": "hunter2"},
                KeepassSettings,
                source="test",
                base_dir=tmp_path,
            )

    def test_settings_resolve_paths_and_default_safely(self, tmp_path: Path) -> None:
        """Paths are relative to the config; attachment content is off by default."""
        (tmp_path / "pw").write_text("master\n")
        settings = validate(
            {"path": "v.kdbx", "password": {"file": "pw"}, "keyfile": "k.key"},
            KeepassSettings,
            source="test",
            base_dir=tmp_path,
        )
        assert isinstance(settings, KeepassSettings)
        assert settings.path == tmp_path / "v.kdbx" and settings.keyfile == tmp_path / "k.key"
        assert settings.include_attachments is False and settings.custom_fields_secret == ()
        assert settings.password.get_secret_value() == "master"
        assert "master" not in repr(settings)

    def test_documented_example_is_valid(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The TOML block in docs/connectors/keepass.md validates as written."""
        doc = (ROOT / "docs" / "connectors" / "keepass.md").read_text(encoding="utf-8")
        block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
        (entry,) = tomllib.loads(block)["connectors"]
        monkeypatch.setenv("SARBOT_KEEPASS_PASSWORD", "master")
        configured = ConnectorEntry.model_validate(entry)
        assert (configured.name, configured.type) == ("vault", "keepass")
        settings = validate(configured.options, KeepassSettings, source="doc", base_dir=tmp_path)
        assert isinstance(settings, KeepassSettings)
        assert settings.custom_fields_secret == ("Door code", "Alarm code")


class TestKeptUnlocked:
    """The decrypted vault is kept between lookups only while the file is unchanged, for a
    bounded time, in memory; counted by the vault's openings, never by timing."""

    @staticmethod
    def alice_vault(editor: Any, tmp_path: Path, **extra: Any) -> KeepassConnector:
        editor.add_entry(editor.root_group, "Alice mail", ALICE, "x")
        editor.save()
        return connector(tmp_path / "v.kdbx", **extra)

    def test_lookups_of_an_unchanged_file_open_it_once(self, editor: Any, tmp_path: Path) -> None:
        """Two lookups (two rounds of one request, or two requests) decrypt the vault once,
        and nothing is written beside it."""
        before = sorted(tmp_path.iterdir())
        keepass = self.alice_vault(editor, tmp_path)
        first = keepass.collect(Identity.verified(ALICE))
        second = keepass.collect(Identity.verified(ALICE))
        assert keepass.unlocked.opens == 1 and keepass.unlocked.held
        assert [r.key for r in first] == [r.key for r in second] and len(first) == 1
        assert sorted(tmp_path.iterdir()) == before

    def test_a_changed_file_is_opened_again(self, editor: Any, tmp_path: Path) -> None:
        """A vault saved anew is read at the next lookup: its new entry is found."""
        keepass = self.alice_vault(editor, tmp_path)
        assert len(keepass.collect(Identity.verified(ALICE))) == 1
        editor.add_entry(editor.root_group, "Alice VPN", ALICE, "y")
        editor.save()
        assert len(keepass.collect(Identity.verified(ALICE))) == 2
        assert keepass.unlocked.opens == 2

    def test_a_replaced_file_is_opened_again(self, editor: Any, tmp_path: Path) -> None:
        """Another file renamed over the vault (as editors save) is another vault."""
        keepass = self.alice_vault(editor, tmp_path)
        keepass.collect(Identity.verified(ALICE))
        editor.add_entry(editor.root_group, "Alice VPN", ALICE, "y")
        editor.save(str(tmp_path / "new.kdbx"))
        os.replace(tmp_path / "new.kdbx", tmp_path / "v.kdbx")
        assert len(keepass.collect(Identity.verified(ALICE))) == 2
        assert keepass.unlocked.opens == 2

    def test_kept_no_longer_than_its_time_from_the_opening(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """Use does not extend it: a vault opened 60 s ago is opened again (a moved clock)."""
        keepass = self.alice_vault(editor, tmp_path, keep_unlocked_seconds=60)
        now = [1000.0]
        keepass.unlocked.clock = lambda: now[0]
        keepass.collect(Identity.verified(ALICE))
        now[0] += 59
        keepass.collect(Identity.verified(ALICE))
        assert keepass.unlocked.opens == 1
        now[0] += 1
        keepass.collect(Identity.verified(ALICE))
        assert keepass.unlocked.opens == 2

    def test_dropped_when_closed(self, editor: Any, tmp_path: Path) -> None:
        keepass = self.alice_vault(editor, tmp_path)
        keepass.collect(Identity.verified(ALICE))
        keepass.close()
        assert not keepass.unlocked.held
        keepass.collect(Identity.verified(ALICE))
        assert keepass.unlocked.opens == 2

    def test_dropped_when_its_time_is_up_without_another_lookup(
        self, editor: Any, tmp_path: Path
    ) -> None:
        """A timer drops it: an idle daemon does not keep the vault open."""
        keepass = self.alice_vault(editor, tmp_path, keep_unlocked_seconds=0.1)
        keepass.collect(Identity.verified(ALICE))
        waited = 0
        while keepass.unlocked.held and waited < 200:  # the timer runs in its own thread
            time.sleep(0.05)
            waited += 1
        assert not keepass.unlocked.held

    def test_zero_opens_it_for_every_lookup(self, editor: Any, tmp_path: Path) -> None:
        keepass = self.alice_vault(editor, tmp_path, keep_unlocked_seconds=0)
        keepass.collect(Identity.verified(ALICE))
        keepass.collect(Identity.verified(ALICE))
        assert keepass.unlocked.opens == 2 and not keepass.unlocked.held

    def test_a_vault_that_fails_to_open_is_not_kept(self, tmp_path: Path) -> None:
        right = canary()
        new_vault(4, tmp_path / "v.kdbx", right)
        master_file(tmp_path / "v.kdbx").write_text("wrong", encoding="utf-8")
        keepass = connector(tmp_path / "v.kdbx")
        for _ in range(2):
            with pytest.raises(ConnectorError, match="password or key file is wrong"):
                keepass.collect(Identity.verified(ALICE))
        assert not keepass.unlocked.held and keepass.unlocked.opens == 0
