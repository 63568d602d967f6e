"""The connector contract: how sarbot asks a data store what it holds on a person.

This is the only module of sarbot a connector imports: besides the protocol
and its data types it hands on what connectors need of the rest (settings
sections and secret references, the error to raise, address normalisation,
the IMAP login, the loop header).

A connector *type* is a class (or any callable) with a pydantic ``Settings``
model; sarbot validates the connector's ``[[connectors]]`` table with it and
calls ``Type(name, settings)`` to get a connector.  Built-in and third-party
types register alike, through the ``sarbot.connectors`` entry-point group::

    [project.entry-points."sarbot.connectors"]
    crm = "mypackage.crm:CrmConnector"

``collect`` runs in a worker thread, so a connector may block on I/O.  It
must return only records about the identity it was given, and it must never
put a secret (password, key, one-time-password seed, protected field) into a
record: it writes a statement that the secret is held and withheld instead.
A connector that cannot answer raises; ``sarbot.errors.ConnectorError`` with a
message free of personal data tells the operator why (other exceptions are
logged by their type only, since their text may quote the data).

Identity expansion: a record may name further identifiers (``Record.yields``).
Each says which directory its value belongs to (``namespace``) and who wrote it
(``trust``).  A value is not a person: ``asmith`` on the website, ``asmith`` in
the vault group of one client and ``asmith`` at another client are three
people.  sarbot follows an identifier into other connectors only when the
controller recorded it (``Trust.CONTROLLER``); one chosen by whoever typed it
(``Trust.SELF_ASSERTED``: website logins, comment fields, form content) is
never followed.  A username matches a stored account only
within the namespaces the admin declared the same (``[[realms]]``), and with
the same domain: use ``Identity.account`` and ``Identity.address`` for every
comparison, never string equality.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from sarbot.addresses import (
    InvalidAddress,
    domain_of,
    normalize_address,
    same_address,
    written_forms,
)
from sarbot.config import ImapLogin, Section
from sarbot.errors import ConnectorError
from sarbot.mail.guards import LOOP_HEADER
from sarbot.mail.imap import imap_session
from sarbot.mail.message import decode_header_value
from sarbot.names import bare_domain, covers, fold, namespace_part, split_account
from sarbot.secretref import ConfigPath, MaybeSecretStr, Secret, base_dir

__all__ = [
    "AD",
    "EMAIL",
    "ENTRY_POINT_GROUP",
    "LOOP_HEADER",
    "OTHER_PEOPLE_NOTE",
    "OTHER_PERSON",
    "ConfigPath",
    "Connector",
    "ConnectorError",
    "ConnectorType",
    "Identifier",
    "Identity",
    "ImapLogin",
    "InvalidAddress",
    "JSONValue",
    "MaybeSecretStr",
    "Record",
    "Secret",
    "Section",
    "Trust",
    "base_dir",
    "covers",
    "decode_header_value",
    "domain_of",
    "fold",
    "imap_session",
    "jsonable",
    "namespace_part",
    "normalize_address",
    "same_address",
    "split_account",
    "with_other_people_note",
    "written_forms",
]

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
ENTRY_POINT_GROUP = "sarbot.connectors"
VERIFIED_ORIGIN = "the address the request came from, verified by a reply"
OTHER_PERSON = "[withheld: about another person]"
"""Put in place of a value that is another person's; the export adds OTHER_PEOPLE_NOTE."""
OTHER_PEOPLE_NOTE = "Information about other people was withheld."
EMAIL = "email"
"""The namespace of email addresses: the only one that is global."""
AD = "ad:"
"""A realm's Windows (Active Directory) domain: ``ad:ACME``, ``ad:acme.local``."""


class Trust(StrEnum):
    """Who wrote an identifier down, and so how far it may be followed."""

    VERIFIED = "verified"
    """The address the request came from, proven by the requester: it starts the search."""
    CONTROLLER = "controller"
    """Recorded by the controller's staff or systems (the vault, monitoring agents)."""
    SELF_ASSERTED = "self_asserted"
    """Typed by the person or by anyone (website logins, comment fields, form content)."""


@dataclass(frozen=True)
class Identifier:
    """One identifier of the person: its value, its directory, who wrote it, where it was found.

    A connector sets ``kind``, ``value``, ``origin``, ``namespace`` and ``trust``;
    sarbot sets ``source`` (the connector that found it) and, from the admin's
    ``[[realms]]``, ``realm`` (the realm's label) and ``aliases`` (every namespace
    of the realm: the same directory under other names).  A username's value is
    the account as recorded (``asmith`` or ``ACME\\asmith``).
    """

    kind: str
    value: str
    origin: str
    namespace: str = ""
    trust: Trust = Trust.SELF_ASSERTED
    source: str = ""
    realm: str = ""
    aliases: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str, str]:
        """The same identifier: the kind, the value compared as its kind compares, the realm.

        A realm is named by one of its connectors' namespaces, which no other realm holds;
        never by a Windows domain, which several realms may share (two clients that each
        call theirs ``CORP`` have two ``CORP\\asmith``)."""
        scope = min((m for m in self.aliases if not m.startswith(AD)), default=self.namespace)
        return (self.kind, self.value if self.kind == EMAIL else fold(self.value), scope)

    def covers(self, namespace: str) -> bool:
        """Whether the identifier is valid in that namespace: its own exactly (a login in a
        parent group or at a vault's top level is not valid in every group below it), or
        one in its realm (a realm's member covers what lies inside it, as the admin said)."""
        own = unicodedata.normalize("NFC", self.namespace)
        return unicodedata.normalize("NFC", namespace) == own or any(
            covers(m, namespace) for m in self.aliases
        )

    def domains(self) -> frozenset[str]:
        """The Windows domains its realm declares, folded."""
        return frozenset(
            fold(bare_domain(m.removeprefix(AD))) for m in self.aliases if m.startswith(AD)
        )

    def describe(self) -> str:
        """In words for the person: ``login asmith at Acme Ltd``."""
        label = KIND_LABELS.get(self.kind, self.kind)
        where = f" at {self.realm}" if self.realm else ""
        return f"{label} {self.value}{where}"


KIND_LABELS = {
    EMAIL: "email address",
    "username": "login",
    "ip": "IP address",
    "hostname": "computer name",
    "name": "name",
}


@dataclass(frozen=True)
class Identity:
    """The identifiers a connector is asked about in one round of collection.

    ``identifiers`` are the ones new in this round: look these up.  ``known``
    holds every identifier of the person found so far that is followed
    everywhere, this round's included, so a connector can tell the person's own
    names from other people's.
    """

    email: str
    identifiers: tuple[Identifier, ...] = ()
    known: tuple[Identifier, ...] = ()

    @classmethod
    def verified(cls, email: str) -> Identity:
        """The first round: only the verified address."""
        first = (Identifier(EMAIL, email, VERIFIED_ORIGIN, EMAIL, Trust.VERIFIED),)
        return cls(email, first, first)

    def of_kind(self, kind: str) -> list[Identifier]:
        return [i for i in self.identifiers if i.kind == kind]

    def values(self, kind: str) -> list[str]:
        return [i.value for i in self.of_kind(kind)]

    def address(self, stored: object, *, known: bool = False) -> Identifier | None:
        """The email identifier that a stored value is, compared exactly once normalised."""
        if not isinstance(stored, str):
            return None
        try:
            address = normalize_address(stored)
        except InvalidAddress:
            return None
        pool = self.known if known else self.identifiers
        return next((i for i in pool if i.kind == EMAIL and i.value == address), None)

    def account(self, stored: object, namespace: str, *, known: bool = False) -> Identifier | None:
        """The username identifier that a stored account name is, in the namespace it is in.

        ``namespace`` is where the account was recorded (a vault group, an RMM client,
        a log source).  It matches an identifier valid in that namespace with the same
        user name (ignoring case) and the same domain: when both name a domain, the
        same one (or two the realm declares the same); when only one does, it must be
        a Windows domain of the realm.
        """
        if not isinstance(stored, str):
            return None
        name, domain = split_account(stored)
        if not name:
            return None
        pool = self.known if known else self.identifiers
        for identifier in pool:
            if identifier.kind != "username" or not identifier.covers(namespace):
                continue
            mine, my_domain = split_account(identifier.value)
            if fold(mine) != fold(name):
                continue
            if domain and my_domain:
                both = {fold(domain), fold(my_domain)}
                if len(both) == 1 or both <= identifier.domains():
                    return identifier
            elif domain or my_domain:
                if fold(domain or my_domain) in identifier.domains():
                    return identifier
            else:
                return identifier
        return None


@dataclass(frozen=True)
class Record:
    """One item of personal data, with how it was found."""

    category: str
    fields: Mapping[str, JSONValue]
    found_by: Identifier
    location: str = ""
    yields: tuple[Identifier, ...] = ()
    notes: tuple[str, ...] = ()
    key: str = field(default="")

    @property
    def identity_key(self) -> str:
        """Stable within a source: the connector's key, or a digest of the content."""
        if self.key:
            return self.key
        body = json.dumps([self.category, self.fields], sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


@runtime_checkable
class Connector(Protocol):
    """A configured connection to one data store."""

    name: str

    def collect(self, identity: Identity) -> Iterable[Record]:
        """Every record the store holds on these identifiers."""
        ...

    def check(self) -> Sequence[str] | None:
        """Prove the store can be reached and read; raise ConnectorError saying why not.

        It may return warnings for the operator (free of personal data): what works but
        should not stay so, such as an index the lookups need that is missing.  A check
        that returns None has nothing to warn about.
        """
        ...

    def close(self) -> None:
        """Release connections; called once when the daemon stops."""
        ...


class ConnectorType(Protocol):
    """What an entry point in the ``sarbot.connectors`` group loads.

    ``namespace_trust`` (a class or instance attribute, optional) says who records the
    account names in the connector's namespaces: only a connector whose names the
    controller records (``Trust.CONTROLLER``) can be part of a realm.  Without it, a
    connector counts as holding self-asserted names, and everything it yields is
    followed into itself only.
    """

    Settings: type[BaseModel]

    def __call__(self, name: str, settings: Any, /) -> Connector: ...


_PLAIN: frozenset[type[JSONValue]] = frozenset((str, int, float, bool))
"""The types most stored values have: a connector converts every field, so they go first."""


def jsonable(value: Any) -> JSONValue:
    """A stored value as a JSON value: dates as ISO 8601, binary as a size note."""
    if type(value) in _PLAIN:
        plain: JSONValue = value
        return plain
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes of binary data>"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def with_other_people_note(record: Record) -> Record:
    """A record that withholds another person's data says so, whichever connector made it."""
    if OTHER_PEOPLE_NOTE in record.notes or not _mentions(record.fields, OTHER_PERSON):
        return record
    return replace(record, notes=(*record.notes, OTHER_PEOPLE_NOTE))


def _mentions(value: object, marker: str) -> bool:
    if isinstance(value, str):
        return marker in value
    if isinstance(value, Mapping):
        return any(_mentions(v, marker) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_mentions(v, marker) for v in value)
    return False
