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
    domain = domain.strip().rstrip(".")  # a trailing dot is the root: ACME. is ACME
    return name.strip(), domain


def covers(member: str, namespace: str) -> bool:
    """Whether a namespace is ``member`` itself or lies inside it (``keepass:vault/Clients``
    covers ``keepass:vault/Clients/Acme Ltd``)."""
    namespace, member = (unicodedata.normalize("NFC", n) for n in (namespace, member))
    return namespace == member or namespace.startswith(member + "/")
