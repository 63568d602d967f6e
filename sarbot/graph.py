"""The identity graph: which identifiers of a person are followed where, and why.

The verified address starts the graph.  Every identifier a record yields is
placed (its namespace, the connector that found it, the admin's realm it
belongs to) and judged, here and nowhere else:

* a kind that can name several people (``ip``, ``hostname``, ``name``; any kind
  not in ``[collection] strong_identifiers``) is not followed;
* a generic account name (``[collection] never_follow``) is not followed;
* an identifier chosen by whoever typed it (``Trust.SELF_ASSERTED``) is not
  followed at all, not even in the store it came from: a value typed into a
  form (an order's "copy invoice to" address) can name anyone, and looking it
  up again would fetch that person's records;
* one the controller recorded is offered to every connector, each of which
  matches it only within its namespace and the realm's (``Identity.account``).

Every decision is kept with its reason, for the letter, ``sarbot requests show``
and the audit trail.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from sarbot.addresses import InvalidAddress, domain_of, is_private_domain, normalize_address
from sarbot.config import CollectionSettings, RealmSettings
from sarbot.connector import (
    AD,
    EMAIL,
    Identifier,
    Identity,
    Trust,
    covers,
    fold,
    split_account,
)
from sarbot.errors import ConfigError
from sarbot.names import bare_domain


class Scope(StrEnum):
    """How far an identifier was followed."""

    START = "start"
    """The verified address: every connector was asked about it."""
    EVERYWHERE = "everywhere"
    """Recorded by the controller: every connector was asked, within its realm."""
    NOT_FOLLOWED = "not_followed"
    """Kept as part of a record; no connector was asked about it."""


@dataclass(frozen=True)
class Link:
    """One identifier in the graph, how far it was followed, and why."""

    identifier: Identifier
    scope: Scope
    reason: str = ""

    @property
    def followed(self) -> bool:
        return self.scope is not Scope.NOT_FOLLOWED

    def document(self) -> dict[str, str]:
        i = self.identifier
        return {
            "kind": i.kind,
            "value": i.value,
            "namespace": i.namespace,
            "realm": i.realm,
            "trust": i.trust.value,
            "source": i.source,
            "origin": i.origin,
            "scope": self.scope.value,
            "reason": self.reason,
            "described": i.describe(),
        }


def graph_document(links: Sequence[Link]) -> list[dict[str, str]]:
    return [link.document() for link in links]


def graph_digest(links: Sequence[Link]) -> str:
    """A digest of the graph, for the audit trail (which holds no identifier itself)."""
    body = json.dumps(graph_document(links), sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Realm:
    label: str
    members: frozenset[str]

    def holds(self, namespace: str) -> bool:
        return any(covers(member, namespace) for member in self.members)


class Realms:
    """The admin's ``[[realms]]``: namespaces that are one directory of people."""

    def __init__(self, settings: Iterable[RealmSettings]) -> None:
        self.realms = [
            Realm(r.label, frozenset(_canonical(m) for m in r.same_as)) for r in settings
        ]
        self.domains = frozenset(
            m.removeprefix(AD) for realm in self.realms for m in realm.members if m.startswith(AD)
        )

    def is_login_domain(self, domain: str) -> bool:
        """A domain of Windows logins, not of mailboxes: a realm's, or a private network's."""
        return is_private_domain(domain) or domain in self.domains

    def of(self, namespace: str) -> Realm | None:
        return next((realm for realm in self.realms if realm.holds(namespace)), None)

    def place(self, identifier: Identifier) -> Identifier:
        """The identifier with its realm's label and namespaces (emails have no realm)."""
        if identifier.kind == EMAIL:
            return identifier
        realm = self.of(identifier.namespace)
        if realm is None:
            return identifier
        return replace(identifier, realm=realm.label, aliases=realm.members)


def _canonical(namespace: str) -> str:
    """Windows domain names ignore case; every other namespace is compared as written (NFC)."""
    if namespace.startswith(AD):
        return AD + fold(bare_domain(namespace.removeprefix(AD)))
    return unicodedata.normalize("NFC", namespace)


class Source(Protocol):
    """What the graph needs to know of a configured connector."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def trust(self) -> Trust: ...


def check_realms(settings: Iterable[RealmSettings], sources: Iterable[Source]) -> None:
    """Refuse a realm that names a connector not configured, or one whose names anyone types."""
    by_name = {source.name: source for source in sources}
    for realm in settings:
        for member in realm.same_as:
            if member.startswith(AD):
                continue
            kind, _, rest = member.partition(":")
            name = rest.partition("/")[0]
            source = by_name.get(name)
            where = f"realm '{realm.label}': '{member}'"
            if source is None or source.type != kind:
                raise ConfigError(f"{where}: no enabled connector '{name}' of type '{kind}'")
            if source.trust is not Trust.CONTROLLER:
                raise ConfigError(
                    f"{where}: the account names in connector '{name}' are chosen by whoever "
                    "typed them, so they cannot be joined to another directory"
                )


class Graph:
    """The identifiers found for one request, and what was done with each."""

    def __init__(self, email: str, settings: CollectionSettings, realms: Realms) -> None:
        self.settings = settings
        self.realms = realms
        self._never = {fold(value) for value in settings.never_follow}
        start = Identity.verified(email).identifiers[0]
        self.links: dict[tuple[str, str, str], Link] = {start.key: Link(start, Scope.START)}

    def known(self) -> tuple[Identifier, ...]:
        """Every identifier followed everywhere: the person's own, in any connector."""
        return tuple(
            link.identifier
            for link in self.links.values()
            if link.scope in (Scope.START, Scope.EVERYWHERE)
        )

    def add(self, found: Identifier, source: Source) -> Identifier | None:
        """Place and judge a yielded identifier; it is returned if it is to be looked up."""
        if found.kind == EMAIL:
            try:
                address = normalize_address(found.value)
            except InvalidAddress:
                placed = self._placed(found, source)
                self.links.setdefault(
                    placed.key, Link(placed, Scope.NOT_FOLLOWED, "not a plain email address")
                )
                return None
            if self.realms.is_login_domain(domain_of(address)):
                # asmith@corp.local names a login in a private directory, not a mailbox:
                # two clients may both have one.  It stays where it was recorded.
                found = replace(found, kind="username", value=address)
            else:
                found = replace(found, value=address)
        identifier = self._placed(found, source)
        link = self._judge(identifier, source)
        existing = self.links.get(identifier.key)
        if existing is not None and not _wider(link, existing):
            return None
        self.links[identifier.key] = link
        return identifier if link.followed else None

    def stop(self, pending: Iterable[Identifier], reason: str) -> None:
        """The search ended before these were looked up."""
        for identifier in pending:
            self.links[identifier.key] = Link(identifier, Scope.NOT_FOLLOWED, reason)

    def next_round(self, new: Sequence[Identifier]) -> tuple[Identifier, ...]:
        """What every connector is asked about next: the new ones followed everywhere."""
        latest = [self.links[key].identifier for key in dict.fromkeys(i.key for i in new)]
        return tuple(i for i in latest if self.links[i.key].scope is Scope.EVERYWHERE)

    def ordered(self) -> list[Link]:
        """The start, then what was followed, then what was not."""
        order = {Scope.START: 0, Scope.EVERYWHERE: 1, Scope.NOT_FOLLOWED: 2}
        return sorted(self.links.values(), key=lambda link: order[link.scope])

    def _placed(self, found: Identifier, source: Source) -> Identifier:
        if found.kind == EMAIL:
            namespace = EMAIL
        elif found.kind == "username":
            own = f"{source.type}:{source.name}"
            namespace = _canonical(found.namespace or own)
            if not (covers(own, namespace) or namespace.startswith(AD)):
                namespace = own  # a connector names logins of its own directories only
        else:  # an IP address or a computer name is the same value wherever it was seen
            namespace = found.namespace or found.kind
        if source.trust is not Trust.CONTROLLER:
            trust = Trust.SELF_ASSERTED  # a connector cannot vouch for more than it holds
        elif found.trust is Trust.VERIFIED:
            trust = Trust.CONTROLLER  # only the request's own proof verifies an address
        else:
            trust = found.trust
        placed = replace(
            found,
            value=found.value.strip(),
            namespace=namespace,
            trust=trust,
            source=source.name,
            realm="",
            aliases=frozenset(),
        )
        return self.realms.place(placed)

    def _judge(self, identifier: Identifier, source: Source) -> Link:
        if identifier.kind not in self.settings.strong_identifiers:
            return Link(identifier, Scope.NOT_FOLLOWED, "it can belong to several people")
        if self._generic(identifier):
            return Link(identifier, Scope.NOT_FOLLOWED, "a shared account name")
        if identifier.trust is Trust.SELF_ASSERTED:
            return Link(
                identifier, Scope.NOT_FOLLOWED, "chosen by whoever typed it, so it proves nothing"
            )
        return Link(identifier, Scope.EVERYWHERE)

    def _generic(self, identifier: Identifier) -> bool:
        """A shared account or mailbox name, also as ``DOMAIN\\admin`` or ``admin@host``."""
        name = split_account(identifier.value)[0]
        return fold(identifier.value) in self._never or fold(name) in self._never


def _wider(new: Link, old: Link) -> bool:
    """A controller's record of an identifier found self-asserted first makes it followed."""
    return (
        old.scope is Scope.NOT_FOLLOWED
        and old.identifier.trust is Trust.SELF_ASSERTED
        and new.scope is Scope.EVERYWHERE
    )
