"""The connector contract: how sarbot asks a data store what it holds on a person.

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

Identity expansion: a record may name further identifiers of the person it
belongs to (``Record.yields``: a username in a vault entry, say).  sarbot
follows the kinds the admin marks as strong in further rounds, calling each
connector again with only the identifiers that are new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
ENTRY_POINT_GROUP = "sarbot.connectors"
VERIFIED_ORIGIN = "the address the request came from, verified by a reply"
OTHER_PERSON = "[withheld: about another person]"
"""Put in place of a value that is another person's; the export adds OTHER_PEOPLE_NOTE."""
OTHER_PEOPLE_NOTE = "Information about other people was withheld."


@dataclass(frozen=True)
class Identifier:
    """One identifier of the person, and where it came from."""

    kind: str
    value: str
    origin: str

    @property
    def key(self) -> tuple[str, str]:
        """Identifiers of one kind compare without regard to case."""
        return (self.kind, self.value.casefold())

    def describe(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Identity:
    """The identifiers a connector is asked about in one round of collection.

    ``identifiers`` are the ones new in this round: look these up.  ``known``
    holds every identifier of the person found so far, this round's included,
    so a connector can tell the person's own names from other people's.
    """

    email: str
    identifiers: tuple[Identifier, ...] = ()
    known: tuple[Identifier, ...] = ()

    @classmethod
    def verified(cls, email: str) -> Identity:
        """The first round: only the verified address."""
        first = (Identifier("email", email, VERIFIED_ORIGIN),)
        return cls(email, first, first)

    def of_kind(self, kind: str) -> list[Identifier]:
        return [i for i in self.identifiers if i.kind == kind]

    def values(self, kind: str) -> list[str]:
        return [i.value for i in self.of_kind(kind)]


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

    def close(self) -> None:
        """Release connections; called once when the daemon stops."""
        ...


class ConnectorType(Protocol):
    """What an entry point in the ``sarbot.connectors`` group loads."""

    Settings: type[BaseModel]

    def __call__(self, name: str, settings: Any, /) -> Connector: ...


def jsonable(value: Any) -> JSONValue:
    """A stored value as a JSON value: dates as ISO 8601, binary as a size note."""
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


def matches_any(text: str | None, needles: Iterable[str]) -> str | None:
    """The first needle found in text, ignoring case; None if none is."""
    if not text:
        return None
    folded = text.casefold()
    return next((n for n in needles if n and n.casefold() in folded), None)


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
