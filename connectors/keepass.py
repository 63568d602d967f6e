"""``keepass``: the entries of a KeePass (KDBX 3.1 or 4) vault that concern a person.

An entry *belongs* to the person when a field that says whose account it is holds
one of their identifiers exactly: its ``UserName`` (their email address, or their
login within the entry's group and the realms the admin mapped it to), or one of
the ``owner_fields`` the admin names (holding their email address).  Such an entry
is exported whole, and its ``UserName`` is a further identifier of the person,
recorded by the controller's staff.  An entry that only *mentions* them (their
address in the title, the notes or any other field: "Approved by: alice@...")
exports only the lines that mention them, and yields nothing: it may be another
person's account.  The database is opened afresh for every lookup (so a changed
file is picked up) and dropped when the lookup ends, so the decrypted vault is
never kept in memory between requests.

Secrets never reach a record: every ``String`` of an entry is classified by its
name and its ``Protected`` flag before its value is looked at, and the value of
a secret one is only ever tested for presence, to state that it is held.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel
from pykeepass import PyKeePass
from pykeepass.exceptions import CredentialsError, HeaderChecksumError, PayloadChecksumError

from sarbot.config import Section
from sarbot.connector import (
    EMAIL,
    OTHER_PERSON,
    Identifier,
    Identity,
    JSONValue,
    Record,
    Trust,
    fold,
    split_account,
)
from sarbot.errors import ConnectorError
from sarbot.mail.addresses import InvalidAddress, normalize_address, written_forms
from sarbot.secretref import ConfigPath, Secret

CATEGORY = "Vault entry"
PASSWORD_HELD = "A password is held for this entry. It is withheld for security."  # noqa: S105
OTP_HELD = (
    "A one-time password secret (for two-factor sign-in) is held for this entry. "
    "It is withheld for security."
)
SECRET_HELD = "A secret value is held in this field. It is withheld for security."  # noqa: S105
WITHHELD_NOTE = (
    "Credentials held in this vault entry (passwords, two-factor secrets, protected "
    "fields) are not disclosed; the fields that hold one say so."
)
STANDARD_FIELDS = {"Title": "Title", "UserName": "User name", "URL": "URL", "Notes": "Notes"}
# Names of fields that hold a one-time-password seed or its settings, in any of
# the conventions of KeePass, KeePassXC and their plugins ("otp", "TOTP Seed",
# "TimeOtp-Secret-Base32", "HmacOtp-Secret", ...).
OTP_NAME = re.compile(r"otp|2fa|mfa", re.IGNORECASE)
# Names of unprotected custom fields that still look like they hold a credential.
CREDENTIAL_NAME = re.compile(
    r"passw|passphrase|passcode|pwd|secret|token|seed|recovery|private.?key|api.?key"
    r"|kennwort|mot de passe|contrase|wachtwoord|losenord|salasana|answer|antwort|memorable"
    r"|\bpin\b|\bcvv\b|\bcvc\b|\bpuk\b",
    re.IGNORECASE,
)
# URL parts that carry credentials: a password in the userinfo, and query values
# whose names look like one (``?password=...``, ``&pin=...``).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*):[^@/\s]*@", re.IGNORECASE)
_URL_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[^=&;#\s]*(?:pass|pwd|pin|token|secret|key|auth|code|sig)[^=&;#\s]*))"
    r"=[^&;#\s]*",
    re.IGNORECASE,
)
URL_WITHHELD = "[withheld]"
MENTION_ONLY_NOTE = (
    "This entry of our vault mentions you, but it is not your account: only the lines that "
    "mention you are shown. Its other details may be about other people and were withheld."
)
MENTION_CATEGORY = "Vault entry mentioning you"
# Characters that continue an address's local part or an account name: an identifier
# preceded or followed by one of them is part of a longer, different one.  (Rarer
# local-part characters such as = / ' are left out: in URLs and notes they delimit.)
_ADDRESS_CHARS = r"[\w.+-]"
_WORD_CHARS = r"[\w-]"
_DOMAIN_BEFORE = re.compile(r"([\w.-]+)\\$")
_DOMAIN_AFTER = re.compile(r"@([\w-]+(?:\.[\w-]+)*)")
# An address as written in an entry's text; rarer local-part characters (= / ' ?) delimit
# in URLs and notes, as in _ADDRESS_CHARS.
_ANY_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ZERO_UUID = base64.b64encode(bytes(16)).decode()


class KeepassSettings(Section):
    path: ConfigPath
    password: Secret
    keyfile: ConfigPath | None = None
    include_attachments: bool = False
    custom_fields_secret: tuple[str, ...] = ()
    owner_fields: tuple[str, ...] = ()


@dataclass
class _Strings:
    """An entry's string fields: the values that may be shown, and the secrets held."""

    shown: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # field name -> statement


class KeepassConnector:
    """Finds the entries of the vault that belong to the person, and those that mention them."""

    Settings: ClassVar[type[BaseModel]] = KeepassSettings
    namespace_trust: ClassVar[Trust] = Trust.CONTROLLER

    def __init__(self, name: str, settings: KeepassSettings) -> None:
        self.name = name
        self.settings = settings
        self._secret_names = {n.casefold() for n in settings.custom_fields_secret}
        self._owner_names = {n.casefold() for n in settings.owner_fields}

    def collect(self, identity: Identity) -> list[Record]:
        if not any(i.kind in (EMAIL, "username") for i in identity.identifiers):
            return []
        vault = self._open()
        binaries: list[bytes] | None = None
        records = []
        for entry in _live_entries(vault):
            strings = self._strings(entry)
            namespace = self.namespace(entry)
            owner = self._owner(identity, strings, namespace)
            if owner is None:
                mentions = _mentions(identity, namespace)
                mention = self._mention(entry, strings, mentions, identity, namespace)
                if mention is not None:
                    records.append(mention)
                continue
            if binaries is None and entry._element.find("Binary") is not None:
                binaries = list(vault.binaries)
            shown = _without_other_addresses(strings, identity, namespace)
            records.append(self._record(entry, shown, owner, namespace, binaries or []))
        return records

    def namespace(self, entry: Any) -> str:
        """The entry's group, where the logins recorded in it belong."""
        return "/".join([f"keepass:{self.name}", *_group_names(entry)])

    def _owner(self, identity: Identity, strings: _Strings, namespace: str) -> Identifier | None:
        """The identifier a field meaning "this account is theirs" holds exactly, if any."""
        username = strings.shown.get("UserName", "")
        found = identity.address(username) or identity.account(username, namespace)
        if found is not None:
            return found
        for name, value in strings.shown.items():
            if name.casefold() in self._owner_names and (found := identity.address(value)):
                return found
        return None

    def check(self) -> None:
        self._open()

    def close(self) -> None:
        """Nothing to release: the vault is opened for each lookup."""

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

    def _strings(self, entry: Any) -> _Strings:
        """Classify each String by name and flag; read a value only when it may be shown."""
        strings = _Strings()
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
        strings.shown = {name: _without_url_secrets(text) for name, text in strings.shown.items()}
        return strings

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
        strings: _Strings,
        found_by: Identifier,
        namespace: str,
        binaries: Sequence[bytes],
    ) -> Record:
        where = _entry_path(entry, strings)
        fields: dict[str, JSONValue] = {"Group": "/".join(_group_names(entry))}
        for key, label in STANDARD_FIELDS.items():
            fields[label] = strings.held.get(key, strings.shown.get(key, ""))
        if "Password" in strings.held:
            fields["Password"] = strings.held["Password"]
        if "otp" in strings.held:
            fields["One-time password"] = strings.held["otp"]
        fields["Tags"] = [tag for tag in entry.tags if tag]
        custom: dict[str, JSONValue] = {
            name: strings.held.get(name, strings.shown.get(name, ""))
            for name in _custom_names(entry)
        }
        fields["Custom fields"] = custom
        fields.update(_times(entry))
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
        strings: _Strings,
        mentions: Sequence[_Mention],
        identity: Identity,
        namespace: str,
    ) -> Record | None:
        """The lines of an entry that mention the person (other people's addresses in them
        withheld), and nothing else of it."""
        found_by: Identifier | None = None
        fields: dict[str, JSONValue] = {"Group": "/".join(_group_names(entry))}
        for name, text in strings.shown.items():
            for mention in mentions:
                lines = [line.strip() for line in text.splitlines() if mention.finds(line)]
                if lines:
                    found_by = found_by or mention.identifier
                    shown = _other_addresses_withheld("\n".join(lines), identity, namespace)
                    fields[STANDARD_FIELDS.get(name, name)] = shown
                    break
        if found_by is None:
            return None
        fields.update(_times(entry))
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
        self, strings: _Strings, entry: Any, namespace: str, found_by: Identifier
    ) -> tuple[Identifier, ...]:
        """The entry's user name: a further identifier of the person, recorded by staff.

        Its origin names the entry by group and UUID, not by title: the identity graph is
        kept with the request and shown to operators, and a title is the entry's content.
        """
        username = strings.shown.get("UserName", "").strip()
        if not username or any(ch.isspace() for ch in username):
            return ()
        group = "/".join(_group_names(entry)) or "(top level)"
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


def _without_other_addresses(strings: _Strings, identity: Identity, namespace: str) -> _Strings:
    """An entry of the person's, with other people's addresses in its text withheld
    ("Ask bob@... first"); the user name, which is the account itself, is kept."""
    shown = {
        name: text if name == "UserName" else _other_addresses_withheld(text, identity, namespace)
        for name, text in strings.shown.items()
    }
    return _Strings(shown, strings.held)


def _other_addresses_withheld(text: str, identity: Identity, namespace: str) -> str:
    """The text with every address withheld that is neither one of the person's nor their
    login written ``user@domain`` (``asmith@corp.test`` where the realm's domain is that)."""
    pool = Identity(identity.email, (), (*identity.identifiers, *identity.known))

    def withhold(match: re.Match[str]) -> str:
        theirs = pool.address(match[0], known=True) or pool.account(match[0], namespace, known=True)
        return match[0] if theirs else OTHER_PERSON

    return _ANY_ADDRESS.sub(withhold, text)


class _Mention:
    """How one identifier is recognised in an entry's text.

    An address must be whole: not part of a longer one ("alice@x.test" is not found in
    "malice@x.test" or "alice@x.test.evil.test").  A login must be a whole token
    ("asmith" is found in "CORP\\asmith" and "asmith@corp.test", not in "basmithy" or
    "a.smith"), and a domain written with it must be one the login is valid with
    ("OTHERLTD\\asmith" is someone else).  Text is compared in lower case, never with
    Unicode case-insensitive matching, which takes a dotless i (U+0131) for an i.
    """

    def __init__(self, identifier: Identifier, namespace: str) -> None:
        self.identifier = identifier
        self.namespace = namespace
        if identifier.kind == EMAIL:
            values, before = written_forms(identifier.value), _ADDRESS_CHARS
        else:
            values, before = [split_account(identifier.value)[0]], _WORD_CHARS
        self.name = fold(values[0])
        self.patterns = [
            re.compile(
                rf"(?<!{before})(?<!{_WORD_CHARS}\.){re.escape(fold(value))}"
                rf"(?!{_WORD_CHARS})(?!\.{_WORD_CHARS})"
            )
            for value in values
            if value.strip()
        ]

    def finds(self, line: str) -> bool:
        lowered = unicodedata.normalize("NFC", line).lower()
        for pattern in self.patterns:
            for match in pattern.finditer(lowered):
                if self.identifier.kind == EMAIL:
                    return True
                before = _DOMAIN_BEFORE.search(lowered, 0, match.start())
                after = _DOMAIN_AFTER.match(lowered, match.end())
                if before:
                    written = f"{before[1]}\\{self.name}"
                elif after:
                    written = f"{self.name}@{after[1]}"
                else:
                    written = self.name
                if Identity("", (self.identifier,)).account(written, self.namespace):
                    return True
        return False


def _mentions(identity: Identity, namespace: str) -> list[_Mention]:
    """Addresses are looked for in every group; logins only in the groups they are valid in
    (another client's ``asmith`` is someone else)."""
    return [
        _Mention(identifier, namespace)
        for identifier in identity.identifiers
        if identifier.kind == EMAIL
        or (identifier.kind == "username" and identifier.covers(namespace))
    ]


def _without_url_secrets(text: str) -> str:
    """Text with passwords in URLs (``smb://u:pw@host``, ``?pin=1234``) withheld."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{URL_WITHHELD}@", text)
    return _URL_QUERY_SECRET.sub(rf"\g<name>={URL_WITHHELD}", text)


def _live_entries(vault: Any) -> Iterable[Any]:
    """Entries outside the recycle bin (pykeepass leaves out the versions kept as history)."""
    meta = vault.tree.find("Meta/RecycleBinUUID")
    bin_uuid = meta.text if meta is not None and meta.text not in (None, _ZERO_UUID) else None
    for entry in vault.entries:
        groups = entry._element.iterancestors("Group")
        if bin_uuid is not None and any(g.findtext("UUID") == bin_uuid for g in groups):
            continue
        yield entry


def _group_names(entry: Any) -> list[str]:
    """The names of the groups holding the entry, outermost first, without the root group."""
    groups = list(entry._element.iterancestors("Group"))
    return [g.findtext("Name") or "" for g in reversed(groups[:-1])]


def _entry_path(entry: Any, strings: _Strings) -> str:
    if "Title" in strings.held:
        title = "(title withheld)"
    else:
        title = strings.shown.get("Title") or "(untitled)"
    return "/".join([*_group_names(entry), title])


def _custom_names(entry: Any) -> list[str]:
    names: list[str] = []
    for element in entry._element.iterchildren("String"):
        name = element.findtext("Key")
        if name and name not in (*STANDARD_FIELDS, "Password", "otp") and name not in names:
            names.append(name)
    return names


def _times(entry: Any) -> dict[str, JSONValue]:
    expires = entry._element.findtext("Times/Expires") == "True"
    expiry = entry.expiry_time if expires else None
    return {
        "Created": _iso(entry.ctime),
        "Modified": _iso(entry.mtime),
        "Expires": expires,
        "Expiry time": _iso(expiry),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
