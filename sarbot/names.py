"""How names compare: account names, the domains written with them, and namespaces.

The one place these rules live; ``sarbot.connector`` hands them to connectors.
"""

from __future__ import annotations

import unicodedata


def fold(value: str) -> str:
    """How account and domain names compare: NFC, lower case, outer space removed.

    Never ``casefold()``: it maps ß to ss, and ``straße`` is not ``strasse``.
    """
    return unicodedata.normalize("NFC", value.strip()).lower()


def split_account(value: str) -> tuple[str, str]:
    """``DOMAIN\\user``, ``user@domain`` or ``user``: the user and the domain, as written."""
    text = value.strip()
    if "\\" in text:
        domain, _, name = text.rpartition("\\")
    elif "@" in text:
        name, _, domain = text.rpartition("@")
    else:
        name, domain = text, ""
    return name.strip(), bare_domain(domain)


def bare_domain(domain: str) -> str:
    """A domain as written, without the root's trailing dot (``ACME.`` is ``ACME``).  Dots
    alone stay as they are: ``.\\asmith`` is the local account of whichever computer it is
    on, no directory's login, and ``.`` is never a realm's domain."""
    text = domain.strip()
    return text.rstrip(".") or text


def namespace_part(name: str) -> str:
    """A name as one step of a namespace's path (a vault group, a monitoring client, a log
    source): a ``/`` in it is written ``%2F``, so that the client ``Acme/Beta JV`` is not
    inside the client ``Acme``, and a ``%`` is written ``%25``, so that no name can be
    written as another is (``Acme%2FBeta JV`` is a name of its own)."""
    return name.replace("%", "%25").replace("/", "%2F")


def covers(member: str, namespace: str) -> bool:
    """Whether a namespace is ``member`` itself or lies inside it (``keepass:vault/Clients``
    covers ``keepass:vault/Clients/Acme Ltd``)."""
    namespace, member = (unicodedata.normalize("NFC", n) for n in (namespace, member))
    return namespace == member or namespace.startswith(member + "/")
