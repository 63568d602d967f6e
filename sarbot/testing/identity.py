"""Identifiers as the collector hands them to connectors, for connector tests.

A connector sees an identifier after the identity graph placed it: with its
namespace, its trust and the namespaces of its realm.  ``login("asmith",
"keepass:vault/Clients/Acme Ltd", "ad:ACME")`` is ``asmith`` as recorded in that
vault group, valid in every namespace named (the realm).
"""

from __future__ import annotations

from sarbot.connector import AD, EMAIL, Identifier, Identity, Trust, fold


def address(value: str, trust: Trust = Trust.VERIFIED) -> Identifier:
    """An email address (the verified one, unless said otherwise)."""
    return Identifier(EMAIL, value, "test", EMAIL, trust)


def login(
    value: str, namespace: str, *realm: str, trust: Trust = Trust.CONTROLLER, label: str = ""
) -> Identifier:
    """A login recorded in ``namespace``; valid also in the other namespaces of its realm."""
    members = frozenset(
        AD + fold(m.removeprefix(AD)) if m.startswith(AD) else m for m in (namespace, *realm)
    )
    return Identifier(
        "username",
        value,
        "test",
        namespace,
        trust,
        realm=label or ("test realm" if realm else ""),
        aliases=members if realm else frozenset(),
    )


def asked(*identifiers: Identifier, known: tuple[Identifier, ...] = ()) -> Identity:
    """One round's question: these identifiers, all of them known to be the person's."""
    email = next((i.value for i in identifiers if i.kind == EMAIL), "")
    return Identity(email, identifiers, (*identifiers, *known))
