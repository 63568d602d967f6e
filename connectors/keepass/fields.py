"""What an entry's fields are: which hold a secret (only ever stated to be held), and
the entry's place, names and times as they are exported."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sarbot.connector import (
    JSONValue,
)

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


_ZERO_UUID = base64.b64encode(bytes(16)).decode()


@dataclass
class Strings:
    """An entry's string fields: the values that may be shown, and the secrets held."""

    shown: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # field name -> statement


def without_url_secrets(text: str) -> str:
    """Text with passwords in URLs (``smb://u:pw@host``, ``?pin=1234``) withheld."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{URL_WITHHELD}@", text)
    return _URL_QUERY_SECRET.sub(rf"\g<name>={URL_WITHHELD}", text)


def live_entries(vault: Any) -> Iterable[Any]:
    """Entries outside the recycle bin (pykeepass leaves out the versions kept as history)."""
    meta = vault.tree.find("Meta/RecycleBinUUID")
    bin_uuid = meta.text if meta is not None and meta.text not in (None, _ZERO_UUID) else None
    for entry in vault.entries:
        groups = entry._element.iterancestors("Group")
        if bin_uuid is not None and any(g.findtext("UUID") == bin_uuid for g in groups):
            continue
        yield entry


def group_names(entry: Any) -> list[str]:
    """The names of the groups holding the entry, outermost first, without the root group."""
    groups = list(entry._element.iterancestors("Group"))
    return [g.findtext("Name") or "" for g in reversed(groups[:-1])]


def entry_path(entry: Any, strings: Strings) -> str:
    if "Title" in strings.held:
        title = "(title withheld)"
    else:
        title = strings.shown.get("Title") or "(untitled)"
    return "/".join([*group_names(entry), title])


def custom_names(entry: Any) -> list[str]:
    names: list[str] = []
    for element in entry._element.iterchildren("String"):
        name = element.findtext("Key")
        if name and name not in (*STANDARD_FIELDS, "Password", "otp") and name not in names:
            names.append(name)
    return names


def times(entry: Any) -> dict[str, JSONValue]:
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
