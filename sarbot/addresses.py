"""Email addresses: the one place that decides what counts as the same address.

Normalisation, applied to every address sarbot compares or stores:

* surrounding white space is removed and the text is put in Unicode NFC form;
* the domain is processed as UTS #46 prescribes, non-transitionally (IDNA 2008):
  mapped to lower case and to its ASCII (punycode) form.  The deviation
  characters (ß, ς, ZWJ, ZWNJ) are kept, not mapped, so ``straße.de`` stays
  ``xn--strae-oqa.de`` and never becomes ``strasse.de``, another domain; a
  look-alike domain (a Cyrillic a, U+0430) stays a different domain too;
* the local part is lower-cased: mail providers treat it case-insensitively
  in practice, and a request must not split on ``Alice@`` versus ``alice@``;
* quoted local parts, comments, source routes and non-ASCII local parts are
  refused: no ordinary mailbox needs them, and each is a way to make two
  addresses look alike.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from email.errors import InvalidHeaderDefect
from email.headerregistry import HeaderRegistry

import idna

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HEADERS = HeaderRegistry()
_FOLDING_RE = re.compile(r"\r?\n(?=[ \t])")


class InvalidAddress(ValueError):
    """The text is not a single plain mailbox address."""


def normalize_address(text: str) -> str:
    """Return the canonical form of one addr-spec, or raise InvalidAddress."""
    address = unicodedata.normalize("NFC", text.strip())
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress("not an address")
    if len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise InvalidAddress("unsupported local part")
    return f"{local.lower()}@{_normalize_domain(domain)}"


def _normalize_domain(domain: str) -> str:
    """The domain in ASCII (UTS #46, IDNA 2008), without the root's dot.  It is mapped before
    the dot is taken off: a full stop of another script (U+3002) followed by a character
    the mapping drops (a soft hyphen) is still the root's dot, as the log matcher reads it."""
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False).rstrip(".")
        ascii_domain = idna.encode(mapped, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise InvalidAddress("invalid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL_RE.match(x) for x in labels):
        raise InvalidAddress("invalid domain")
    return ascii_domain


def single_sender(header_value: str | None) -> str:
    """The one normalised mailbox of a From header as written, or raise InvalidAddress.

    ``header_value`` is the field as it arrived, before any RFC 2047 decoding:
    an encoded word can only ever be a display name, and a display name is
    ignored entirely, so ``"alice@example.test" <mallory@evil.test>`` and
    ``=?utf-8?q?alice=40example.test?= <mallory@evil.test>`` are both mallory.
    A field the parser finds malformed is refused rather than guessed at:
    ``alice@example.test <mallory@evil.test>`` names no one.
    """
    if not header_value or not header_value.strip():
        raise InvalidAddress("no From header")
    try:
        header = _HEADERS("from", _FOLDING_RE.sub("", header_value))
        addresses = header.addresses  # type: ignore[attr-defined]
        defects = header.defects
    except Exception:  # the stdlib parser raises assorted errors on hostile input
        raise InvalidAddress("unparsable From header") from None
    if any(isinstance(defect, InvalidHeaderDefect) for defect in defects):
        raise InvalidAddress("malformed From header")
    if len(addresses) != 1:
        raise InvalidAddress("From must name exactly one mailbox")
    addr = addresses[0]
    if not addr.username or not addr.domain:
        raise InvalidAddress("From has no usable address")
    return normalize_address(f"{addr.username}@{addr.domain}")


def sender_of(from_fields: Sequence[str]) -> str:
    """The sender named by a message's From fields (each as written), or raise InvalidAddress.

    A message has exactly one From field (RFC 5322 section 3.6): a second one
    is refused, whichever of the two a mail client would show.
    """
    if len(from_fields) > 1:
        raise InvalidAddress("more than one From header")
    return single_sender(from_fields[0] if from_fields else None)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


PRIVATE_SUFFIXES = (
    "local",  # RFC 6762: multicast DNS, and many an Active Directory domain
    "localdomain",
    "localhost",
    "internal",  # reserved by ICANN for private use (2024)
    "home.arpa",  # RFC 8375
    "lan",
    "home",
    "corp",
    "intranet",
    "private",
)
"""Suffixes of domains that name no mailbox on the internet but a private network's
directory: ``asmith@corp.local`` is a Windows login, and two clients may both have one."""


def is_private_domain(domain: str) -> bool:
    """Whether an (ASCII, lower-case) domain is a private network's, not a mail domain."""
    return any(domain == s or domain.endswith("." + s) for s in PRIVATE_SUFFIXES)


def written_forms(address: str) -> list[str]:
    """The ways a normalised address may be stored: its ASCII form, and with an
    internationalised domain, its Unicode form too (``alice@straße.de``).

    A store is searched for each; what it finds is then checked with ``same_address``.
    """
    local, _, domain = address.rpartition("@")
    try:
        unicode_domain = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return [address]
    return list(dict.fromkeys([address, f"{local}@{unicode_domain}"]))


def same_address(stored: object, address: str) -> bool:
    """Whether a stored value is this normalised address, compared exactly once normalised.

    Databases compare loosely (MySQL's ``*_ci`` collations take ü for u and ß for ss;
    ``casefold()`` maps ß to ss too): every match is checked again here.
    """
    if not isinstance(stored, str):
        return False
    try:
        return normalize_address(stored) == address
    except InvalidAddress:
        return False


def mask_address(address: str) -> str:
    """A form fit for logs: ``a***@example.test``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
