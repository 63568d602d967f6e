"""``keepass``: the entries of a KeePass (KDBX 3.1 or 4) vault that concern a person.

An entry *belongs* to the person when a field that says whose account it is holds
one of their identifiers exactly: its ``UserName`` (their email address, or their
login within the entry's group and the realms the admin mapped it to), or one of
the ``owner_fields`` the admin names (holding their email address).  Such an entry
is exported whole, and its ``UserName`` is a further identifier of the person,
recorded by the controller's staff.  An entry that only *mentions* them (their
address in the title, the notes or any other field: "Approved by: alice@...")
exports only the lines that mention them, and yields nothing: it may be another
person's account.  A ``UserName`` or owner field written as a KeePass field
reference to another entry (``{REF:U@I:<uuid>}``) is read as KeePass shows it.
The decrypted vault is kept at most ``keep_unlocked_seconds`` and only while
the file on disk is unchanged (``connectors.keepass.unlocked``).

Secrets never reach a record: every ``String`` of an entry is classified by its
name and its ``Protected`` flag before its value is looked at, and the value of
a secret one is only ever tested for presence, to state that it is held.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pykeepass import PyKeePass
from pykeepass.exceptions import CredentialsError, HeaderChecksumError, PayloadChecksumError

from connectors.keepass.fields import (
    CREDENTIAL_NAME,
    OTP_HELD,
    OTP_NAME,
    PASSWORD_HELD,
    SECRET_HELD,
    STANDARD_FIELDS,
    WITHHELD_NOTE,
    Strings,
    custom_names,
    entry_path,
    group_names,
    live_entries,
    times,
    without_url_secrets,
)
from connectors.keepass.mentions import (
    MENTION_CATEGORY,
    MENTION_ONLY_NOTE,
    Mention,
    mentions_in,
    other_addresses_withheld,
    without_other_addresses,
)
from connectors.keepass.unlocked import Unlocked
from sarbot.connector import (
    EMAIL,
    ConfigPath,
    ConnectorError,
    Identifier,
    Identity,
    InvalidAddress,
    JSONValue,
    Record,
    Secret,
    Section,
    Trust,
    namespace_part,
    normalize_address,
)

CATEGORY = "Vault entry"
REFERENCE = re.compile(r"\{REF:([TUAN])@I:([0-9A-F]{32})\}", re.IGNORECASE)
"""A KeePass field reference by UUID to a field that may be shown (never P, the password)."""
REFERRED = {"T": "Title", "U": "UserName", "A": "URL", "N": "Notes"}
REFERENCE_DEPTH = 3
"""References followed from a reference, at most (KeePass follows a few, then shows the text)."""


class KeepassSettings(Section):
    path: ConfigPath
    password: Secret
    keyfile: ConfigPath | None = None
    include_attachments: bool = False
    custom_fields_secret: tuple[str, ...] = ()
    owner_fields: tuple[str, ...] = ()
    keep_unlocked_seconds: float = Field(default=60.0, ge=0, le=3600)


class KeepassConnector:
    """Finds the entries of the vault that belong to the person, and those that mention them."""

    Settings: ClassVar[type[BaseModel]] = KeepassSettings
    namespace_trust: ClassVar[Trust] = Trust.CONTROLLER

    def __init__(self, name: str, settings: KeepassSettings) -> None:
        self.name = name
        self.settings = settings
        self._secret_names = {n.casefold() for n in settings.custom_fields_secret}
        self._owner_names = {n.casefold() for n in settings.owner_fields}
        files = [settings.path, *([settings.keyfile] if settings.keyfile else [])]
        self.unlocked = Unlocked(self._open, files, settings.keep_unlocked_seconds)

    def collect(self, identity: Identity) -> list[Record]:
        if not any(i.kind in (EMAIL, "username") for i in identity.identifiers):
            return []
        with self.unlocked as vault:
            return self._collect(vault, identity)

    def _collect(self, vault: Any, identity: Identity) -> list[Record]:
        binaries: list[bytes] | None = None
        records = []
        for entry in live_entries(vault):
            strings = self._strings(entry)
            namespace = self.namespace(entry)
            owner = self._owner(identity, strings, namespace)
            if owner is None:
                if self._owner(identity, strings, namespace, known=True) is not None:
                    continue  # the person's own, exported whole in the round that found it
                mentions = mentions_in(identity, namespace)
                mention = self._mention(entry, strings, mentions, identity, namespace)
                if mention is not None:
                    records.append(mention)
                continue
            if binaries is None and entry._element.find("Binary") is not None:
                binaries = list(vault.binaries)
            shown = without_other_addresses(strings, identity, namespace)
            records.append(self._record(entry, shown, owner, namespace, binaries or []))
        return records

    def namespace(self, entry: Any) -> str:
        """The entry's group, where the logins recorded in it belong."""
        return "/".join([f"keepass:{self.name}", *map(namespace_part, group_names(entry))])

    def _owner(
        self, identity: Identity, strings: Strings, namespace: str, *, known: bool = False
    ) -> Identifier | None:
        """The identifier a field meaning "this account is theirs" holds exactly, if any: one
        of this round's, or with ``known`` any of the person's found so far."""
        username = strings.shown.get("UserName", "")
        found = identity.address(username, known=known) or identity.account(
            username, namespace, known=known
        )
        if found is not None:
            return found
        for name, value in strings.shown.items():
            if name.casefold() in self._owner_names and (
                found := identity.address(value, known=known)
            ):
                return found
        return None

    def check(self) -> None:
        self._open()  # afresh: the password and the file as they are now

    def close(self) -> None:
        """Drop the decrypted vault, if one is kept."""
        self.unlocked.forget()

    def _open(self) -> Any:
        """The decrypted vault, or a ConnectorError that names neither secret nor content."""
        path = self.settings.path
        try:
            return PyKeePass(
                str(path),
                password=self.settings.password.get_secret_value(),
                keyfile=str(self.settings.keyfile) if self.settings.keyfile else None,
            )
        except CredentialsError:
            reason = "the password or key file is wrong"
        except (HeaderChecksumError, PayloadChecksumError):
            reason = "the file is not a KeePass database or is damaged"
        except OSError as exc:  # the database or the key file
            reason = exc.strerror or "the file cannot be read"
            reason += f": {exc.filename}" if exc.filename else ""
        except Exception as exc:  # the parser's messages may quote file content
            reason = f"it could not be read ({type(exc).__name__})"
        raise ConnectorError(f"keepass '{self.name}': cannot open {path}: {reason}")

    def _strings(self, entry: Any, depth: int = 0) -> Strings:
        """Classify each String by name and flag; read a value only when it may be shown."""
        strings = Strings()
        for element in entry._element.iterchildren("String"):
            key, value = element.find("Key"), element.find("Value")
            if key is None or value is None or not key.text:
                continue
            statement = self._statement_if_secret(key.text, value.get("Protected"))
            if statement is None:
                strings.shown.setdefault(key.text, value.text or "")
            elif value.text:  # only its presence is looked at
                strings.held[key.text] = statement
        for name in strings.held:
            strings.shown.pop(name, None)
        strings.shown = {name: without_url_secrets(text) for name, text in strings.shown.items()}
        for name, text in strings.shown.items():
            if "{REF:" in text and (name == "UserName" or name.casefold() in self._owner_names):
                strings.shown[name] = self._dereferenced(entry, text, depth)
        return strings

    def _dereferenced(self, entry: Any, text: str, depth: int) -> str:
        """A field that says whose the entry is, read as KeePass shows it when it is written
        as a reference to another entry's title, user name, URL or notes
        (``{REF:U@I:<uuid>}``).  The other entry's field is classified as its own entry's
        would be: a password, or a field held as a secret, is never read, and a reference
        to one stays as written; so do references by anything but the entry's UUID."""

        def referred(match: re.Match[str]) -> str:
            target = entry._kp.find_entries(uuid=uuid.UUID(match[2]), first=True)
            if target is None or depth >= REFERENCE_DEPTH:
                return match[0]
            shown = self._strings(target, depth + 1).shown
            return shown.get(REFERRED[match[1].upper()], match[0])

        return REFERENCE.sub(referred, text)

    def _statement_if_secret(self, name: str, protected: str | None) -> str | None:
        if name == "Password":
            return PASSWORD_HELD
        if OTP_NAME.search(name):
            return OTP_HELD
        if protected == "True" or name.casefold() in self._secret_names:
            return SECRET_HELD
        if name not in STANDARD_FIELDS and CREDENTIAL_NAME.search(name):
            return SECRET_HELD
        return None

    def _record(
        self,
        entry: Any,
        strings: Strings,
        found_by: Identifier,
        namespace: str,
        binaries: Sequence[bytes],
    ) -> Record:
        where = entry_path(entry, strings)
        fields: dict[str, JSONValue] = {"Group": "/".join(group_names(entry))}
        for key, label in STANDARD_FIELDS.items():
            fields[label] = strings.held.get(key, strings.shown.get(key, ""))
        if "Password" in strings.held:
            fields["Password"] = strings.held["Password"]
        if "otp" in strings.held:
            fields["One-time password"] = strings.held["otp"]
        fields["Tags"] = [tag for tag in entry.tags if tag]
        custom: dict[str, JSONValue] = {
            name: strings.held.get(name, strings.shown.get(name, ""))
            for name in custom_names(entry)
        }
        fields["Custom fields"] = custom
        fields.update(times(entry))
        fields["Attachments"] = self._attachments(entry, binaries)
        return Record(
            category=CATEGORY,
            fields=fields,
            found_by=found_by,
            location=f"entry '{where}'",
            yields=self._yields(strings, entry, namespace, found_by),
            notes=(WITHHELD_NOTE,) if strings.held else (),
            key=f"entry:{entry.uuid}",
        )

    def _mention(
        self,
        entry: Any,
        strings: Strings,
        mentions: Sequence[Mention],
        identity: Identity,
        namespace: str,
    ) -> Record | None:
        """The lines of an entry that mention the person (other people's addresses in them
        withheld), and nothing else of it."""
        found_by: Identifier | None = None
        fields: dict[str, JSONValue] = {"Group": "/".join(group_names(entry))}
        for name, text in strings.shown.items():
            for mention in mentions:
                lines = [line.strip() for line in text.splitlines() if mention.finds(line)]
                if lines:
                    found_by = found_by or mention.identifier
                    shown = other_addresses_withheld("\n".join(lines), identity, namespace)
                    fields[STANDARD_FIELDS.get(name, name)] = shown
                    break
        if found_by is None:
            return None
        fields.update(times(entry))
        return Record(
            category=MENTION_CATEGORY,
            fields=fields,
            found_by=found_by,
            location=f"an entry in group '{fields['Group'] or '(top level)'}'",
            notes=(MENTION_ONLY_NOTE,),
            key=f"entry:{entry.uuid}",
        )

    def _attachments(self, entry: Any, binaries: Sequence[bytes]) -> list[JSONValue]:
        """Name and size of each attachment; its content too when the settings ask for it."""
        attachments: list[JSONValue] = []
        for element in entry._element.iterchildren("Binary"):
            value = element.find("Value")
            ref = value.get("Ref", "") if value is not None else ""
            data = binaries[int(ref)] if ref.isdigit() and int(ref) < len(binaries) else None
            item: dict[str, JSONValue] = {
                "name": element.findtext("Key") or "",
                "size": len(data) if data is not None else None,
            }
            if self.settings.include_attachments and data is not None:
                item["content_base64"] = base64.b64encode(data).decode("ascii")
            attachments.append(item)
        return attachments

    def _yields(
        self, strings: Strings, entry: Any, namespace: str, found_by: Identifier
    ) -> tuple[Identifier, ...]:
        """The entry's user name: a further identifier of the person, recorded by staff.

        Its origin names the entry by group and UUID, not by title: the identity graph is
        kept with the request and shown to operators, and a title is the entry's content.
        """
        username = strings.shown.get("UserName", "").strip()
        if not username or any(ch.isspace() for ch in username):
            return ()
        group = "/".join(group_names(entry)) or "(top level)"
        origin = f"keepass '{self.name}': UserName of entry {entry.uuid} in group '{group}'"
        try:
            # An address, or a login at a private domain (asmith@corp.local): the graph tells
            # which, and keeps a login in the group it was recorded in.
            address = normalize_address(username)
            found = Identifier(EMAIL, address, origin, namespace, Trust.CONTROLLER)
        except InvalidAddress:
            found = Identifier("username", username, origin, namespace, Trust.CONTROLLER)
        if (found.kind, found.value) == (found_by.kind, found_by.value):
            return ()
        return (found,)
