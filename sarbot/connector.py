"""The connector contract: how sarbot asks a data store what it holds on a person.

A connector *type* is a class (or any callable) with a pydantic ``Settings``
model; sarbot validates the connector's ``[[connectors]]`` table with it and
calls ``Type(name, settings)`` to get a connector.  Built-in and third-party
types register alike, through the ``sarbot.connectors`` entry-point group::

    [project.entry-points."sarbot.connectors"]
    crm = "mypackage.crm:CrmConnector"

``collect`` runs in a worker thread, so a connector may block on I/O.  It must
return only records about the identity it was given, and it must not put
secrets (passwords, keys, tokens) into a record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
ENTRY_POINT_GROUP = "sarbot.connectors"


@dataclass(frozen=True)
class Identity:
    """Who a request is about: the verified address, plus identifiers linked to it."""

    email: str
    identifiers: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def values(self, kind: str) -> frozenset[str]:
        """All identifiers of one kind; ``"email"`` always includes the verified address."""
        found = self.identifiers.get(kind, frozenset())
        return found | {self.email} if kind == "email" else found


@dataclass(frozen=True)
class Record:
    """One item of personal data, with how it was found."""

    category: str
    fields: Mapping[str, JSONValue]
    matched_on: str


@runtime_checkable
class Connector(Protocol):
    """A configured connection to one data store."""

    name: str

    def collect(self, identity: Identity) -> Iterable[Record]:
        """Every record the store holds on this identity."""
        ...

    def close(self) -> None:
        """Release connections; called once when the daemon stops."""
        ...


class ConnectorType(Protocol):
    """What an entry point in the ``sarbot.connectors`` group loads."""

    Settings: type[BaseModel]

    def __call__(self, name: str, settings: Any, /) -> Connector: ...


def jsonable(value: Any) -> JSONValue:
    """A database value as a JSON value: dates as ISO 8601, binary as a size note."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes of binary data>"
    return str(value)
