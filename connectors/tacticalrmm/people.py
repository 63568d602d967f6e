"""Who used a computer: linking an agent to the person through its users, within the
client's namespace, and withholding everyone else's name."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping

from connectors.indexed import spellings_of
from sarbot.connector import (
    Identifier,
    Identity,
    JSONValue,
    fold,
    split_account,
)

WITHHELD_TEXT = "[withheld: it names another person]"


NOBODY = {"", "none"}  # the agent reports the text "None" when nobody is logged in


USER_FIELDS = {"logged_in_username": "Logged-in user", "last_logged_in_user": "Last logged-in user"}


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

    @classmethod
    def of(cls, identity: Identity, connector: str) -> Subject:
        wanted = [*identity.of_kind("username"), *identity.of_kind("email")]
        return cls(identity, connector, frozenset(s for i in wanted for s in spellings_of(i)))

    def namespace(self, row: RowMapping) -> str:
        """Where an agent's user names belong: the agent's client."""
        client = row["client_name"]
        base = f"tacticalrmm:{self.connector}"
        return f"{base}/{client}" if isinstance(client, str) and client else base

    def match(self, stored: Any, row: RowMapping, *, known: bool = False) -> Identifier | None:
        if not is_user(stored):
            return None
        identity = self.identity
        return identity.address(stored, known=known) or identity.account(
            stored, self.namespace(row), known=known
        )

    def linked(self, row: RowMapping) -> Link | None:
        """How the agent links to the subject, or None."""
        if found := self.match(row["logged_in_username"], row):
            return Link(found, now=True)
        if found := self.match(row["last_logged_in_user"], row):
            # The current user may be the person too, under a name found in an earlier round.
            current = self.match(row["logged_in_username"], row, known=True)
            return Link(found, now=current is not None)
        return None

    def names(self) -> list[str]:
        own = [*self.identity.of_kind("username"), *self.identity.known]
        return [split_account(i.value)[0] for i in own if i.kind == "username"]

    def other(self, stored: Any, row: RowMapping) -> bool:
        """Whether a user field names somebody else than the person (in any round)."""
        if not is_user(stored) or self.match(stored, row) is not None:
            return False
        return self.match(stored, row, known=True) is None


class Withholder:
    """Replaces any text that names one of the other people who used the computer."""

    def __init__(self, others: Iterable[str], own: Iterable[str]) -> None:
        names = {fold(split_account(other)[0]) for other in others} - {""}
        mine = {fold(split_account(name)[0]) for name in own}
        # Short names are only matched as a whole word, so that "al" keeps "Visual" intact.
        # The subject's own names are taken out first when they contain another's
        # (alice's "basmith-pc" does not name a bob who is "asmith").
        self.rules = [
            (
                re.compile(
                    re.escape(n) if len(n) >= 4 else rf"(?<![^\W\d_]){re.escape(n)}(?![^\W\d_])"
                ),
                sorted((m for m in mine if n in m and n != m), key=len, reverse=True),
            )
            for n in sorted(names)
        ]
        # Any of the names anywhere: text without one cannot match a rule (taking out the
        # subject's names only removes text), so most text is decided by this one search.
        self.anywhere = re.compile("|".join(re.escape(n) for n in sorted(names)))
        self.plain = not any(c in '"\\' or ord(c) < 0x20 for n in names for c in n)

    def names_other(self, text: str) -> bool:
        if not self.rules:
            return False
        base = fold(text)
        if not self.anywhere.search(base):
            return False
        for pattern, containing in self.rules:
            folded = base
            for name in containing:
                folded = folded.replace(name, "\0")
            if pattern.search(folded):
                return True
        return False

    def scrub(self, value: JSONValue) -> JSONValue:
        """The value with every text that names another person withheld.  Most values name
        nobody: they are passed whole after one search of their JSON text, which holds each
        of their texts as written when no name has a character JSON escapes."""
        if not self.rules:
            return value
        if self.plain and not self.anywhere.search(fold(json.dumps(value, ensure_ascii=False))):
            return value
        return self._scrub(value)

    def _scrub(self, value: JSONValue) -> JSONValue:
        if isinstance(value, str):
            return WITHHELD_TEXT if self.names_other(value) else value
        if isinstance(value, list):
            return [self._scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        return value


def is_user(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() not in NOBODY
