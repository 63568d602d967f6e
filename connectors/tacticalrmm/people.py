"""Who used a computer: linking an agent to the person through its users, within the
client's namespace, and withholding everyone else's name."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

from connectors.indexed import spellings_of
from sarbot.connector import (
    Identifier,
    Identity,
    JSONValue,
    fold,
    namespace_part,
    split_account,
)

AgentRow = Mapping[str, Any]
"""An agent's row as a lookup reads it: its columns, its site's and its client's names."""

WITHHELD_TEXT = "[withheld: it names another person]"


NOBODY = {"", "none"}  # the agent reports the text "None" when nobody is logged in


USER_FIELDS = {"logged_in_username": "Logged-in user", "last_logged_in_user": "Last logged-in user"}


class Whose(Enum):
    NOBODY = "nobody"
    SUBJECT = "the subject, by an identifier of this round"
    SUBJECT_EARLIER = "the subject, by an identifier of an earlier round"
    OTHER = "another person"


@dataclass(frozen=True)
class Link:
    """How an agent is linked to the person: by which identifier, and through whom."""

    identifier: Identifier
    now: bool
    """Through the user logged in now (not only the last one who logged in)."""


@dataclass(frozen=True)
class Subject:
    """The identifiers of this round that can name a Tactical RMM user, and the person's own."""

    identity: Identity
    connector: str
    spellings: frozenset[str]
    """How the stored user names that may be the subject's are written (connectors.indexed)."""
    answers: dict[tuple[str, str, bool], Identifier | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    withholders: dict[tuple[frozenset[str], frozenset[str]], Withholder] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, identity: Identity, connector: str) -> Subject:
        wanted = [*identity.of_kind("username"), *identity.of_kind("email")]
        return cls(identity, connector, frozenset(s for i in wanted for s in spellings_of(i)))

    def namespace(self, row: AgentRow) -> str:
        """Where an agent's user names belong: the agent's client."""
        client = row["client_name"]
        base = f"tacticalrmm:{self.connector}"
        return f"{base}/{namespace_part(client)}" if isinstance(client, str) and client else base

    def match(self, stored: Any, row: AgentRow, *, known: bool = False) -> Identifier | None:
        """The identifier a stored user name is, in its client's namespace.  The answers are
        kept for the lookup: the same user names recur on many computers of a client."""
        if not is_user(stored):
            return None
        namespace = self.namespace(row)
        key = (stored, namespace, known)
        if key not in self.answers:
            identity = self.identity
            self.answers[key] = identity.address(stored, known=known) or identity.account(
                stored, namespace, known=known
            )
        return self.answers[key]

    def linked(self, row: AgentRow) -> Link | None:
        """How the agent links to the subject, or None."""
        if found := self.match(row["logged_in_username"], row):
            return Link(found, now=True)
        if found := self.match(row["last_logged_in_user"], row):
            # The current user may be the person too, under a name found in an earlier round.
            current = self.match(row["logged_in_username"], row, known=True)
            return Link(found, now=current is not None)
        return None

    def withholder(self, others: list[str], own: list[str]) -> Withholder:
        """What withholds these other people's names, built once a lookup for each set of
        names as the withholder compares them (a client's computers share their users,
        written ``ACME\\asmith`` on one and ``asmith`` on the next)."""
        key = (user_names(others), user_names(own))
        if key not in self.withholders:
            self.withholders[key] = Withholder(others, own + self.names())
        return self.withholders[key]

    def names(self) -> list[str]:
        own = [*self.identity.of_kind("username"), *self.identity.known]
        return [split_account(i.value)[0] for i in own if i.kind == "username"]

    def whose(self, stored: Any, row: AgentRow) -> Whose:
        """Whom a user field names: the person by an identifier of this round, the person
        by one of an earlier round, somebody else, or nobody."""
        if not is_user(stored):
            return Whose.NOBODY
        if self.match(stored, row) is not None:
            return Whose.SUBJECT
        if self.match(stored, row, known=True) is not None:
            return Whose.SUBJECT_EARLIER
        return Whose.OTHER


class Withholder:
    """Replaces any text that names one of the other people who used the computer."""

    def __init__(self, others: Iterable[str], own: Iterable[str]) -> None:
        names = user_names(others) - {""}
        forms = sorted({form for name in names for form in _forms(name)})
        mine = user_names(own)
        # The subject's own names, as they are, are taken out first when they contain
        # another's (alice's "basmith-pc" does not name a bob who is "asmith"); never
        # their other forms: "JURGENS-MBP" may be Jürgens's or Jurgen's, so it is withheld.
        self.rules = [(_pattern(form), _containing(form, mine)) for form in forms]
        # Any of the names anywhere: text without one cannot match a rule (taking out the
        # subject's names only removes text), so most text is decided by this one search.
        self.anywhere = re.compile("|".join(re.escape(form) for form in forms))

    def names_other(self, text: str) -> bool:
        if not self.rules:
            return False
        for base in _written(fold(text)):
            if not self.anywhere.search(base):
                continue
            for pattern, containing in self.rules:
                folded = base
                for name in containing:
                    folded = folded.replace(name, "\0")
                if pattern.search(folded):
                    return True
        return False

    def scrub_fields(
        self, fields: dict[str, JSONValue], gathered: Mapping[str, list[str]]
    ) -> dict[str, JSONValue]:
        """A record's fields with every text that names another person withheld.

        Most records name nobody: they are passed whole after one search of all their
        texts joined by NUL, instead of one search a field.  Folding works on the joined
        texts as on each one (NUL is no letter and composes with nothing), so a name in
        one text is found in the join; a match across two texts only costs the
        text-by-text pass.

        ``gathered`` holds, for a field whose builder gathered its texts as it built it
        (a computer's programs: ``inventory.software``), exactly those texts, so that they
        are not walked a second time; every other field's texts are found here."""
        if not self.rules:
            return fields
        found: list[str] = []
        for name, value in fields.items():
            if name in gathered:
                found += gathered[name]
            else:
                _texts_of(value, found)
        if not self._any_named(found):
            return fields
        return cast(dict[str, JSONValue], self._scrub(fields))  # a dict scrubs to a dict

    def _any_named(self, texts: list[str]) -> bool:
        return any(self.anywhere.search(t) for t in _written(fold("\0".join(texts))))

    def _scrub(self, value: JSONValue) -> JSONValue:
        if isinstance(value, str):
            return WITHHELD_TEXT if self.names_other(value) else value
        if isinstance(value, list):
            return [self._scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        return value


# Scripts whose words run on without a space (Chinese, Japanese, Thai, ...) or take their
# particles joined (Korean): a name written in them is matched anywhere.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\uff66-\uff9f\U00020000-\U0003134f]"
)


def _forms(name: str) -> set[str]:
    """How a folded name may be written in folded text: as it is, case-folded (``weiß`` as
    ``weiss``, which ``WEISS`` folds to) and without its accents (``i̇lker`` as ``ilker``,
    ``jürgen`` as ``jurgen``).  Withholding more than the name itself is safe."""
    forms = {name, name.casefold()}
    return {f for form in forms for f in (form, _unaccented(form)) if f}


def _containing(name: str, mine: Iterable[str]) -> list[str]:
    """The subject's names that contain this other name, longest first."""
    return sorted((m for m in mine if name in m and name != m), key=len, reverse=True)


def _written(folded: str) -> tuple[str, ...]:
    """Folded text, and the same without accents when it has any (ASCII text has none)."""
    return (folded,) if folded.isascii() else (folded, _unaccented(folded))


def _unaccented(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", kept)


def _pattern(name: str) -> re.Pattern[str]:
    """Short names are matched as a whole word (``al`` keeps ``Visual`` intact), allowing a
    possessive or plural ``s`` (``Bobs-MacBook-Pro`` names bob); longer names, and names in
    scripts without spaces between words, anywhere."""
    if len(name) >= 4 or _UNSPACED.search(name):
        return re.compile(re.escape(name))
    return re.compile(rf"(?<![^\W\d_]){re.escape(name)}s?(?![^\W\d_])")


def _texts_of(value: JSONValue, found: list[str]) -> None:
    """Every text in the value, in no particular order (one search of them all asks only
    whether a name is in any).  A record can hold hundreds of programs, so this walk
    keeps a list of what is left to see instead of calling itself for every value."""
    if isinstance(value, str):
        found.append(value)
        return
    append = found.append
    waiting: list[JSONValue] = [value]
    while waiting:
        container = waiting.pop()
        if isinstance(container, dict):
            items: Iterable[JSONValue] = container.values()
        elif isinstance(container, list):
            items = container
        else:
            continue
        for item in items:
            if isinstance(item, str):
                append(item)
            elif isinstance(item, (dict, list)):
                waiting.append(item)


def user_names(accounts: Iterable[str]) -> frozenset[str]:
    """The user names of these accounts, as the withholder compares them."""
    return frozenset(fold(split_account(account)[0]) for account in accounts)


def is_user(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() not in NOBODY
