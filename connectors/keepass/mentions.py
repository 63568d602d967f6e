"""Entries that mention the person without being theirs: how a mention is recognised, and
other people's addresses withheld from what is shown."""

from __future__ import annotations

import re
import unicodedata

from connectors.keepass.fields import (
    Strings,
)
from sarbot.connector import (
    EMAIL,
    OTHER_PERSON,
    Identifier,
    Identity,
    fold,
    split_account,
    written_forms,
)

MENTION_ONLY_NOTE = (
    "This entry of our vault mentions you, but it is not your account: only the lines that "
    "mention you are shown. Its other details may be about other people and were withheld."
)


MENTION_CATEGORY = "Vault entry mentioning you"


# Characters that continue an address's local part or an account name: an identifier
# preceded or followed by one of them is part of a longer, different one.  (Rarer
# local-part characters such as = / ' are left out: in URLs and notes they delimit.)
_ADDRESS_CHARS = r"[\w.+-]"


# An apostrophe between two of them is inside a local part (o'neil@x.test is not
# neil@x.test); after a space or at the start it is a quotation mark ('neil@x.test').
_INSIDE_BEFORE = r"(?<![\w.+-]')"


_WORD_CHARS = r"[\w-]"


_DOMAIN_BEFORE = re.compile(r"([\w.-]+)\\$")


_DOMAIN_AFTER = re.compile(r"@([\w-]+(?:\.[\w-]+)*)")


# An address as written in an entry's text, an apostrophe inside its local part included;
# rarer local-part characters (= / ?) delimit in URLs and notes, as in _ADDRESS_CHARS.
_ANY_ADDRESS = re.compile(r"[\w.+-]+(?:'[\w.+-]+)*@[\w-]+(?:\.[\w-]+)+")


class Mention:
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
            inside = _INSIDE_BEFORE
        else:
            values, before = [split_account(identifier.value)[0]], _WORD_CHARS
            inside = ""
        self.name = fold(values[0])
        self.patterns = [
            re.compile(
                rf"(?<!{before})(?<!{_WORD_CHARS}\.){inside}{re.escape(fold(value))}"
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


def mentions_in(identity: Identity, namespace: str) -> list[Mention]:
    """Addresses are looked for in every group; logins only in the groups they are valid in
    (another client's ``asmith`` is someone else)."""
    return [
        Mention(identifier, namespace)
        for identifier in identity.identifiers
        if identifier.kind == EMAIL
        or (identifier.kind == "username" and identifier.covers(namespace))
    ]


def without_other_addresses(strings: Strings, identity: Identity, namespace: str) -> Strings:
    """An entry of the person's, with other people's addresses in its text withheld
    ("Ask bob@... first"); the user name, which is the account itself, is kept."""
    shown = {
        name: text if name == "UserName" else other_addresses_withheld(text, identity, namespace)
        for name, text in strings.shown.items()
    }
    return Strings(shown, strings.held)


def other_addresses_withheld(text: str, identity: Identity, namespace: str) -> str:
    """The text with every address withheld that is neither one of the person's nor their
    login written ``user@domain`` (``asmith@corp.test`` where the realm's domain is that)."""
    pool = Identity(identity.email, (), (*identity.identifiers, *identity.known))

    def withhold(match: re.Match[str]) -> str:
        theirs = pool.address(match[0], known=True) or pool.account(match[0], namespace, known=True)
        return match[0] if theirs else OTHER_PERSON

    return _ANY_ADDRESS.sub(withhold, text)
