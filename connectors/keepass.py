"""``keepass``: the entries of a KeePass (KDBX 3.1 or 4) vault that concern a person.

An entry concerns the person when its title, user name, URL, notes or a custom
field names one of their identifiers.  The database is opened afresh for every
lookup (so a changed file is picked up) and dropped when the lookup ends, so the
decrypted vault is never kept in memory between requests.

Secrets never reach a record: every ``String`` of an entry is classified by its
name and its ``Protected`` flag before its value is looked at, and the value of
a secret one is only ever tested for presence, to state that it is held.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel
from pykeepass import PyKeePass
from pykeepass.exceptions import CredentialsError, HeaderChecksumError, PayloadChecksumError

from sarbot.addresses import InvalidAddress, normalize_address
from sarbot.config import Section
from sarbot.connector import OTHER_PERSON, Identifier, Identity, JSONValue, Record
from sarbot.errors import ConnectorError
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
    "This entry mentions you only in its notes or web address. Its other details may be "
    "about other people and were withheld."
)
# Characters that continue an address's local part or an account name: an identifier
# preceded or followed by one of them is part of a longer, different one.  (Rarer
# local-part characters such as = / ' are left out: in URLs and notes they delimit.)
_ADDRESS_CHARS = r"[\w.+-]"
_WORD_CHARS = r"[\w-]"
_ZERO_UUID = base64.b64encode(bytes(16)).decode()


class KeepassSettings(Section):
    path: ConfigPath
    password: Secret
    keyfile: ConfigPath | None = None
    include_attachments: bool = False
    custom_fields_secret: tuple[str, ...] = ()


@dataclass
class _Strings:
    """An entry's string fields: the values that may be shown, and the secrets held."""

    shown: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # field name -> statement


class KeepassConnector:
    """Searches every live entry of the vault for the identity's e-mail addresses and usernames."""

    Settings: ClassVar[type[BaseModel]] = KeepassSettings

    def __init__(self, name: str, settings: KeepassSettings) -> None:
        self.name = name
        self.settings = settings
        self._secret_names = {n.casefold() for n in settings.custom_fields_secret}

    def collect(self, identity: Identity) -> list[Record]:
        matchers = [(i, m) for i in identity.identifiers if (m := _matcher(i)) is not None]
        if not matchers:
            return []
        vault = self._open()
        binaries: list[bytes] | None = None
        records = []
        for entry in _live_entries(vault):
            strings = self._strings(entry)
            found_by = _first_match(matchers, strings.shown.values())
            if found_by is None:
                continue
            if binaries is None and entry._element.find("Binary") is not None:
                binaries = list(vault.binaries)
            if _names_the_person(matchers, strings):
                record = self._record(entry, strings, found_by, identity, binaries or [])
            else:
                # Named only in free text (notes, URL): the entry may be another person's
                # account on which the person is merely mentioned, so only the mention goes.
                record = self._mention(entry, strings, found_by, matchers)
            records.append(record)
        return records

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
        identity: Identity,
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
            yields=self._yields(strings, where, identity),
            notes=(WITHHELD_NOTE,) if strings.held else (),
            key=f"entry:{entry.uuid}",
        )

    def _mention(
        self,
        entry: Any,
        strings: _Strings,
        found_by: Identifier,
        matchers: Sequence[tuple[Identifier, re.Pattern[str]]],
    ) -> Record:
        fields: dict[str, JSONValue] = {
            "Group": "/".join(_group_names(entry)),
            "Title": strings.shown.get("Title", ""),
        }
        for key in sorted(FREE_TEXT_FIELDS):
            text = strings.shown.get(key, "")
            if any(pattern.search(text) for _, pattern in matchers):
                fields[STANDARD_FIELDS[key]] = text
        if strings.shown.get("UserName") or strings.held.get("UserName"):
            fields["User name"] = OTHER_PERSON
        fields.update(_times(entry))
        return Record(
            category=CATEGORY,
            fields=fields,
            found_by=found_by,
            location=f"entry '{_entry_path(entry, strings)}'",
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

    def _yields(self, strings: _Strings, where: str, identity: Identity) -> tuple[Identifier, ...]:
        """The entry's user name as a further identifier of the person, unless already known."""
        username = strings.shown.get("UserName", "").strip()
        if not username or any(ch.isspace() for ch in username):
            return ()
        origin = f"keepass '{self.name}': entry '{where}', UserName field"
        try:
            found = Identifier("email", normalize_address(username), origin)
        except InvalidAddress:
            found = Identifier("username", username, origin)
        if found.key in {i.key for i in (*identity.identifiers, *identity.known)}:
            return ()
        return (found,)


def _matcher(identifier: Identifier) -> re.Pattern[str] | None:
    """How an identifier is recognised in text; None for kinds this connector does not search.

    An e-mail address must not be part of a longer address ("alice@x.test" is not
    found in "malice@x.test"); a username must be a whole token ("asmith" is found
    in "CORP\\asmith" and "asmith@corp.test", not in "basmithy" or "a.smith").
    """
    value = re.escape(identifier.value.strip())
    if not value:
        return None
    if identifier.kind == "email":
        before = _ADDRESS_CHARS
    elif identifier.kind == "username":
        before = _WORD_CHARS
    else:
        return None
    pattern = rf"(?<!{before})(?<!{_WORD_CHARS}\.){value}(?!{_WORD_CHARS})(?!\.{_WORD_CHARS})"
    return re.compile(pattern, re.IGNORECASE)


def _first_match(
    matchers: Sequence[tuple[Identifier, re.Pattern[str]]], texts: Iterable[str]
) -> Identifier | None:
    values = [t for t in texts if t]
    for identifier, pattern in matchers:
        if any(pattern.search(text) for text in values):
            return identifier
    return None


FREE_TEXT_FIELDS = frozenset({"Notes", "URL"})


def _without_url_secrets(text: str) -> str:
    """Text with passwords in URLs (``smb://u:pw@host``, ``?pin=1234``) withheld."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{URL_WITHHELD}@", text)
    return _URL_QUERY_SECRET.sub(rf"\g<name>={URL_WITHHELD}", text)


def _names_the_person(
    matchers: Sequence[tuple[Identifier, re.Pattern[str]]], strings: _Strings
) -> bool:
    """Whether an identifier is in a field that names the entry's owner, not only in free text."""
    values = [v for name, v in strings.shown.items() if name not in FREE_TEXT_FIELDS and v]
    return any(pattern.search(v) for _, pattern in matchers for v in values)


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
