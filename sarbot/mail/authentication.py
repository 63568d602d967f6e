"""Sender authentication: what a message's DKIM results say about its From address.

Only ``Authentication-Results`` headers whose authserv-id the admin trusts
count (RFC 8601 section 7.1): anyone can write such a header, and only the
receiving MTA's own is worth reading.  Whether a header is trusted is decided
from its authserv-id as written, before the rest is parsed (and before any
RFC 2047 decoding).  Two headers with a trusted id mean one of them is
forged, and one with a trusted id that cannot be parsed cannot be judged:
either way the message is treated as suspicious, and a person looks.  DKIM counts
only when the signing domain (``header.d``) aligns with the From domain, as
DMARC defines it: equal (strict), or within the same organisational domain
(relaxed), which the Public Suffix List shipped in the ``publicsuffixlist``
package decides (nothing is downloaded at run time).  SPF never authenticates
the From address.  Without a trusted header, sarbot can check DKIM signatures
itself with dkimpy.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import authres
import dkim
import dns.resolver
from publicsuffixlist import PublicSuffixList

from sarbot.config import VerificationSettings
from sarbot.mail.message import IncomingMail

DnsFunc = Callable[..., bytes]
UNREADABLE_RESULTS = "an Authentication-Results header with a trusted authserv-id could not be read"
_AUTHSERV_ID_RE = re.compile(
    r'[ \t]*(?:\([^()]*\)[ \t]*)*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s;()"]+))'
)


@dataclass(frozen=True)
class Evidence:
    """What authenticated the sender, in words for the audit trail and the letter."""

    aligned_dkim: bool
    summary: str
    suspicious: str = ""


@cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List shipped with the ``publicsuffixlist`` package (read once)."""
    return PublicSuffixList()


def organisational_domain(domain: str) -> str | None:
    """The organisational domain (RFC 7489 section 3.2), or None for a public suffix.

    The longest matching rule of the Public Suffix List, both its ICANN and its
    private sections, plus one label.  A top-level domain the list does not
    name falls under its default rule ``*``: the TLD alone is the public
    suffix, so ``mail.example.test`` belongs to ``example.test``.
    """
    name = domain.lower().rstrip(".")
    if not name:
        return None
    return _public_suffixes().privatesuffix(name)


def aligned(signing_domain: str, from_domain: str, mode: str) -> bool:
    """Whether a DKIM signing domain aligns with the From domain (RFC 7489 section 3.1.1).

    Strict: the domains are equal.  Relaxed: equal, or both under the same
    organisational domain; a public suffix (``co.uk``) has none, so it aligns
    only with itself.
    """
    signing, sender = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not signing or not sender:
        return False
    if signing == sender:
        return True
    if mode == "strict":
        return False
    organisation = organisational_domain(sender)
    return organisation is not None and organisational_domain(signing) == organisation


def evaluate(
    mail: IncomingMail, sender: str, settings: VerificationSettings, dnsfunc: DnsFunc | None = None
) -> Evidence:
    """Read the trusted results (or check DKIM ourselves) for this sender."""
    from_domain = sender.rpartition("@")[2]
    trusted, unreadable = _trusted_headers(mail, settings)
    if len(trusted) + unreadable > 1:
        count = len(trusted) + unreadable
        return Evidence(
            False,
            f"{count} Authentication-Results headers carry a trusted id; one is forged",
            suspicious="more than one Authentication-Results header with a trusted authserv-id",
        )
    if unreadable:
        return Evidence(
            False,
            "an Authentication-Results header with a trusted id could not be read",
            suspicious=UNREADABLE_RESULTS,
        )
    if trusted:
        header = trusted[0]
        domains = [
            _header_d(r) for r in header.results if r.method == "dkim" and r.result == "pass"
        ]
        good = [d for d in domains if d and aligned(d, from_domain, settings.alignment)]
        if good:
            return Evidence(
                True, f"dkim=pass for {good[0]}, aligned with {from_domain} ({header.authserv_id})"
            )
        results = ", ".join(f"{r.method}={r.result}" for r in header.results) or "no results"
        return Evidence(False, f"no aligned DKIM pass ({header.authserv_id}: {results})")
    if settings.verify_dkim and mail.raw:
        return _own_check(mail.raw, from_domain, settings, dnsfunc or resolver(settings.dns_server))
    return Evidence(False, "no trusted authentication results")


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results field as written, or "".

    Read before, and apart from, parsing the rest: the first token (or quoted
    string) after any comments.  An RFC 2047 encoded word is taken as it is
    written, so ``=?utf-8?q?mail.example?=`` is never ``mail.example``.
    """
    match = _AUTHSERV_ID_RE.match(value)
    if match is None:
        return ""
    if match["quoted"] is not None:
        return re.sub(r"\\(.)", r"\1", match["quoted"])
    return match["token"] or ""


def _trusted_headers(
    mail: IncomingMail, settings: VerificationSettings
) -> tuple[list[authres.AuthenticationResultsHeader], int]:
    """The parsed headers whose authserv-id is trusted, and how many such could not be read."""
    ids = {i.casefold() for i in settings.trusted_authserv_ids}
    found, unreadable = [], 0
    for value in mail.authentication_results:
        written_id = authserv_id(value).casefold()
        if written_id not in ids:
            continue  # anyone can write one: only the trusted verifier's count
        try:
            header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
        except Exception:  # a trusted verifier's header that cannot be read: a person looks
            unreadable += 1
            continue
        if str(header.authserv_id).casefold() != written_id:
            unreadable += 1  # the parser read another id than the one written
            continue
        found.append(header)
    return found, unreadable


def _header_d(result: authres.AuthenticationResult) -> str:
    return next(
        (str(p.value) for p in result.properties if p.type == "header" and p.name == "d"), ""
    )


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_SIGNATURE_FIELD = re.compile(rb"^dkim-signature:", re.IGNORECASE | re.MULTILINE)


def _own_check(
    raw: bytes, from_domain: str, settings: VerificationSettings, dnsfunc: DnsFunc
) -> Evidence:
    """Verify each DKIM signature with dkimpy; the first aligned pass counts."""
    header = _HEADER_END.split(raw, maxsplit=1)[0]
    signatures = len(_SIGNATURE_FIELD.findall(header))
    for index in range(min(signatures, 5)):
        checker = dkim.DKIM(raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ok = checker.verify(idx=index, dnsfunc=dnsfunc)
        except Exception:  # a broken signature or an unreachable key is no pass  # noqa: S112
            continue
        domain = (checker.domain or b"").decode("ascii", "replace")
        if ok and aligned(domain, from_domain, settings.alignment):
            return Evidence(
                True, f"dkim=pass for {domain}, aligned with {from_domain} (checked by sarbot)"
            )
    return Evidence(False, "no aligned DKIM pass (checked by sarbot)")


def resolver(server: str | None) -> DnsFunc:
    """A TXT lookup for dkimpy, through ``host:port`` or the system's resolver.

    The resolver (and /etc/resolv.conf) is read at the first lookup, then kept.
    """

    @cache
    def configured() -> dns.resolver.Resolver:
        res = dns.resolver.Resolver(configure=server is None)
        if server is not None:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            res.nameservers = [host or server]
            res.port = int(port) if port else 53
        return res

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = configured().resolve(name.decode("ascii").rstrip("."), "TXT", lifetime=timeout)
        except Exception:  # no key, NXDOMAIN, timeout: dkimpy expects empty bytes
            return b""
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup
